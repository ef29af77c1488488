#!/usr/bin/env bash
# One-command GPU check: tests/gpu, pre-training (BERT-base, seq 128, bf16, MFU), fine-tuning (bf16),
# compaction, 2:4 inference at batch 16 / 64, 50 DeepSpeed ZeRO-2 bf16 steps and an fp16 run of the
# real CLI, in at most 8 minutes on one GPU.  Prints ONE JSON object; exits 1 if any step failed.
#   bash benchmarks/gpu_check.sh              # on a GPU machine after `make install` (CUDA torch)
#   bash benchmarks/gpu_check.sh --dry-run    # every step at a tiny size on the CPU (what the tests run)
# The interpreter: $PYTHON, else the repository's .venv (make install), else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
cd "$repo"
exec "$py" "$here/gpu_check.py" --python "$py" "$@"
