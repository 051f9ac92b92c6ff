"""Runs stopped and steered (issue 30): SIGTERM and Ctrl-C stop a run in one line and keep what it recorded,
experiment overrides go to the steps they apply to, and `dry_run=true` refuses what the real run would refuse."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_in_process
from test_resume import assert_same_counters, command

from specfair import ROOT

# --- experiments: routing and dry runs (nothing runs but the checks) -------------------------------------------

TINY = """# @package _global_
experiment:
  name: tiny
  train:
    overrides: {train.max_steps: 3, dataset.per_category: 2}
    grid: {dataset: [agnews]}
  evaluate:
    datasets: trained
    base: true
    overrides: {dataset.per_category: 3}
"""


@pytest.fixture(scope="module")
def tiny_conf(tmp_path_factory):
    conf = tmp_path_factory.mktemp("conf")
    (conf / "experiment").mkdir()
    (conf / "experiment" / "tiny.yaml").write_text(TINY)
    return conf


def experiment(tiny_conf, tmp_path, *args):
    """(exit status, stderr, stdout) of `python experiment.py experiment=tiny ARGS` run in this process."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status, stderr = run_in_process(
            "experiment",
            ["experiment=tiny", f"hydra.searchpath=[file://{tiny_conf}]", f"paths.ckpt_dir={tmp_path}/ckpts",
             *args],
            tmp_path / "exp",
        )  # fmt: skip
    return status, stderr, out.getvalue()


def test_overrides_go_to_the_steps_whose_config_has_the_key(compose_cfg, tmp_path):
    from specfair.experiment import plan

    overrides = ["spec.gamma=3", "mode=replay", "train.max_steps=5", "+train.extra=1", "seed=1",
                 "trainer=default", "dataset.per_category=4", "hydra.job.chdir=false", "~spec.top_k"]  # fmt: skip
    cfg = compose_cfg("experiment=q1", f"paths.ckpt_dir={tmp_path}", f"overrides={json.dumps(overrides)}",
                      config="experiments")  # fmt: skip
    steps = plan(cfg, tmp_path / "exp")
    both = {"seed=1", "trainer=default", "dataset.per_category=4", "hydra.job.chdir=false"}
    for step in steps:
        routed = set(step.overrides)
        assert both <= routed, step.label
        if step.kind == "train":
            assert {"train.max_steps=5", "+train.extra=1"} <= routed
            assert not {"spec.gamma=3", "mode=replay", "~spec.top_k"} & routed
        else:
            assert {"spec.gamma=3", "mode=replay", "~spec.top_k"} <= routed
            assert not {"train.max_steps=5", "+train.extra=1"} & routed


def test_dry_run_checks_every_step_and_prints_the_plan(tiny_conf, tmp_path):
    status, stderr, stdout = experiment(tiny_conf, tmp_path, "dry_run=true", 'overrides=["spec.gamma=3"]')
    assert status is None and "error:" not in stderr, stderr[-2000:]
    commands = [line for line in stdout.splitlines() if ".py " in line and not line.startswith("[")]
    assert len(commands) == 3
    assert all(("spec.gamma=3" in c) == ("evaluate.py" in c) for c in commands)  # only the evaluations
    assert not (tmp_path / "exp" / "steps.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["dry_run=true", 'overrides=["spec.gamma=abc"]'],
         "spec.gamma='abc': expected an integer >= 1 or one of auto (evaluate agnews: base; 2 of 3 steps would fail"),
        (["dry_run=true", 'overrides=["dataset.source=local"]'], "dataset.path: required with dataset.source=local"),
        (["dry_run=true", 'overrides=["dataset.path=/nowhere.jsonl", "dataset.source=local"]'],
         "dataset.path=/nowhere.jsonl: no such file (evaluate agnews: base; 3 of 3 steps would fail: dry run)"),
        (["dry_run=true", 'overrides=["trainer=gpu"]'], "trainer.accelerator=gpu: no CUDA GPU on this machine"),
        (["dry_run=true", 'overrides=["mode=replay","spec.gamma=auto"]'],
         "spec.gamma=auto: replay has no wall-clock costs"),
        (["dry_run=true", 'overrides=["train.batch_size=0"]'],
         "train.batch_size=0: expected an integer >= 1 (train agnews/kd; 1 of 3 steps would fail: dry run)"),
        (["dry_run=true", 'overrides=["seed=abc"]'], "seed='abc': expected an integer >= 0"),
        (["dry_run=maybe"], "dry_run='maybe': expected true or false"),
        (["keep_checkpoints=2"], "keep_checkpoints=2: expected true or false"),
        (["overrides=[trainer=gpu]"],
         """overrides: cannot parse 'overrides=[trainer=gpu]' (no viable alternative at input '[trainer='"""),
        (["overrides=[trainer=gpu]"], """quote each setting inside the list: 'overrides=["trainer=gpu","""),
        (["overrides=gpu"], "overrides='gpu': expected a list of settings (key=value), e.g. 'overrides=["),
        (["overrides=[gpu]"], "overrides=['gpu']: expected a list of settings"),
    ],
)  # fmt: skip
def test_dry_run_refuses_what_the_real_run_would(tiny_conf, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("SPECFAIR_DEBUG", raising=False)
    status, stderr, stdout = experiment(tiny_conf, tmp_path, *args)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2, stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert message in errors[0], errors[0]
    assert "evaluate.py" not in stdout  # no plan printed
    assert not (tmp_path / "exp" / "steps.json").exists()


def test_the_header_of_experiments_yaml_shows_the_form_that_works():
    header = (ROOT / "conf" / "experiments.yaml").read_text().splitlines()[0]
    assert """'overrides=["trainer=gpu","spec.gamma=3"]'""" in header


# --- signals: a real evaluation of a tiny random pair ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A 2-layer random Llama with the embedded tokenizer's vocabulary: real decoding, fast."""
    from conftest import build_tiny_llama
    from transformers import AutoTokenizer

    from specfair.models import embedded_folder

    folder = tmp_path_factory.mktemp("pair") / "tiny"
    build_tiny_llama(0, vocab=49152, layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_folder()).save_pretrained(folder)
    return folder


def tiny_args(pair) -> list[str]:
    return [f"pair.target={pair}", "draft.num_layers=1", "dataset.per_category=2", "spec.max_new_tokens=16",
            "baseline=false", "seed=3"]  # fmt: skip


def default_signals():
    """In the child: SIGINT and SIGTERM as a terminal would deliver them (not ignored by a background parent)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def signal_when(cmd, ready, signum, timeout=500):
    """Start `cmd`, send `signum` once `ready()` holds; (exit status, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=default_signals)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()[-3000:]
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@pytest.mark.slow  # three tiny evaluations, ~1 min on 2 loaded cores
def test_sigterm_stops_the_run_keeping_its_records_and_the_rerun_resumes(tiny_pair, tmp_path):
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    out = subprocess.run(
        command(ref, *tiny_args(tiny_pair)), capture_output=True, text=True, timeout=600, cwd="/"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cmd = command(stopped, *tiny_args(tiny_pair))
    partial = stopped / "samples.rank0.partial.jsonl"
    status, stderr = signal_when(cmd, lambda: partial.is_file() and partial.read_text().count("\n") >= 1,
                                 signal.SIGTERM)  # fmt: skip
    assert status == 128 + signal.SIGTERM, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert (
        errors[0].startswith("error: SIGTERM: stopped; the ")
        and "rerun the same command to resume" in errors[0]
    )
    assert not (stopped / "summary.json").exists() and not (stopped / "samples.jsonl").exists()
    kept = partial.read_text().count("\n")
    assert 1 <= kept < 8
    assert (stopped / "error.txt").read_text().startswith("SIGTERM: stopped")

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {kept} of 8" in again.stdout + again.stderr
    assert not (stopped / "error.txt").exists()
    assert_same_counters(stopped, ref)


@pytest.mark.slow  # one start-up (imports, model load), ~15 s on 2 loaded cores
def test_ctrl_c_while_the_models_load_is_one_line(tiny_pair, tmp_path):
    out = tmp_path / "run"
    status, stderr = signal_when(command(out, *tiny_args(tiny_pair)), lambda: (out / ".hydra").is_dir(),
                                 signal.SIGINT)  # fmt: skip
    assert status == 128 + signal.SIGINT, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: SIGINT: stopped before any result was written"], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not (out / "summary.json").exists()


@pytest.mark.slow  # one tiny evaluation
def test_a_multirun_with_one_failed_job_runs_the_others_reports_and_exits_2(tiny_pair, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "spec.gamma=0,2", *tiny_args(tiny_pair), "logger=none",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 multirun job(s) failed (first: ") and "spec.gamma=0" in last
    assert len(list(sweep.glob("*/summary.json"))) == 1  # the other job ran
    report = json.loads((sweep / "report.json").read_text())
    assert len(report["failed"]) == 1 and "spec.gamma=0" in report["failed"][0]["why"]


def test_a_stopped_experiment_passes_sigterm_to_its_step_and_waits_for_it(tmp_path):
    """The step gets SIGTERM and time to stop cleanly (an evaluation writes its error line, keeps its records)."""
    from specfair.experiment import run_child

    done = tmp_path / "stopped-cleanly"
    child = (
        "import signal, sys, time, pathlib\n"
        f"def stop(*_): pathlib.Path({str(done)!r}).write_text('yes'); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(tmp_path / 'started')!r}).write_text('')\n"
        "time.sleep(60)\n"
    )

    def interrupt(*_):  # the experiment's own Ctrl-C, once its step runs
        if not (tmp_path / "started").exists():
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            run_child([sys.executable, "-c", child], grace_s=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (tmp_path / "started").exists() and done.read_text() == "yes"
