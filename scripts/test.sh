#!/usr/bin/env bash
# The test command of the README: installs what it needs, then runs the whole suite
# (slow tests included; `bash scripts/test.sh -m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
UMR_SETUP_BROWSER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# pyflakes rules only: undefined names and unused imports are bugs or dead code
.venv/bin/ruff check --quiet --select F src tests benchmarks samples
exec .venv/bin/python -m pytest "$@"
