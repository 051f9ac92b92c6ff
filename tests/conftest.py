import contextlib
import io
import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one thread each, and the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # commands a test starts inherit that

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")  # ../shared/data


def build_tiny_llama(seed: int, vocab: int = 8, layers: int = 2, init: float = 0.3) -> LlamaForCausalLM:
    """A random-weight Llama small enough for thousands of generations; a wide init makes it opinionated."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=init,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def perturbed_copy(model, seed: int, scale: float = 0.02, names=("lm_head", "mlp.down_proj")):
    """The model with `scale * randn` added to a few weight matrices: a draft that agrees with it most of
    the time (fully accepted blocks) but not always (rejections)."""
    import copy

    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if any(key in name for key in names):
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return draft


@pytest.fixture(scope="module")
def close_pair():
    """A 32-token random target and a perturbed copy of it as draft (`perturbed_copy`), on CPU."""
    target = build_tiny_llama(3, vocab=32, layers=2)
    return target, perturbed_copy(target, seed=103)


@contextlib.contextmanager
def feeds(**models):
    """{name: [tokens fed per forward call]} while inside: forward pre-hooks on each named model."""
    fed = {name: [] for name in models}
    hooks = [
        model.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: fed[name].append(kwargs["input_ids"].shape[1]),
            with_kwargs=True,
        )
        for name, model in models.items()
    ]
    try:
        yield fed
    finally:
        for hook in hooks:
            hook.remove()


def compose_app_cfg(*overrides, config="evaluate"):
    """The app's config as Hydra composes it, with the run folder pinned (no HydraConfig outside an app)."""
    from hydra import compose, initialize_config_dir

    from specfair import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=["paths.output_dir=/tmp/specfair-compose", *overrides])


@pytest.fixture(scope="session")
def real_pair():
    """The embedded SmolLM2-135M-Instruct target with its 4-layer truncated draft."""
    from omegaconf import OmegaConf

    from specfair.models import EMBEDDED, load_pair

    pair_cfg = OmegaConf.create(
        {"name": "smollm2_135m", "target": EMBEDDED, "draft": None, "dtype": "float32"}
    )
    return load_pair(pair_cfg, OmegaConf.create({"name": "base", "num_layers": 4, "path": None}))


@pytest.fixture(scope="session")
def agnews_prompts(real_pair):
    """Eight real AG News test texts (bundled sample), cut to 32-token prompts."""
    import json

    from specfair import ROOT

    with open(ROOT / "data/samples/agnews.jsonl") as f:
        rows = [json.loads(line) for line in f]
    texts = [r["text"] for r in rows if r["split"] == "eval"][::50][:8]
    return [real_pair.tokenizer(t, add_special_tokens=False)["input_ids"][:32] for t in texts]


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory: `tiny_llama(seed, vocab=8, layers=2, init=0.3)` builds a random-weight Llama."""
    return build_tiny_llama


@pytest.fixture(scope="session")
def compose_cfg():
    """A factory: `compose_cfg(*overrides, config="evaluate")` composes the app's config as Hydra does."""
    return compose_app_cfg


@pytest.fixture(scope="session")
def shared_data():
    """The full real datasets beside the project (../shared/data); tests that need them skip without them."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def run_in_process(command: str, args: list[str], out: Path) -> tuple[int | None, str]:
    """(exit status, stderr) of `python <command>.py ARGS` run here (runpy: no interpreter start-up, no
    second import of torch), with the run folder at `out` and no logger unless given."""
    from specfair import ROOT

    if command == "report":
        argv, target = ["specfair.report", *args], ("module", "specfair.report")
    else:
        argv = [f"{command}.py", *args]
        if not any(a.startswith("logger") for a in args):
            argv.append("logger=none")
        if not any(a.startswith("hydra.run.dir=") for a in args):
            argv.append(f"hydra.run.dir={out}")
        target = ("path", str(ROOT / f"{command}.py"))
    err, status = io.StringIO(), None
    old_argv = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stderr(err):
            if target[0] == "module":
                runpy.run_module(target[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target[1], run_name="__main__")
    except SystemExit as stop:
        status = stop.code
    finally:
        sys.argv = old_argv
    return status, err.getvalue()


@pytest.fixture
def one_line_error(monkeypatch, tmp_path):
    """A factory: `one_line_error(command, *args)` runs the command here, as a user on a single machine would,
    asserts exit status 2 with one `error:` line and no traceback, and returns that line."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("SPECFAIR_DEBUG", raising=False)
    for name in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "MASTER_ADDR"):  # no multi-node launcher
        monkeypatch.delenv(name, raising=False)

    def run(command: str, *args: str) -> str:
        status, stderr = run_in_process(command, list(args), tmp_path / "run")
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert status == 2, stderr[-2000:]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
        assert not (tmp_path / "run" / "summary.json").exists()
        return errors[0]

    return run
