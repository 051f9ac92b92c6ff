"""Start-up checks of the composed config: the typed schema of `spec`, `dataset`, `train`, `draft`, `pair`,
`trainer` and `logger`.

Hydra refuses an override of a key that does not exist, but not a wrong type (`spec.gamma=abc`), a value out of
range (`train.optimizer.lr=-1`), a misspelt key in a user's own config file, or hardware that is not there
(`trainer=gpu` without a GPU). Those used to surface as a traceback deep inside torch or Lightning, after the
models had loaded; here each is one line naming the key and what was expected, before anything loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from specfair.errors import SpecfairError

Check = tuple[str, Callable[[Any], bool]]  # (what was expected, the test)


def integer(lo: int | None = None) -> Check:
    what = "an integer" + (f" >= {lo}" if lo is not None else "")
    return what, lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


def number(lo: float | None = None, hi: float | None = None, above: bool = False) -> Check:
    """A real number in [lo, hi] (`above`: strictly greater than lo)."""
    if lo is not None and hi is not None:
        what = f"a number in {'(' if above else '['}{lo}, {hi}]"
    elif lo is not None:
        what = f"a number {'>' if above else '>='} {lo}"
    else:
        what = "a number"

    def ok(v):
        if not isinstance(v, int | float) or isinstance(v, bool) or v != v:
            return False
        low = lo is None or (v > lo if above else v >= lo)
        return low and (hi is None or v <= hi)

    return what, ok


def one_of(*options) -> Check:
    return "one of " + ", ".join(map(str, options)), lambda v: v in options


def optional(check: Check) -> Check:
    what, ok = check
    return f"{what}, or null", lambda v: v is None or ok(v)


def either(*checks: Check) -> Check:
    return " or ".join(w for w, _ in checks), lambda v: any(ok(v) for _, ok in checks)


TEXT: Check = ("a string", lambda v: isinstance(v, str))
BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
LIST: Check = ("a list", lambda v: isinstance(v, list | ListConfig))
MAPPING: Check = ("a mapping", lambda v: isinstance(v, Mapping | DictConfig))
ANY: Check = ("anything", lambda v: True)
SCALAR: Check = (
    "a string or a number",
    lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
)
PROBABILITY = number(0, 1)
Schema = dict[str, "Check | Schema"]
OPEN = "..."  # a schema holding this key accepts other keys too (a `_target_` whose arguments may change)

SPEC: Schema = {
    "gamma": either(integer(1), one_of("auto")),
    "gamma_max": integer(1),
    "max_new_tokens": integer(1),
    "temperature": number(0),
    "top_k": optional(integer(1)),
    "top_p": optional(number(0, 1, above=True)),
    "batch_size": integer(1),
    "compile": BOOL,
    "confidence_threshold": optional(number(0, 1)),
}
DRAFT: Schema = {
    "name": TEXT,
    "num_layers": optional(integer(1)),
    "path": optional(TEXT),
    "trained_on": TEXT,
    "train_name": TEXT,
    "start": TEXT,
    "seed": integer(0),
    "variant": optional(SCALAR),
    "recipe": TEXT,
    "vocab_size": optional(integer(1)),
    "quantize": optional(one_of("int8")),
    "lookup": {"max_ngram": integer(1), "min_ngram": integer(1)},  # draft=lookup: prompt lookup's n-grams
}
PAIR: Schema = {
    "name": TEXT,
    "target": TEXT,
    "draft": optional(TEXT),
    "tokenizer": optional(TEXT),
    "dtype": one_of("auto", "float32", "bfloat16", "float16"),
}
DATASET: Schema = {
    "name": TEXT,
    "source": one_of("auto", "hub", "local", "bundled"),
    "hub": optional(MAPPING),
    "bundled": optional(TEXT),
    "path": optional(TEXT),
    "train_path": optional(TEXT),
    "split_field": optional(TEXT),
    "eval_split_value": SCALAR,
    "train_split_value": SCALAR,
    "text_field": either(TEXT, LIST),
    "text_join": TEXT,
    "target_field": optional(TEXT),
    "category_field": optional(TEXT),  # null: categories from category_from
    "category_from": ANY,
    "format": optional(one_of("spec_bench")),  # spec_bench: question files (data/spec_bench.py)
    "full_path": optional(TEXT),  # spec_bench: the full file, used by source=auto when present
    "turns": one_of(1, 2),  # spec_bench: 2 adds each question's second turn
    "task_groups": optional(MAPPING),  # spec_bench: group_by=task folds these categories
    "group_by": ANY,
    "section_groups": ANY,
    "url_lists": ANY,
    "min_category_rows": integer(1),
    "label_names": optional(LIST),
    "prompt_template": TEXT,
    "train_template": TEXT,
    "chat": BOOL,
    "per_category": integer(1),
    "split_seed": integer(0),  # one-pool datasets: the held-out cut (data/splits.py)
    "held_out": either(integer(1), number(0, 1, above=True)),  # rows per category held out, or a share
    "prompt_tokens": integer(1),
    "train_per_category": optional(integer(1)),
    "imbalance": {
        "ratio": number(1),
        "profile": one_of("exponential", "step"),
        "head": either(integer(0), TEXT),
        "rotation": integer(0),
        "budget": optional(integer(1)),
    },
}
TRAIN: Schema = {
    "name": TEXT,
    "data": one_of("text", "target", "generalist"),
    "teacher": one_of("stored", "target", "cached"),
    "validate_on": one_of("text", "target"),
    "export": TEXT,
    "objective": one_of("kd", "lm"),
    "divergence": one_of("fkl", "rkl", "jsd", "tvd"),
    "beta": PROBABILITY,
    "kd_weight": PROBABILITY,
    "temperature": number(0, above=True),
    "on_policy_fraction": PROBABILITY,
    "sampling": one_of("natural", "balanced", "temperature", "group_dro"),
    "group_dro_step": number(0),
    "sampling_temperature": number(0, above=True),
    "freeze_embeddings": BOOL,
    "max_steps": integer(1),
    "batch_size": integer(1),
    "max_length": integer(2),
    "val_every": integer(1),
    "warmup_steps": integer(0),
    "min_lr_ratio": PROBABILITY,
    "optimizer": {"lr": number(0, above=True), "weight_decay": number(0), OPEN: ANY},
    "corpus": {
        "requests": integer(0),
        "texts": integer(0),
        "request_tokens": integer(1),
        "opening_tokens": integer(1),
        "max_new_tokens": integer(1),
        "top_p": number(0, 1, above=True),
        "teacher_k": integer(1),
        "batch_size": integer(1),
        "val_texts": integer(1),
        "seed": integer(0),
    },
}
LOGGER: Schema = {
    "enabled": BOOL,
    "project": TEXT,
    "entity": optional(TEXT),
    "mode": one_of("online", "offline", "disabled"),
    "group": optional(TEXT),
    "tags": LIST,
}
TOP: Schema = {
    "seed": integer(0),
    "mode": one_of("decode", "replay"),
    "baseline": BOOL,
    "overwrite": BOOL,
    "resume": one_of("auto", True, False),
}
GROUPS = {"spec": SPEC, "draft": DRAFT, "pair": PAIR, "dataset": DATASET, "train": TRAIN, "logger": LOGGER}


def _value(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise SpecfairError(f"{key}: required, but not set (pass {key}=...)") from None
    except OmegaConfBaseException as err:
        raise SpecfairError(f"{key}: {str(err).splitlines()[0]}") from None
    return value


def check_node(cfg: DictConfig, prefix: str, schema: Schema) -> None:
    node = _value(cfg, prefix)
    if not isinstance(node, DictConfig):
        raise SpecfairError(f"{prefix}={node!r}: expected a mapping of {', '.join(schema)}")
    for key in node:
        if key not in schema and OPEN not in schema and key != "defaults":
            known = ", ".join(k for k in schema if k != OPEN)
            raise SpecfairError(f"{prefix}.{key}: unknown key; expected one of {known}")
    for key, check in schema.items():
        if key == OPEN or key not in node:
            continue
        if isinstance(check, dict):
            check_node(cfg, f"{prefix}.{key}", check)
            continue
        value = _value(cfg, f"{prefix}.{key}")
        what, ok = check
        if not ok(value):
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            raise SpecfairError(f"{prefix}.{key}={shown!r}: expected {what}")


def check_trainer(cfg: DictConfig) -> None:
    """Keys the Lightning Trainer takes, and hardware that exists (checked before any model loads)."""
    import inspect

    import torch
    from lightning.pytorch import Trainer

    t = cfg.trainer
    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"} | {"_target_"}
    for key in t:
        if key not in known:
            raise SpecfairError(f"trainer.{key}: not an argument of lightning's Trainer")
    accelerator = str(_value(cfg, "trainer.accelerator") or "auto")
    devices = _value(cfg, "trainer.devices")
    ok_devices = either(integer(1), one_of("auto", -1), LIST)
    if devices is not None and not ok_devices[1](devices):
        raise SpecfairError(f"trainer.devices={devices!r}: expected {ok_devices[0]}")
    if accelerator in ("gpu", "cuda"):
        found = torch.cuda.device_count()
        if not found:
            raise SpecfairError(
                f"trainer.accelerator={accelerator}: no CUDA GPU on this machine; use trainer=default (CPU)"
            )
        if isinstance(devices, int) and devices > found:
            raise SpecfairError(f"trainer.devices={devices}: this machine has {found} GPU(s)")
    num_nodes = _value(cfg, "trainer.num_nodes")
    if num_nodes is not None and not integer(1)[1](num_nodes):
        raise SpecfairError(f"trainer.num_nodes={num_nodes!r}: expected an integer >= 1")


def check_config(cfg: DictConfig) -> None:
    """Every group the app composed, against its schema; the first problem raises SpecfairError."""
    for key, check in TOP.items():
        if key in cfg:
            value = _value(cfg, key)
            if not check[1](value):
                raise SpecfairError(f"{key}={value!r}: expected {check[0]}")
    for group, schema in GROUPS.items():
        if group in cfg:
            check_node(cfg, group, schema)
    if "dataset" in cfg:
        check_dataset_file(cfg)
        check_spec_bench(cfg)
    if "trainer" in cfg:
        check_trainer(cfg)


def check_dataset_file(cfg: DictConfig) -> None:
    """A local dataset names a readable file (checked before the models load)."""
    from pathlib import Path

    path, source = _value(cfg, "dataset.path"), _value(cfg, "dataset.source")
    if source == "local" and not path:
        raise SpecfairError(
            "dataset.path: required with dataset.source=local (a .jsonl, .csv or .parquet file)"
        )
    if path and not Path(path).is_file():
        raise SpecfairError(f"dataset.path={path}: no such file")


def check_spec_bench(cfg: DictConfig) -> None:
    """dataset.format=spec_bench: group_by and turns, the question file itself, and no training without
    dataset.train_path (the benchmark has no training split)."""
    from pathlib import Path

    from specfair.data import spec_bench

    d = cfg.dataset
    turns = _value(cfg, "dataset.turns") if "turns" in d else 1
    if not spec_bench.is_spec_bench(d):
        if turns != 1:
            raise SpecfairError(f"dataset.turns={turns}: only dataset=spec_bench has second turns")
        return
    spec_bench.group_by(d)
    if _value(cfg, "dataset.source") == "hub":
        raise SpecfairError(
            f"dataset.source=hub: dataset={d.name} is not on the hub; expected one of auto, local, bundled"
        )
    training = cfg.get("task_name") == "train" and "train" in cfg and cfg.train.get("data") != "generalist"
    train_path = _value(cfg, "dataset.train_path")
    if training and not train_path:
        raise SpecfairError(
            f"dataset={d.name} has no training split (its questions are evaluation prompts only): train on "
            "another dataset, or give training rows with dataset.train_path=<file> (text or turns, and category)"
        )
    if train_path and not Path(train_path).is_file():
        raise SpecfairError(f"dataset.train_path={train_path}: no such file")
    spec_bench.read_questions(spec_bench.question_file(d)[0])  # a bad question: one line, before models load
