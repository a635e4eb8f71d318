"""The R package SpaLSTF (r_wrapper/) against the Python package.

- its version (the top-level DESCRIPTION) equals spalstf.__version__;
- SpaLSTF::Impute() in R gives the values spalstf.impute() gives in Python on the same data
  (visium_lymph Seurat fixtures, same seed, tiny settings). Needs R with SpaLSTF installed
  (bash scripts/r_setup.sh .venv), rpy2 and the shared data; skipped otherwise.
The testthat suite itself runs with scripts/r_test.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spalstf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "visium_lymph" / "seurat"
GENES = ["CD3E", "MS4A1", "CR2", "CCL19", "HLA_NOT_A_GENE"]
N_SPOTS = 300  # the first spots only, to keep the test short


def _description_field(name: str) -> str:
    for line in (ROOT / "DESCRIPTION").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"DESCRIPTION has no {name} field")


def test_r_package_version_equals_python_version():
    assert _description_field("Package") == "SpaLSTF"
    assert _description_field("Version") == spalstf.__version__
    link = ROOT / "r_wrapper" / "DESCRIPTION"
    assert link.is_symlink() and link.resolve() == (ROOT / "DESCRIPTION").resolve()


def _r_spalstf_installed() -> bool:
    if shutil.which("Rscript") is None:
        return False
    out = subprocess.run(["Rscript", "-e", 'quit(status = !requireNamespace("SpaLSTF", '
                          "quietly = TRUE))"], capture_output=True)
    return out.returncode == 0


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/visium_lymph absent")
@pytest.mark.skipif(not _r_spalstf_installed(), reason="R package SpaLSTF not installed")
def test_r_impute_equals_python_impute(tmp_path):
    pytest.importorskip("rpy2")
    from spalstf.io._rds import read_rds

    out = tmp_path / "st_imputed.rds"
    script = f"""
      st <- readRDS("{DATA / 'st_seurat.rds'}")[, 1:{N_SPOTS}]
      sc <- readRDS("{DATA / 'sc_seurat.rds'}")
      st <- suppressWarnings(SpaLSTF::Impute(st, sc, genes = c({', '.join(repr(g) for g in GENES)}),
                                             epochs = 1, n.steps = 2, n.samples = 2, seed = 0,
                                             verbose = FALSE))
      saveRDS(st, "{out}")
    """
    env = dict(os.environ, SPALSTF_PYTHON=sys.executable)
    run = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    st = read_rds(DATA / "st_seurat.rds")[:N_SPOTS].copy()
    sc = read_rds(DATA / "sc_seurat.rds")
    # the gene absent from the reference is dropped on both sides
    expected = spalstf.impute(st, sc, genes=GENES, epochs=1, n_steps=2, n_samples=2, seed=0,
                              progress=False)
    got = read_rds(out, assay="SpaLSTF", slot="data")
    assert list(got.var_names) == GENES[:4]
    assert list(got.obs_names) == list(st.obs_names)
    assert list(expected.var_names) == GENES[:4]
    np.testing.assert_allclose(np.asarray(got.X), np.asarray(expected.X), rtol=1e-5, atol=1e-5)
    # the uncertainty: an assay of its own, the values of Python's layers["std"]
    std = read_rds(out, assay="SpaLSTF.std", slot="data")
    assert list(std.var_names) == GENES[:4] and list(std.obs_names) == list(st.obs_names)
    np.testing.assert_allclose(np.asarray(std.X), np.asarray(expected.layers["std"]),
                               rtol=1e-5, atol=1e-5)
    # the measured assay is untouched and still the default
    measured = read_rds(out)
    assert (measured.X != st.X).nnz == 0


def _rscript(script: str, cwd: Path, timeout: int = 600) -> str:
    env = dict(os.environ, SPALSTF_PYTHON=sys.executable, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    run = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=timeout)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/visium_lymph absent")
@pytest.mark.skipif(not _r_spalstf_installed(), reason="R package SpaLSTF not installed")
def test_read_rds_is_the_r_packages_converter(tmp_path):
    """One bridge: spalstf.io.read_rds in Python and SeuratToAnnData() in R give the same
    AnnData (the same R code and Python helpers make both)."""
    pytest.importorskip("rpy2")
    import anndata as ad
    import pandas as pd

    from spalstf.io import read_rds

    h5ad = tmp_path / "from_r.h5ad"
    _rscript(f"""
      st <- readRDS("{DATA / 'st_seurat.rds'}")
      SpaLSTF::SeuratToAnnData(st)$write_h5ad("{h5ad}")
    """, tmp_path)
    from_r = ad.read_h5ad(h5ad)
    from_py = read_rds(DATA / "st_seurat.rds")
    assert (from_py.X != from_r.X).nnz == 0
    pd.testing.assert_frame_equal(from_py.obs, from_r.obs)
    pd.testing.assert_index_equal(from_py.var_names, from_r.var_names)
    assert set(from_py.obsm) == set(from_r.obsm) == {"spatial"}
    np.testing.assert_array_equal(from_py.obsm["spatial"], from_r.obsm["spatial"])
    assert from_py.uns["seurat"]["assay"] == from_r.uns["seurat"]["assay"] == "Spatial"
    assert set(from_py.uns) == set(from_r.uns) | {"rds"}


def _readme_r_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```r\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_the_r_quick_start_and_seurat_next_steps():
    blocks = _readme_r_blocks()
    assert len(blocks) >= 2
    assert "Impute(" in blocks[0] and "SpaLSTF.std" in blocks[0]
    assert any("ImageFeaturePlot" in b and "subset(" in b for b in blocks[1:])


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/visium_lymph absent")
@pytest.mark.skipif(not _r_spalstf_installed(), reason="R package SpaLSTF not installed")
def test_readme_r_quick_start_and_seurat_next_steps_run_as_written(tmp_path):
    """The README's R blocks, in order, in one R session started in the project root, as the
    README says (its paths are relative to it); then the objects they made are checked.

    Rscript prints a plot left at top level (the README's ImageFeaturePlot) to ./Rplots.pdf:
    the session's default device is pointed at its temporary folder first, so that the run
    leaves nothing in the project root."""
    stray = ROOT / "Rplots.pdf"
    before = stray.stat().st_mtime_ns if stray.exists() else None
    script = 'grDevices::pdf(file.path(tempdir(), "Rplots.pdf"))\n'
    script += "\n".join(_readme_r_blocks()) + """
      stopifnot(identical(SeuratObject::DefaultAssay(st), "Spatial"),
                all(c("SpaLSTF", "SpaLSTF.std") %in% SeuratObject::Assays(st)),
                identical(colnames(b_rich[["SpaLSTF.std"]]), colnames(b_rich)),
                file.exists(file.path(tempdir(), "CD3E.png")))
      cat("README R blocks ran\n")
    """
    out = _rscript(script, ROOT)
    assert "README R blocks ran" in out
    assert "SpaLSTF.std" in out  # the object printed with its two new assays
    assert (stray.stat().st_mtime_ns if stray.exists() else None) == before
