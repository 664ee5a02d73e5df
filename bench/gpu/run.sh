#!/usr/bin/env bash
# One device call for issue 14's first pass, prepared so a lease is not spent typing:
#   here:  bash bench/gpu/wheels.sh
#   run:   command "bash bench/gpu/run.sh", carry [".whl"], timeout_s 600
# Each step has its own time limit and failures do not stop the next step; logs and JSON
# reports land in $OUT (8 files at most come back). Written without a GPU at hand: the first
# lease should expect to fix something here.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/engine-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ENGINE_NO_PROGRESS=1
bash bench/gpu/setup.sh >"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, show the tail
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name exit $?"
    tail -n 15 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, faiss; print(torch.__version__, torch.version.cuda, transformers.__version__, faiss.__version__)"
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

step gpu-tests 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests
step speed-beir-like 170 python3 -m engine bench speed --random-model mistral-7b --synthetic 2000 \
    --device cuda --out "$OUT" --json
step train-step 120 python3 -m train.gpu_step --fit --json
ls -la "$OUT"
