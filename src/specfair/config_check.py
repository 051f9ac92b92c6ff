"""Start-up checks of the composed config: the typed schema of `spec`, `dataset`, `train`, `draft`, `pair`,
`trainer` and `logger`.

Hydra refuses an override of a key that does not exist, but not a wrong type (`spec.gamma=abc`), a value out of
range (`train.optimizer.lr=-1`), a misspelt key in a user's own config file, or hardware that is not there
(`trainer=gpu` without a GPU). Those used to surface as a traceback deep inside torch or Lightning, after the
models had loaded; here each is one line naming the key and what was expected, before anything loads.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from specfair.errors import SpecfairError

Check = tuple[str, Callable[[Any], bool]]  # (what was expected, the test)
INT64 = (-(1 << 63), (1 << 63) - 1)  # what torch, numpy and every integer field of a summary hold
SEED_MAX = (1 << 32) - 1  # Lightning's seed_everything (numpy's legacy seeding) takes seeds up to this


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer (not a bool) in [lo, hi], and always within 64 bits."""
    what = (
        "an integer" + (f" >= {lo}" if lo is not None else "") + (f", at most {hi}" if hi is not None else "")
    )

    def ok(v):
        if not isinstance(v, int) or isinstance(v, bool) or not INT64[0] <= v <= INT64[1]:
            return False
        return (lo is None or v >= lo) and (hi is None or v <= hi)

    return what, ok


def number(lo: float | None = None, hi: float | None = None, above: bool = False) -> Check:
    """A real number in [lo, hi] (`above`: strictly greater than lo)."""
    if lo is not None and hi is not None:
        what = f"a number in {'(' if above else '['}{lo}, {hi}]"
    elif lo is not None:
        what = f"a number {'>' if above else '>='} {lo}"
    else:
        what = "a number"

    def ok(v):
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return False
        if isinstance(v, int) and not INT64[0] <= v <= INT64[1]:
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


def list_of(check: Check, unique: bool = False) -> Check:
    """A non-empty list whose every item passes `check` (`unique`: no item twice)."""
    what = f"a non-empty list of {'distinct ' if unique else ''}items, each {check[0]}"

    def ok(v):
        if not isinstance(v, list | ListConfig) or not len(v):
            return False
        items = list(v)
        return all(check[1](i) for i in items) and (not unique or len({str(i) for i in items}) == len(items))

    return what, ok


def mapping_of(check: Check) -> Check:
    """A mapping whose every value passes `check` (null: none)."""
    what = f"a mapping of names to {check[0]}, or null"

    def ok(v):
        return v is None or (isinstance(v, Mapping | DictConfig) and all(check[1](x) for x in v.values()))

    return what, ok


TEXTS: Check = (
    "a list of strings",
    lambda v: isinstance(v, list | ListConfig) and all(isinstance(t, str) for t in v),
)


def hub_spec(v) -> bool:
    """{id, eval_split, config, train_split}: the `datasets.load_dataset` call of a hub dataset."""
    if v is None:
        return True
    if not isinstance(v, Mapping | DictConfig):
        return False
    if set(v) - {"id", "config", "eval_split", "train_split"}:
        return False
    texts = (v.get("id"), v.get("eval_split"))
    optional_texts = (v.get("train_split"),)
    return (
        all(isinstance(t, str) and t for t in texts)
        and all(t is None or isinstance(t, str) for t in optional_texts)
        and (v.get("config") is None or SCALAR[1](v.get("config")))
    )


HUB: Check = ("null or a mapping {id, eval_split, config, train_split} (id and eval_split strings)", hub_spec)
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
    "eagle": {  # draft=eagle: a new head's shape (a trained head's own comes from its eagle_config.json)
        "layers": integer(1),
        "fusion": one_of("top", "low_mid_top"),
        "hidden_layers": optional(LIST),
    },
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
    "hub": HUB,
    "bundled": optional(TEXT),
    "path": optional(TEXT),
    "train_path": optional(TEXT),
    "split_field": optional(TEXT),
    "eval_split_value": SCALAR,
    "train_split_value": SCALAR,
    "text_field": either(TEXT, list_of(TEXT)),
    "text_join": TEXT,
    "target_field": optional(TEXT),
    "category_field": optional(TEXT),  # null: categories from category_from
    "category_from": optional(one_of("url")),  # url: CNN/DM's sections from each row's URL
    "format": optional(one_of("spec_bench")),  # spec_bench: question files (data/spec_bench.py)
    "full_path": optional(TEXT),  # spec_bench: the full file, used by source=auto when present
    "turns": one_of(1, 2),  # spec_bench: 2 adds each question's second turn
    "task_groups": mapping_of(TEXTS),  # spec_bench: group_by=task folds these categories
    # spec_bench: category or task; cnn_dm (category_from=url): section or source
    "group_by": optional(one_of("category", "task", "section", "source")),
    "section_groups": mapping_of(TEXTS),  # cnn_dm: URL sections folded into groups
    "url_lists": mapping_of(TEXTS),  # cnn_dm: per source, the URL list files
    "min_category_rows": integer(1),
    "label_names": optional(list_of(SCALAR, unique=True)),  # a name twice would merge two categories
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
    "eagle": {  # draft=eagle: the feature head's training (training/eagle.py)
        "unroll": integer(1),
        "feature_weight": number(0),
        "step_decay": number(0, 1, above=True),
        "autocast": optional(one_of("bfloat16")),
        "from_scratch": BOOL,
    },
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
        "seed": integer(0, SEED_MAX),
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
    "seed": integer(0, SEED_MAX),
    "mode": one_of("decode", "replay"),
    "baseline": BOOL,
    "overwrite": BOOL,
    "resume": one_of("auto", True, False),
}
GROUPS = {"spec": SPEC, "draft": DRAFT, "pair": PAIR, "dataset": DATASET, "train": TRAIN, "logger": LOGGER}
# Keys every shipped option of a group has and the code reads unconditionally: deleting one (`~spec.gamma`) is
# refused in one line instead of a KeyError deep inside a run. Options of a group may add keys (draft=lookup's
# `lookup`), never drop these.
DATASET_EXTRAS = ("category_from", "format", "full_path", "turns", "task_groups", "group_by", "section_groups",
                  "url_lists", "min_category_rows")  # fmt: skip  # keys of cnn_dm and spec_bench only
REQUIRED: dict[str, tuple[str, ...]] = {
    "spec": tuple(SPEC),
    "dataset": tuple(k for k in DATASET if k not in DATASET_EXTRAS),  # conf/dataset/_common.yaml's keys
    "dataset.imbalance": tuple(DATASET["imbalance"]),
    "draft": ("name", "num_layers", "path", "vocab_size", "quantize"),
    "pair": tuple(PAIR),
    "train": tuple(TRAIN),
    "train.optimizer": ("lr", "weight_decay"),
    "train.corpus": ("batch_size", "max_new_tokens", "seed", "teacher_k"),  # train=generalist adds the rest
}
TASK_GROUPS = {  # the groups and top-level keys each app reads
    "evaluate": ("seed", "spec", "dataset", "pair", "draft", "trainer", "paths"),
    "train": ("seed", "train", "dataset", "pair", "draft", "trainer", "paths"),
}


def _value(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise SpecfairError(f"{key}: required, but not set (pass {key}=...)") from None
    except OmegaConfBaseException as err:
        culprit = _failing_reference(cfg, key)
        through = f" (through {culprit})" if culprit else ""
        raise SpecfairError(f"{key}: {str(err).splitlines()[0]}{through}") from None
    return value


def _raw(cfg: DictConfig, key: str):
    """A key's value as written (an interpolation unresolved), or None."""
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None
    except OmegaConfBaseException:
        return None


def _failing_reference(cfg: DictConfig, key: str, depth: int = 0) -> str | None:
    """`other='${...}'` when `key` fails to resolve because a key it interpolates does (draft.path through
    draft.seed): the key a user set, named beside the one that failed."""
    raw = _raw(cfg, key)
    if depth > 4 or not isinstance(raw, str):
        return None
    for ref in re.findall(r"\$\{([A-Za-z_][\w.]*)\}", raw):
        try:
            OmegaConf.select(cfg, ref, throw_on_missing=True)
        except OmegaConfBaseException:
            deeper = _failing_reference(cfg, ref, depth + 1)
            return deeper or f"{ref}={_raw(cfg, ref)!r}"
    return None


def out_of_range(key: str, value, what: str) -> None:
    """Numbers no setting accepts, named as such: inf and nan, integers beyond 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecfairError(f"{key}={value}: not a finite number; expected {what}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise SpecfairError(f"{key}={value}: beyond 64 bits; expected {what}")


def check_node(cfg: DictConfig, prefix: str, schema: Schema) -> None:
    node = _value(cfg, prefix)
    if not isinstance(node, DictConfig):
        raise SpecfairError(f"{prefix}={node!r}: expected a mapping of {', '.join(schema)}")
    for key in node:
        if key not in schema and OPEN not in schema and key != "defaults":
            known = ", ".join(k for k in schema if k != OPEN)
            raise SpecfairError(f"{prefix}.{key}: unknown key; expected one of {known}")
    for key in REQUIRED.get(prefix, ()):
        if key not in node:
            check = schema.get(key)
            what = f" ({check[0]})" if isinstance(check, tuple) else ""
            raise SpecfairError(
                f"{prefix}.{key}: required, but missing (deleted with ~{prefix}.{key}?); set it to a value "
                f"instead{what}"
            )
    for key, check in schema.items():
        if key == OPEN or key not in node:
            continue
        if isinstance(check, dict):
            check_node(cfg, f"{prefix}.{key}", check)
            continue
        value = _value(cfg, f"{prefix}.{key}")
        what, ok = check
        out_of_range(f"{prefix}.{key}", value, what)
        try:
            passed = ok(value)
        except OmegaConfBaseException as err:  # an item of a list or mapping that does not resolve
            raise SpecfairError(f"{prefix}.{key}: {str(err).splitlines()[0]}") from None
        if not passed:
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
    if isinstance(num_nodes, int) and num_nodes > 1:  # the first node would wait for the others forever
        launcher = multi_node_launcher()
        if launcher is None:
            raise SpecfairError(
                f"trainer.num_nodes={num_nodes}: no multi-node launch found (no SLURM job, torchrun, or "
                "MASTER_ADDR and NODE_RANK set), so no other node would join; run with trainer.num_nodes=1, or "
                "start every node under SLURM or torchrun"
            )
        nodes = os.environ.get("SLURM_NNODES") if launcher == "SLURM" else None
        if nodes and nodes.isdigit() and int(nodes) != num_nodes:
            raise SpecfairError(
                f"trainer.num_nodes={num_nodes}: this SLURM job has {nodes} node(s) (SLURM_NNODES)"
            )


def check_config(cfg: DictConfig) -> None:
    """Every group the app composed, against its schema; the first problem raises SpecfairError."""
    for key in TASK_GROUPS.get(str(cfg.get("task_name")), ()):
        if key not in cfg:
            raise SpecfairError(f"{key}: required, but missing (deleted with ~{key}?); set it instead")
    for key, check in TOP.items():
        if key in cfg:
            value = _value(cfg, key)
            out_of_range(key, value, check[0])
            if not check[1](value):
                raise SpecfairError(f"{key}={value!r}: expected {check[0]}")
    for group, schema in GROUPS.items():
        if group in cfg:
            check_node(cfg, group, schema)
    if "dataset" in cfg:
        check_dataset_source(cfg)
        check_dataset_file(cfg)
        check_templates(cfg)
        check_spec_bench(cfg)
    if "spec" in cfg and "pair" in cfg:
        check_context(cfg)
    if "trainer" in cfg:
        check_trainer(cfg)


def check_dataset_source(cfg: DictConfig) -> None:
    """`dataset.source` and what it reads: hub=null only where a local file or a bundled sample is read instead;
    a bundled sample that exists."""
    from pathlib import Path

    d = cfg.dataset
    if d.get("category_from") == "url" and d.get("group_by") not in (None, "section", "source"):
        raise SpecfairError(
            f"dataset.group_by={d.group_by!r}: dataset.category_from=url groups by section or source"
        )
    if d.get("format") == "spec_bench" or _value(cfg, "dataset.path"):  # their own files
        return
    source, hub, bundled = (
        _value(cfg, "dataset.source"),
        _value(cfg, "dataset.hub"),
        _value(cfg, "dataset.bundled"),
    )
    if source == "hub" and hub is None:
        raise SpecfairError(
            f"dataset.hub=null: dataset.source=hub needs the hub dataset ({{id, eval_split, ...}}); "
            f"use dataset.source=bundled or dataset.path=FILE for dataset={d.name}"
        )
    if source in ("auto", "bundled") and hub is None and not bundled:
        raise SpecfairError(
            f"dataset.hub=null: dataset={d.name} has neither a hub dataset nor a bundled sample "
            "(dataset.bundled=null); give a file with dataset.path=FILE"
        )
    if source == "bundled" and not bundled:
        raise SpecfairError(
            f"dataset.source=bundled: dataset={d.name} ships no bundled sample (dataset.bundled=null); "
            "expected one of auto, hub, local"
        )
    if bundled and source in ("auto", "bundled") and not Path(bundled).is_file():
        raise SpecfairError(f"dataset.bundled={bundled}: no such file")


def template_fields(template: str) -> list[str]:
    """The `{fields}` of a str.format template; ValueError for an unclosed or stray brace."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def check_templates(cfg: DictConfig) -> None:
    """dataset.prompt_template holds {text} once and no other field (it is cut around {text}, not formatted);
    dataset.train_template is a str.format template of {text} and {target} with balanced braces."""
    for key in ("prompt_template", "train_template"):
        if key not in cfg.dataset:
            continue
        template = _value(cfg, f"dataset.{key}")
        if not isinstance(template, str):
            continue
        shown = f"dataset.{key}={template!r}"
        if key == "prompt_template":
            count = template.count("{text}")
            if count != 1:
                raise SpecfairError(
                    f"{shown}: expected {{text}} exactly once (where the text goes), found {count}"
                )
            rest = template.replace("{text}", "", 1)
            field = re.search(r"\{(\w*)\}", rest)
            if field:
                hint = (
                    " ({target} is the reference, for train_template)" if field.group(1) == "target" else ""
                )
                raise SpecfairError(
                    f"{shown}: {field.group(0)} is not a field; a prompt template has only {{text}}{hint}"
                )
            if rest.count("{") != rest.count("}"):
                raise SpecfairError(f"{shown}: unbalanced braces around {{text}}")
            continue
        try:
            fields = template_fields(template)
            unknown = [f for f in fields if f not in ("text", "target")]
            if not unknown:
                template.format(text="", target="")
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as err:
            raise SpecfairError(
                f"{shown}: not a template ({err}); fields are {{text}} and {{target}}, a literal brace is {{{{ or }}}}"
            ) from None
        if unknown:
            name = "{" + unknown[0] + "}"
            raise SpecfairError(f"{shown}: unknown field {name}; expected {{text}} and {{target}}")


@lru_cache(maxsize=16)
def _target_context(target: str) -> int:
    from specfair.models import context_length, load_config

    return context_length(load_config(target))


def target_context(cfg: DictConfig) -> int:
    """The target's context length, from its config.json (no weights load; read once per target)."""
    return _target_context(str(_value(cfg, "pair.target")))


def check_context(cfg: DictConfig) -> None:
    """spec.max_new_tokens and spec.gamma (gamma_max for auto) leave room for a prompt in the target's context
    (read from its config, before any weights load)."""
    gamma_key = "spec.gamma_max" if _value(cfg, "spec.gamma") == "auto" else "spec.gamma"
    gamma, new = _value(cfg, gamma_key), _value(cfg, "spec.max_new_tokens")
    if not isinstance(gamma, int) or not isinstance(new, int):  # auto without gamma_max: refused later
        return
    context = target_context(cfg)
    if context - new - gamma - 1 < 1:
        raise SpecfairError(
            f"spec.max_new_tokens={new} + {gamma_key}={gamma} leaves no room for a prompt in the target's "
            f"{context}-token context (pair.target={cfg.pair.target}); lower them"
        )


def multi_node_launcher() -> str | None:
    """The launcher that started this process on several nodes, as Lightning's cluster environments detect
    them; None when nothing would start the other nodes' processes."""
    env = os.environ
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "SLURM"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if {"LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"} <= set(env):
        return "LSF"
    if "MASTER_ADDR" in env and ("NODE_RANK" in env or "RANK" in env):
        return "MASTER_ADDR/NODE_RANK"
    return None


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
    train_path = _value(cfg, "dataset.train_path") if "train_path" in cfg.dataset else None
    if train_path and not Path(train_path).is_file():
        raise SpecfairError(f"dataset.train_path={train_path}: no such file")


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
