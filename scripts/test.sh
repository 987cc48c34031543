#!/usr/bin/env bash
# The test command of the README: installs what it needs, then runs the whole suite
# (slow tests included; `bash scripts/test.sh -m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
UMR_SETUP_BROWSER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# pyflakes rules only: undefined names and unused imports are bugs or dead code
.venv/bin/ruff check --quiet --select F src tests benchmarks samples
# Every server the tests start (Milvus, Ray, the HTTP API, the search page) must be reachable on
# loopback only. Ray's gRPC servers bind every interface and have no option not to, so where this
# machine allows it the suite runs in a network namespace of its own whose only interface is `lo`
# (the tests are offline: HF_HUB_OFFLINE above).
if command -v unshare >/dev/null && command -v ip >/dev/null && unshare --net true 2>/dev/null; then
  exec unshare --net sh -c 'ip link set lo up && exec "$0" "$@"' .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
