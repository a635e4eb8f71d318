#!/usr/bin/env bash
# Every test of the project, for CI and contributors: `make test` runs this.
#   bash scripts/test_all.sh [VENV]     (VENV: the Python virtualenv, default .venv)
# 1. sets up the R side (scripts/r_setup.sh: apt-get as root when R is missing);
# 2. runs the Python suite (pytest) and then the R suite (testthat), each whatever the other
#    gave, so that one failing suite never hides the other's result;
# 3. prints one line per suite and exits non-zero when either failed.
# A Python-only user needs none of this: `make test-python` (no root, no R).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
cd "$ROOT"

r_setup=0
bash scripts/r_setup.sh "$VENV" || r_setup=$?

"$VENV/bin/python" -m pytest -q
python=$?

if [ "$r_setup" = 0 ]; then
  bash scripts/r_test.sh "$VENV"
  r=$?
else
  r=$r_setup
fi

verdict() { if [ "$1" = 0 ]; then echo "passed"; else echo "FAILED (exit $1)"; fi; }
echo
echo "make test: Python suite (pytest) $(verdict $python)"
if [ "$r_setup" = 0 ]; then
  echo "make test: R suite (testthat) $(verdict $r)"
else
  echo "make test: R suite not run: scripts/r_setup.sh $(verdict $r_setup)"
fi
[ "$python" = 0 ] && [ "$r" = 0 ]
