#!/usr/bin/env bash
# Create .venv (once) and install umr with everything the quick start, the tests and the docs build use.
# torch is pinned to the CPU build that lies on this machine's disk; other versions download GBs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.umr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[all,test,docs]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import umr, torch, transformers" && touch "$stamp"
fi
# the search page's browser test (tests/serve/test_page.py) drives Debian's headless chromium;
# only the test command asks for it (UMR_SETUP_BROWSER=1), the quick start does not need it
if [ "${UMR_SETUP_BROWSER:-0}" = 1 ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup.sh: could not install chromium; the search page's browser test will skip" >&2
fi
