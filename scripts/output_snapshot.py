"""Every output path of spalstf at fixed seeds, saved to an .npz, and two such files compared:
the check that a change meant to move code (a redesign) moves no number.

    # at the commit before the change (the script runs from outside the checkout too)
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before \
        .venv/bin/python scripts/output_snapshot.py save /tmp/before.npz
    .venv/bin/python scripts/output_snapshot.py save /tmp/after.npz
    .venv/bin/python scripts/output_snapshot.py compare /tmp/before.npz /tmp/after.npz

The paths: the default imputation of the shipped osmFISH pair (six genes hidden); every base
predictor with both networks on simulated data; fit, impute, save, load and impute again; the
fixed blend without a self-check; a 3-fold cross-validation of spalstf and kNN. Every matrix,
layer and numeric per-gene column is kept. About 40 s on 2 cores (OMP_NUM_THREADS=1 makes
the comparison exact across machines of the same kind).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

#: The networks' settings of tests/conftest.py's FAST: a fit of a second or two.
FAST = dict(epochs=2, n_steps=3, n_samples=2, progress=False, d_model=16, depth=1, n_heads=2,
            lstm_hidden=16, n_neighbors=4)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def _put(out: dict, key: str, result) -> None:
    out[f"{key}/X"] = _dense(result.X)
    for layer in sorted(result.layers.keys()):
        out[f"{key}/layer/{layer}"] = _dense(result.layers[layer])
    for col in result.var.columns:
        values = result.var[col].to_numpy()
        if values.dtype.kind in "fiub":
            out[f"{key}/var/{col}"] = values.astype(float)


def snapshot() -> dict[str, np.ndarray]:
    import spalstf
    from spalstf.config import PREDICTOR_NAMES

    out: dict[str, np.ndarray] = {}
    st, sc = spalstf.datasets.osmfish_example()
    hidden = list(st.var_names[:6])
    st_known = st[:, [g for g in st.var_names if g not in hidden]].copy()
    _put(out, "osm_default", spalstf.impute(st_known, sc, hidden, seed=0, progress=False))

    st, sc = spalstf.datasets.simulate(n_st=60, n_sc=150, n_genes=30, n_measured=22, seed=3)
    targets = list(st.obsm["truth"].columns)
    _put(out, "sim_all", spalstf.impute(st, sc, targets, seed=0,
                                        predictors=tuple(PREDICTOR_NAMES), **FAST))
    model = spalstf.fit(sc, list(st.var_names), targets, seed=0,
                        predictors=tuple(p for p in PREDICTOR_NAMES if p != "masked"), **FAST)
    _put(out, "sim_fit", model.impute(st, seed=0))
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder + "/model")
        _put(out, "sim_loaded", spalstf.load(folder + "/model").impute(st, seed=0))
    _put(out, "sim_blend", spalstf.impute(st, sc, targets, seed=0, progress=False,
                                          combine="blend", self_check=False))
    cv = spalstf.cross_validate(st, sc, n_folds=3, seed=0, clustering=False,
                                methods=["knn", "spalstf"],
                                method_options={"spalstf": dict(progress=False)})
    for col in cv.per_gene.columns:
        if cv.per_gene[col].dtype.kind in "fi":
            out["cv/" + col] = cv.per_gene[col].to_numpy(float)
    return out


def compare(before: str, after: str) -> int:
    """Prints each array that differs; returns how many do (missing ones count)."""
    a, b = np.load(before), np.load(after)
    missing = sorted(set(a.files) ^ set(b.files))
    for key in missing:
        print("only in", before if key in a.files else after, key)
    differ = 0
    for key in sorted(set(a.files) & set(b.files)):
        x, y = a[key], b[key]
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            differ += 1
            gap = np.nanmax(np.abs(x - y)) if x.shape == y.shape else f"{x.shape} vs {y.shape}"
            print("differs:", key, gap)
    print(f"{len(set(a.files) & set(b.files))} compared, {differ} differ, {len(missing)} missing")
    return differ + len(missing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("out")
    pair = sub.add_parser("compare")
    pair.add_argument("before")
    pair.add_argument("after")
    args = parser.parse_args()
    if args.command == "save":
        arrays = snapshot()
        np.savez(args.out, **arrays)
        print(f"{len(arrays)} arrays saved to {args.out}", file=sys.stderr)
        return 0
    return 1 if compare(args.before, args.after) else 0


if __name__ == "__main__":
    sys.exit(main())
