"""Experiments: train the drafts an experiment needs (where none exists yet), evaluate them, report.

Every step is a subprocess running the same `train.py` / `evaluate.py` command a user would type, with its
Hydra output folder inside the experiment folder. A step whose output already exists with the same settings
is skipped, so an interrupted experiment resumes where it stopped and `make transfer` reuses the drafts that
`make q1` trained. A failed step is recorded and the rest go on; the report covers what completed.

`overrides=[...]` go to the steps they apply to: a setting whose top-level key only `evaluate.yaml` has
(`spec.*`, `mode`, ...) to the evaluations, one only `train.yaml` has (`train.*`, `export_dir`, ...) to the
trainings, the rest (`trainer=gpu`, `dataset.*`, `seed`, `hydra.*`, a key neither has) to both.
`dry_run=true` composes every step's config and runs the checks the step would run before loading a model;
the first problem is the same one line the real run would print, with exit status 2, else the commands.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from specfair import ROOT
from specfair.errors import SpecfairError
from specfair.records import load_train_summary, settings_conflict, write_atomic

log = logging.getLogger(__name__)


@dataclass
class Step:
    kind: str  # train | evaluate
    label: str
    overrides: list[str]
    out_dir: Path
    needs: str | None = None  # label of the training an evaluation depends on
    status: str = "planned"  # planned | done | skipped | failed
    why: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def plain(node, default):
    """A config node as plain Python (resolved), or the default where the key is absent."""
    if node is None:
        return default
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def as_overrides(values: dict) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def grid_points(spec: DictConfig) -> list[dict]:
    """The cartesian product of `grid` (key -> list of values; or a list of such grids, one product each),
    then the extra `runs`, without repeats."""
    grids = plain(spec.get("grid"), {})
    points = []
    for grid in grids if isinstance(grids, list) else [grids]:
        for key, values in grid.items():
            if not isinstance(values, list):  # an empty list leaves that grid out (a narrowed experiment)
                raise SpecfairError(f"experiment grid key {key!r}: expected a list, got {values!r}")
        points += [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    points += plain(spec.get("runs"), [])
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique or [{}]


def variant_name(point: dict) -> str:
    """rho10_head0_seed0 from {dataset.imbalance.ratio: 10, ...}: short, path-safe, one per grid point."""
    short = {"ratio": "rho"}
    parts = []
    for key, value in point.items():
        if key in ("dataset", "train", "pair"):
            continue
        name = key.rsplit(".", 1)[-1]
        parts.append(f"{short.get(name, name)}{value}".replace("/", "-"))
    return "_".join(parts) or "default"


def compose(config: str, overrides: list[str]) -> DictConfig:
    """The config train.py / evaluate.py would see, composed here to read paths before launching."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*overrides, "paths.output_dir=unused"]
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config, overrides=overrides)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config, overrides=overrides)


OVERRIDES_FORM = """'overrides=["trainer=gpu","spec.gamma=3"]'"""  # the form the shell and Hydra both take
TOOLS = ("train", "evaluate")


def experiment_options(cfg: DictConfig) -> list[str]:
    """The experiment's own options checked (dry_run, keep_checkpoints, overrides); returns the overrides."""
    for key in ("dry_run", "keep_checkpoints"):
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise SpecfairError(f"{key}={value!r}: expected true or false")
    overrides = plain(cfg.get("overrides"), [])
    ok = isinstance(overrides, list) and all(
        isinstance(o, str) and ("=" in o or o.startswith("~")) for o in overrides
    )
    if not ok:
        raise SpecfairError(
            f"overrides={overrides!r}: expected a list of settings (key=value), e.g. {OVERRIDES_FORM}"
        )
    return overrides


def override_key(override: str) -> str:
    """The top-level key an override sets: `spec` for `spec.gamma=3`, `hydra` for `hydra/launcher=...`."""
    key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
    return key.replace("/", ".").split(".", 1)[0]


@functools.cache
def top_keys(config: str) -> frozenset[str]:
    """The top-level keys of train.yaml or evaluate.yaml as composed with their defaults."""
    return frozenset(compose(config, []).keys())


def route(overrides: list[str], config: str) -> list[str]:
    """The overrides that apply to `config` (train or evaluate): those whose top-level key it has, and those
    of a key both or neither have (a key neither has fails in each step with the real error)."""
    kept = []
    for o in overrides:
        key = override_key(o)
        owners = [c for c in TOOLS if key in top_keys(c)]
        if key == "hydra" or not owners or config in owners:
            kept.append(o)
    return kept


def plan(cfg: DictConfig, exp_dir: Path) -> list[Step]:
    """The base draft's evaluations, then each training (one per grid point) followed by its evaluations, so
    an experiment stopped part-way leaves complete (draft, evaluations) sets."""
    common = experiment_options(cfg) + [f"paths.ckpt_dir={cfg.paths.ckpt_dir}"]
    trainings = training_steps(cfg, exp_dir, route(common, "train"))
    evaluations = evaluation_steps(cfg, exp_dir, route(common, "evaluate"), trainings)
    ordered = [e for e in evaluations if e.needs is None]
    for t in trainings:
        ordered += [t, *(e for e in evaluations if e.needs == t.label)]
    return ordered


def training_steps(cfg: DictConfig, exp_dir: Path, common: list[str]) -> list[Step]:
    """One train.py run per grid point; variants get their own export folder under the experiment's name."""
    exp = cfg.experiment
    train_base = as_overrides(plain(exp.train.get("overrides"), {}))
    trainings = []
    for point in grid_points(exp.train):
        overrides = [*common, *train_base, *as_overrides(point)]
        composed = compose("train", overrides)
        general = composed.train.get("data") == "generalist"  # no dataset: evaluated on every dataset
        dataset = "generalist" if general else composed.dataset.name
        train_name, start, seed = composed.train.name, composed.draft.name, composed.seed
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SpecfairError(f"seed={seed!r}: expected an integer >= 0")
        variant = variant_name(point) if exp.train.get("variants") else None
        if variant:
            export = Path(cfg.paths.ckpt_dir, composed.pair.name, dataset, exp.name, train_name, variant)
            overrides.append(f"export_dir={export}")
        else:
            export = Path(composed.export_dir)
        # the label is the draft's row in the report (comparisons.draft_label): one name everywhere
        if general:
            label = "generalist" if train_name == "generalist" else train_name
        else:
            label = f"{dataset}/{train_name}" + (f"/{variant}" if variant else "")
            label += f"@{start}" if start != "base" else ""
        label += f"/seed{seed}" if seed and not variant else ""  # a variant's name holds its seed already
        info = {
            "dataset": dataset,
            "train_name": train_name,
            "variant": variant,
            "start": start,
            "seed": seed,
            "export_dir": export,
            "train": OmegaConf.to_container(composed.train, resolve=True),
            "imbalance": None
            if general
            else OmegaConf.to_container(composed.dataset.imbalance, resolve=True),
        }
        trainings.append(
            Step("train", label, overrides, exp_dir / "train" / label.replace("/", "__"), info=info)
        )
    # drafts others start from (trained from base) first, then seed by seed: a run stopped part-way has
    # every arm at the first seeds rather than every seed of the first arm
    return sorted(trainings, key=lambda t: (t.info["start"] != "base", t.info["seed"]))


def finetuned_draft(t: Step) -> list[str]:
    """evaluate.py overrides that load the draft a training step exports."""
    path = f"draft.path={t.info['export_dir'] / 'draft'}"
    if t.info["start"] == "eagle":  # a feature head: draft=eagle reads any head's folder
        return ["draft=eagle", path]
    if t.info["dataset"] == "generalist":
        return [
            "draft=generalist",
            f"draft.recipe={t.info['train_name']}",
            f"draft.seed={t.info['seed']}",
            path,
        ]
    draft = [
        "draft=finetuned",
        f"draft.trained_on={t.info['dataset']}",
        f"draft.train_name={t.info['train_name']}",
        f"draft.start={t.info['start']}",
        path,
    ]
    return draft + (
        [f"draft.variant={t.info['variant']}"] if t.info["variant"] else [f"draft.seed={t.info['seed']}"]
    )


def evaluation_steps(cfg: DictConfig, exp_dir: Path, common: list[str], trainings: list[Step]) -> list[Step]:
    """The baseline drafts (`base`) and every trained draft on each evaluated dataset (its own, or every listed
    one)."""
    exp = cfg.experiment
    ev = exp.evaluate
    eval_common = [*common, *as_overrides(plain(ev.get("overrides"), {})), f"logger.group={exp.name}"]
    on = ev.get("datasets", "trained")  # "trained": each draft on its own dataset; a list: all on each
    on = on if isinstance(on, str) else plain(on, [])
    own = [t.info["dataset"] for t in trainings if t.info["dataset"] != "generalist"]
    datasets = list(dict.fromkeys(own)) if on == "trained" else on
    # true: the truncated base; a list: these drafts' own configs (untrained), e.g. [generalist, base]
    base = plain(ev.get("base"), True)
    baselines = ["base"] if base is True else [] if base is False else list(base)
    evaluations = []
    for dataset in datasets:
        for name in baselines:
            overrides = [*eval_common, f"dataset={dataset}", f"draft={name}"]
            evaluations.append(
                Step("evaluate", f"{dataset}: {name}", overrides, exp_dir / "evaluate" / f"{dataset}__{name}")
            )
        for t in trainings:
            if on == "trained" and t.info["dataset"] not in (dataset, "generalist"):
                continue
            folder = exp_dir / "evaluate" / f"{dataset}__{t.label.replace('/', '__')}"
            overrides = [*eval_common, f"dataset={dataset}", *finetuned_draft(t)]
            evaluations.append(
                Step(
                    "evaluate",
                    f"{dataset}: {t.label}",
                    overrides,
                    folder,
                    needs=t.label,
                    info={"dataset": dataset},
                )
            )
    return evaluations


def trained_already(step: Step) -> bool:
    """An export with the same training settings exists; one made with other settings is an error."""
    export = step.info["export_dir"]
    summary_file = export / "train_summary.json"
    if not summary_file.is_file() or not (export / "draft" / "config.json").is_file():
        return False
    conflict = settings_conflict(load_train_summary(summary_file), step.info["train"], step.info["imbalance"])
    if conflict:
        raise SpecfairError(
            f"{export} was trained with {conflict} by this experiment: delete that folder or point the "
            "experiment elsewhere with paths.ckpt_dir=..."
        )
    return True


def same_overrides(step: Step) -> bool:
    overrides = step.out_dir / ".hydra" / "overrides.yaml"
    return overrides.is_file() and yaml.safe_load(overrides.read_text()) == step.overrides  # no hydra.*


def evaluated_already(step: Step) -> bool:
    """A completed run folder made with exactly these overrides (other settings: run again).

    A run killed mid-way has partial records and no summary: it is not done, and evaluate.py resumes it in
    the same folder; partial records of other settings are removed first, or the rerun would refuse them.
    """
    if (step.out_dir / "summary.json").is_file() and same_overrides(step):
        return True
    if not same_overrides(step):
        for path in [*step.out_dir.glob("samples.rank*.partial.jsonl"), step.out_dir / "resume.json"]:
            path.unlink(missing_ok=True)
    return False


def preflight(step: Step) -> None:
    """What the step's own command checks before it loads a model: its composed config (schema, files,
    hardware) and the training or evaluation settings; raises the error that command would print."""
    from specfair.config_check import check_config

    composed = compose(step.kind, step.overrides)
    check_config(composed)
    if step.kind == "train":
        from specfair.training.run import check_train_cfg

        check_train_cfg(composed)
    else:
        from specfair.decoding.spec import DecodingSpec
        from specfair.evaluation.run import check_mode

        check_mode(composed, DecodingSpec.from_config(OmegaConf.to_container(composed.spec, resolve=True)))


def dry_run(steps: list[Step]) -> None:
    """Check every step as its command would (see `preflight`); the first failing one is refused in one
    line, with how many steps would fail; nothing is written."""
    from specfair.app import describe

    failed = []
    for step in steps:
        try:
            preflight(step)
        except Exception as err:
            status, line = describe(err)
            if status != 2:
                raise
            failed.append((step, line))
    if failed:
        step, line = failed[0]
        raise SpecfairError(
            f"{line} ({step.kind} {step.label}; {len(failed)} of {len(steps)} steps would fail: dry run)"
        )


def command(step: Step) -> list[str]:
    script = ROOT / ("train.py" if step.kind == "train" else "evaluate.py")
    return [sys.executable, str(script), *step.overrides, f"hydra.run.dir={step.out_dir}"]


def failure_reason(step: Step, returncode: int) -> str:
    error = step.out_dir / "error.txt"
    if error.is_file():
        return error.read_text().strip()
    return f"exit status {returncode}; see {step.out_dir}"


def run_steps(steps: list[Step], keep_checkpoints: bool = False) -> None:
    """Each step in turn; a finished training's Lightning checkpoints (weights and optimizer state, ~0.5 GB a run)
    are dropped unless `keep_checkpoints`: the experiment uses only the exported draft, and 90 runs would fill a disk."""
    failed_trainings = set()
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.kind} {step.label}"
        if step.needs in failed_trainings:
            step.status, step.why = "failed", f"its draft's training ({step.needs}) failed"
            log.error("%s: skipped, %s", head, step.why)
            continue
        done = trained_already(step) if step.kind == "train" else evaluated_already(step)
        if done:
            step.status = "skipped"
            log.info("%s: already done (%s)", head, step.info.get("export_dir", step.out_dir))
            continue
        log.info("%s\n    %s", head, " ".join(command(step)[1:]))
        start = time.perf_counter()
        try:
            returncode = run_child(command(step))
        except KeyboardInterrupt as stop:  # SIGTERM / SIGINT: the step stopped too, keeping its records
            step.status, step.why = "failed", f"stopped by {stop or 'SIGINT'}"
            stop.hint = (
                f"stopped at step {i} of {len(steps)} ({step.kind} {step.label}); rerun the same command to go "
                "on: finished steps are skipped and a stopped evaluation resumes from its records"
            )
            raise
        finally:
            step.seconds = time.perf_counter() - start
        if returncode == 0 and (step.kind == "train" or (step.out_dir / "summary.json").is_file()):
            step.status = "done"
            log.info("%s: done in %.0f s", head, step.seconds)
            if step.kind == "train" and not keep_checkpoints:
                for ckpt in (step.out_dir / "checkpoints").glob("*.ckpt"):
                    ckpt.unlink()
        else:
            step.status, step.why = "failed", failure_reason(step, returncode)
            log.error("%s: failed: %s", head, step.why)
            if step.kind == "train":
                failed_trainings.add(step.label)


def run_child(cmd: list[str], grace_s: float = 60.0) -> int:
    """A step's command to its end; its exit status. When the experiment is stopped (SIGTERM, Ctrl-C), the
    step gets SIGTERM too and `grace_s` to stop cleanly (an evaluation keeps its records for the rerun)."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait()
    except BaseException:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def write_steps(steps: list[Step], exp_dir: Path) -> None:
    rows = [
        {
            "kind": s.kind,
            "label": s.label,
            "status": s.status,
            "why": s.why,
            "seconds": round(s.seconds, 1),
            "out_dir": str(s.out_dir),
            "command": " ".join(command(s)[1:]),
        }
        for s in steps
    ]
    write_atomic(exp_dir / "steps.json", json.dumps(rows, indent=2) + "\n")


def run_experiment(cfg: DictConfig) -> dict:
    """Plan, run what is missing, report over the evaluation folders; returns the report."""
    from specfair.report import build_report

    exp_dir = Path(cfg.paths.output_dir)
    steps = plan(cfg, exp_dir)
    log.info(
        "experiment %s: %d trainings, %d evaluations, in %s",
        cfg.experiment.name,
        sum(s.kind == "train" for s in steps),
        sum(s.kind == "evaluate" for s in steps),
        exp_dir,
    )
    if cfg.get("dry_run"):
        dry_run(steps)
        for s in steps:
            print(" ".join(command(s)[1:]))
        return {}
    try:
        run_steps(steps, bool(cfg.get("keep_checkpoints", False)))
    finally:
        write_steps(steps, exp_dir)
    (exp_dir / "evaluate").mkdir(parents=True, exist_ok=True)  # empty when every evaluation failed
    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    expected = [(s.needs, s.info["dataset"]) for s in steps if s.kind == "evaluate" and s.needs]
    report = build_report([exp_dir / "evaluate"], exp_dir, {**logger, "group": cfg.experiment.name}, expected)
    failed = [s for s in steps if s.status == "failed"]
    if failed:
        raise SpecfairError(
            f"{len(failed)} of {len(steps)} steps failed (first: {failed[0].label}: {failed[0].why}); "
            f"the report in {exp_dir / 'report.md'} covers the rest"
        )
    return report
