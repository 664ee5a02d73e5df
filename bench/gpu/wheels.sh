#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI): gather into .whl/ (git-ignored) the wheels that the lent GPU
# machine lacks for engine, for Python 3.12 on x86-64. Then every device `run` names ".whl" in `carry`
# and begins with `bash bench/gpu/setup.sh && export PYTHONPATH=/tmp/site:$PWD`.
#
# What the GPU machine has is listed in bench/gpu/present.txt (its image's package list,
# /work/.library/device/KINDS.md); anything in it is not carried. torch, transformers, peft,
# accelerate and sentence-transformers are there already.
#
# faiss: the CPU build (faiss-cpu) travels by default. The only GPU build on PyPI,
# faiss-gpu-cu12, needs CUDA 12's libcublas.so.12 + libcublasLt.so.12 (850 MB unpacked, a 581 MB
# wheel), while the machine's image is CUDA 13 (torch 2.11+cu130): over ten 64 MiB calls before
# any work, more than a 15-minute lease allows. WITH_FAISS_GPU=1 fetches it anyway (pieces are
# split to 60 MiB files under .whl/pieces/, to travel one call each while the machine stays warm).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=.whl
mkdir -p "$OUT"
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# What engine imports on that machine that its image may lack (pyproject's dependencies less the
# model stack already there; deepspeed's own needs named, since deepspeed itself is an sdist).
WANTED=("faiss-cpu>=1.8" "sqlite-utils>=3.37" "pytrec-eval-terrier>=0.5.6" "fastapi>=0.165"
    "uvicorn>=0.29" "pypdf>=4.0" "beautifulsoup4>=4.12" "hjson" "pydantic>=2")
if [ "${WITH_FAISS_GPU:-0}" = 1 ]; then
    WANTED[0]="faiss-gpu-cu12>=1.8"
fi

"$PY" -m pip install --dry-run --ignore-installed --quiet "${PLATFORM_ARGS[@]}" \
    --target "$OUT/.resolve" --report "$OUT/report.json" "${WANTED[@]}"
"$PY" - "$OUT/report.json" bench/gpu/present.txt >"$OUT/missing.txt" <<'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
present = {norm(line.strip()) for line in open(sys.argv[2]) if line.strip()}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if norm(meta["name"]) not in present:
        print(f"{meta['name']}=={meta['version']}")
EOF
"$PY" -m pip download --quiet --no-deps "${PLATFORM_ARGS[@]}" -d "$OUT" -r "$OUT/missing.txt"

# deepspeed ships as an sdist: build a pure-Python wheel (its CUDA ops are JIT-built there by ninja).
if ! ls "$OUT"/deepspeed-*.whl >/dev/null 2>&1; then
    DS_BUILD_OPS=0 "${DEEPSPEED_PYTHON:-.venv/bin/python}" -m pip wheel --quiet --no-deps \
        --no-build-isolation -w "$OUT" "deepspeed>=0.15"
fi
rm -rf "$OUT/.resolve"

if [ "${WITH_FAISS_GPU:-0}" = 1 ]; then
    mkdir -p "$OUT/pieces"
    for wheel in "$OUT"/nvidia_cublas_cu12-*.whl; do
        split -b 60M -d "$wheel" "$OUT/pieces/$(basename "$wheel")."
        mv "$wheel" "$OUT/pieces/"
    done
    echo "large wheels split under $OUT/pieces: carry them a piece a call into /tmp/pieces there"
fi
echo "carry .whl: $(du -sh --exclude=pieces "$OUT" | cut -f1) in $(ls "$OUT"/*.whl | wc -l) wheels"
