#!/usr/bin/env bash
# The GPU checks of issue 15 in one go, as run on a lent H100/H200 (README "GPU"):
#   the gpu-marked tests (engine lossless with and without CUDA graphs, sampling chi-square, evaluate.py and
#   train.py with trainer=gpu), then bench_decoding.py at random-weight SmolLM2 shapes with --compile.
# The machine's image has torch/lightning/transformers; wheels in .whl add hydra, omegaconf, datasets and the
# project's transformers version. SPECFAIR_TOKENIZER: a folder with SmolLM2's tokenizer files.
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export SPECFAIR_TOKENIZER=${SPECFAIR_TOKENIZER:-$PWD/.devcarry/tokenizer}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_replay.py 2>&1 | tee "$OUT/pytest.txt" | tail -25
for pair in "1.7b 135m 4" "360m 135m 4"; do
  set -- $pair
  timeout 150 python3 benchmarks/bench_decoding.py --device cuda --random-weights --shape "$1" --draft-shape "$2" \
    --compile --prompts "$3" --max-new-tokens 64 --repeats 3 --json "$OUT/bench_$1_$2.json" 2>&1 | tee "$OUT/bench_$1_$2.txt" | tail -45
done
