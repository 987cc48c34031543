#!/usr/bin/env bash
# A GPU check of `umr train`: a mid-sized random GME (~165M parameters) trained for a few steps on
# CUDA with --bf16, GradCache, --grad-checkpointing and LoRA; prints the step time, the peak memory
# and the loss, and the memory of the same run without checkpointing. Under 5 minutes on one GPU.
# Exits 2 when CUDA is absent; `--cpu` runs a small model on the CPU instead (no GPU needed).
#   bash scripts/gpu_check.sh [--cpu] [--steps N] [--no-compare] [--keep DIR]
# Python: $PYTHON, else .venv/bin/python, else python3 (umr is imported from src/, nothing installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_check.py "$@"
