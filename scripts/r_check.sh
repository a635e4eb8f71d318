#!/usr/bin/env bash
# R CMD build + R CMD check --no-manual of r_wrapper/ (after scripts/r_setup.sh), in build/.
#   bash scripts/r_check.sh [VENV]   (tests run against VENV's Python; default .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
export SPALSTF_PYTHON="$VENV/bin/python"
[ -d "$ROOT/../shared/data" ] && export SPALSTF_DATA="$(cd "$ROOT/../shared/data" && pwd)"
export R_PROFILE_USER="$ROOT/build/r-repo/Rprofile"   # empty local CRAN (made by r_setup.sh)
export _R_CHECK_FORCE_SUGGESTS_=false
mkdir -p "$ROOT/build" && cd "$ROOT/build"
R CMD build --no-manual "$ROOT/r_wrapper"
VERSION="$(sed -n 's/^Version: *//p' "$ROOT/DESCRIPTION")"
R CMD check --no-manual "SpaLSTF_${VERSION}.tar.gz"
