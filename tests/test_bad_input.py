"""Every bad input a user can type ends in one `error:` line naming the file, field or option, exit status 2, and no
traceback. The table below is also the README's troubleshooting section.

The commands run in this process (runpy, as `python evaluate.py ...` would) to keep 40+ cases fast; the
subprocess form, with its real exit status and stderr, is checked on a few of them at the end.
"""

import json
import random
import subprocess
import sys

import pytest
from conftest import run_in_process

from specfair import ROOT

# (command, arguments, what the one line must say); FILES/... is the `bad_files` folder
CASES = [
    # draft=eagle: its training settings and its head's folder, before any model loads or in one line after
    (
        "train",
        ["draft=eagle", "train=eagle", "train.eagle.unroll=0"],
        "train.eagle.unroll=0: expected an integer >= 1",
    ),
    (
        "train",
        ["draft=eagle", "train.eagle.step_decay=0"],
        "train.eagle.step_decay=0: expected a number in (0, 1]",
    ),
    (
        "evaluate",
        ["draft=eagle", "draft.path=bad/nohead", "mode=replay"],
        "draft.path=bad/nohead: no such folder",
    ),
    # spec: types and ranges, before any model loads
    ("evaluate", ["spec.gamma=abc"], "spec.gamma='abc': expected an integer >= 1"),
    ("evaluate", ["spec.gamma=0"], "spec.gamma=0: expected an integer >= 1"),
    ("evaluate", ["spec.gamma=4.5"], "spec.gamma=4.5: expected an integer"),
    ("evaluate", ["spec.max_new_tokens=-1"], "spec.max_new_tokens=-1"),
    ("evaluate", ["spec.temperature=-0.5"], "spec.temperature=-0.5: expected a number >= 0"),
    ("evaluate", ["spec.top_p=1.5"], "spec.top_p=1.5: expected a number in (0, 1]"),
    ("evaluate", ["spec.top_k=0"], "spec.top_k=0"),
    ("evaluate", ["mode=replay", "spec.batch_size=0"], "spec.batch_size=0"),
    ("evaluate", ["spec.gamma=[1,2"], "no viable alternative"),
    ("evaluate", ["spec.foo=1"], "spec.foo: no such option"),
    # run options
    ("evaluate", ["mode=sample"], "mode='sample': expected one of decode, replay"),
    ("evaluate", ["seed=-1"], "seed=-1: expected an integer >= 0"),
    ("evaluate", ["resume=maybe"], "resume='maybe'"),
    ("evaluate", ["mode=replay", "compare_to=FILES/nowhere"], "FILES/nowhere: no summary.json there"),
    ("evaluate", ["compare_to=FILES"], "compare_to=FILES: only a greedy replay"),
    # datasets
    ("evaluate", ["dataset=nope"], "Could not find 'dataset/nope'; Available options in 'dataset': agnews"),
    ("evaluate", ["+dataset.catgory_field=label"], "dataset.catgory_field: unknown key"),
    ("evaluate", ["dataset.per_category=0"], "dataset.per_category=0: expected an integer >= 1"),
    ("evaluate", ["dataset.prompt_tokens=many"], "dataset.prompt_tokens='many'"),
    ("evaluate", ["dataset.imbalance.profile=linear"], "dataset.imbalance.profile='linear'"),
    ("evaluate", ["dataset=local"], "dataset.path: required with dataset.source=local"),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/none.jsonl"],
        "dataset.path=FILES/none.jsonl: no such file",
    ),
    ("evaluate", ["dataset=local", "dataset.path=FILES/binary.jsonl"], "FILES/binary.jsonl: not UTF-8 text"),
    ("evaluate", ["dataset=local", "dataset.path=FILES/cut.jsonl"], "FILES/cut.jsonl:2: malformed JSON line"),
    ("evaluate", ["dataset=local", "dataset.path=FILES/rows.txt"], "FILES/rows.txt: expected .jsonl, .csv"),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/binary.csv"],
        "FILES/binary.csv: cannot read it as csv",
    ),
    # models and checkpoints
    ("evaluate", ["pair.dtype=fp8"], "pair.dtype='fp8': expected one of auto, float32"),
    ("evaluate", ["pair.target=FILES/no-model"], "pair.target=FILES/no-model: no such folder"),
    ("evaluate", ["draft.num_layers=0"], "draft.num_layers=0: expected an integer >= 1"),
    ("evaluate", ["draft.num_layers=99"], "draft.num_layers=99 must be between 1 and the target's 30 layers"),
    ("evaluate", ["draft.path=FILES/empty"], "draft.path=FILES/empty holds no model"),
    (
        "evaluate",
        ["draft.path=FILES/corrupt"],
        "draft.path=FILES/corrupt: cannot load the model (SafetensorError",
    ),
    ("evaluate", ["draft.path=FILES/alien"], "draft.path=FILES/alien: cannot load the model"),
    ("evaluate", ["draft.path=FILES/small-vocab"], "draft scores 8 tokens but the tokenizer has 49152"),
    # cheaper drafts (issue 14)
    (
        "evaluate",
        ["draft.vocab_size=60000"],
        "draft.vocab_size=60000: must be between 1 and the vocabulary size 49152",
    ),
    ("evaluate", ["draft.quantize=int4"], "draft.quantize='int4': expected one of int8"),
    ("evaluate", ["spec.confidence_threshold=1.5"], "spec.confidence_threshold=1.5: expected"),
    (
        "evaluate",
        ["mode=replay", "spec.confidence_threshold=0.5"],
        "spec.confidence_threshold: replay does not model early-ended blocks",
    ),
    ("evaluate", ["mode=replay", "spec.gamma=auto"], "spec.gamma=auto: replay has no wall-clock costs"),
    ("evaluate", ["spec.gamma=fast"], "spec.gamma='fast': expected an integer >= 1 or one of auto"),
    # hardware and folders
    ("evaluate", ["trainer=gpu"], "trainer.accelerator=gpu: no CUDA GPU on this machine"),
    ("evaluate", ["trainer.devices=0"], "trainer.devices=0: expected an integer >= 1"),
    ("evaluate", ["+trainer.max_gpus=2"], "trainer.max_gpus: not an argument of lightning's Trainer"),
    (
        "evaluate",
        ["mode=replay", "paths.cache_dir=FILES/binary.jsonl/cache"],
        "paths.cache_dir=FILES/binary.jsonl",
    ),
    ("evaluate", ["hydra.run.dir=FILES/binary.jsonl/run"], "FILES/binary.jsonl"),
    ("evaluate", ["logger.mode=onlin"], "logger.mode='onlin': expected one of online, offline, disabled"),
    # training
    ("train", ["train.optimizer.lr=-1"], "train.optimizer.lr=-1: expected a number > 0"),
    ("train", ["train.optimizer.lr=0"], "train.optimizer.lr=0: expected a number > 0"),
    ("train", ["train.batch_size=0"], "train.batch_size=0: expected an integer >= 1"),
    ("train", ["train.max_steps=-5"], "train.max_steps=-5: expected an integer >= 1"),
    ("train", ["train.divergence=kl"], "train.divergence='kl': expected one of fkl, rkl, jsd, tvd"),
    ("train", ["train.kd_weight=2"], "train.kd_weight=2: expected a number in [0, 1]"),
    ("train", ["train.sampling=fair"], "train.sampling='fair'"),
    (
        "train",
        ["train.data=target", "train.on_policy_fraction=0.5"],
        "on-policy batches need train.data=text",
    ),
    ("train", ["ckpt_path=FILES/none.ckpt"], "ckpt_path=FILES/none.ckpt: no such checkpoint"),
    ("train", ["ckpt_path=FILES/binary.jsonl"], "ckpt_path=FILES/binary.jsonl: not a checkpoint"),
    ("train", ["trainer=gpu"], "trainer.accelerator=gpu: no CUDA GPU"),
    # experiments and the report
    ("experiment", ["experiment=nope"], "Could not find 'experiment/nope'"),
    ("report", ["FILES/empty"], "no runs found"),
    ("report", ["FILES/nowhere"], "FILES/nowhere does not exist"),
    ("report", ["FILES/corrupt-summary"], "FILES/corrupt-summary/summary.json: not valid JSON"),
    ("report", ["FILES/binary-summary"], "FILES/binary-summary/summary.json: not UTF-8 text"),
    # issue 30: summaries and records of the wrong shape, experiment options
    ("report", ["FILES/version-string"], "summary.json version must be an integer >= 0, got '1'"),
    (
        "report",
        ["FILES/draft-string"],
        "FILES/draft-string/summary.json: summary.json field 'draft' must be a JSON",
    ),
    ("report", ["FILES/empty-samples"], "FILES/empty-samples/samples.jsonl: empty"),
    (
        "report",
        ["FILES/short-samples"],
        "FILES/short-samples/samples.jsonl: 1 records, but summary.json counts 2",
    ),
    ("experiment", ["experiment=q1", "dry_run=maybe"], "dry_run='maybe': expected true or false"),
    (
        "experiment",
        ["experiment=q1", "overrides=[trainer=gpu]"],
        "overrides: cannot parse 'overrides=[trainer=gpu]'",
    ),
    ("experiment", ["experiment=q1", "overrides=gpu"], "overrides='gpu': expected a list of settings"),
    # issue 30: values out of range where the schema declares them (before any model loads)
    (
        "evaluate",
        ["spec.temperature=inf"],
        "spec.temperature=inf: not a finite number; expected a number >= 0",
    ),
    ("evaluate", ["spec.temperature=nan"], "spec.temperature=nan: not a finite number"),
    ("evaluate", ["spec.top_p=inf"], "spec.top_p=inf: not a finite number"),
    ("evaluate", ["dataset.imbalance.ratio=inf"], "dataset.imbalance.ratio=inf: not a finite number"),
    ("evaluate", ["seed=1180591620717411303424"], "seed=1180591620717411303424: beyond 64 bits"),
    ("evaluate", ["seed=4294967296"], "seed=4294967296: expected an integer >= 0, at most 4294967295"),
    ("evaluate", ["spec.gamma=1180591620717411303424"], "spec.gamma=1180591620717411303424: beyond 64 bits"),
    (
        "evaluate",
        ["spec.max_new_tokens=9000"],
        "spec.max_new_tokens=9000 + spec.gamma=4 leaves no room for a prompt in the target's 8192-token context",
    ),
    ("evaluate", ["spec.gamma=8190"], "spec.max_new_tokens=32 + spec.gamma=8190 leaves no room for a prompt"),
    (
        "evaluate",
        ["spec.gamma=auto", "spec.gamma_max=9000"],
        "spec.gamma_max=9000 leaves no room for a prompt",
    ),
    ("evaluate", ["~spec.gamma"], "spec.gamma: required, but missing (deleted with ~spec.gamma?)"),
    ("evaluate", ["~spec.max_new_tokens"], "spec.max_new_tokens: required, but missing"),
    ("evaluate", ["~dataset.prompt_tokens"], "dataset.prompt_tokens: required, but missing"),
    ("evaluate", ["~dataset.imbalance.head"], "dataset.imbalance.head: required, but missing"),
    ("evaluate", ["~seed"], "seed: required, but missing"),
    ("train", ["~train.optimizer.lr"], "train.optimizer.lr: required, but missing"),
    ("train", ["train.optimizer.lr=inf"], "train.optimizer.lr=inf: not a finite number"),
    (
        "train",
        ["train.corpus.seed=4294967296"],
        "train.corpus.seed=4294967296: expected an integer >= 0, at most 4294967295",
    ),
    (
        "evaluate",
        ["dataset.label_names=[World,World,Business,Sci/Tech]"],
        "dataset.label_names=['World', 'World', 'Business', 'Sci/Tech']: expected a non-empty list of distinct",
    ),
    (
        "evaluate",
        ["dataset.text_field=[1,2]"],
        "dataset.text_field=[1, 2]: expected a string or a non-empty list",
    ),
    (
        "evaluate",
        ["dataset.imbalance.head=99"],
        "dataset.imbalance.head=99: an index of the 4 categories is 0 to 3",
    ),
    (
        "evaluate",
        ["dataset.imbalance.head=rotate", "dataset.imbalance.rotation=4", "dataset.imbalance.ratio=2"],
        "dataset.imbalance.rotation=4: an index of the 4 categories is 0 to 3",
    ),
    (
        "evaluate",
        ["dataset.prompt_template=Summary:"],
        "dataset.prompt_template='Summary:': expected {text} exactly",
    ),
    (
        "evaluate",
        ["dataset.prompt_template='{text} {text}'"],
        "expected {text} exactly once (where the text goes), found 2",
    ),
    (
        "evaluate",
        ["dataset.prompt_template='{text} {topic}'"],
        "{topic} is not a field; a prompt template has only",
    ),
    (
        "evaluate",
        ["dataset.prompt_template='{text} {target}'"],
        "{target} is the reference, for train_template",
    ),
    (
        "train",
        ["dataset.train_template='{text} {summary}'"],
        "unknown field {summary}; expected {text} and {target}",
    ),
    ("train", ["dataset.train_template='{text'"], "dataset.train_template='{text': not a template"),
    ("train", ["dataset.train_template='{text}}'"], "not a template (Single '}' encountered"),
    (
        "evaluate",
        ["dataset.hub=null", "dataset.source=hub"],
        "dataset.hub=null: dataset.source=hub needs the hub",
    ),
    (
        "evaluate",
        ["dataset=dolly", "dataset.hub=null"],
        "dataset.hub=null: dataset=dolly has neither a hub dataset",
    ),
    ("evaluate", ["dataset.hub=5"], "dataset.hub=5: expected null or a mapping {id, eval_split"),
    (
        "evaluate",
        ["dataset=dolly", "dataset.source=bundled"],
        "dataset.source=bundled: dataset=dolly ships no",
    ),
    ("evaluate", ["dataset.bundled=FILES/none.jsonl"], "dataset.bundled=FILES/none.jsonl: no such file"),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/split.jsonl", "dataset.train_path=FILES/none.jsonl"],
        "dataset.train_path=FILES/none.jsonl: no such file",
    ),
    # issue 30: waiting on other processes
    ("evaluate", ["trainer.num_nodes=2"], "trainer.num_nodes=2: no multi-node launch found"),
    ("train", ["trainer.num_nodes=3"], "trainer.num_nodes=3: no multi-node launch found"),
    # issue 30: every data row checked on load, before any model loads
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/num-text.jsonl"],
        "FILES/num-text.jsonl:3: field 'text' is 5 (an integer); expected a string",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/dict-text.jsonl"],
        "FILES/dict-text.jsonl:2: field 'text' is {'body': 'x'} (a dict); expected a string",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/turn-number.jsonl"],
        "FILES/turn-number.jsonl:2: field 'text' is a list whose first turn is 3 (an integer)",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/split.jsonl", "dataset.target_field=summary"],
        "FILES/split.jsonl:2: field 'summary' is 7 (an integer); expected a string",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/list-cat.jsonl"],
        "FILES/list-cat.jsonl:2: field 'category' is ['a'] (a list); expected one category",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/dict-cat.jsonl"],
        "FILES/dict-cat.jsonl:2: field 'category' is {'a': 1} (a dict); expected one category",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/mixed-cat.jsonl"],
        "FILES/mixed-cat.jsonl:2: field 'category' is 1.0 (a number with a point), but FILES/mixed-cat.jsonl:1 "
        "has 1 (an integer): one type of category per file",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/bool-cat.jsonl"],
        "FILES/bool-cat.jsonl:3: field 'category' is True (true or false), but FILES/bool-cat.jsonl:1 has 1",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/float-label.jsonl", "dataset.label_names=[a,b]"],
        "FILES/float-label.jsonl:1: field 'category' is 1.5; with label_names a label is an index",
    ),
    (
        "evaluate",
        ["dataset.category_field=null"],
        "dataset.category_field=null: name the field holding each row's",
    ),
    (
        "evaluate",
        ["dataset=local", "dataset.path=FILES/split.jsonl", "dataset.split_field=part"],
        "dataset.split_field='part': no row of FILES/split.jsonl has that field",
    ),
    (
        "evaluate",
        [
            "dataset=local",
            "dataset.path=FILES/split.jsonl",
            "dataset.split_field=split",
            "dataset.eval_split_value=test",
        ],
        "dataset.eval_split_value='test': no row of FILES/split.jsonl has split='test' (values found: eval, train)",
    ),
    (
        "evaluate",
        ["draft=lookup", "draft.vocab_size=100"],
        "draft.vocab_size: draft=lookup has no model to prune",
    ),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files a user might point the tools at by mistake: binary, cut short, corrupt, of another model."""
    from conftest import build_tiny_llama
    from transformers import AutoConfig, AutoTokenizer

    from specfair.models import embedded_folder

    root = tmp_path_factory.mktemp("bad")
    noise = random.Random(0).randbytes(4000)
    (root / "binary.jsonl").write_bytes(b"\x9f" + noise)
    (root / "binary.csv").write_bytes(b"\x00\xff" + noise)
    (root / "cut.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b"')
    (root / "rows.txt").write_text("text\n")
    (root / "empty").mkdir()
    rows = [{"text": f"row {i} of a small file", "category": "ab"[i % 2]} for i in range(6)]
    for name, changed in (("num-text", {2: {"text": 5}}), ("dict-text", {1: {"text": {"body": "x"}}}),
                          ("turn-number", {1: {"text": [3, "b"]}}), ("list-cat", {1: {"category": ["a"]}}),
                          ("dict-cat", {1: {"category": {"a": 1}}}), ("mixed-cat", {0: {"category": 1}, 1: {"category": 1.0}}),
                          ("bool-cat", {0: {"category": 1}, 1: {"category": 2}, 2: {"category": True}}),
                          ("float-label", {i: {"category": 1.5} for i in range(6)})):  # fmt: skip
        lines = [json.dumps({**row, **changed.get(i, {})}) + "\n" for i, row in enumerate(rows)]
        (root / f"{name}.jsonl").write_text("".join(lines))
    split = [
        {**row, "split": "eval" if i < 4 else "train", "summary": 7 if i == 1 else "s"}
        for i, row in enumerate(rows)
    ]
    (root / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    small = build_tiny_llama(0)
    small.save_pretrained(root / "small-vocab")
    AutoTokenizer.from_pretrained(embedded_folder()).save_pretrained(root / "small-vocab")
    small.save_pretrained(root / "corrupt")
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download or copy cut short
    config = AutoConfig.for_model("llama", vocab_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64).to_dict()  # fmt: skip
    (root / "alien").mkdir()
    (root / "alien" / "config.json").write_text(json.dumps({**config, "model_type": "not-a-model"}))
    for name, content in (("corrupt-summary", b'{"dataset": '), ("binary-summary", b"\xff\xfe" + noise)):
        (root / name / ".hydra").mkdir(parents=True)
        (root / name / "summary.json").write_bytes(content)
    summary = dict(dataset={"name": "toy", "prompts": 2}, pair={"name": "p"}, draft={"name": "base"}, spec={},
                   seed=0, overall={}, categories={})  # fmt: skip
    row = dict(index=0, id="x", category="a", prompt_ids=[1], output_ids=[2], new_tokens=1, proposed=1,
               accepted=1, blocks=1, rejections=0, accept_lengths=[1], proposed_lengths=[1])  # fmt: skip
    for name, changed, rows in (("version-string", {"version": "1"}, 2), ("draft-string", {"draft": "base"}, 2),
                                ("empty-samples", {}, 0), ("short-samples", {}, 1)):  # fmt: skip
        (root / name).mkdir()
        (root / name / "summary.json").write_text(json.dumps({**summary, **changed}))
        lines = [json.dumps({**row, "index": i, "id": f"x{i}"}) + "\n" for i in range(rows)]
        (root / name / "samples.jsonl").write_text("".join(lines))
    return root


def test_the_table_has_at_least_forty_cases():
    assert len(CASES) >= 40


# a vocab_map.json beside a draft (draft.vocab_size): ids integers, in range, distinct
ID_MAPS = [
    ({"ids": ["5", "1"]}, "ids[0] is '5' (str); expected integer token ids"),
    ({"ids": [5, 1.0]}, "ids[1] is 1.0 (float); expected integer token ids"),
    ({"ids": [True, 2]}, "ids[0] is True (bool); expected integer token ids"),
    ({"ids": [[1], 2]}, "ids[0] is [1] (list)"),
    ({"ids": [3, -1]}, "ids[1]: id -1 is outside the tokenizer's 10 ids"),
    ({"ids": [3, 10]}, "ids[1]: id 10 is outside the tokenizer's 10 ids"),
    ({"ids": [3, 4, 3]}, "ids[2] is 3, which the map already holds"),
    ({"ids": {"0": 1}}, 'not an id map (expected {"ids": [token ids'),
    ([1, 2, 3], "not an id map"),
]


@pytest.mark.parametrize("saved, message", ID_MAPS, ids=[m for _, m in ID_MAPS])
def test_a_bad_vocab_map_is_one_line_naming_the_entry(tmp_path, saved, message):
    from specfair.errors import SpecfairError
    from specfair.vocab import VOCAB_MAP, load_id_map

    (tmp_path / VOCAB_MAP).write_text(json.dumps(saved))
    with pytest.raises(SpecfairError) as err:
        load_id_map(tmp_path, 2, tokens=10)
    assert message in str(err.value) and str(tmp_path / VOCAB_MAP) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("command, args, message", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_error_line_with_exit_status_2(bad_files, one_line_error, command, args, message):
    error = one_line_error(command, *(a.replace("FILES", str(bad_files)) for a in args))
    assert message.replace("FILES", str(bad_files)) in error, error


def test_the_real_command_line_gives_one_line_and_debug_keeps_the_trace(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "spec.gamma=abc",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    ]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/")
    assert (
        plain.returncode == 2
        and plain.stderr.strip() == "error: spec.gamma='abc': expected an integer >= 1 or one of auto"
    )
    assert (
        tmp_path / "error.txt"
    ).read_text().strip() == "spec.gamma='abc': expected an integer >= 1 or one of auto"
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=300, cwd="/")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "SpecfairError" in debug.stderr


def test_a_full_disk_is_one_line_and_keeps_the_old_report(tmp_path, monkeypatch):
    """A simulated ENOSPC while the report writes: one line, exit 2, the previous report.md untouched."""
    import errno

    import specfair.records as records

    (tmp_path / "report.md").write_text("previous report\n")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(records, "write_atomic", full)
    monkeypatch.setattr("specfair.report.write_atomic", full)
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    status, stderr = run_in_process("report", [str(tmp_path / "run"), "--out", str(tmp_path)], tmp_path)
    assert status == 2 and stderr.count("error:") == 1, stderr
    assert "no space left on the device" in stderr and "report.json" in stderr
    assert (tmp_path / "report.md").read_text() == "previous report\n"


def test_wandb_online_without_a_network_falls_back_to_offline_quickly(monkeypatch, caplog):
    import time

    from specfair import tracking

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    assert tracking.run_mode({"mode": "online"}) == "offline"
    assert time.perf_counter() - start < 5
    assert "logging offline" in caplog.text
    assert tracking.run_mode({"mode": "disabled"}) == "disabled"
