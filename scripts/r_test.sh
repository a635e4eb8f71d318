#!/usr/bin/env bash
# Run the testthat suite of the installed R package SpaLSTF against the Python in VENV.
#   bash scripts/r_test.sh [VENV]       (after scripts/r_setup.sh; VENV default .venv)
# Exits non-zero when a test fails; the last line is a summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
export SPALSTF_PYTHON="$VENV/bin/python"
[ -d "$ROOT/../shared/data" ] && export SPALSTF_DATA="$(cd "$ROOT/../shared/data" && pwd)"
cd "$ROOT/r_wrapper/tests"
Rscript -e '
  t0 <- Sys.time()
  res <- testthat::test_dir("testthat", package = "SpaLSTF", load_package = "installed",
                            reporter = testthat::SummaryReporter$new(show_praise = FALSE),
                            stop_on_failure = FALSE)
  df <- as.data.frame(res)
  n_fail <- sum(df$failed) + sum(df$error)
  cat(sprintf("R tests (testthat): %d passed, %d failed, %d skipped, %d warnings in %.0f s\n",
              sum(df$passed), n_fail, sum(df$skipped), sum(df$warning),
              as.numeric(difftime(Sys.time(), t0, units = "secs"))))
  quit(status = if (n_fail > 0) 1L else 0L)
'
