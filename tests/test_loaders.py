"""Readers for the Li et al. text layout, RCTD CSV folders, .h5ad pairs, `load`, and the
osmFISH example pair shipped with the package (`osmfish_example`, offline)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spalstf.datasets import _loaders as L

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


@pytest.fixture
def li_folder(tmp_path: Path) -> Path:
    (tmp_path / "Spatial_count.txt").write_text("g1\tg2\tg3\n1\t0\t2\n3\t4\t0\n")
    (tmp_path / "scRNA_count.txt").write_text(
        "\tc1\tc2\tc3\tc4\ng1\t1\t2\t3\t4\ng2\t0\t0\t1\t0\ng4\t5\t6\t7\t8\n"
    )
    (tmp_path / "Locations.txt").write_text("X\tY\n1.5\t2.5\n3.0\t4.0\n")
    return tmp_path


def test_read_li_format(li_folder: Path) -> None:
    st, sc = L.read_li_format(li_folder)
    assert st.shape == (2, 3) and list(st.var_names) == ["g1", "g2", "g3"]
    np.testing.assert_array_equal(st.X, [[1, 0, 2], [3, 4, 0]])
    np.testing.assert_array_equal(st.obsm["spatial"], [[1.5, 2.5], [3.0, 4.0]])
    np.testing.assert_array_equal(st.obs[["x_coord", "y_coord"]], st.obsm["spatial"])
    assert sc.shape == (4, 3)
    assert list(sc.var_names) == ["g1", "g2", "g4"]
    assert list(sc.obs_names) == ["c1", "c2", "c3", "c4"]
    np.testing.assert_array_equal(sc.X[:, 2], [5, 6, 7, 8])  # transposed: cells x genes


def test_read_li_format_errors(li_folder: Path) -> None:
    (li_folder / "Locations.txt").write_text("X\tY\n1\t2\n")
    with pytest.raises(ValueError, match="Expected 2, received 1"):
        L.read_li_format(li_folder)
    (li_folder / "Spatial_count.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Spatial_count.txt"):
        L.read_li_format(li_folder)


@pytest.fixture
def rctd_folder(tmp_path: Path) -> Path:
    for sub, cells in (("SpatialRNA", ["s1", "s2"]), ("Reference", ["r1", "r2", "r3"])):
        d = tmp_path / sub
        d.mkdir()
        counts = pd.DataFrame(
            np.arange(2 * len(cells)).reshape(2, len(cells)), index=["A", "B"], columns=cells
        )
        counts.to_csv(d / "counts.csv")
        # side files in another order than counts.csv, as R may write them
        pd.DataFrame({"x": np.arange(len(cells))[::-1] * 10.0}, index=cells[::-1]).to_csv(
            d / "nUMI.csv"
        )
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]}, index=["s2", "s1"]).to_csv(
        tmp_path / "SpatialRNA" / "coords.csv"
    )
    pd.DataFrame({"x": ["T", "B", "T"]}, index=["r1", "r2", "r3"]).to_csv(
        tmp_path / "Reference" / "cell_types.csv"
    )
    return tmp_path


def test_read_rctd_pair(rctd_folder: Path) -> None:
    st, sc = L.read_rctd_pair(rctd_folder)
    assert st.shape == (2, 2) and sc.shape == (3, 2)
    np.testing.assert_array_equal(st.X.toarray(), [[0, 2], [1, 3]])
    np.testing.assert_array_equal(st.obsm["spatial"], [[2.0, 4.0], [1.0, 3.0]])  # aligned
    assert list(sc.obs["cell_type"]) == ["T", "B", "T"]
    np.testing.assert_array_equal(sc.obs["nUMI"], [0.0, 10.0, 20.0])


def test_read_rctd_csv_missing_cells(rctd_folder: Path) -> None:
    pd.DataFrame({"x": [1.0], "y": [3.0]}, index=["s2"]).to_csv(
        rctd_folder / "SpatialRNA" / "coords.csv"
    )
    with pytest.raises(ValueError, match="lacks 1 cell"):
        L.read_rctd_csv(rctd_folder / "SpatialRNA")


def test_read_h5ad_pair(tmp_path: Path) -> None:
    st = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    st.obs["x_coord"] = [1.0, 2.0, 3.0]
    st.obs["y_coord"] = [4.0, 5.0, 6.0]
    sc = ad.AnnData(np.ones((4, 2), dtype=np.float32))
    sc.obs["ct"] = ["a", "b", "a", "b"]
    st.write_h5ad(tmp_path / "st.h5ad")
    sc.write_h5ad(tmp_path / "sc.h5ad")
    st2, sc2 = L.read_h5ad_pair(tmp_path / "st.h5ad", tmp_path / "sc.h5ad", cell_type_key="ct")
    np.testing.assert_array_equal(st2.obsm["spatial"][:, 1], [4.0, 5.0, 6.0])
    assert list(sc2.obs["cell_type"]) == ["a", "b", "a", "b"]
    with pytest.raises(KeyError, match="nope"):
        L.read_h5ad_pair(tmp_path / "st.h5ad", tmp_path / "sc.h5ad", cell_type_key="nope")


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="osmfish"):
        L.load("no_such_set")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        L.load("osmfish", data_dir=tmp_path)


def test_load_uses_env_var(rctd_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (rctd_folder / "visium_brain").mkdir()
    for sub in ("SpatialRNA", "Reference"):
        (rctd_folder / sub).rename(rctd_folder / "visium_brain" / sub)
    monkeypatch.setenv("SPALSTF_DATA", str(rctd_folder))
    st, sc = L.load("visium_brain")
    assert st.shape == (2, 2) and "cell_type" in sc.obs
    assert L.default_data_dirs()[0] == rctd_folder


@needs_data
def test_load_visium_lymph_through_r() -> None:
    pytest.importorskip("rpy2.robjects", reason="needs R and the `r` extra")
    st, sc = L.load("visium_lymph")
    assert st.shape == (1000, 2000) and sc.shape == (330, 10237)
    assert st.obsm["spatial"].shape == (1000, 2)
    assert sc.obs["cell_type"].nunique() == 11


@needs_data
@pytest.mark.parametrize(
    "name, st_shape, sc_shape",
    [
        ("osmfish", (3405, 33), (5613, 33)),
        ("osmfish_li_format", (3405, 33), (1000, 33)),
        ("visium_brain", (313, 276), (510, 307)),
        ("exseq_cortex", (1154, 42), (14231, 42)),
        ("starmap_cortex", (1380, 141), (7466, 141)),
    ],
)
def test_load_real(name: str, st_shape: tuple, sc_shape: tuple) -> None:
    st, sc = L.load(name, data_dir=DATA)
    assert st.shape == st_shape and sc.shape == sc_shape
    assert st.obsm["spatial"].shape == (st.n_obs, 2)
    shared = {"visium_brain": 124, "exseq_cortex": 42, "starmap_cortex": 141}.get(name, 33)
    assert len(st.var_names.intersection(sc.var_names)) == shared
    if name == "visium_brain":
        assert sc.obs["cell_type"].nunique() == 17
    assert st.uns["dataset"] == name and sc.uns["dataset"] == name


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_data
@pytest.mark.parametrize("name", ["exseq_cortex", "starmap_cortex"])
def test_load_second_round_pairs(name: str) -> None:
    import h5py

    files = [DATA / name / "spatial.h5ad", DATA / name / "reference.h5ad"]
    before = [_sha256(f) for f in files]
    st, sc = L.load(name, data_dir=DATA)
    # the same genes in the same order on both sides: every gene can be held out
    assert list(st.var_names) == list(sc.var_names)
    # coordinates: the obs columns, copied into obsm["spatial"] (x first), one per cell
    np.testing.assert_array_equal(
        st.obsm["spatial"], st.obs[["x_coord", "y_coord"]].to_numpy(dtype=np.float64)
    )
    assert np.isfinite(st.obsm["spatial"]).all()
    assert len(np.unique(st.obsm["spatial"], axis=0)) == st.n_obs
    # raw counts, as stored: non-negative integers equal to the file's matrix
    for adata, f in zip((st, sc), files, strict=True):
        x = np.asarray(adata.X)
        assert x.min() >= 0 and np.array_equal(x, np.round(x))
        assert (x.sum(axis=1) > 0).mean() > 0.99
        with h5py.File(f, "r") as h5:
            np.testing.assert_array_equal(x, h5["X"][()])
    assert "cell_type" not in sc.obs  # none stored: Tangram runs in cells mode on these
    # loading leaves the files untouched
    assert [_sha256(f) for f in files] == before


@needs_data
def test_li_format_matches_h5ad() -> None:
    a, _ = L.load("osmfish", data_dir=DATA)
    b, _ = L.load("osmfish_li_format", data_dir=DATA)
    assert list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))


def test_the_simulators_model_is_the_one_that_made_the_data() -> None:
    from spalstf.datasets import simulate
    from spalstf.datasets._simulate import simulate_with_model

    kw = dict(n_st=300, n_sc=100, n_genes=40, n_measured=25, seed=5)
    st, sc, model = simulate_with_model(n_cell_types=6, n_domains=4, n_programs=6,
                                        st_depth=400.0, sc_depth=3000.0, capture_bias=0.4,
                                        dropout=0.1, **kw)
    st0, sc0 = simulate(**kw)  # the public function gives the same data
    np.testing.assert_array_equal(st.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    # the unmeasured genes' truth is the model's noise-free shares of the ST cells
    col = {g: i for i, g in enumerate(model.genes)}
    shares = model.st_cell_shares
    known_total = shares[:, [col[g] for g in st.var_names]].sum(1, keepdims=True)
    hidden = [col[g] for g in st.obsm["truth"].columns]
    np.testing.assert_allclose(np.log1p(shares[:, hidden] / known_total * 1e4),
                               st.obsm["truth"].to_numpy(), rtol=1e-5)
    # drawn cells follow the domains' type mixtures
    types, state = model.sample_st_cells(20000, np.random.default_rng(0))
    expected = np.bincount(model.domain, minlength=4) @ model.mixtures / len(model.domain)
    np.testing.assert_allclose(np.bincount(types, minlength=6) / 20000, expected, atol=0.015)
    assert state.shape == (20000, 6)


# --- the osmFISH example pair shipped with the package ---------------------------------------
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "spalstf" / "datasets" / "data"
OSMFISH_GENES = [
    "Gad2", "Slc32a1", "Crhbp", "Cnr1", "Vip", "Cpne5", "Pthlh", "Crh", "Tbr1", "Lamp5", "Rorb",
    "Syt6", "Kcnip2", "Aldoc", "Gfap", "Serpinf1", "Mfge8", "Sox10", "Plp1", "Pdgfra", "Bmp4",
    "Itpr2", "Tmem2", "Ctps", "Anln", "Mrc1", "Hexb", "Ttr", "Foxj1", "Vtn", "Flt1", "Apln",
    "Acta2",
]


def test_osmfish_example_offline() -> None:
    from spalstf.datasets import osmfish_example

    st, sc = osmfish_example()
    assert st.shape == (3405, 33) and sc.shape == (1000, 33)
    assert list(st.var_names) == OSMFISH_GENES and list(sc.var_names) == OSMFISH_GENES
    # raw counts: non-negative integers (float32, as every reader returns), no empty cell
    for adata in (st, sc):
        x = np.asarray(adata.X)
        assert x.dtype == np.float32 and x.min() >= 0 and np.array_equal(x, np.round(x))
        assert (x.sum(axis=1) > 0).all()
    # the totals of the original text files (a changed or truncated file fails here)
    assert int(st.X.astype(np.int64).sum()) == 650913
    assert int(sc.X.astype(np.int64).sum()) == 4991835
    # coordinates: one row per cell, in the cells' order, in obsm and obs alike
    assert list(st.obs_names) == [f"cell_{i}" for i in range(3405)]
    assert st.obsm["spatial"].shape == (3405, 2) and np.isfinite(st.obsm["spatial"]).all()
    np.testing.assert_array_equal(st.obs[["x_coord", "y_coord"]], st.obsm["spatial"])
    np.testing.assert_array_equal(st.obsm["spatial"][0], [18171.23094, 24590.79527])
    np.testing.assert_array_equal(st.obsm["spatial"][-1], [884.0417519, 33406.07842])
    assert sc.obs_names.is_unique and sc.obs_names[0] == "SM-DAIFH_S33_E1-50"
    assert "cell_type" not in sc.obs
    assert st.uns["dataset"] == sc.uns["dataset"] == "osmfish_example"


def test_osmfish_example_is_small_licensed_and_packaged() -> None:
    import tomllib

    files = sorted(p.name for p in SHIPPED.iterdir())
    assert files == ["NOTICE", "osmfish_example.npz"]
    assert (SHIPPED / "osmfish_example.npz").stat().st_size < 2_000_000
    with np.load(SHIPPED / "osmfish_example.npz", allow_pickle=False) as z:  # no pickles
        assert z["st_counts"].dtype == np.int32 and z["sc_counts"].dtype == np.int32
    notice = (SHIPPED / "NOTICE").read_text()
    for words in ("MIT License", "github.com/sunericd/TISSUE", "make_example_data.py",
                  "Permission is hereby granted"):
        assert words in notice
    # in the wheel: package-data names both files
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = data["tool"]["setuptools"]["package-data"]["spalstf.datasets"]
    assert sorted(listed) == ["data/NOTICE", "data/osmfish_example.npz"]


def test_load_falls_back_to_the_shipped_pair(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from spalstf.datasets import osmfish_example

    monkeypatch.setattr(L, "default_data_dirs", lambda data_dir=None: (
        [Path(data_dir)] if data_dir is not None else [tmp_path / "empty"]))
    st, sc = L.load("osmfish_li_format")
    st0, sc0 = osmfish_example()
    np.testing.assert_array_equal(st.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    assert st.uns["dataset"] == sc.uns["dataset"] == "osmfish_li_format"
    # the larger pair is not shipped: the error says what is
    with pytest.raises(FileNotFoundError, match=r"osmfish_example\(\)"):
        L.load("osmfish")
    # a data_dir given is the only place looked in
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        L.load("osmfish_li_format", data_dir=tmp_path)


needs_li = pytest.mark.skipif(not (DATA / "osmfish_li_format").is_dir(),
                              reason="../shared/data/osmfish_li_format is absent")


@needs_li
def test_osmfish_example_equals_the_original() -> None:
    from spalstf.datasets import osmfish_example

    st, sc = osmfish_example()
    st0, sc0 = L.read_li_format(DATA / "osmfish_li_format")
    for a, b in ((st, st0), (sc, sc0)):
        assert a.X.dtype == b.X.dtype
        np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
        assert list(a.var_names) == list(b.var_names)
        assert list(a.obs_names) == list(b.obs_names)
    np.testing.assert_array_equal(st.obsm["spatial"], st0.obsm["spatial"])
    pd.testing.assert_frame_equal(st.obs, st0.obs)
    # load() reads the folder where it exists: the same values
    st1, _ = L.load("osmfish_li_format", data_dir=DATA)
    np.testing.assert_array_equal(st1.X, st.X)


@needs_li
def test_the_script_rebuilds_the_shipped_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "rebuilt.npz"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_example_data.py"),
                          str(DATA / "osmfish_li_format"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ST 3405 x 33, reference 1000 x 33" in run.stdout
    with np.load(out) as new, np.load(SHIPPED / "osmfish_example.npz") as old:
        assert sorted(new.files) == sorted(old.files)
        for key in old.files:
            assert new[key].dtype == old[key].dtype, key
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)
