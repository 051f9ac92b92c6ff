import time

import pytest
import torch
from omegaconf import OmegaConf

from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.errors import SpecfairError
from specfair.models import EMBEDDED, check_tokenizers, load_pair, load_tokenizer, truncated_draft


def test_truncated_draft_copies_the_first_layers_and_never_shares_tensors(tiny_llama):
    target = tiny_llama(0, vocab=32, layers=4)
    draft = truncated_draft(target, 2)
    assert draft.config.num_hidden_layers == 2 and target.config.num_hidden_layers == 4
    t_params = dict(target.named_parameters())
    for name, p in draft.named_parameters():
        assert torch.equal(p, t_params[name]), name
        assert p.data_ptr() != t_params[name].data_ptr(), f"{name} shares storage with the target"
    before = target.model.embed_tokens.weight.clone()
    with torch.no_grad():
        draft.model.embed_tokens.weight.add_(1.0)
        draft.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert torch.equal(target.model.embed_tokens.weight, before)


def test_full_depth_draft_reproduces_the_target(tiny_llama):
    target = tiny_llama(0, vocab=32, layers=3)
    draft = truncated_draft(target, 3)
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.allclose(draft(ids).logits, target(ids).logits)
    with pytest.raises(SpecfairError, match="num_layers=4"):
        truncated_draft(target, 4)


def test_real_pair_loads_from_the_cache_quickly(real_pair):
    assert real_pair.target.config.num_hidden_layers == 30
    assert real_pair.draft.config.num_hidden_layers == 4
    assert real_pair.vocab_size == 49152 == len(real_pair.tokenizer)
    start = time.perf_counter()
    pair_cfg = OmegaConf.create({"name": "x", "target": EMBEDDED, "draft": None, "dtype": "float32"})
    again = load_pair(pair_cfg, OmegaConf.create({"num_layers": 4}))
    assert time.perf_counter() - start < 10  # a cached HF folder, not a 12 s GGUF de-quantization
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(again.target(ids).logits, real_pair.target(ids).logits)


@pytest.mark.slow  # evaluate's runs check lossless_mismatches == 0 on the real pair in make test
def test_real_pair_greedy_is_lossless_on_real_prompts(real_pair, agnews_prompts):
    eos = real_pair.tokenizer.eos_token_id
    for prompt in agnews_prompts:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(real_pair.target, ids, max_new_tokens=24, eos_token_id=eos)
        spec, stats = speculative_generate(
            real_pair.target, real_pair.draft, ids, gamma=4, max_new_tokens=24, eos_token_id=eos
        )
        hf = real_pair.target.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24, eos_token_id=eos
        )[:, ids.shape[1] :]
        assert spec.tolist() == plain.tolist() == hf.tolist()
        assert stats.proposed > 0


def test_tokenizer_mismatch_is_a_clear_error(real_pair, tmp_path):
    check_tokenizers(real_pair.tokenizer, real_pair.tokenizer)
    tokens = {"<unk>": 0, "a": 1, "b": 2}
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(tokens, unk_token="<unk>")))
    with pytest.raises(SpecfairError, match="tokenizers differ: id 0 is"):
        check_tokenizers(real_pair.tokenizer, other)


def test_public_pair_path_loads_local_folders_and_checks_tokenizers(real_pair, tmp_path):
    """pair.draft as a local folder (what a hub id resolves to): loaded, tokenizer-checked, decodes losslessly."""
    folder = tmp_path / "draft2"
    small = truncated_draft(real_pair.target, 2)
    small.save_pretrained(folder)
    real_pair.tokenizer.save_pretrained(folder)
    pair_cfg = OmegaConf.create({"name": "x", "target": EMBEDDED, "draft": str(folder), "dtype": "float32"})
    pair = load_pair(pair_cfg, OmegaConf.create({"name": "base", "num_layers": None, "path": None}))
    assert pair.draft.config.num_hidden_layers == 2
    cut = load_pair(pair_cfg, OmegaConf.create({"name": "base", "num_layers": 1, "path": None})).draft
    # draft.num_layers cuts a loaded draft: its first layer, same weights
    assert cut.config.num_hidden_layers == 1
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, pair.draft.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(
        SpecfairError, match=r"draft.num_layers=3 must be between 1 and pair.draft=.*draft2's 2 layers"
    ):
        load_pair(pair_cfg, OmegaConf.create({"name": "base", "num_layers": 3, "path": None}))
    with pytest.raises(SpecfairError, match=r"pair.target=.*nope: no such folder"):
        load_pair(
            OmegaConf.create({"name": "x", "target": str(tmp_path / "nope"), "dtype": "float32"}),
            OmegaConf.create({"num_layers": 4}),
        )


def test_load_tokenizer_names_the_source_on_error(tmp_path):
    with pytest.raises(SpecfairError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))
