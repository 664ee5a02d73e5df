#!/usr/bin/env bash
# Run THERE, on the lent GPU machine, from the repository root with .whl carried (see wheels.sh):
#   bash bench/gpu/setup.sh && export PYTHONPATH=/tmp/site:$PWD
# then `python3 -m engine ...` and `python3 -m pytest -m gpu` use the image's torch and CUDA.
# Pieces of split wheels already gathered in /tmp/pieces (one carried call each) are joined first.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -d /tmp/pieces ]; then
    for first in /tmp/pieces/*.whl.00; do
        [ -e "$first" ] || continue
        cat "${first%.00}".?? >".whl/$(basename "${first%.00}")"
    done
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:$PWD python3 - <<'EOF'
import faiss, sqlite_utils, torch, transformers
import engine.app.cli  # the whole CLI imports: nothing is missing
print(f"ready: torch {torch.__version__} (cuda {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, faiss {faiss.__version__} "
      f"({faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0} GPUs)")
EOF
