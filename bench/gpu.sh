#!/usr/bin/env bash
# Both benchmarks on a CUDA GPU: bf16, and the attention lmtune picks on CUDA (sdpa; flash
# kernels where torch has them). Run from the repo root after `make setup`:
#   bash bench/gpu.sh            # add --quick for a short run
# Both scripts use the GPU when torch sees one (lmtune picks its device itself; the peers
# get use_cpu=False). Peak RSS is host memory; add torch.cuda.max_memory_allocated() per
# child if GPU memory is the question.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
$python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
$python -m pip install -q trl==1.16.0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== bench/classify.py"; $python bench/classify.py "$@"
echo "== bench/sft.py";      $python bench/sft.py "$@"
