"""The README against the code: what it names must exist, so that it cannot drift silently (issue 26).

- Every `group=option` it writes (`dataset=imdb`, `draft=lookup`, `hydra/launcher=slurm`, ...) is a file of
  `conf/<group>/`; every option list it introduces with "`conf/<group>/`:" names each option of that group,
  and nothing else (so a new dataset or draft config fails here until the README lists it).
- The signatures of `speculative_generate` and `autoregressive_generate` it shows are the real ones:
  the same parameters, in order, with the same defaults.
- Every `make <target>` in its code is a target of the Makefile.
- Every module its layout names exists.
- It is at most 300 lines, with "What it found" (at most ten lines) inside its first 40.
"""

import ast
import inspect
import re

import pytest

from specfair import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
LINES = README.splitlines()
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir()) + ["hydra/launcher"]
PLUGIN_LAUNCHERS = {"basic", "submitit_local", "submitit_slurm"}  # launchers that hydra's plugins ship


def options(group: str) -> set[str]:
    """The options of a config group: its yaml files, less the shared fragments (`_common.yaml`)."""
    return {p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_")}


def code_text(text: str) -> str:
    """Everything inside fenced code blocks and inline code spans, one piece a line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(fenced + re.findall(r"`([^`]+)`", outside))


def option_lists(text: str) -> list[tuple[str, list[str], str]]:
    """(group, names, the list's text) for every "`conf/<group>/`: `a`, `b` (...), ... ." in the README: the
    plain names in backticks up to the first full stop outside backticks."""
    found = []
    for match in re.finditer(r"`conf/([\w/]+)/`:", text):
        rest, in_code, end = text[match.end() :], False, None
        for i, char in enumerate(rest):
            if char == "`":
                in_code = not in_code
            elif char == "." and not in_code and (i + 1 == len(rest) or rest[i + 1].isspace()):
                end = i
                break
        listed = rest[:end]
        names = [n for n in re.findall(r"`([^`]+)`", listed) if re.fullmatch(r"[\w-]+", n)]
        found.append((match.group(1), names, " ".join(listed.split())))
    return found


def test_readme_is_short_and_answers_first():
    assert len(LINES) <= 300, f"README.md has {len(LINES)} lines; at most 300 (move long material to docs/)"
    start = LINES.index("## What it found")
    end = next(i for i in range(start + 1, len(LINES)) if LINES[i].startswith("## "))
    body = [line for line in LINES[start + 1 : end] if line.strip()]
    assert end <= 40, f"'What it found' ends at line {end}; the answers belong in the first 40 lines"
    assert len(body) <= 10, f"'What it found' has {len(body)} lines; at most ten"
    for answer in ("Q1", "Q2", "Transfer", "Speed"):
        assert any(f"[{answer}]" in line for line in body), f"'What it found' has no {answer} bullet"


def test_every_group_option_the_readme_writes_exists():
    pattern = r"(?<![\w.+~/-])(" + "|".join(map(re.escape, GROUPS)) + r")=([\w.|,-]*\w)"
    text = "\n".join(line for line in LINES if "`error:" not in line)  # not the bad-input examples
    missing = []
    for group, values in re.findall(pattern, text):
        for value in re.split(r"[|,]", values):
            if group == "hydra/launcher" and value in PLUGIN_LAUNCHERS:
                continue
            if not (CONF / group / f"{value}.yaml").is_file():
                missing.append(f"{group}={value}")
    assert not missing, f"README.md names options with no conf/<group>/<option>.yaml: {sorted(set(missing))}"


def test_option_lists_match_the_config_groups():
    lists = option_lists(README)
    assert "dataset" in {group for group, _, _ in lists}, "README.md lists no `conf/dataset/`: options"
    for group, names, text in lists:
        assert (CONF / group).is_dir(), f"README.md lists options of conf/{group}/, which does not exist"
        listed, real = set(names), options(group)
        assert listed <= real, f"conf/{group}/ has no {sorted(listed - real)} (README: {text[:80]}...)"
        assert real <= listed, f"README.md's list of conf/{group}/ misses {sorted(real - listed)}"


def readme_signature(name: str) -> list[tuple[str, object]]:
    """[(parameter, default or inspect.Parameter.empty)] as the README's engine block writes `name(...)`."""
    match = re.search(rf"^\s*{name}\(([^)]*)\)", README, flags=re.M)
    assert match, f"README.md does not show {name}(...)"
    params = []
    for part in (p.strip() for p in match.group(1).split(",")):
        if part in ("", "*"):
            continue
        key, _, default = part.partition("=")
        params.append((key.strip(), ast.literal_eval(default) if default else inspect.Parameter.empty))
    return params


@pytest.mark.parametrize("name", ["speculative_generate", "autoregressive_generate"])
def test_engine_signatures_match_the_code(name):
    from specfair.decoding import engine

    real = [(p.name, p.default) for p in inspect.signature(getattr(engine, name)).parameters.values()]
    shown = readme_signature(name)
    assert [k for k, _ in shown] == [k for k, _ in real], f"{name}: README {shown} vs code {real}"
    for (key, default), (_, actual) in zip(shown, real, strict=True):
        assert default == actual, f"{name}({key}=...): README says {default!r}, the code {actual!r}"


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code_text(README)))
    assert named, "README.md names no make target"
    assert named <= targets, f"README.md names make targets the Makefile lacks: {sorted(named - targets)}"


def test_every_module_in_the_layout_exists():
    block = re.search(r"^```\n(src/specfair/\n.*?)^```", README, flags=re.S | re.M)
    assert block, "README.md has no layout block starting with src/specfair/"
    text = re.sub(r"\([^()]*\)", "", block.group(1))  # descriptions in parentheses name other files
    folder, missing = ROOT / "src" / "specfair", []
    for line in text.splitlines()[1:]:
        first = line.split()[0] if line.split() else ""
        if not line.startswith(" "):  # a top-level folder beside src/ (benchmarks/)
            folder = ROOT / first.rstrip("/")
        elif line.startswith("  ") and not line.startswith("   "):  # an entry of src/specfair/
            package = ROOT / "src" / "specfair"
            folder = package / first.rstrip("/") if first.endswith("/") else package
        for module in re.findall(r"(?<![\w.`])([a-z_][a-z0-9_]*\.py)\b", line):
            if not (folder / module).is_file():
                missing.append(str((folder / module).relative_to(ROOT)))
    assert not missing, f"README.md's layout names modules that do not exist: {missing}"
