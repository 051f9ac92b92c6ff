"""What does the stored top-k teacher cost against full logits? Two short generalist trainings, one run.

Both start from the truncated base draft and read the same windows of the same cached generalist corpus (same
seed), so the only difference is the teacher: `train.teacher=stored` distils toward the corpus's stored top-k
(renormalised), `train.teacher=target` runs the target on every batch for its full logits. Prints the
validation expected alpha and greedy agreement (held-out target-written texts) at the end, the wall time of
each training and the ratios. The corpus must exist (`make generalist` builds it; it is cached).

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_teacher.py --steps 80

With --dataset NAME: distillation on the dataset's human text from the generalist (train=kd_short), the live
target (`train.teacher=target`) against the cached top-k (`train.teacher=cached`), cold (the one-time scoring
pass included) and warm (read from the cache, as every later run): steps/s inside the training loop and the
validation expected alpha, which shows what the top-k approximation costs.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_teacher.py --dataset imdb --steps 40
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from specfair import ROOT
from specfair.records import load_train_summary


def train(teacher: str, steps: int, out: Path) -> tuple[float, dict]:
    """One train.py run with this teacher; (seconds, its train summary's last validation)."""
    command = [
        sys.executable, str(ROOT / "train.py"), "train=generalist", f"train.teacher={teacher}",
        f"train.max_steps={steps}", f"train.val_every={steps}", f"train.warmup_steps={max(1, steps // 8)}",
        "logger=none", f"export_dir={out / teacher}", f"hydra.run.dir={out / ('run-' + teacher)}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, load_train_summary(out / teacher).val_after


def train_on_dataset(dataset: str, teacher: str, steps: int, out: Path, name: str) -> tuple[float, dict]:
    """(wall seconds of the whole run, the summary's last validation with train_s) for one kd_short run."""
    command = [
        sys.executable, str(ROOT / "train.py"), "train=kd_short", f"dataset={dataset}", "draft=generalist",
        f"train.teacher={teacher}", f"train.max_steps={steps}", f"train.val_every={steps}",
        f"train.warmup_steps={max(1, steps // 8)}", "logger=none", f"paths.cache_dir={out / 'cache'}",
        f"export_dir={out / name}", f"hydra.run.dir={out / ('run-' + name)}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, load_train_summary(out / name).val_after


def dataset_main(dataset: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "live target": train_on_dataset(dataset, "target", steps, Path(tmp), "target"),
            "cached top-32, cold": train_on_dataset(dataset, "cached", steps, Path(tmp), "cold"),
            "cached top-32, warm": train_on_dataset(dataset, "cached", steps, Path(tmp), "warm"),
        }
    table = Table(title=f"kd_short on {dataset} from the generalist, {steps} steps (2 CPU cores)")
    for column in ("teacher", "run s", "training-loop s", "steps/s", "val expected alpha", "val greedy agr."):
        table.add_column(column, justify="left" if column == "teacher" else "right")
    for name, (seconds, val) in runs.items():
        table.add_row(name, f"{seconds:.0f}", f"{val['train_s']:.0f}", f"{steps / val['train_s']:.3f}",
                      f"{val['expected_alpha']:.4f}", f"{val['greedy_agreement']:.4f}")  # fmt: skip
    live, warm = runs["live target"][1], runs["cached top-32, warm"][1]
    table.add_section()
    table.add_row("warm / live", "", "", f"{live['train_s'] / warm['train_s']:.2f}x",
                  f"{warm['expected_alpha'] - live['expected_alpha']:+.4f}",
                  f"{warm['greedy_agreement'] - live['greedy_agreement']:+.4f}")  # fmt: skip
    Console(width=150).print(table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--dataset", help="distillation on this dataset's text: live target vs cached top-k")
    args = parser.parse_args(argv)
    if args.dataset:
        return dataset_main(args.dataset, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        results = {t: train(t, args.steps, Path(tmp)) for t in ("stored", "target")}
    table = Table(title=f"generalist recipe, {args.steps} steps from the truncated base (2 CPU cores)")
    for column in ("teacher", "seconds", "val expected alpha", "val greedy agreement"):
        table.add_column(column, justify="left" if column == "teacher" else "right")
    for teacher, (seconds, val) in results.items():
        name = "stored top-32" if teacher == "stored" else "full logits (target pass)"
        table.add_row(
            name, f"{seconds:.0f}", f"{val['expected_alpha']:.3f}", f"{val['greedy_agreement']:.3f}"
        )
    (s_sec, s_val), (t_sec, t_val) = results["stored"], results["target"]
    table.add_section()
    table.add_row(
        "stored / full",
        f"{s_sec / t_sec:.2f}x",
        f"{s_val['expected_alpha'] / t_val['expected_alpha']:.2f}x",
        f"{s_val['greedy_agreement'] / t_val['greedy_agreement']:.2f}x",
    )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
