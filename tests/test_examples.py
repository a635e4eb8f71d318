"""The scripts in examples/ run as written: each is run here in a subprocess with its --fast
option (seconds each), so that they cannot rot. The Python examples run from a clone: osmfish.py
reads the paper's pair from ../shared/data (or $SPALSTF_DATA) where it exists and the osmFISH
pair shipped with spalstf where it does not (tested with the data folder hidden); the R
examples read Visium pairs from ../shared/data (not shipped: GPL-3.0) and are skipped where it
is absent, and need Rscript and the installed R package SpaLSTF (bash scripts/r_setup.sh
.venv), skipped, saying which, without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _data_dir() -> Path | None:
    for d in (os.environ.get("SPALSTF_DATA"), ROOT / ".." / "shared" / "data"):
        if d and Path(d).is_dir():
            return Path(d).resolve()
    return None


DATA = _data_dir()


def _env() -> dict[str, str]:
    """This Python and this checkout of spalstf, for Python and for R (reticulate)."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), SPALSTF_PYTHON=sys.executable,
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")


def _run(cmd: list[str], cwd: Path, timeout: int = 600, **env: str) -> str:
    run = subprocess.run(cmd, cwd=cwd, env=dict(_env(), **env), capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


def _python(script: str, *args: str, cwd: Path, **env: str) -> str:
    return _run([sys.executable, str(EXAMPLES / script), *args], cwd, **env)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_example_is_tested():
    tested = {"quickstart.py", "osmfish.py", "cross_validation.py", "seurat_quickstart.R",
              "sce_quickstart.R"}
    assert {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".R")} == tested


def test_quickstart(tmp_path):
    out = _python("quickstart.py", "--fast", cwd=tmp_path)
    assert "Pearson r per gene with the truth: median" in out
    for name in ("spatial.png", "uncertainty.png"):
        assert _is_png(tmp_path / "quickstart_out" / name)
    import anndata

    imputed = anndata.read_h5ad(tmp_path / "quickstart_out" / "imputed.h5ad")
    assert "std" in imputed.layers and imputed.uns["spalstf"]["seed"] == 0


@pytest.mark.parametrize("network", [False, True], ids=["defaults", "network"])
def test_osmfish(tmp_path, network):
    """On the paper's pair where ../shared/data holds it, else on the shipped pair."""
    flags = ["--network"] if network else []
    paper = DATA is not None and (DATA / "osmfish").is_dir()
    path = [str(DATA / "osmfish")] if paper else []
    env = {} if paper else {"SPALSTF_DATA": str(tmp_path / "no_data")}
    out = _python("osmfish.py", *path, "--fast", "--out", "o", *flags, cwd=tmp_path, **env)
    assert "hidden and predicted: " in out and "median Pearson r: " in out
    for name in ("spatial.png", "uncertainty.png"):
        assert _is_png(tmp_path / "o" / name)
    # The loss curve belongs to the network: drawn with it, absent without.
    assert _is_png(tmp_path / "o" / "loss.png") == network
    assert ("network training stopped: " in out) == network
    assert (tmp_path / "o" / "model" / "model.json").is_file()


def test_osmfish_runs_from_a_clone(tmp_path):
    """No data folder anywhere it looks (SPALSTF_DATA set to an empty folder: only it is
    searched): the example runs on the pair shipped with spalstf, and says so."""
    (tmp_path / "empty").mkdir()
    out = _python("osmfish.py", "--fast", "--out", "o", cwd=tmp_path,
                  SPALSTF_DATA=str(tmp_path / "empty"))
    assert out.splitlines()[0] == ("data: the osmFISH example pair shipped with spalstf "
                                   "(spalstf.datasets.osmfish_example(); no data folder found)")
    # --fast takes 300 of the 3405 cells and 500 of the 1000 reference cells
    assert "osmFISH: 300 cells x 33 genes; reference 500 cells x 33 genes" in out
    assert "median Pearson r: " in out
    for name in ("spatial.png", "uncertainty.png"):
        assert _is_png(tmp_path / "o" / name)
    assert (tmp_path / "o" / "model" / "model.json").is_file()


def test_osmfish_says_where_the_data_should_be(tmp_path):
    """A PATH given is read or refused: never replaced by the shipped pair."""
    run = subprocess.run([sys.executable, str(EXAMPLES / "osmfish.py"), "no_such_folder"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "dataset1_spatial_33.h5ad" in run.stderr
    assert "Spatial_count.txt" in run.stderr and "leave PATH out" in run.stderr


def test_cross_validation(tmp_path):
    out = _python("cross_validation.py", "--fast", "--methods", "mean,knn,spalstf",
                  cwd=tmp_path)
    assert "spalstf" in out
    import pandas as pd

    per_gene = pd.read_csv(tmp_path / "cv_out" / "per_gene.csv")
    assert set(per_gene["method"]) == {"mean", "knn", "spalstf"}
    assert set(per_gene["fold"]) == {0, 1}
    assert _is_png(tmp_path / "cv_out" / "metrics.png")


def _r_ready() -> str | None:
    """Why the R examples cannot run here, or None."""
    if shutil.which("Rscript") is None:
        return "R is absent (no Rscript on PATH)"
    check = subprocess.run(["Rscript", "-e", 'quit(status = !requireNamespace("SpaLSTF", '
                            "quietly = TRUE))"], capture_output=True)
    if check.returncode != 0:
        return "the R package SpaLSTF is not installed (bash scripts/r_setup.sh .venv)"
    return None


R_MISSING = _r_ready()


@pytest.mark.skipif(R_MISSING is not None, reason=str(R_MISSING))
@pytest.mark.skipif(DATA is None or not (DATA / "visium_lymph").is_dir(),
                    reason="../shared/data/visium_lymph absent (set SPALSTF_DATA)")
def test_seurat_quickstart(tmp_path):
    out = _run(["Rscript", str(EXAMPLES / "seurat_quickstart.R"),
                str(DATA / "visium_lymph" / "seurat"), "--fast", "--out=o"], tmp_path)
    # the values, their uncertainty and interval are assays; the default stays the measured one
    assert "4 other assays present: SpaLSTF, SpaLSTF.std, SpaLSTF.lower, SpaLSTF.upper" in out
    assert "Active assay: Spatial" in out
    assert f"Python used: {sys.executable}" in out
    assert "wrote o/seurat_quickstart.png" in out  # Seurat's ImageFeaturePlot of both assays
    assert _is_png(tmp_path / "o" / "seurat_quickstart.png")


@pytest.mark.skipif(R_MISSING is not None, reason=str(R_MISSING))
@pytest.mark.skipif(DATA is None or not (DATA / "visium_brain").is_dir(),
                    reason="../shared/data/visium_brain absent (set SPALSTF_DATA)")
def test_sce_quickstart(tmp_path):
    out = _run(["Rscript", str(EXAMPLES / "sce_quickstart.R"), str(DATA / "visium_brain"),
                "--fast", "--out=o"], tmp_path)
    assert "assays(5): logcounts counts std lower upper" in out
    assert "wrote o/sce_quickstart.png" in out  # the map of a gene and of its uncertainty
    assert _is_png(tmp_path / "o" / "sce_quickstart.png")
    assert "spalstf" in out.split("method")[-1]  # the cross-validation table
