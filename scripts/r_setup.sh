#!/usr/bin/env bash
# Set up the R side of spalstf (idempotent; rerun at will).
#   bash scripts/r_setup.sh [VENV]      (VENV: the Python virtualenv, default .venv)
# 1. installs R and the Debian R packages SpaLSTF needs, when missing (apt-get; root or sudo);
# 2. pip-installs the `r` extra (rpy2<3.6) into VENV, and spalstf itself (editable)
#    when VENV cannot import it;
# 3. makes an empty local CRAN-like repository (build/r-repo) so that R CMD check does not
#    look for the unreachable CRAN index (scripts/r_check.sh uses it);
# 4. installs the R package from r_wrapper/ with R CMD INSTALL.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
t0=$(date +%s)

DEBS=(r-base-core r-base-dev r-cran-seurat r-cran-seuratobject r-cran-reticulate r-cran-matrix
      r-bioc-singlecellexperiment r-cran-testthat)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "r_setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "r_setup: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x "$PY" ] || { echo "r_setup: no Python at $PY (create the virtualenv first)" >&2; exit 1; }
"$PY" - <<'PYEOF' || { echo "r_setup: reticulate 1.28 (Debian) needs numpy<2 in the venv" >&2; exit 1; }
import numpy, sys
sys.exit(0 if int(numpy.__version__.split(".")[0]) < 2 else 1)
PYEOF
if ! "$PY" -c "import rpy2.robjects" >/dev/null 2>&1; then
  echo "r_setup: pip install rpy2<3.6"
  "$PY" -m pip install -q "rpy2>=3.5,<3.6"
fi
if ! (cd /tmp && "$PY" -c "import spalstf") >/dev/null 2>&1; then
  echo "r_setup: pip install -e $ROOT (no dependencies)"
  "$PY" -m pip install -q --no-deps -e "$ROOT"
fi

REPO="$ROOT/build/r-repo"
mkdir -p "$REPO/src/contrib"
: > "$REPO/src/contrib/PACKAGES"
printf 'options(repos = c(CRAN = "file://%s"))\n' "$REPO" > "$REPO/Rprofile"

LIB="$(Rscript -e 'cat(.libPaths()[1])')"
if [ ! -w "$LIB" ]; then
  LIB="$(Rscript -e 'cat(path.expand(Sys.getenv("R_LIBS_USER")))')"
  mkdir -p "$LIB"
fi
R CMD INSTALL --no-multiarch -l "$LIB" "$ROOT/r_wrapper" >"$ROOT/build/r-install.log" 2>&1 ||
  { cat "$ROOT/build/r-install.log" >&2; echo "r_setup: R CMD INSTALL r_wrapper failed" >&2; exit 1; }
echo "r_setup: SpaLSTF $(Rscript -e 'cat(as.character(packageVersion("SpaLSTF")))') installed in $LIB ($(( $(date +%s) - t0 )) s)"
