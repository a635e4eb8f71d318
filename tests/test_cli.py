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


def _self_check_line(err):
    lines = [line for line in err.splitlines() if line.startswith("self-check:")]
    assert len(lines) <= 1, err
    return lines[0] if lines else None


def test_self_check_summary_is_printed_and_stored(files, capsys):
    import re

    import h5py

    st_path, sc_path, tmp = files
    out = tmp / "checked.h5ad"
    base = ["impute", "--st", str(st_path), "--sc", str(sc_path), "--n-steps", "2",
            "--n-samples", "2", *FAST_ARGS]
    assert main([*base, "--out", str(out), "--self-check", "on",
                 "--self-check-folds", "2"]) == 0
    captured = capsys.readouterr()
    line = _self_check_line(captured.err)
    assert line is not None and "self-check" not in captured.out, captured
    check = ad.read_h5ad(out).uns["spalstf"]["self_check"]
    n_known = ad.read_h5ad(st_path).n_vars
    assert check["n_genes"] == n_known and sorted(set(check["fold"])) == [0, 1]
    selected = ", ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}"
                         for k, v in check["selected"].items())
    assert "spatial_weight" in check["selected"]  # the tiny ST has obsm["spatial"]
    assert line == (f"self-check: median PCC {check['median_pcc']:.3f}, SPCC "
                    f"{check['median_spcc']:.3f} over {n_known} hidden known genes "
                    f"(selected {selected})")
    assert re.fullmatch(r"self-check: median PCC -?\d\.\d{3}, SPCC -?\d\.\d{3} over \d+ "
                        r"hidden known genes \(selected .+\)", line)
    # --self-check off: no self-check, nothing printed; --no-spatial: no spatial candidates.
    assert main([*base, "--out", str(tmp / "off.h5ad"), "--self-check", "off"]) == 0
    assert _self_check_line(capsys.readouterr().err) is None
    with h5py.File(tmp / "off.h5ad", "r") as f:
        assert "self_check" not in f["uns/spalstf"]
    assert main([*base, "--out", str(tmp / "flat.h5ad"), "--self-check-folds", "2",
                 "--no-spatial"]) == 0
    line = _self_check_line(capsys.readouterr().err)
    selected = ad.read_h5ad(tmp / "flat.h5ad").uns["spalstf"]["self_check"]["selected"]
    assert line is not None and "spatial_weight" not in line and "spatial_weight" not in selected
    # counts: the share of the value at the cell's depth is chosen
    assert "residual_weight=" in line and "depth_weight=" in line
    # --values: the output given is kept, not chosen, nor blended
    assert main([*base, "--out", str(tmp / "depth.h5ad"), "--self-check-folds", "2",
                 "--values", "at_depth"]) == 0
    line = _self_check_line(capsys.readouterr().err)
    given = ad.read_h5ad(tmp / "depth.h5ad").uns["spalstf"]
    assert "output=" not in line and "output" not in given["self_check"]["selected"]
    assert "depth_weight" not in given["self_check"]["selected"]
    assert given["params"]["output"] == "at_depth"


def test_self_check_summary_of_an_in_memory_result():
    from spalstf.cli import _format_self_check, _self_check_summary

    result = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    assert _self_check_summary(result, None, stream=False) is None
    result.uns["spalstf"] = {"self_check": {"median_pcc": 0.2134, "median_spcc": 0.2009,
                                            "n_genes": 26, "pcc": [0.1], "selected": {}}}
    check = _self_check_summary(result, None, stream=False)
    assert _format_self_check(check) == ("self-check: median PCC 0.213, SPCC 0.201 over 26 "
                                         "hidden known genes")
    check["selected"] = {"spatial_weight": 0.5, "residual_weight": 1.0}
    assert _format_self_check(check).endswith("(selected spatial_weight=0.5, residual_weight=1)")


def test_spatial_and_self_check_flags_are_checked(files, capsys):
    st_path, sc_path, tmp = files
    base = ["impute", "--st", str(st_path), "--out", str(tmp / "o.h5ad"), *FAST_ARGS]
    assert main([*base, "--sc", str(sc_path), "--spatial-key", "nope"]) == 2
    err = capsys.readouterr().err
    assert "obsm['nope']" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--sc", str(sc_path), "--self-check", "on",
                 "--self-check-folds", "1"]) == 2
    assert "`self_check_folds` must be an integer >= 2" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp / "m"), "--self-check", "on"]) == 2
    assert "--self-check runs when fitting from --sc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--sc", str(sc_path), "--spatial-key", "spatial", "--no-spatial"])
    with pytest.raises(SystemExit):
        main([*base, "--sc", str(sc_path), "--self-check", "maybe"])
