"""The analysis layer reads finished runs: importing it (and the report) must not load torch or a model stack."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "lightning", "wandb", "matplotlib")

SCRIPT = f"""
import importlib, pkgutil, sys
import specfair.analysis, specfair.report, specfair.tracking
modules = [m.name for m in pkgutil.iter_modules(specfair.analysis.__path__)]
for name in modules:
    importlib.import_module("specfair.analysis." + name)
print("modules=" + ",".join(modules))
print("loaded=" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_report_and_analysis_import_without_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    modules, loaded = lines["modules"], lines["loaded"]
    assert {"stats", "comparisons", "imbalance", "transfer", "sentences", "tables", "plots", "format"} <= set(
        modules.split(",")
    )
    assert loaded == "", f"importing the analysis layer loaded {loaded}"
