"""A run's decoding settings (`cfg.spec`), typed and checked in one place.

`spec.gamma=auto` is resolved here, once: `gamma` is then the cap (the most tokens a block may draft: the metric's
positions and the prompt's room depend on it) and `auto` says a policy picks each block's length below it. The
summary records the settings as `record()` writes them (`gamma_auto: true` beside the cap), unchanged from
before this type existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from specfair.errors import SpecfairError

# settings only decode mode reads (replay refuses the last two and ignores static caches)
DECODE_ONLY = ("compile", "confidence_threshold", "gamma_auto")
# settings that change how fast a run goes but not one counter: two runs pair across them
NOT_PAIRED = ("batch_size", "compile")


def check_generation_args(
    *, gamma=1, max_new_tokens=1, temperature=0.0, top_k=None, top_p=None, confidence_threshold=None
) -> None:
    """The engine's preconditions; `DecodingSpec` and the engine's entry points (called from Python) share it."""
    if gamma < 1:
        raise SpecfairError(f"spec.gamma={gamma}: must be >= 1 (tokens drafted per block)")
    if max_new_tokens < 1:
        raise SpecfairError(f"spec.max_new_tokens={max_new_tokens}: must be >= 1")
    if temperature < 0:
        raise SpecfairError(f"spec.temperature={temperature}: must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise SpecfairError(f"spec.top_k={top_k}: must be >= 1 or null")
    if top_p is not None and not 0 < top_p <= 1:
        raise SpecfairError(f"spec.top_p={top_p}: must be in (0, 1] or null")
    if confidence_threshold is not None and not 0 <= confidence_threshold < 1:
        raise SpecfairError(f"spec.confidence_threshold={confidence_threshold}: must be in [0, 1) or null")


@dataclass(frozen=True)
class DecodingSpec:
    """`gamma`: tokens drafted per block, or with `auto` the cap a policy chooses below (spec.gamma_max)."""

    gamma: int = 4
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    confidence_threshold: float | None = None
    auto: bool = False
    compile: bool = False
    batch_size: int = 16  # prompts per replay batch

    def __post_init__(self):
        check_generation_args(
            gamma=self.gamma, max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, confidence_threshold=self.confidence_threshold,
        )  # fmt: skip
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SpecfairError(f"spec.batch_size={self.batch_size}: must be >= 1 (prompts per replay batch)")

    @classmethod
    def from_config(cls, spec: Mapping) -> DecodingSpec:
        """From `cfg.spec` (a plain mapping): `gamma: auto` takes `gamma_max` as the cap."""
        values = dict(spec)
        gamma_max = values.pop("gamma_max", None)
        unknown = set(values) - ({f.name for f in fields(cls)} - {"auto"})
        if unknown:
            raise SpecfairError(f"spec.{min(unknown)}: no such option")
        auto = values.get("gamma") == "auto"
        if auto:
            if not isinstance(gamma_max, int) or gamma_max < 1:
                raise SpecfairError(f"spec.gamma=auto needs spec.gamma_max >= 1, got {gamma_max!r}")
            values["gamma"] = gamma_max
        return cls(**values, auto=auto)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def gamma_option(self) -> str:
        """The option a user sets to change `gamma`: what an error about the cap names."""
        return "spec.gamma_max" if self.auto else "spec.gamma"

    @property
    def sampling(self) -> dict:
        """The settings that pick a token, as the engine's keyword arguments."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def record(self, mode: str = "decode") -> dict:
        """The `spec` of summary.json: replay leaves out static caches, which it does not use."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "auto"}
        if self.auto:
            out["gamma_auto"] = True
        if mode != "decode":
            out.pop("compile")
        return out


def pairing_view(record: Mapping) -> dict:
    """A summary's `spec` reduced to what must agree for two runs to pair prompt by prompt."""
    return {k: v for k, v in record.items() if k not in NOT_PAIRED and v is not None}
