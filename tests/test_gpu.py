"""The GPU path (issue 15): the engine lossless on CUDA with and without CUDA graphs, speculative sampling
still the target's distribution, and `evaluate.py` / `train.py` with `trainer=gpu` end to end. Skipped
without a CUDA device; run with `pytest -m gpu` on a GPU machine (the README records the last run)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, feeds
from test_engine_mutants import PROMPTS
from test_speculative import chi_square_p, exact_distribution, marginal

from specfair import ROOT
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.static import static_kv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_pair(close_pair):
    return tuple(copy.deepcopy(m).to("cuda") for m in close_pair)  # copies: the CPU fixture stays on CPU


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_greedy_is_lossless_on_cuda(cuda_pair, gamma, compiled):
    target, draft = cuda_pair
    full = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt], device="cuda")
        plain = autoregressive_generate(target, ids, max_new_tokens=48)
        assert torch.equal(autoregressive_generate(target, ids, max_new_tokens=48, compiled=compiled), plain)
        out, stats = speculative_generate(
            target, draft, ids, gamma=gamma, max_new_tokens=48, compiled=compiled
        )
        assert torch.equal(out, plain), f"prompt {prompt}"
        full += sum(a == p for a, p in zip(stats.accept_lengths, stats.proposed_lengths, strict=True))
    assert full > 0


def test_graphs_are_replayed_not_rerun(cuda_pair):
    """After a first generation captured them, later steps replay graphs: the model's Python forward runs only
    for the prefill and the draft's catch-up of a whole prompt."""
    target, draft = cuda_pair
    ids = torch.tensor([PROMPTS[2]], device="cuda")
    speculative_generate(target, draft, ids, gamma=4, max_new_tokens=48, compiled=True)
    with feeds(target=target, draft=draft) as fed:
        _, stats = speculative_generate(target, draft, ids, gamma=4, max_new_tokens=48, compiled=True)
    assert stats.blocks > 5
    assert len(fed["target"]) == 1 and len(fed["draft"]) == 1  # the two prefills; every block step replayed
    kv = static_kv(target, 1, role=0)
    assert kv.use_graphs and set(kv.graphs) <= set(range(1, 9)) and len(kv.graphs) >= 2


@pytest.mark.parametrize("compiled", [False, True])
def test_sampling_preserves_the_target_distribution_on_cuda(compiled):
    target, draft = build_tiny_llama(0).to("cuda"), build_tiny_llama(1).to("cuda")
    prompt, steps, n = [1, 2, 3], 4, 2000
    generator = torch.Generator(device="cuda").manual_seed(1234)
    samples = []
    for _ in range(n):
        out, _ = speculative_generate(
            target, draft, torch.tensor([prompt], device="cuda"), gamma=2, max_new_tokens=steps,
            temperature=1.0, generator=generator, compiled=compiled,
        )  # fmt: skip
        samples.append(tuple(out[0].tolist()))
    target_joint = exact_distribution(target.cpu(), prompt, steps, 1.0, None, None)
    draft_joint = exact_distribution(draft.cpu(), prompt, steps, 1.0, None, None)
    target.cuda(), draft.cuda()
    for positions in [(1,), (2,), (3,), (1, 2)]:
        counts = {}
        for s in samples:
            key = tuple(s[i] for i in positions)
            counts[key] = counts.get(key, 0) + 1
        assert chi_square_p(counts, marginal(target_joint, positions), n) > 1e-3
        assert chi_square_p(counts, marginal(draft_joint, positions), n) < 1e-6


# --- the apps with trainer=gpu -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_pair(tmp_path_factory) -> Path:
    """A random-weight target with the real SmolLM2 tokenizer, saved as a local HF folder (pair.target=...)."""
    from transformers import AutoTokenizer

    source = os.environ.get("SPECFAIR_TOKENIZER")
    if not source:
        from specfair.errors import SpecfairError
        from specfair.models import EMBEDDED, resolve_source

        try:
            source = resolve_source(EMBEDDED)
        except SpecfairError:
            pytest.skip("no tokenizer: set SPECFAIR_TOKENIZER to a folder holding SmolLM2's tokenizer files")
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    model = build_tiny_llama(0, vocab=49152, layers=2, init=0.3)
    model.config.eos_token_id, model.config.bos_token_id = 2, 1
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def run(script, *overrides):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides], capture_output=True, text=True, timeout=600, env=env
    )


PAIR = ["pair.name=tiny", "draft.num_layers=1", "trainer=gpu", "dataset.per_category=2", "logger=none"]


@pytest.mark.parametrize("compiled", ["false", "true"])
def test_evaluate_on_gpu_is_lossless_in_float32(local_pair, tmp_path, compiled):
    """trainer=gpu carries bf16-mixed for training; evaluation must still decode in pair.dtype (float32)."""
    result = run(
        "evaluate.py", f"pair.target={local_pair}", *PAIR, "spec.max_new_tokens=16", f"spec.compile={compiled}",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["device"] == "cuda" and summary["dtype"] == "float32" and summary["dataset"]["prompts"] == 8
    )
    assert summary["lossless_mismatches"] == 0 and summary["spec"]["compile"] == (compiled == "true")


def test_train_on_gpu_in_bf16_mixed(local_pair, tmp_path):
    result = run(
        "train.py", f"pair.target={local_pair}", *PAIR, "train.max_steps=3", "train.batch_size=2",
        "train.max_length=24", "train.val_every=2", f"paths.ckpt_dir={tmp_path / 'ckpts'}",
        f"hydra.run.dir={tmp_path / 'train'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and 0 <= summary["val_after"]["expected_alpha"] <= 1
    assert "bf16-mixed" in (tmp_path / "train" / ".hydra" / "config.yaml").read_text()
