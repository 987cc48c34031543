#!/usr/bin/env bash
# The test command of the README: installs what it needs, then runs the whole suite
# (slow tests included; `bash scripts/test.sh -m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
UMR_SETUP_BROWSER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# pyflakes rules only: undefined names and unused imports are bugs or dead code
.venv/bin/ruff check --quiet --select F src tests benchmarks samples scripts docs
# the layers run one way (cli > serve > train | synth > eval > index > rerank > models | data > core),
# no cycle between sibling packages or modules; imports inside functions count (pyproject.toml)
.venv/bin/lint-imports --no-cache --no-logo
# the docs site, as a reader gets it: every page, link, anchor and API reference must resolve
# (offline: no plugin fetches anything); built into a temporary folder, never committed
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site"

# Every server the tests start (Milvus, Ray, the HTTP API, the search page) must be reachable on
# loopback only. Ray's gRPC servers bind every interface and have no option not to, so where this
# machine allows it the suite runs in a network namespace of its own whose only interface is `lo`
# (the tests are offline: HF_HUB_OFFLINE above).
isolated() {
  if command -v unshare >/dev/null && command -v ip >/dev/null && unshare --net true 2>/dev/null; then
    unshare --net sh -c 'ip link set lo up && exec "$0" "$@"' "$@"
  else
    "$@"
  fi
}

# The suite's own -m, if any, narrows the second pass too.
marker=dtype_sensitive
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -m) marker="dtype_sensitive and (${args[i + 1]})" ;;
    -m*) marker="dtype_sensitive and (${args[i]#-m})" ;;
  esac
done

# Pass 1, everything, with families defaulting to float32 on every CPU (UMR_CPU_BF16=0, whatever
# this machine multiplies natively). Pass 2, the tests marked dtype_sensitive (Ray, dtype,
# identity, portability) again with bf16-close families defaulting to bfloat16 (UMR_CPU_BF16=1):
# together they are the suite's result on either kind of CPU. Either pass failing fails the run.
status=0
UMR_CPU_BF16=0 isolated .venv/bin/python -m pytest "$@" || status=$?
echo "== the dtype-sensitive tests again under UMR_CPU_BF16=1 (bf16-close families default to bfloat16)"
second=0
UMR_CPU_BF16=1 isolated .venv/bin/python -m pytest "$@" -m "$marker" || second=$?
# 5 is "no tests collected": an error for the whole suite, expected when the arguments select
# no dtype-sensitive test (bash scripts/test.sh tests/data)
if [ "$second" -eq 5 ] && [ $# -gt 0 ]; then
  echo "(no dtype-sensitive test among the selected ones)"
  second=0
fi
[ "$status" -ne 0 ] && exit "$status"
exit "$second"
