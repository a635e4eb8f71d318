"""The command line: impute, fit, demo, and its handling of user errors."""

import anndata as ad
import numpy as np
import pytest

import spalstf
from spalstf.cli import main

FAST_ARGS = ["--epochs", "2", "--quiet", "--max-time", "30"]


@pytest.fixture()
def files(tiny_pair, tmp_path):
    st, sc = tiny_pair
    st_path, sc_path = tmp_path / "st.h5ad", tmp_path / "sc.h5ad"
    st.write_h5ad(st_path)
    sc.write_h5ad(sc_path)
    return st_path, sc_path, tmp_path


def test_impute_writes_an_h5ad_and_refuses_to_overwrite(files, capsys):
    st_path, sc_path, tmp = files
    out = tmp / "out.h5ad"
    genes = "Gene0003,Gene0001"
    st = ad.read_h5ad(st_path)
    genes = ",".join(list(st.obsm["truth"].columns)[:2])
    args = ["impute", "--st", str(st_path), "--sc", str(sc_path), "--genes", genes,
            "--out", str(out), "--n-steps", "2", "--n-samples", "2", *FAST_ARGS]
    assert main(args) == 0
    result = ad.read_h5ad(out)
    assert list(result.var_names) == genes.split(",")
    assert list(result.obs_names) == list(st.obs_names)
    assert "std" in result.layers and result.uns["spalstf"]["version"] == spalstf.__version__
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_user_errors_exit_2_with_one_line(files, capsys):
    st_path, sc_path, tmp = files
    code = main(["impute", "--st", str(tmp / "missing.h5ad"), "--sc", str(sc_path),
                 "--out", str(tmp / "o.h5ad"), *FAST_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and "missing.h5ad" in err and len(err.strip().splitlines()) == 1
    code = main(["impute", "--st", str(st_path), "--sc", str(sc_path), "--out", str(st_path),
                 "--force", *FAST_ARGS])
    assert code == 2 and "one of the inputs" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "impute", "--st", str(tmp / "missing.h5ad"), "--sc", str(sc_path),
              "--out", str(tmp / "o.h5ad"), *FAST_ARGS])


def test_fit_saves_a_model_that_loads(files):
    st_path, sc_path, tmp = files
    model_dir = tmp / "model"
    assert main(["fit", "--st", str(st_path), "--sc", str(sc_path), "--model-out",
                 str(model_dir), *FAST_ARGS]) == 0
    model = spalstf.load(model_dir)
    st = ad.read_h5ad(st_path)
    assert model.known_genes == list(st.var_names)
    assert model.target_genes == [g for g in ad.read_h5ad(sc_path).var_names
                                  if g not in set(st.var_names)]


def test_demo_fast_writes_the_h5ad_the_png_and_scores(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Pearson r with the simulated truth" in text and "median" in text
    result = ad.read_h5ad(tmp_path / "demo_imputed.h5ad")
    assert np.all(result.X >= 0)
    png = (tmp_path / "demo_imputed.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
