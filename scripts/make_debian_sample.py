"""An evaluation-only text collection no draft here trains on: Debian package descriptions.

Reads a dpkg status file (default /var/lib/dpkg/status), keeps each package's long description (>= 30 words,
duplicates dropped), groups the Section field into four categories and writes up to 100 rows per category to
data/samples/debian.jsonl (every row split=eval). Usage: python scripts/make_debian_sample.py [status file]
"""

import json
import random
import sys
from pathlib import Path

GROUPS = {
    "libraries": {"libs"},
    "development": {"libdevel", "devel"},
    "languages": {"python", "java", "perl", "interpreters", "ruby", "rust", "golang", "javascript"},
}
PER_CATEGORY = 100


def packages(status: str):
    for block in status.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" in fields and "Description" in fields:
            lines = fields["Description"].split("\n")
            body = " ".join(x.strip() for x in lines[1:] if x.strip() != ".")
            yield fields["Package"], fields.get("Section", "misc").split("/")[-1], body


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/dpkg/status")
    rows, seen = {}, set()
    for name, section, body in packages(source.read_text(encoding="utf-8")):
        if len(body.split()) < 30 or body in seen:
            continue
        seen.add(body)
        group = next((g for g, sections in GROUPS.items() if section in sections), "tools")
        rows.setdefault(group, []).append(
            {"id": f"debian-{name}", "text": body, "label": group, "split": "eval"}
        )
    out = Path(__file__).resolve().parents[1] / "data" / "samples" / "debian.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for group in sorted(rows):
            chosen = sorted(
                random.Random(0).sample(rows[group], min(PER_CATEGORY, len(rows[group]))),
                key=lambda r: r["id"],
            )
            for row in chosen:
                f.write(json.dumps(row) + "\n")
    print({g: min(PER_CATEGORY, len(r)) for g, r in sorted(rows.items())}, "->", out)


if __name__ == "__main__":
    main()
