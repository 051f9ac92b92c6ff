"""Sweeps through submitit: the same multirun a cluster user launches with hydra/launcher=slurm, run here with
submitit's local executor (real job processes, pickled and collected by submitit)."""

import subprocess
import sys

from specfair import ROOT


def test_a_two_job_submitit_local_sweep_writes_both_runs_and_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=10", "dataset=agnews,imdb", "mode=replay", "dataset.per_category=1",
           "spec.max_new_tokens=4", "logger=none", f"paths.cache_dir={tmp_path}/cache",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
    assert (
        [r.split("_")[0] for r in runs] == ["0", "1"]
        and "dataset=agnews" in runs[0]
        and "dataset=imdb" in runs[1]
    )
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # the jobs went through submitit
    assert (sweep / "report.md").is_file() and (sweep / "report.json").is_file()


def test_a_slurm_launcher_outside_a_cluster_is_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "hydra/launcher=slurm", "logger=none",
           f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 2 and result.stderr.startswith("error: hydra/launcher=slurm: no SLURM")
    assert len(result.stderr.strip().splitlines()) == 1
