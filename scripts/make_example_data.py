"""Rebuild the osmFISH example pair shipped with spalstf (spalstf/datasets/data/).

    .venv/bin/python scripts/make_example_data.py [SOURCE]

SOURCE is the Li et al. text-layout folder of the osmFISH pair (default
../shared/data/osmfish_li_format, beside the project root): ``Spatial_count.txt`` (3405 cells x
33 genes), ``Locations.txt`` (X, Y of those cells) and ``scRNA_count.txt`` (33 genes x 1000
reference cells). The files come from github sunericd/TISSUE ``tests/data/`` (MIT licence; see
spalstf/datasets/data/NOTICE).

Writes ``spalstf/datasets/data/osmfish_example.npz`` (compressed, no pickled objects): the
counts as int32 (the text holds integers; checked), the gene and cell names as unicode arrays
and the coordinates as float64, parsed exactly as :func:`spalstf.datasets.read_li_format`
parses them, so :func:`spalstf.datasets.osmfish_example` returns what ``read_li_format``
returns on SOURCE, value for value. Prints the file's size. Running it again on the same
source writes the same arrays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "spalstf" / "datasets" / "data" / "osmfish_example.npz"


def _integers(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not (np.isfinite(x).all() and (x >= 0).all() and np.array_equal(x, np.round(x))):
        raise ValueError(f"{what}: expected non-negative integer counts.")
    if x.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{what}: counts exceed int32.")
    return x.astype(np.int32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?",
                        default=str(ROOT / ".." / "shared" / "data" / "osmfish_li_format"),
                        help="the osmfish_li_format folder (Li et al. text layout)")
    parser.add_argument("--out", default=str(OUT), help=f"output file (default {OUT})")
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    if not source.is_dir():
        parser.error(f"no folder {str(source)!r}: pass the osmfish_li_format folder")

    sys.path.insert(0, str(ROOT))
    from spalstf.datasets import read_li_format

    st, sc = read_li_format(source)
    if "spatial" not in st.obsm:
        raise SystemExit(f"{source}/Locations.txt is missing: the example needs coordinates.")
    arrays = dict(
        st_counts=_integers(st.X, "Spatial_count.txt"),
        st_genes=np.asarray(st.var_names, dtype=str),
        st_xy=np.asarray(st.obsm["spatial"], dtype=np.float64),
        sc_counts=_integers(sc.X, "scRNA_count.txt"),
        sc_genes=np.asarray(sc.var_names, dtype=str),
        sc_cells=np.asarray(sc.obs_names, dtype=str),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    print(f"wrote {out}: {out.stat().st_size / 1e3:.0f} kB; ST {st.n_obs} x {st.n_vars}, "
          f"reference {sc.n_obs} x {sc.n_vars}")


if __name__ == "__main__":
    main()
