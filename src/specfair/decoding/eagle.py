"""`draft=eagle`: an EAGLE-style feature head (Li et al. 2024; EAGLE-3, Li et al. 2025) as a drafter.

The head reads the target's own hidden states instead of being a language model of its own. For every position
i the target has cached, it takes the pair (the target's features at i, the embedding of token i + 1) and
predicts the target's *final* feature at i + 1, whose logits come from the target's frozen output head:

    g_i  = features_i                         fusion="top": the last state, hidden_states[L] (post final norm)
         = fuse([low_i; mid_i; top_i])        fusion="low_mid_top": three layers, EAGLE-3's 3H -> H projection
    x_i  = fc([embed(token_{i+1}); g_i])      EAGLE-1's 2H -> H input fusion
    f_i+1 = norm(decoder_layers(x_≤i))        `layers` LlamaDecoderLayers of the target's shape, own RMSNorm
    logits_i+1 = lm_head(f_i+1)               the target's head, shared (never copied or saved)

`f` lives where hidden_states[L] lives (after the final norm, where `lm_head` reads), so a predicted feature is fed
back as `g` for the next step of a block, as EAGLE-1 feeds its predicted features and EAGLE-3 its own outputs.
The target's embeddings and head are held by reference, outside the module's parameters: `state_dict()` holds
the head's own weights only, and a checkpoint (`save_head`) stores them with a small config and a fingerprint of
the target they were trained for, checked on `load_head`.

`EagleDrafter` drafts with the head on its own KV cache (one entry per pair): pairs whose features are the
target's real states are kept across blocks; the pairs a block fed with predicted features are rolled back when
the target has verified, and the newly kept positions' real states are fed at the start of the next block (the
catch-up is billed as a draft step, as `ModelDrafter` catches up on the bonus token).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from specfair.decoding.calls import check_window, rollback
from specfair.decoding.kv import cache_kwarg
from specfair.decoding.sampling import Sampling, pick
from specfair.errors import SpecfairError
from specfair.vocab import head_rows

FUSIONS = ("top", "low_mid_top")
CONFIG_FILE = "eagle_config.json"
WEIGHTS_FILE = "eagle_head.safetensors"
FORMAT = "specfair-eagle/1"
FINGERPRINT_KEYS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size",
)  # fmt: skip


# --- config --------------------------------------------------------------------------------------------------


def default_hidden_layers(fusion: str, num_layers: int) -> tuple[int, ...]:
    """The target states a fusion reads (indices into `hidden_states`: 0 the embeddings, L the last, normed).

    top: (L,). low_mid_top: SpecForge's EAGLE-3 choice, the outputs of layers 1, L//2 - 1 and L - 4 (0-based), i.e.
    hidden_states (2, L//2, L-3) (SmolLM2-135M, L = 30: (2, 15, 27)); below 6 layers (1, max(1, L//2), L).
    """
    if fusion == "top":
        return (num_layers,)
    if num_layers >= 6:
        return (2, num_layers // 2, num_layers - 3)
    return (1, max(1, num_layers // 2), num_layers)


@dataclass(frozen=True)
class EagleConfig:
    """What a head is (saved beside its weights): decoder `layers`, the `fusion` of the target's features, and
    the `hidden_layers` it reads (() when building: the fusion's default for the target)."""

    layers: int = 1
    fusion: str = "top"
    hidden_layers: tuple[int, ...] = ()

    def resolved(self, num_layers: int, option: str = "draft.eagle") -> EagleConfig:
        """Checked, with `hidden_layers` filled in for a target of `num_layers` layers."""
        if not isinstance(self.layers, int) or isinstance(self.layers, bool) or self.layers < 1:
            raise SpecfairError(f"{option}.layers={self.layers!r}: expected an integer >= 1")
        if self.fusion not in FUSIONS:
            raise SpecfairError(f"{option}.fusion={self.fusion!r}: expected one of {', '.join(FUSIONS)}")
        layers = tuple(int(i) for i in self.hidden_layers) or default_hidden_layers(self.fusion, num_layers)
        if self.fusion == "top" and layers != (num_layers,):
            raise SpecfairError(
                f"{option}.hidden_layers={list(layers)}: fusion=top reads the last state only, [{num_layers}]"
            )
        if self.fusion == "low_mid_top" and len(layers) != 3:
            raise SpecfairError(f"{option}.hidden_layers={list(layers)}: fusion=low_mid_top reads 3 states")
        if any(not 0 <= i <= num_layers for i in layers):
            raise SpecfairError(
                f"{option}.hidden_layers={list(layers)}: indices into the target's hidden states, 0..{num_layers}"
            )
        return EagleConfig(self.layers, self.fusion, layers)

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden_layers": list(self.hidden_layers)}

    @classmethod
    def from_dict(cls, data: dict, option: str) -> EagleConfig:
        unknown = set(data) - {"layers", "fusion", "hidden_layers"}
        if unknown:
            raise SpecfairError(f"{option}: unknown EAGLE config keys {sorted(unknown)}")
        return cls(data.get("layers", 1), data.get("fusion", "top"), tuple(data.get("hidden_layers") or ()))


def layer_config(target_config, layers: int) -> LlamaConfig:
    """A LlamaConfig of the target's shape (width, heads, MLP, norm eps, rotary settings) with `layers` layers."""
    c = target_config
    heads = c.num_attention_heads
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        hidden_act=getattr(c, "hidden_act", "silu"),
        max_position_embeddings=getattr(c, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(c, "rms_norm_eps", None) or 1e-6,
        rope_parameters=getattr(c, "rope_parameters", None),
        attention_bias=False,
        mlp_bias=False,
    )
    config._attn_implementation = getattr(c, "_attn_implementation", None) or "sdpa"
    return config


def target_fingerprint(target: PreTrainedModel) -> str:
    """A hash of the target's shape and of its input and output embeddings (as bfloat16, so a float32 and a
    bfloat16 load of the same weights agree): what a head was trained against."""
    digest = hashlib.sha256()
    shape = {k: getattr(target.config, k, None) for k in FINGERPRINT_KEYS}
    digest.update(json.dumps(shape, sort_keys=True).encode())
    seen = set()
    for module in (target.get_input_embeddings(), target.get_output_embeddings()):
        weight = module.weight.detach()
        if weight.data_ptr() in seen:  # tied
            continue
        seen.add(weight.data_ptr())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.to("cpu", torch.bfloat16).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


# --- the head ------------------------------------------------------------------------------------------------


class EagleHead(nn.Module):
    """A feature head for `target`: its own fusion, decoder layers and norm; the target's embeddings and output
    head by reference (not submodules: never trained, moved or saved with the head)."""

    def __init__(self, target: PreTrainedModel, config: EagleConfig | None = None):
        super().__init__()
        embed, head = target.get_input_embeddings(), target.get_output_embeddings()
        if embed is None or head is None or not hasattr(head, "weight"):
            raise SpecfairError(
                f"draft=eagle: the target ({type(target).__name__}) exposes no embeddings or head"
            )
        self.config = (config or EagleConfig()).resolved(target.config.num_hidden_layers)
        self.layer_config = layer_config(target.config, self.config.layers)
        width = target.config.hidden_size
        n = len(self.config.hidden_layers)
        self.fuse = nn.Linear(n * width, width, bias=False) if self.config.fusion != "top" else None
        self.fc = nn.Linear(2 * width, width, bias=True)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(self.layer_config, i) for i in range(self.config.layers)
        )
        self.norm = LlamaRMSNorm(width, eps=self.layer_config.rms_norm_eps)
        final = getattr(target.get_decoder(), "norm", None) if hasattr(target, "get_decoder") else None
        if isinstance(getattr(final, "weight", None), torch.Tensor) and final.weight.shape == (width,):
            with torch.no_grad():
                self.norm.weight.copy_(final.weight)  # start where the target's last norm is
        self.rotary_emb = LlamaRotaryEmbedding(config=self.layer_config)
        self.shared = (embed, head)  # a tuple: nn.Module registers neither
        self.fingerprint = target_fingerprint(target)
        self._cache_kwarg = cache_kwarg(self.layers[0])
        self.to(device=head.weight.device, dtype=head.weight.dtype)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.shared[0]

    @property
    def lm_head(self) -> nn.Module:
        return self.shared[1]

    def fuse_features(self, features: torch.Tensor) -> torch.Tensor:
        """The target's states [..., len(hidden_layers), H] (as `calls.forward_hidden` returns them) -> g [..., H]."""
        if self.fuse is None:
            return features[..., 0, :]
        return self.fuse(features.flatten(-2))

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.layer_config)

    def forward(
        self,
        features: torch.Tensor | None,
        next_token_ids: torch.Tensor,
        *,
        fused: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted next features [B, T, H] and their logits [B, T or logits_to_keep, rows].

        features [B, T, len(hidden_layers), H]: the target's states of positions p..p+T-1; next_token_ids [B, T]:
        the token after each. Teacher-forced over whole sequences when `cache` is None (causal; right padding is
        safe). `fused` [B, T, H] replaces `fuse_features(features)`: the head's own predicted features, fed back
        (inference, or training-time unrolling). `attention_mask`: 2D padding mask or a prepared 4D mask.
        """
        g = fused if fused is not None else self.fuse_features(features)
        emb = self.embed_tokens(next_token_ids).to(g.dtype)
        x = self.fc(torch.cat([emb, g], dim=-1))
        if position_ids is None:
            start = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(start, start + x.shape[1], device=x.device)[None].expand(
                x.shape[0], -1
            )
        mask = create_causal_mask(
            config=self.layer_config, inputs_embeds=x, attention_mask=attention_mask, cache=cache,
            position_ids=position_ids,
        )  # fmt: skip
        rotary = self.rotary_emb(x, position_ids=position_ids)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=position_ids, position_embeddings=rotary,
                      use_cache=cache is not None, **{self._cache_kwarg: cache})  # fmt: skip
        predicted = self.norm(x)
        logits = self.lm_head(predicted[:, -logits_to_keep:] if logits_to_keep else predicted)
        return predicted, logits

    def unrolled(self, features: torch.Tensor, next_token_ids: torch.Tensor, steps: int):
        """Training-time test (EAGLE-3, HASS; SpecForge's TTT): [(predicted, logits)] for draft steps 1..steps
        of a block starting at every position at once, all [B, T, ...], teacher-forced tokens.

        Step 1 is `forward` over the real features. Step k >= 2 at position p is the k-th proposal of a block whose
        last real pair is p - k + 1: its input is step k-1's prediction at p - 1, and it attends, as on the
        drafter's cache, to the real pairs up to p - k + 1 and to the block's own earlier steps at p - k + 2..p.
        Every step's output at p predicts the same target (the state at p + 1, the token at p + 2); outputs at
        p < k - 1 belong to no block and are to be masked out of a loss (as are right-padded positions).
        """
        batch, width = next_token_ids.shape
        device = next_token_ids.device
        cache = self.new_cache()
        predicted, logits = self(features, next_token_ids, cache=cache)
        outputs = [(predicted, logits)]
        positions = torch.arange(width, device=device)
        p, q = positions[:, None], positions[None, :]
        for k in range(2, steps + 1):
            allowed = [q <= p - k + 1] + [q == p - k + i for i in range(2, k + 1)]  # real keys, steps 2..k
            blocked = ~torch.cat(allowed, dim=1)
            mask = torch.zeros(blocked.shape, dtype=predicted.dtype, device=device)
            mask = mask.masked_fill(blocked, torch.finfo(predicted.dtype).min)[None, None].expand(
                batch, 1, -1, -1
            )
            fed = torch.cat(
                [torch.zeros_like(predicted[:, :1]), predicted[:, :-1]], dim=1
            )  # step k-1 at p - 1
            predicted, logits = self(None, next_token_ids, fused=fed, attention_mask=mask, cache=cache,
                                     position_ids=positions[None].expand(batch, -1))  # fmt: skip
            outputs.append((predicted, logits))
        return outputs


# --- checkpoints ---------------------------------------------------------------------------------------------


def save_head(
    head: EagleHead, path: str | Path, extra: dict | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Write the head's own weights (as `dtype`, else their own: bfloat16 halves a float32 head, ~8 MB for
    SmolLM2-135M's) and its config (with the target's fingerprint) to the folder `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    meta = {"format": FORMAT, "config": head.config.to_dict(), "target_fingerprint": head.fingerprint,
            **(extra or {})}  # fmt: skip
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_head(path: str | Path, target: PreTrainedModel, option: str = "draft.path") -> EagleHead:
    """The head saved at `path`, on the target's device and dtype; one-line errors for a folder that holds no
    EAGLE head, a broken config, missing weights, or a head trained for another target."""
    from safetensors.torch import load_file

    path = Path(path)
    where = f"{option}={path}"
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        raise SpecfairError(
            f"{where}: no such folder (build a head: python train.py train=eagle draft=eagle, or make eagle)"
        )
    if not config_file.is_file():
        raise SpecfairError(
            f"{where}: no {CONFIG_FILE}, so not an EAGLE head (save one with eagle.save_head)"
        )
    try:
        meta = json.loads(config_file.read_text())
        config = EagleConfig.from_dict(meta["config"], where)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise SpecfairError(
            f"{where}: {CONFIG_FILE} is not an EAGLE head config ({type(err).__name__})"
        ) from None
    if meta.get("target_fingerprint") != target_fingerprint(target):
        raise SpecfairError(f"{where}: head trained for another target (target fingerprint differs)")
    if not (path / WEIGHTS_FILE).is_file():
        raise SpecfairError(f"{where}: no {WEIGHTS_FILE} beside {CONFIG_FILE}")
    head = EagleHead(
        target, config.resolved(target.config.num_hidden_layers, f"{where}: {CONFIG_FILE} config")
    )
    state = load_file(str(path / WEIGHTS_FILE), device=str(target.get_output_embeddings().weight.device))
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpecfairError(
            f"{where}: weights do not fit the config: missing {missing}, unexpected {unexpected}"
        )
    return head.eval().requires_grad_(False)


# --- the drafter ---------------------------------------------------------------------------------------------


class EagleDrafter:
    """The `Drafter` over an `EagleHead`: proposes from the target's real feature of the last cached position,
    then from its own predicted features; keeps only real-feature pairs across blocks."""

    name = "eagle"

    def __init__(self, head: EagleHead, target: PreTrainedModel):
        self.head = head
        self.target = target  # replay runs it for the states decoding would have handed over
        self.hidden_layers = tuple(head.config.hidden_layers)
        self.cache: DynamicCache | None = None
        self.real = 0  # pairs in the cache whose features are the target's
        self.pending: torch.Tensor | None = None  # real states not fed yet [k, n, H]
        self.last_real: torch.Tensor | None = None  # the state of the last real pair fed [1, n, H]

    @property
    def rows(self) -> int:
        return head_rows(self.target)

    def reset(self, max_len: int, compiled: bool) -> None:
        """A fresh cache (always dynamic: `spec.compile` is refused by the target's hidden-state pass)."""
        device = self.head.embed_tokens.weight.device
        if self.head.fc.weight.device != device:
            self.head.to(device)
        self.cache = self.head.new_cache()
        self.real, self.pending, self.last_real = 0, None, None

    def _pending(self, hidden: torch.Tensor | None) -> None:
        if hidden is None:
            raise SpecfairError("draft=eagle: the engine handed no target hidden states to the drafter")
        if self.pending is None or not len(self.pending):
            self.pending = hidden
        elif len(hidden):
            self.pending = torch.cat([self.pending, hidden])

    @torch.inference_mode()
    def prefill(self, tokens: list[int], hidden: torch.Tensor | None) -> None:
        """Feed every prompt pair but the last (the first proposal reads it, billed as a draft step)."""
        self._pending(hidden)
        n = len(tokens) - 1
        if len(self.pending) != n:
            raise AssertionError(f"eagle prefill: {len(self.pending)} states for {n} cached positions")
        if n > 1:
            self._feed(self.pending[: n - 1], tokens[1:n])
            self.pending = self.pending[n - 1 :]
            self.real = n - 1

    def _feed(self, states: torch.Tensor, next_tokens: list[int], fused=None) -> torch.Tensor:
        device = self.head.fc.weight.device
        ids = torch.tensor([next_tokens], device=device)
        features = None if states is None else states[None].to(device)
        predicted, logits = self.head(features, ids, fused=fused, cache=self.cache, logits_to_keep=1)
        self.last_logits = logits[0, -1].float()
        return predicted[:, -1:]

    @torch.inference_mode()
    def propose(self, tokens, n, vocab, sampling: Sampling, eos, threshold=None):
        """Up to n tokens: stop after an EOS or after a token the head gave less than `threshold` probability."""
        if n < 1:
            return [], []
        if not len(
            self.pending
        ):  # proposing again after the same context (a cost timing): redo its last pair
            rollback(self.cache, self.real - 1)
            self.real, self.pending = self.real - 1, self.last_real
        k = len(self.pending)
        if self.real + k != len(tokens) - 1:
            raise AssertionError(f"eagle: {self.real} + {k} pairs for a context of {len(tokens)} tokens")
        predicted = self._feed(self.pending, tokens[self.real + 1 :])
        self.real, self.pending, self.last_real = self.real + k, self.pending[k:], self.pending[-1:]
        proposals, dists = [], []
        while True:
            logits = self.last_logits[:vocab]
            token, q = pick(logits, sampling)
            proposals.append(token)
            dists.append(q)
            if len(proposals) == n or token in eos:
                break
            if threshold is not None:
                confidence = float((q if q is not None else torch.softmax(logits, -1))[token])
                if confidence < threshold:
                    break
            predicted = self._feed(None, [token], fused=predicted)
        return proposals, dists

    def kept(self, tokens, hidden: torch.Tensor | None) -> None:
        """Drop the pairs fed with predicted features; the newly kept positions' real states wait for the next
        block's first step."""
        rollback(self.cache, self.real)
        self._pending(hidden)
        if self.real + len(self.pending) != len(tokens) - 1:
            raise AssertionError(f"eagle: {self.real} + {len(self.pending)} states for {len(tokens)} tokens")


def eagle_drafter(target: PreTrainedModel, draft_cfg) -> EagleDrafter:
    """The drafter `draft=eagle` names: the head saved at `draft.path`, for this target; `draft.vocab_size=N`
    scores only the first N ids of the id map saved beside it (the ids its training texts use, most frequent
    first: EAGLE-3's reduced draft vocabulary, here a runtime cut of the shared head, never saved)."""
    if draft_cfg.get("quantize"):
        raise SpecfairError("draft.quantize: not supported for draft=eagle yet (leave it null)")
    if not draft_cfg.get("path"):
        raise SpecfairError("draft=eagle: draft.path is null; it names a trained head's folder")
    head = load_head(draft_cfg.get("path"), target)
    size = draft_cfg.get("vocab_size")
    if size:
        from specfair.vocab import PrunedHead, check_size, load_id_map

        rows = head_rows(target)
        check_size(int(size), rows)
        found = load_id_map(draft_cfg.get("path"), int(size), rows)
        if found is None:
            raise SpecfairError(
                f"draft.vocab_size={size}: no vocab_map.json beside the head at draft.path={draft_cfg.get('path')}"
            )
        head.shared = (head.embed_tokens, PrunedHead(head.lm_head, found[0], rows))
    return EagleDrafter(head, target)


# --- the target's states along whole sequences (replay, training) -----------------------------------------------


def target_states(
    target: PreTrainedModel, sequences: list[list[int]], layers: tuple[int, ...]
) -> list[torch.Tensor]:
    """The target's hidden states at `layers` [len(s), len(layers), H] for each sequence, from one right-padded
    forward (causal attention: every real position's inputs are unchanged by the padding, no mask needed)."""
    width = max(len(s) for s in sequences)
    check_window(target, width, "target")
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
    with torch.inference_mode():
        out = target(
            input_ids=ids.to(target.device), use_cache=False, logits_to_keep=1, output_hidden_states=True
        )
        stacked = torch.stack([out.hidden_states[i] for i in layers], dim=2)  # [B, T, n, H]
    return [stacked[i, : len(s)] for i, s in enumerate(sequences)]
