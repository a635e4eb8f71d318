"""The command line: impute, fit, demo, and its handling of user errors."""

import re

import anndata as ad
import numpy as np
import pytest

import spalstf
from spalstf.cli import main
from spalstf.cli.commands import format_weights

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


def test_fit_saves_a_model_that_loads(files, capsys):
    st_path, sc_path, tmp = files
    model_dir = tmp / "model"
    assert main(["fit", "--st", str(st_path), "--sc", str(sc_path), "--model-out",
                 str(model_dir), *FAST_ARGS]) == 0
    model = spalstf.load(model_dir)
    st = ad.read_h5ad(st_path)
    assert model.known_genes == list(st.var_names)
    assert model.target_genes == [g for g in ad.read_h5ad(sc_path).var_names
                                  if g not in set(st.var_names)]
    # With --st, the combination is learnt on the ST's known genes and saved with the model,
    # so that `impute --model` combines by it and gives the interval.
    assert "self-check: median PCC" in capsys.readouterr().err
    assert model.stack is not None and model.stack.weights
    out = tmp / "o.h5ad"
    assert main(["impute", "--st", str(st_path), "--model", str(model_dir), "--out", str(out),
                 "--quiet"]) == 0
    imputed = ad.read_h5ad(out)
    assert {"std", "lower", "upper"} <= set(imputed.layers)
    assert imputed.uns["spalstf"]["combination"]["kind"] == "stack"
    # --self-check off keeps the fixed blend; asking for it without --st is an error.
    assert main(["fit", "--st", str(st_path), "--sc", str(sc_path), "--model-out",
                 str(tmp / "blend"), "--self-check", "off", *FAST_ARGS]) == 0
    assert spalstf.load(tmp / "blend").stack is None
    # "auto" with fewer known genes than the self-check needs: the fixed blend, said so
    assert main(["fit", "--st", str(st_path), "--sc", str(sc_path), "--known",
                 ",".join(st.var_names[:3]), "--model-out", str(tmp / "few"), "--epochs", "2",
                 "--max-time", "30"]) == 0
    assert spalstf.load(tmp / "few").stack is None
    assert "self-check skipped: the ST has 3 known genes" in capsys.readouterr().err
    assert main(["fit", "--sc", str(sc_path), "--known", ",".join(st.var_names[:3]),
                 "--model-out", str(tmp / "x"), "--self-check", "on", *FAST_ARGS]) == 2
    assert "--self-check on needs --st" in capsys.readouterr().err
    assert not (tmp / "x").exists()


def test_demo_fast_writes_the_h5ad_the_png_and_scores(tmp_path, capsys, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    from spalstf import pl

    drawn = []  # the figure the demo draws, and what it was given
    real = pl.spatial

    def spy(imputed, genes, **kwargs):
        drawn.append((imputed, list(genes), kwargs, real(imputed, genes, **kwargs)))
        return drawn[-1][-1]

    monkeypatch.setattr(pl, "spatial", spy)
    confidences = []  # the confidence figure the demo draws too
    real_confidence = pl.confidence

    def spy_confidence(imputed, *args, **kwargs):
        confidences.append((imputed, args, kwargs, real_confidence(imputed, *args, **kwargs)))
        return confidences[-1][-1]

    monkeypatch.setattr(pl, "confidence", spy_confidence)
    assert main(["demo", "--fast", "--out", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    # How far to trust the run, as a user without a truth would see it: demo_confidence.png,
    # named in the output.
    (shown, args, kwargs, conf), = confidences
    assert kwargs["path"] == tmp_path / "demo_confidence.png" and not args
    assert (tmp_path / "demo_confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{tmp_path / 'demo_confidence.png'}: a typical gene's imputed values" in text
    assert text.rstrip().splitlines()[-1].startswith(
        f"wrote {tmp_path / 'demo_imputed.h5ad'}, {tmp_path / 'demo_imputed.png'} and "
        f"{tmp_path / 'demo_confidence.png'} in ")
    assert "expected median r" in [ax.get_title() for ax in conf.axes if ax.get_title()][2]
    assert "Pearson r with the simulated truth" in text and "median" in text
    result = ad.read_h5ad(tmp_path / "demo_imputed.h5ad")
    assert np.all(result.X >= 0)
    png = (tmp_path / "demo_imputed.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # The figure: typical genes (quartiles and median of r), not the best ones.
    (imputed, genes, kwargs, fig), = drawn
    truth = kwargs["truth"]
    r = {g: np.corrcoef(truth[g], imputed[:, g].X.ravel())[0, 1] for g in imputed.var_names}
    ranked = sorted(r, key=r.get)  # worst to best
    n = len(ranked)
    assert genes == [ranked[round(q / 100 * (n - 1))] for q in (75, 50, 25)]
    assert ranked[-1] not in genes
    maps = [ax for ax in fig.axes if ax.get_title()]
    # truth, imputed on the truth's scale, imputed on its own, std per gene
    assert len(maps) == 4 * len(genes)
    for row, gene in enumerate(genes):
        truth_map, level_map, own_map, _ = maps[4 * row:4 * row + 4]
        assert own_map.get_title() == (f"{gene}: imputed (r = {r[gene]:.2f})\n"
                                       "on their own colour scale")
        assert level_map.get_title() == f"{gene}: imputed\non the truth's colour scale"
        rank = n - ranked.index(gene)
        assert f"(rank {rank} of {n})" in truth_map.get_ylabel()
        assert truth_map.get_title().startswith(f"{gene}: simulated truth")
        # One colour scale for truth and imputation (the level), and the imputation's own
        # (the pattern, which the shared scale flattens where the imputation sits lower).
        assert truth_map.collections[0].get_clim() == level_map.collections[0].get_clim()
        values = imputed[:, gene].X.ravel()
        np.testing.assert_allclose(own_map.collections[0].get_clim(),
                                   np.percentile(values, [1, 99]), rtol=1e-6)
    # Every map has a colour bar with units; only "not measured" may say measured.
    bars = [ax.collections[0].colorbar for ax in maps]
    assert all(bar is not None for bar in bars)
    assert all("log1p(count / known-gene total x 1e4)" in bar.ax.get_ylabel()
               or "same units" in bar.ax.get_ylabel() for bar in bars)
    words = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "not measured" in words
    assert "measured" not in words.replace("not measured", "")
    # What the figure is: simulated data, its size, the median r over all genes, the level gap
    # which r ignores; the title is wrapped to the figure's width, hence the joined words.
    title = " ".join(fig.get_suptitle().split())
    assert "SIMULATED data: 300 ST cells" in title
    assert f"median {np.median(list(r.values())):.2f} over all {n} genes" in title
    gap = np.median(np.asarray(imputed.X).mean(axis=0) - truth.to_numpy().mean(axis=0))
    assert f"imputed minus truth, mean per gene: median {gap:+.2f} over all genes" in title
    assert f"imputed minus truth, mean per gene: median {gap:+.2f}" in text


def test_demo_figure_says_what_the_imputed_values_are(tiny_pair, tiny_model, tmp_path,
                                                      monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from spalstf.cli.demo import _demo_figure

    st, _ = tiny_pair
    imputed = tiny_model.impute(st, progress=False, n_samples=2)
    truth = st.obsm["truth"].loc[list(imputed.obs_names), list(imputed.var_names)]
    pcc = np.array([np.corrcoef(truth[g], imputed[:, g].X.ravel())[0, 1]
                    for g in imputed.var_names])
    titles = []  # the title of each figure drawn, its words joined (it is wrapped)
    real = spalstf.pl.spatial

    def spy(*args, **kwargs):
        titles.append(" ".join(kwargs["title"].split()))
        return real(*args, **kwargs)

    monkeypatch.setattr(spalstf.pl, "spatial", spy)

    def title_of(params, combination, truth=truth):
        shown = imputed.copy()
        shown.uns["spalstf"]["params"].update(params)
        shown.uns["spalstf"]["combination"] = combination
        _demo_figure(shown, truth, pcc, n_ref=7, path=tmp_path / "demo.png")
        return titles[-1]

    # The refined depth-free expression: nothing to add.
    assert "Imputed values" not in title_of({"residual_weight": 1.0, "depth_weight": 0.0}, {})
    # A learnt combination: said so, with its largest weights per predictor (summed over the
    # predictor's columns), not column names a reader cannot decode.
    title = title_of({}, {"kind": "stack", "weights": {"knn|spatial|expression": 0.3,
                                                        "ridge|raw|at_depth": 0.4,
                                                        "knn|raw|expression": 0.2,
                                                        "spage|raw|expression": 0.06,
                                                        "transport|raw|expression": 0.04}})
    assert title.endswith("Imputed values: a weighted combination of base predictors, the "
                          "weights learnt on the ST's own known genes, hidden in turn "
                          "(largest: knn 0.50, ridge 0.40, spage 0.06)")
    # The fixed blend: its settings in words.
    title = title_of({"residual_weight": 0.0, "depth_weight": 0.25}, {"kind": "blend"})
    assert ("Imputed values: 75% the expression, 25% the value expected at the spot's "
            "depth") in title
    assert "the prior's prediction alone (no refinement by the diffusion model)" in title
    title = title_of({"residual_weight": 0.5, "depth_weight": 0.0}, {})
    assert title.endswith("Imputed values: the prior's prediction + 50% of the diffusion "
                          "model's refinement")
    assert "7-cell reference" in title and (tmp_path / "demo.png").exists()
    # Where the imputation sits against the truth is read from the data, not assumed.
    undo = truth.to_numpy().mean(axis=0) - imputed.X.mean(axis=0)  # truth minus imputed, per gene
    for gap, words in ((0.05, "at about the truth's level"), (-1.0, "lower"), (1.0, "higher")):
        title = title_of({}, {}, truth=truth - (undo + gap)[None, :])
        assert (f"The imputed values sit {words} (imputed minus truth, mean per gene: median "
                f"{gap:+.2f} over all genes)") in title


def test_checkpoint_and_resume_flags_continue_a_fit(files, capsys):
    st_path, sc_path, tmp = files
    ckpt = tmp / "fit.ckpt"
    # checkpoints hold the network's training: --predictors names it (not a default one)
    base = ["fit", "--st", str(st_path), "--sc", str(sc_path), "--quiet", "--max-time", "30",
            "--predictors", "ridge,network", "--self-check", "off"]
    assert main([*base, "--model-out", str(tmp / "m1"), "--epochs", "1",
                 "--checkpoint", str(ckpt), "--checkpoint-every", "1"]) == 0
    assert ckpt.is_file()
    # The checkpoint is never silently replaced...
    assert main([*base, "--model-out", str(tmp / "m2"), "--epochs", "2",
                 "--checkpoint", str(ckpt)]) == 2
    assert "exists; pass --resume " in capsys.readouterr().err
    # ...but continued from.
    assert main([*base, "--model-out", str(tmp / "m2"), "--epochs", "2",
                 "--checkpoint", str(ckpt), "--resume", str(ckpt)]) == 0
    model = spalstf.load(tmp / "m2")
    assert model.info["resumed_after_epoch"] == 1 and len(model.history) == 2
    assert main([*base, "--model-out", str(tmp / "m3"), "--resume", str(tmp / "nope")]) == 2
    assert "--resume" in capsys.readouterr().err
    # the default predictors train no network: nothing to checkpoint, said before any work
    default = [a for a in base if a not in ("--predictors", "ridge,network")]
    assert main([*default, "--model-out", str(tmp / "m4"), "--checkpoint",
                 str(tmp / "other.ckpt")]) == 2
    assert "leaves the network out" in capsys.readouterr().err
    assert not (tmp / "m4").exists()
    # a saved model keeps its own predictors
    assert main(["impute", "--st", str(st_path), "--model", str(tmp / "m2"), "--out",
                 str(tmp / "o.h5ad"), "--predictors", "ridge"]) == 2
    assert "--predictors" in capsys.readouterr().err


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
    import spalstf.train.denoiser

    st_path, sc_path, tmp = files
    args = ["impute", "--st", str(st_path), "--sc", str(sc_path), "--out",
            str(tmp / "o.h5ad"), *FAST_ARGS, "--predictors", "ridge,knn,network"]

    def nan_loss(*a, **k):
        raise FloatingPointError("training loss became nan at epoch 1, step 1")

    monkeypatch.setattr(spalstf.train.denoiser, "batch_loss", nan_loss)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["spalstf impute: error: training loss became nan at "
                                        "epoch 1, step 1"]
    assert not (tmp / "o.h5ad").exists()

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(spalstf.train.denoiser, "batch_loss", ctrl_c)
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
    assert "--epochs must be a positive integer; received 0" in capsys.readouterr().err


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
    assert any("|spatial|" in c for c in check["candidates"]["column"])  # the tiny ST has coordinates
    assert line == (f"self-check: median PCC {check['median_pcc']:.3f}, SPCC "
                    f"{check['median_spcc']:.3f} over {n_known} hidden known genes; "
                    f"combination learnt: {format_weights(check['weights'])}")
    assert re.fullmatch(r"self-check: median PCC -?\d\.\d{3}, SPCC -?\d\.\d{3} over \d+ "
                        r"hidden known genes; combination learnt: .+", line)
    # --self-check off: no self-check, nothing printed; --no-spatial: no spatial columns.
    assert main([*base, "--out", str(tmp / "off.h5ad"), "--self-check", "off"]) == 0
    assert _self_check_line(capsys.readouterr().err) is None
    with h5py.File(tmp / "off.h5ad", "r") as f:
        assert "self_check" not in f["uns/spalstf"]
    assert main([*base, "--out", str(tmp / "flat.h5ad"), "--self-check-folds", "2",
                 "--no-spatial"]) == 0
    line = _self_check_line(capsys.readouterr().err)
    flat = ad.read_h5ad(tmp / "flat.h5ad").uns["spalstf"]["self_check"]
    assert line is not None and "|spatial|" not in line
    assert not any("|spatial|" in c for c in flat["candidates"]["column"])
    # counts: both readouts are candidates; --values: only the readout given
    assert set(flat["candidates"]["readout"]) == {"expression", "at_depth"}
    assert main([*base, "--out", str(tmp / "depth.h5ad"), "--self-check-folds", "2",
                 "--values", "at_depth"]) == 0
    capsys.readouterr()
    given = ad.read_h5ad(tmp / "depth.h5ad").uns["spalstf"]
    assert set(given["self_check"]["candidates"]["readout"]) == {"at_depth"}
    assert given["params"]["output"] == "at_depth"


def test_self_check_summary_of_an_in_memory_result():
    from spalstf.cli.commands import _format_self_check, _self_check_summary

    result = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    assert _self_check_summary(result, None, stream=False) is None
    result.uns["spalstf"] = {"self_check": {"median_pcc": 0.2134, "median_spcc": 0.2009,
                                            "n_genes": 26, "pcc": [0.1], "weights": {}}}
    check = _self_check_summary(result, None, stream=False)
    assert _format_self_check(check) == ("self-check: median PCC 0.213, SPCC 0.201 over 26 "
                                         "hidden known genes")
    check["weights"] = {"a|raw|expression": 0.1, "b|raw|expression": 0.5, "c|raw|at_depth": 0.2,
                        "d|spatial|expression": 0.15, "e|raw|expression": 0.05}
    assert _format_self_check(check).endswith(
        "; combination learnt: b|raw|expression 0.50, c|raw|at_depth 0.20, "
        "d|spatial|expression 0.15, a|raw|expression 0.10, ... (5 columns)")


def test_spatial_and_self_check_flags_are_checked(files, capsys):
    st_path, sc_path, tmp = files
    base = ["impute", "--st", str(st_path), "--out", str(tmp / "o.h5ad"), *FAST_ARGS]
    assert main([*base, "--sc", str(sc_path), "--spatial-key", "nope"]) == 2
    err = capsys.readouterr().err
    assert "obsm['nope']" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--sc", str(sc_path), "--self-check", "on",
                 "--self-check-folds", "1"]) == 2
    assert "--self-check-folds must be an integer >= 2" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp / "m"), "--self-check", "on"]) == 2
    assert "--self-check runs when fitting from --sc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--sc", str(sc_path), "--spatial-key", "spatial", "--no-spatial"])
    with pytest.raises(SystemExit):
        main([*base, "--sc", str(sc_path), "--self-check", "maybe"])


def test_an_unknown_output_suffix_is_refused_before_any_work(tmp_path, capsys):
    # --st does not exist: the refusal comes first, before anything is read
    for name in ("result.csv", "result.txt", "result"):
        code = main(["impute", "--st", str(tmp_path / "missing.h5ad"), "--sc",
                     str(tmp_path / "missing_sc.h5ad"), "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--out" in err and ".h5ad" in err and ".rds" in err and name in err, err
        assert "missing" not in err.replace(str(tmp_path / name), ""), err


def test_error_messages_name_the_flags_not_the_python_keywords(files, capsys):
    from spalstf.cli.parser import _named_by_flags, build_parser

    st_path, sc_path, tmp = files
    assert main(["impute", "--st", str(st_path), "--sc", str(sc_path), "--out",
                 str(tmp / "o.h5ad"), "--max-steps", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--max-steps must be" in err and "max_steps" not in err, err
    flag_of = build_parser().parse_args(["impute", "--st", "s", "--out", "o.h5ad"]).flag_of
    assert _named_by_flags("'o.h5ad' exists; pass overwrite=True (--force) to replace it",
                           flag_of) == "'o.h5ad' exists; pass --force to replace it"
    assert _named_by_flags("`spatial` names obsm['a']; `knn_weight` x; log_normalized=False",
                           flag_of) == ("--spatial-key names obsm['a']; `knn_weight` x; "
                                        "--log-normalized False")


def test_the_log_shows_the_phases_by_default_details_with_v_on_either_side(tmp_path):
    import logging

    from spalstf.cli import _log_handler
    from spalstf.cli.parser import build_parser

    parser = build_parser()
    base = ["impute", "--st", "s.h5ad", "--sc", "r.h5ad", "--out", "o.h5ad"]
    level = {name: _log_handler(parser.parse_args(args)).level for name, args in (
        ("default", base), ("quiet", [*base, "--quiet"]), ("v first", ["-v", *base]),
        ("v after", [*base, "-v"]), ("verbose after", [*base, "--verbose"]))}
    assert level == {"default": logging.INFO, "quiet": logging.WARNING,
                     "v first": logging.DEBUG, "v after": logging.DEBUG,
                     "verbose after": logging.DEBUG}
    args = parser.parse_args([*base, "--debug"])
    assert args.debug and not args.verbose
    for command in (["fit", "--sc", "r.h5ad", "--model-out", "m"], ["merge", "a", "--out", "o"],
                    ["demo"], ["benchmark", "--st", "s", "--out", "o"]):
        assert parser.parse_args([*command, "-v"]).verbose, command


def test_impute_with_obs_coordinates_v_after_the_command_and_streamed_confidence(files, capsys):
    import logging

    st_path, sc_path, tmp = files
    st = ad.read_h5ad(st_path)
    st.obs["x"], st.obs["y"] = st.obsm["spatial"][:, 0], st.obsm["spatial"][:, 1]
    del st.obsm["spatial"]
    st_xy = tmp / "st_xy.h5ad"
    st.write_h5ad(st_xy)
    out = tmp / "streamed.h5ad"
    assert main(["impute", "--st", str(st_xy), "--sc", str(sc_path), "--out", str(out),
                 "--spatial-key", "x,y", "--epochs", "2", "--max-time", "30", "--n-steps", "2",
                 "--n-samples", "2", "-v"]) == 0
    err = capsys.readouterr().err
    assert "spalstf: fitting on" in err and "spalstf: self-check fold 2/2" in err, err
    assert "spalstf: ridge prior" in err, err  # a detail: shown with -v only
    result = ad.read_h5ad(out)
    assert any("|spatial|" in c for c in result.uns["spalstf"]["self_check"]["candidates"][
        "column"])
    confidence = result.uns["spalstf"]["gene_confidence"]
    for column in ("expected_pcc", "reference_pcc"):
        np.testing.assert_allclose(result.var[column], confidence[column], rtol=1e-6)
    assert result.uns["log1p"] == {"base": None}
    # the command's handler is gone once it returns
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("spalstf").handlers)


# --- what a user sees of the command line ----------------------------------------------------
def test_help_loads_no_heavy_module():
    """`spalstf --help` and each command's --help parse without torch, scanpy or anndata (they
    took seconds to import before the help showed); benchmark's module loads anndata, no more."""
    import json
    import subprocess
    import sys

    code = """if True:
        import json, sys
        from spalstf.cli import main
        heavy = ("torch", "scanpy", "anndata", "matplotlib", "spalstf.api", "spalstf.model")
        seen = {}
        for argv in (["--help"], ["impute", "--help"], ["fit", "--help"], ["merge", "--help"],
                     ["demo", "--help"], ["benchmark", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
            seen[argv[0]] = sorted(m for m in heavy if m in sys.modules)
        print(json.dumps(seen))
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert "usage: spalstf" in run.stdout and "usage: spalstf benchmark" in run.stdout
    for command in ("--help", "impute", "fit", "merge", "demo"):
        assert seen[command] == [], (command, seen)
    assert seen["benchmark"] == ["anndata"], seen


def test_benchmark_is_listed_with_its_own_help_and_parses():
    import argparse

    from spalstf.cli.parser import BENCHMARK_HELP, build_parser
    from spalstf.evaluate import _cli as benchmark_cli

    registered = argparse.ArgumentParser().add_subparsers()
    benchmark_cli.add_parser(registered)
    assert [a.help for a in registered._choices_actions] == [BENCHMARK_HELP]
    args = build_parser().parse_args(["benchmark", "--st", "s", "--out", "o", "--n-folds", "3",
                                      "--max-time", "5", "-v"])
    assert (args.n_folds, args.max_time, args.verbose) == (3, 5.0, True)
    assert args.func is benchmark_cli.run and args.flag_of["max_time"] == "--max-time"


@pytest.mark.parametrize("columns", [52, 67, 80, 97, 120])
def test_help_never_splits_a_name_or_a_flag(columns, monkeypatch, capsys):
    """argparse wraps help at hyphens and cuts long words: "ridge,r / idge_aligned",
    "--checkpoint- / every". Lines break at spaces only, and lists are written with spaces."""
    from spalstf.cli.parser import build_parser
    from spalstf.config import NETWORKS, PREDICTOR_NAMES

    monkeypatch.setenv("COLUMNS", str(columns))
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    known = {o for p in [parser, *(getattr(c, "filled", lambda c=c: c)() for c in commands.values())]
             for a in p._actions for o in a.option_strings}
    for command in ([], ["impute"], ["fit"], ["demo"], ["merge"], ["benchmark"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        for line in text.splitlines():
            assert not re.search(r"\w-$", line), (command, columns, line)
        flat = " ".join(line.strip() for line in text.splitlines())
        named = set(re.findall(r"--[a-z][a-z-]*[a-z]", flat))
        assert named <= known, (command, columns, named - known)  # none cut in two
        if command in (["impute"], ["fit"], ["demo"]):
            assert ", ".join(PREDICTOR_NAMES) in flat, flat
            for network in NETWORKS:
                assert f"{network}" in flat


def _plain_impute(files, name):
    st_path, sc_path, tmp = files
    return ["impute", "--st", str(st_path), "--sc", str(sc_path), "--out", str(tmp / name),
            "--self-check", "on"]


def test_the_self_check_summary_is_shown_once(files, capsys):
    """The library logs a line summing up the self-check and the command printed its own: the
    log now leaves the library's out, with the phases shown (default) and with -v."""
    for extra, name in (([], "a.h5ad"), (["-v"], "b.h5ad"), (["--quiet"], "c.h5ad")):
        assert main([*_plain_impute(files, name), *extra]) == 0
        err = capsys.readouterr().err
        assert err.count("self-check: median PCC") == 1, (extra, err)
        assert _self_check_line(err) is not None, err
        if extra != ["--quiet"]:
            assert "spalstf: self-check fold 1/2" in err, err


def test_off_a_terminal_each_log_line_starts_on_its_own_line(files, capsys):
    """Under capsys stderr is not a terminal, as in a log file or a job's output: no progress
    bar is drawn, so no bar and no carriage return runs into the next log line."""
    assert main(_plain_impute(files, "o.h5ad")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err, repr(err[-500:])
    lines = err.splitlines()
    assert lines and all(line.startswith(("spalstf: ", "spalstf warning: ", "self-check: "))
                         for line in lines), err


def test_bars_only_on_a_terminal_and_never_with_quiet(monkeypatch):
    import io

    from spalstf.cli import commands
    from spalstf.cli.parser import build_parser

    parser = build_parser()
    base = ["impute", "--st", "s.h5ad", "--sc", "r.h5ad", "--out", "o.h5ad"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert commands._bars(parser.parse_args(base))
    assert not commands._bars(parser.parse_args([*base, "--quiet"]))
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not commands._bars(parser.parse_args(base))
    assert not commands._training_options(parser.parse_args(base))["progress"]
