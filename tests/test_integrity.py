"""Nothing lost, nothing silently wrong (issue 21): model folders are checked when loaded and
never replace other files, outputs never replace a file that appeared during the run, an
interrupted command line writes nothing, inputs are aligned by name and checked before work,
and threads do not change what a seed gives."""

import copy
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import spalstf
from spalstf.model.folder import CHECKSUMS, seal


# --- model folders --------------------------------------------------------------------------
def test_a_changed_byte_or_edited_field_is_refused_naming_the_file(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    weights = (path / "weights.pt").read_bytes()
    atlas = tiny_model.atlas.astype(np.float32).tobytes()
    at = weights.index(atlas[:64]) + len(atlas) // 2  # inside the atlas: still loadable
    flipped = bytearray(weights)
    flipped[at] ^= 0x10
    (path / "weights.pt").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"weights.pt does not match its checksum in "
                                         r"checksums.sha256.*refused rather than loaded"):
        spalstf.load(path)
    (path / "weights.pt").write_bytes(weights)
    meta = (path / "model.json").read_text()
    (path / "model.json").write_text(meta.replace('"log_normalized": false',
                                                  '"log_normalized": true'))
    with pytest.raises(ValueError, match="model.json does not match its checksum"):
        spalstf.load(path)
    (path / "model.json").write_text(meta)
    assert spalstf.load(path, device="cpu").log_normalized is False


def test_a_nan_in_a_stored_tensor_is_refused_naming_the_entry(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    tensors = torch.load(path / "weights.pt", weights_only=True)
    tensors["target.std"] = tensors["target.std"].clone()
    tensors["target.std"][1] = float("nan")
    torch.save(tensors, path / "weights.pt")
    seal(path)  # written so, not damaged after: the values themselves are checked
    with pytest.raises(ValueError, match="weights.pt entry 'target.std' holds NaN"):
        spalstf.load(path)


def test_folders_saved_before_checksums_load_unverified_and_say_so(tiny_pair, tiny_model,
                                                                   tmp_path, caplog):
    st, _ = tiny_pair
    path = tiny_model.save(tmp_path / "m")
    (path / CHECKSUMS).unlink()
    with pytest.raises(ValueError, match="checksums.sha256 is missing"):
        spalstf.load(path)  # format 3 keeps them: a folder without is incomplete
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "format_version": 2}))
    with caplog.at_level(logging.INFO, logger="spalstf"):
        loaded = spalstf.load(path, device="cpu")
    assert "saved before model folders kept checksums" in caplog.text
    np.testing.assert_array_equal(loaded.impute(st, seed=1, progress=False).X,
                                  tiny_model.impute(st, seed=1, progress=False).X)


#: Values of the wrong type for a field of model.json.
_ILL_TYPED = [None, 5, "x", [1], {"a": 1}, True, []]
#: (field, value) of those that the field may take; "absent": fields that may be left out.
_VALID = {("log_normalized", "true"), ("info", '{"a": 1}'), ("stack", "null"),
          ("network", "true"), ("history", "[]"), ("info", "absent"), ("stack", "absent"),
          ("network", "absent")}


def test_every_missing_or_ill_typed_field_is_a_value_error_naming_it(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    for field in [k for k in meta if k not in ("format", "spalstf_version", "torch_version")]:
        variants = [("absent", {k: v for k, v in meta.items() if k != field})]
        variants += [(json.dumps(value), {**meta, field: value}) for value in _ILL_TYPED]
        for value, variant in variants:
            (path / "model.json").write_text(json.dumps(variant))
            seal(path)
            if (field, value) in _VALID:
                spalstf.load(path, device="cpu")
                continue
            with pytest.raises(ValueError) as info:  # never a KeyError, TypeError, ...
                spalstf.load(path, device="cpu")
            assert "model.json" in str(info.value) and field in str(info.value), \
                (field, value, str(info.value))
    for field in ("known_genes", "target_genes", "output_names", "log_normalized", "history",
                  "prior", "config"):
        (path / "model.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                     if k != field}))
        seal(path)
        with pytest.raises(ValueError, match=f"model.json lacks the field '{field}'"):
            spalstf.load(path)
    (path / "model.json").write_text(json.dumps({**meta, "known_genes": "Gene0001"}))
    seal(path)
    with pytest.raises(ValueError, match="field 'known_genes' must be a non-empty list of gene "
                                         "names; received str"):
        spalstf.load(path)


def test_missing_files_and_wrong_shapes_are_value_errors_naming_them(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    tensors = torch.load(path / "weights.pt", weights_only=True)
    n_known, n_target = len(tiny_model.known_genes), len(tiny_model.target_genes)
    cases = {
        "known.mean": (tensors["known.mean"][:-1], rf"'known.mean' has shape \({n_known - 1},\)"
                                                   rf"; model.json's genes need \({n_known},\)"),
        "atlas": (tensors["atlas"][:, :-1], rf"'atlas' has shape .*need \(\d+, "
                                            rf"{n_known + n_target}\)"),
        "network.position": (torch.zeros(1, 2, 3), "weights.pt: network.*position"),
    }
    for key, (value, message) in cases.items():
        torch.save({**tensors, key: value}, path / "weights.pt")
        seal(path)
        with pytest.raises(ValueError, match=message):
            spalstf.load(path)
    torch.save({k: v for k, v in tensors.items() if k != "target.std"}, path / "weights.pt")
    seal(path)
    with pytest.raises(ValueError, match="weights.pt lacks the entry 'target.std'"):
        spalstf.load(path)
    (path / "weights.pt").unlink()
    with pytest.raises(ValueError, match="not a spalstf model folder: weights.pt missing"):
        spalstf.load(path)


def test_overwrite_replaces_only_a_model_folder(tiny_model, tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("a week of work")
    with pytest.raises(ValueError, match=r"`path` '.*results' exists and is not a spalstf model "
                                         r"folder .*\['notes.txt'\]"):
        tiny_model.save(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "a week of work"
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a model")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        tiny_model.save(a_file, overwrite=True)
    assert a_file.read_text() == "not a model"
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_model.save(empty, overwrite=True)
    model = tiny_model.save(tmp_path / "m")
    tiny_model.save(model, overwrite=True)  # a model folder, and a damaged one, are replaced
    (model / "model.json").unlink()
    tiny_model.save(model, overwrite=True)
    assert spalstf.load(model, device="cpu").known_genes == tiny_model.known_genes


def test_only_a_provable_model_folder_is_overwritten(tiny_model, tmp_path):
    # a user's own network beside no spalstf file: file names alone prove nothing
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.pt").write_bytes(b"my own network")
    with pytest.raises(ValueError, match=r"`path` '.*mine' exists and is not a spalstf model "
                                         r"folder \(it holds \['weights.pt'\], but neither"):
        tiny_model.save(mine, overwrite=True)
    # nor with a model.json of its own format, or a checksum file that spalstf did not write
    (mine / "model.json").write_text('{"format": "my-net"}')
    (mine / CHECKSUMS).write_text(f"{'0' * 64}  weights.pt\n")
    with pytest.raises(ValueError, match="is not a spalstf model folder"):
        tiny_model.save(mine, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == [CHECKSUMS, "model.json", "weights.pt"]
    assert (mine / "weights.pt").read_bytes() == b"my own network"
    # a model folder the user put a file of theirs into: the file is not the model's to delete
    model = tiny_model.save(tmp_path / "m")
    (model / "notes.txt").write_text("a week of work")
    with pytest.raises(ValueError, match=r"holds files a model does not: \['notes.txt'\]"):
        tiny_model.save(model, overwrite=True)
    assert (model / "notes.txt").read_text() == "a week of work"
    (model / "notes.txt").unlink()
    # damaged but provably ours: a model.json that cannot be read, weights.pt matching the
    # checksums saved with it; a weights.pt that does not, beside spalstf's model.json
    (model / "model.json").write_text("{trunc")
    tiny_model.save(model, overwrite=True)
    (model / "weights.pt").write_bytes(b"cut short")
    tiny_model.save(model, overwrite=True)
    assert spalstf.load(model, device="cpu").known_genes == tiny_model.known_genes
    # an empty folder holds nothing to lose: a user may make one to save into
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_model.save(empty, overwrite=True)
    assert spalstf.load(empty, device="cpu").target_genes == tiny_model.target_genes
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fit_force_refuses_a_users_folder_before_training(tiny_pair, tiny_model, tmp_path,
                                                          monkeypatch, capsys):
    from spalstf.cli import main

    _, sc = tiny_pair
    sc_path = tmp_path / "sc.h5ad"
    sc.write_h5ad(sc_path)
    fits = []
    monkeypatch.setattr(spalstf, "fit", lambda *a, **k: fits.append(1) or tiny_model)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.pt").write_bytes(b"my own network")
    args = ["fit", "--sc", str(sc_path), "--known", ",".join(tiny_model.known_genes),
            "--model-out", str(mine), "--quiet", "--force"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"--model-out '.*mine' exists and is not a spalstf model folder", err), err
    assert "--force replaces only a model folder" in err and fits == []
    assert [p.name for p in mine.iterdir()] == ["weights.pt"]
    assert (mine / "weights.pt").read_bytes() == b"my own network"
    model = tiny_model.save(tmp_path / "model")  # a model folder: --force replaces it
    assert main([*args[:-3], str(model), "--quiet", "--force"]) == 0 and fits == [1]
    assert spalstf.load(model, device="cpu").known_genes == tiny_model.known_genes


def _marked(model, which):
    """The model, its info marked `which`: tells a saved folder's two versions apart."""
    marked = copy.copy(model)
    marked.info = {**model.info, "which": which}
    return marked


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_interrupted_replacement_leaves_a_whole_model_at_the_path(tiny_model, tmp_path,
                                                                      monkeypatch):
    import spalstf._atomic as atomic

    path = _marked(tiny_model, "old").save(tmp_path / "m")
    new = _marked(tiny_model, "new")
    # where the system cannot swap two folders: Ctrl-C between the two renames
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False, raising=False)
    real_replace = os.replace

    def interrupted_second(src, dst):  # the rename of the new model into place
        if Path(dst) == path and not Path(src).name.startswith(".m.old-"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        new.save(path, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert spalstf.load(path, device="cpu").info["which"] == "old"
    assert _hidden(tmp_path) == []
    # one atomic swap: an interrupt just before it or just after it
    for swapped, which in ((False, "old"), (True, "new")):
        def swap(a, b, swapped=swapped):
            if swapped:
                _swap_for_tests(a, b)
            raise KeyboardInterrupt

        monkeypatch.setattr(atomic, "exchange", swap)
        with pytest.raises(KeyboardInterrupt):
            new.save(path, overwrite=True)
        assert spalstf.load(path, device="cpu").info["which"] == which
        assert _hidden(tmp_path) == []


def _swap_for_tests(a, b):
    """What a swap of the two folders leaves (done here in three renames: the test stands in
    for the system)."""
    hold = a.with_name(a.name + ".hold")
    os.rename(a, hold)
    os.rename(b, a)
    os.rename(hold, b)
    return True


def test_the_swap_is_atomic_where_the_system_has_one(tmp_path):
    from spalstf._atomic import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no atomic swap of two folders on this system or file system")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "a", tmp_path / "missing")  # nothing to swap with: an error


#: A process id no system gives (Linux's are at most 2**22): the owner of a leftover that died.
_DEAD = 2**31 - 1


def test_leftovers_of_a_crashed_replacement_are_recovered_or_cleaned(tiny_model, tmp_path,
                                                                      caplog):
    path = _marked(tiny_model, "old").save(tmp_path / "m")
    # killed between the two renames (spalstf 0.x named the old folder by its pid alone)
    path.rename(tmp_path / f".m.old-{_DEAD}")
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        assert spalstf.load(path, device="cpu").info["which"] == "old"
    assert "is restored" in caplog.text and _hidden(tmp_path) == []
    from spalstf.model.folder import _owner_tag  # since: folders named by host and process

    host = _owner_tag().rpartition("-")[0]
    path.rename(tmp_path / f".m.old-{host}-{_DEAD}")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        _marked(tiny_model, "new").save(path)  # the old model is back, so not replaced
    assert spalstf.load(path, device="cpu").info["which"] == "old"
    # killed after the swap: the replaced model and a half-written one are removed by the next
    # save; a running process's folders (pid 1 always runs) are not touched
    (tmp_path / f".m.old-{host}-{_DEAD}").mkdir()
    (tmp_path / f".m.new-{host}-{_DEAD}-abc_1").mkdir()
    (tmp_path / f".m.new-{host}-{_DEAD}-abc_1" / "weights.pt").write_bytes(b"half")
    (tmp_path / f".m.new-{host}-1-xyz").mkdir()
    _marked(tiny_model, "new").save(path, overwrite=True)
    assert spalstf.load(path, device="cpu").info["which"] == "new"
    assert _hidden(tmp_path) == [f".m.new-{host}-1-xyz"]


def test_a_predictor_state_of_the_wrong_shape_is_refused_naming_the_entry(tiny_model,
                                                                          tmp_path):
    path = tiny_model.save(tmp_path / "m")
    tensors = torch.load(path / "weights.pt", weights_only=True)
    n_known, n_target = len(tiny_model.known_genes), len(tiny_model.target_genes)
    targets = tensors["prior.likelihood.targets"]
    n_clusters = targets.shape[0]
    cases = [  # (entry, edited value, message)
        ("prior.likelihood.targets", targets[:, :-1],
         rf"weights.pt entry 'prior.likelihood.targets' has shape \({n_clusters}, "
         rf"{n_target - 1}\); expected \(clusters, {n_target}\) for model.json's {n_known} "
         rf"known and {n_target} target genes"),
        ("prior.likelihood.targets", targets[:-1],
         rf"'prior.likelihood.targets' has shape \({n_clusters - 1}, {n_target}\); expected "
         rf"\(clusters, {n_target}\) .*clusters = {n_clusters} as in "
         rf"'prior.likelihood.profile_shares'"),
        ("prior.likelihood.sizes", -tensors["prior.likelihood.sizes"],
         "'prior.likelihood.sizes' must hold the clusters' sizes, all above 0"),
        ("prior.ridge.bias", tensors["prior.ridge.bias"][None],
         rf"'prior.ridge.bias' has shape \(1, {n_target}\); expected \({n_target},\)"),
        ("prior.aligned.n_known", torch.tensor(n_known - 1),
         rf"'prior.aligned.n_known' must be the integer {n_known}.*received int64 {n_known - 1}"),
        ("prior.likelihood.known_means", None, "lacks the entry 'prior.likelihood.known_means'"),
    ]
    # every array of every predictor the model keeps, one column short
    for key, value in tensors.items():
        if key.startswith("prior.") and value.ndim >= 1:
            cases.append((key, value[..., :-1], rf"weights.pt entry '{re.escape(key)}' has "
                                                rf"shape"))
    assert {key.split(".")[1] for key, _, _ in cases} == set(tiny_model.predictors)
    for key, value, message in cases:
        edited = {k: v for k, v in tensors.items() if k != key}
        if value is not None:
            edited[key] = value
        torch.save(edited, path / "weights.pt")
        seal(path)  # edited by hand and sealed again: the shapes themselves are checked
        with pytest.raises(ValueError, match=message):
            spalstf.load(path, device="cpu")
    torch.save(tensors, path / "weights.pt")
    seal(path)
    spalstf.load(path, device="cpu")


def test_every_predictor_declares_the_shapes_of_its_state():
    from spalstf.prior import PREDICTORS

    n_known, n_target = 4, 3
    for name, cls in PREDICTORS.items():
        shapes = cls.state_shapes(n_known, n_target)
        assert shapes, name
        state = {k: np.asarray(v) if isinstance(v, int) else np.ones([2 if isinstance(d, str)
                                                                      else d for d in v])
                 for k, v in shapes.items()}
        cls.check_state(state, n_known, n_target)
        for key in state:
            if key in cls.optional_state:
                continue
            with pytest.raises(ValueError, match=f"lacks the entry '{key}'"):
                cls.check_state({k: v for k, v in state.items() if k != key}, n_known,
                                n_target)


def test_a_stack_that_cannot_be_read_as_saved_is_refused(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    stacks = {
        '{"weights": {"ridge|raw|expression": Infinity}}':
            r"weight of column 'ridge\|raw\|expression' must be a finite number",
        '{"weights": {"ridge|raw|expression": 0.5, "ghost|raw|expression": 0.5}}':
            r"columns \['ghost\|raw\|expression'\] read predictors the model does not keep",
        '{"weights": {"ridge|sideways|expression": 1.0}}': "must read a view of",
    }
    for stack, message in stacks.items():
        text = json.dumps({**meta, "stack": None}).replace('"stack": null', f'"stack": {stack}')
        (path / "model.json").write_text(text)
        seal(path)
        with pytest.raises(ValueError, match=rf"model.json field 'stack'.*{message}"):
            spalstf.load(path, device="cpu")
    (path / "model.json").write_text(json.dumps({**meta, "stack": {
        "weights": {"ridge|raw|expression": 0.5, "likelihood|spatial|at_depth": 0.5}}}))
    seal(path)
    assert spalstf.load(path, device="cpu").stack.columns


# --- outputs ----------------------------------------------------------------------------
def test_a_file_that_appears_during_the_run_is_kept_unless_forced(tiny_pair, tiny_model,
                                                                  tmp_path, monkeypatch, capsys):
    from spalstf.cli import main
    from spalstf.io import H5adWriter

    st, _ = tiny_pair
    st_path, model = tmp_path / "st.h5ad", tiny_model.save(tmp_path / "model")
    st.write_h5ad(st_path)
    out = tmp_path / "out.h5ad"
    real_write = H5adWriter.write

    def another_run_finishes_first(self, *args, **kwargs):
        if not out.exists():
            out.write_bytes(b"another run's result")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(H5adWriter, "write", another_run_finishes_first)
    args = ["impute", "--model", str(model), "--st", str(st_path), "--out", str(out),
            "--quiet", "--n-steps", "2"]
    assert main(args) == 2
    assert "appeared while the result was being written" in capsys.readouterr().err
    assert out.read_bytes() == b"another run's result"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    out.unlink()
    assert main([*args, "--force"]) == 0  # --force replaces it
    assert spalstf.io.read(out).n_obs == st.n_obs
    # the in-memory writer checks at its rename too
    appears = tmp_path / "w.h5ad"
    real_h5ad = st.write_h5ad.__func__

    def write_while_another_appears(self, path, *a, **k):
        appears.write_bytes(b"other")
        return real_h5ad(self, path, *a, **k)

    monkeypatch.setattr(type(st), "write_h5ad", write_while_another_appears)
    with pytest.raises(FileExistsError, match="appeared while the result"):
        spalstf.io.write_h5ad(st, appears)
    assert appears.read_bytes() == b"other"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


#: Runs the command line with a network whose training only a signal ends (no early
#: stopping), so that the test can stop it mid-training.
_ENDLESS_CLI = """
import sys
import spalstf.api
import spalstf.model.fitting

real_merge, real_train = spalstf.api.merge_options, spalstf.model.fitting.train

def with_network(config, **options):
    cfg = real_merge(config, **options)
    if "network" not in cfg.predictors:
        cfg = cfg.replace(predictors=(*cfg.predictors, "network"))
    return cfg

def endless(data, config, **kwargs):
    return real_train(data, config.replace(patience=None), **kwargs)

spalstf.api.merge_options, spalstf.model.fitting.train = with_network, endless
from spalstf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_training_exits_143_and_writes_nothing(tiny_pair, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    st, sc = tiny_pair
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    st_path, sc_path = tmp_path / "in" / "st.h5ad", tmp_path / "in" / "sc.h5ad"
    st.write_h5ad(st_path)
    sc.write_h5ad(sc_path)
    out, checkpoint = tmp_path / "out" / "result.h5ad", tmp_path / "in" / "train.pt"
    process = subprocess.Popen(
        [sys.executable, "-c", _ENDLESS_CLI, "impute", "--st", str(st_path), "--sc",
         str(sc_path), "--out", str(out), "--quiet", "--self-check", "off", "--epochs",
         "100000", "--max-steps", "10000000", "--checkpoint", str(checkpoint),
         "--checkpoint-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists():  # written after each epoch: training is under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err
    assert list((tmp_path / "out").iterdir()) == []  # no result, no hidden temporary file
    assert not [p.name for p in (tmp_path / "in").iterdir() if p.name.startswith(".")]


def test_ctrl_c_during_training_exits_130_and_writes_nothing(tiny_pair, tmp_path, monkeypatch,
                                                             capsys):
    """Not the library's "keep the best weights so far": a command stopped writes nothing."""
    import os
    import signal

    from spalstf import api
    from spalstf.cli import main
    from spalstf.train.checkpoint import Checkpointer

    st, sc = tiny_pair
    st_path, sc_path = tmp_path / "st.h5ad", tmp_path / "sc.h5ad"
    st.write_h5ad(st_path)
    sc.write_h5ad(sc_path)
    real_merge, real_save = api.merge_options, Checkpointer.save

    def with_network(config, **options):
        cfg = real_merge(config, **options)
        return cfg.replace(predictors=(*[p for p in cfg.predictors if p != "network"],
                                       "network"))

    def save_then_ctrl_c(self, state):  # after an epoch: there are best weights to keep
        real_save(self, state)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(api, "merge_options", with_network)
    monkeypatch.setattr(Checkpointer, "save", save_then_ctrl_c)
    out = tmp_path / "out.h5ad"
    before = signal.getsignal(signal.SIGINT)
    code = main(["impute", "--st", str(st_path), "--sc", str(sc_path), "--out", str(out),
                 "--quiet", "--self-check", "off", "--epochs", "5", "--checkpoint",
                 str(tmp_path / "train.pt"), "--checkpoint-every", "1"])
    assert code == 130 and "stopped by SIGINT" in capsys.readouterr().err
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert signal.getsignal(signal.SIGINT) == before  # restored


# --- seeds and threads --------------------------------------------------------------------
def test_the_same_seed_gives_the_same_result_in_concurrent_threads(tiny_pair, monkeypatch):
    import threading
    import time

    from conftest import FAST

    import spalstf.train.denoiser

    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    real_build = spalstf.train.denoiser.build_network

    def slow_build(*args, **kwargs):  # widens the window in which another thread may seed
        time.sleep(0.3)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(spalstf.train.denoiser, "build_network", slow_build)
    options = {**FAST, "epochs": 1, "self_check": False, "predictors": ["ridge", "network"]}
    sequential = {seed: spalstf.impute(st, sc, genes, seed=seed, **options).X
                  for seed in (1, 2)}
    threaded, errors = {}, []

    def run(seed):
        try:
            threaded[seed] = spalstf.impute(st, sc, genes, seed=seed, **options).X
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for seed in (1, 2):
        np.testing.assert_array_equal(threaded[seed], sequential[seed])


# --- inputs -------------------------------------------------------------------------------
def test_a_coordinates_dataframe_is_aligned_to_the_cells_by_its_index(tiny_pair, tiny_model):
    import pandas as pd

    st, _ = tiny_pair
    frame = pd.DataFrame(np.asarray(st.obsm["spatial"]), index=st.obs_names,
                         columns=["x", "y"])
    shuffled = frame.sample(frac=1, random_state=0)
    assert list(shuffled.index) != list(frame.index)

    def impute(spatial):
        return tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.5,
                                 spatial=spatial).X

    expected = impute(frame)
    assert not np.array_equal(expected, impute(False))  # the coordinates matter
    np.testing.assert_array_equal(impute(shuffled), expected)
    extra = pd.concat([shuffled, pd.DataFrame([[0.0, 0.0]], index=["elsewhere"],
                                              columns=["x", "y"])])
    np.testing.assert_array_equal(impute(extra), expected)  # other cells are left out
    with pytest.raises(ValueError, match=rf"`spatial` .* lacks 2 of the {st.n_obs} cells of "
                                         rf"`st`, for example \['{st.obs_names[3]}', "
                                         rf"'{st.obs_names[7]}'\]"):
        impute(frame.drop(index=[st.obs_names[3], st.obs_names[7]]))
    # pandas' default index (0..n-1): rows in the order of `st`, as an array's
    np.testing.assert_array_equal(impute(frame.reset_index(drop=True)), expected)


def test_empty_data_bad_seeds_and_tiny_references_are_caught_before_any_work(
        tiny_pair, tiny_model, monkeypatch, caplog):
    from conftest import FAST

    import spalstf.combine.selfcheck
    import spalstf.model.fitting
    from spalstf._validate import MAX_SEED, check_seed
    from spalstf.data import as_expression, check_values

    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]

    def no_work(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(spalstf.model.fitting, "cell_factors", no_work)  # a fit's first work
    monkeypatch.setattr(spalstf.combine.selfcheck, "maybe_run", no_work)
    zero_st, zero_sc = st.copy(), sc.copy()
    zero_st.X, zero_sc.X = np.zeros(st.shape), np.zeros(sc.shape)
    with pytest.raises(ValueError, match=r"`st` holds only zeros \(60 cells x 22 genes\)"):
        spalstf.impute(zero_st, sc, genes, **FAST)
    with pytest.raises(ValueError, match="`sc` holds only zeros"):
        spalstf.impute(st, zero_sc, genes, **FAST)
    with pytest.raises(ValueError, match="`sc` holds only zeros"):
        spalstf.fit(zero_sc, list(st.var_names), genes, **FAST)
    with pytest.raises(ValueError, match="`st` holds only zeros"):
        tiny_model.impute(zero_st, progress=False)
    for seed in (2**64, MAX_SEED + 1, -1):
        with pytest.raises(ValueError, match=rf"`seed` must be an integer from 0 to 2\*\*63 - 1; "
                                             rf"received {seed}"):
            spalstf.impute(st, sc, genes, seed=seed, **FAST)
    assert check_seed(MAX_SEED) == MAX_SEED
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        out = spalstf.impute(st, sc[:1], genes, **FAST)  # works, but says it is poor
    assert "`sc` has only 1 cell" in caplog.text and np.isfinite(out.X).all()
    caplog.clear()
    some_empty = st.copy()
    some_empty.X[[4, 9]] = 0
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        out = tiny_model.impute(some_empty, progress=False)
    assert caplog.text.count(f"`st` has 2 of 60 cells whose values are all 0, for example "
                             f"['{st.obs_names[4]}', '{st.obs_names[9]}']") == 1  # said once
    assert np.isfinite(out.X).all()
    caplog.clear()
    counts = np.rint(np.asarray(st.X)) + np.eye(*st.shape) * 30  # integers up to 30 and more
    with pytest.raises(ValueError, match=r"declared log-normalised \(log_normalized=True\) but "
                                         r"holds only integers"):
        check_values(as_expression(counts, genes=list(st.var_names)), log_normalized=True,
                     arg="st")
