"""CNN/DailyMail categories from story URLs.

HF rows carry no category, but their `id` is the SHA-1 hex digest of the story's line in the public URL
lists (abisee/cnn-dailymail `url_lists/`), and a URL's first non-numeric path segment is its section:
`cnn.com/2015/04/01/middleeast/...` -> `middleeast`, `dailymail.co.uk/news/article-...` -> `news`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.request
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from specfair import cache_root
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)

_INNER = re.compile(r"https?://(?:[\w-]+\.)*?(cnn\.com|dailymail\.co\.uk)(/[^?#]*)")


def url_hash(url: str) -> str:
    return hashlib.sha1(url.strip().encode("utf-8")).hexdigest()


def section_of(url: str) -> str | None:
    """First non-numeric path segment after the domain (the wayback prefix, if any, is skipped)."""
    match = _INNER.search(url)
    if not match:
        return None
    for segment in match.group(2).split("/"):
        if segment and not segment.isdigit():
            return segment.lower()
    return None


def source_of(url: str) -> str | None:
    match = _INNER.search(url)
    return None if not match else ("cnn" if match.group(1) == "cnn.com" else "dailymail")


def read_url_list(location: str, cache_dir: Path) -> list[str]:
    """A local file, or an http(s) URL downloaded once into `cache_dir` (users with internet)."""
    if location.startswith(("http://", "https://")):
        path = cache_dir / url_hash(location)
        if not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                with urllib.request.urlopen(location, timeout=30) as response:
                    path.write_bytes(response.read())
            except OSError as err:
                raise SpecfairError(f"dataset.url_lists: cannot download {location} ({err})") from None
    else:
        path = Path(location)
        if not path.is_file():
            raise SpecfairError(f"dataset.url_lists: {path} not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def url_index(locations, cache_dir: Path) -> dict[str, str]:
    """id (SHA-1 of the URL line) -> URL, over every list."""
    return {url_hash(url): url for location in locations for url in read_url_list(str(location), cache_dir)}


def group_of(section: str | None, groups: dict[str, list[str]]) -> str:
    """Coarse group of a section (e.g. asia, europe -> world); unmapped sections go to `other`."""
    if section is None:
        return "other"
    for group, sections in groups.items():
        if section in sections:
            return group
    return "other"


def fold_small(categories: list[str], min_rows: int) -> list[str]:
    """Groups with fewer than `min_rows` rows become `other`, so no category is too thin to measure."""
    counts = Counter(categories)
    small = {c for c, n in counts.items() if n < min_rows}
    if small:
        log.info("folding CNN/DM groups with fewer than %d rows into 'other': %s", min_rows, sorted(small))
    return ["other" if c in small else c for c in categories]


def url_categories(records: list[dict], cfg: DictConfig, source: str) -> list[str | None]:
    """CNN/DM: section group (or cnn/dailymail with group_by=source) from each row's URL or id."""
    index = None
    out = []
    for record in records:
        url = record.get("url")
        if not url and record.get("id"):
            if index is None:
                lists = (cfg.get("url_lists") or {}).get(source) or []
                index = url_index(lists, cache_root() / "cnndm_url_lists")
            url = index.get(record["id"])
        if not url:
            out.append(None)
        elif cfg.get("group_by", "section") == "source":
            out.append(source_of(url))
        else:
            groups = {k: list(v) for k, v in (cfg.get("section_groups") or {}).items()}
            out.append(group_of(section_of(url), groups))
    return out
