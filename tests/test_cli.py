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


def test_checkpoint_and_resume_flags_continue_a_fit(files, capsys):
    st_path, sc_path, tmp = files
    ckpt = tmp / "fit.ckpt"
    base = ["fit", "--st", str(st_path), "--sc", str(sc_path), "--quiet", "--max-time", "30"]
    assert main([*base, "--model-out", str(tmp / "m1"), "--epochs", "1",
                 "--checkpoint", str(ckpt), "--checkpoint-every", "1"]) == 0
    assert ckpt.is_file()
    # The checkpoint is never silently replaced...
    assert main([*base, "--model-out", str(tmp / "m2"), "--epochs", "2",
                 "--checkpoint", str(ckpt)]) == 2
    assert "exists; pass resume=" in capsys.readouterr().err
    # ...but continued from.
    assert main([*base, "--model-out", str(tmp / "m2"), "--epochs", "2",
                 "--checkpoint", str(ckpt), "--resume", str(ckpt)]) == 0
    model = spalstf.load(tmp / "m2")
    assert model.info["resumed_after_epoch"] == 1 and len(model.history) == 2
    assert main([*base, "--model-out", str(tmp / "m3"), "--resume", str(tmp / "nope")]) == 2
    assert "`resume`" in capsys.readouterr().err


def test_fit_refuses_an_existing_model_folder_without_force(files, capsys):
    st_path, sc_path, tmp = files
    (tmp / "model").mkdir()
    args = ["fit", "--st", str(st_path), "--sc", str(sc_path), "--model-out",
            str(tmp / "model"), *FAST_ARGS]
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert list((tmp / "model").iterdir()) == []
    assert main([*args, "--force"]) == 0


def test_training_faults_exit_non_zero_with_one_line(files, capsys, monkeypatch):
    import spalstf.train

    st_path, sc_path, tmp = files
    args = ["impute", "--st", str(st_path), "--sc", str(sc_path), "--out",
            str(tmp / "o.h5ad"), *FAST_ARGS]

    def nan_loss(*a, **k):
        raise FloatingPointError("training loss became nan at epoch 1, step 1")

    monkeypatch.setattr(spalstf.train, "batch_loss", nan_loss)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["spalstf impute: error: training loss became nan at "
                                        "epoch 1, step 1"]
    assert not (tmp / "o.h5ad").exists()

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(spalstf.train, "batch_loss", ctrl_c)
    assert main(args) == 130
    assert capsys.readouterr().err.strip() == "spalstf impute: interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *args])


def test_bad_inputs_on_the_command_line_are_one_line_errors(files, tmp_path, capsys):
    st_path, sc_path, tmp = files
    st = ad.read_h5ad(st_path)
    st.X[0, 0] = np.nan
    bad = tmp / "bad.h5ad"
    st.write_h5ad(bad)
    not_h5ad = tmp / "st.txt"
    not_h5ad.write_text("gene,cell\n")
    truncated = tmp / "truncated.h5ad"
    truncated.write_bytes(st_path.read_bytes()[:2000])
    for st_file, message in ((bad, "NaN or infinite"), (not_h5ad, "expected a .h5ad or .rds"),
                             (truncated, "truncated.h5ad")):
        code = main(["impute", "--st", str(st_file), "--sc", str(sc_path), "--out",
                     str(tmp / "o.h5ad"), *FAST_ARGS])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert main(["impute", "--st", str(st_path), "--sc", str(sc_path), "--out",
                 str(tmp / "o.h5ad"), "--epochs", "0", "--quiet"]) == 2
    assert "`epochs` must be a positive integer; received 0" in capsys.readouterr().err
