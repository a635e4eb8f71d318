"""Pseudo-spots: random mixtures of reference cells, as a spot of the ST mixes its cells.

The ridge prior is fitted on them beside the cells, and the aligned-neighbour estimate reads
some of them beside the atlas cells (`Config.prior_mixtures`): a map that has seen mixtures
transfers better to spots, and to single cells of another platform.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from spalstf.prior.base import Reference

#: The ridge prior is fitted on the reference cells and on pseudo-spots: random mixtures of
#: this many cells, MIXTURES_PER_SIZE of each size (`Config.prior_mixtures`). A Visium spot
#: mixes cells, and a map fitted on single cells alone transfers worse to spots; mixtures
#: of several sizes serve single cells of another platform (osmFISH) too. Measured on the
#: priors with the self-check's earlier rule (5-fold median PCC, `git show
#: 91fdd2f:benchmarks/results/priors.md`,
#: cells alone -> with pseudo-spots): osmFISH 0.255 -> 0.287, visium_brain 0.518 -> 0.536,
#: visium_lymph 0.131 -> 0.127, simulated 0.283 -> 0.284.
MIXTURE_SIZES = (2, 5, 10, 20)
MIXTURES_PER_SIZE = 2000
#: Pseudo-spots of each size the model keeps beside its atlas for the aligned-neighbour
#: estimate (`spalstf.prior.AlignedNeighbours`): a spot's nearest profiles may then be mixtures.
ESTIMATE_MIXTURES_PER_SIZE = 500
#: `pseudo_spots` computes every reference cell's expression once where it takes at most this
#: many bytes (float64; 80 MB at 10^4 cells x 1,000 genes), else block by block as drawn.
EXPRESSED_BYTES = 512 * 2**20


def pseudo_spots(data: Reference, rows: np.ndarray, *, seed: int,
                 per_size: int = MIXTURES_PER_SIZE,
                 block: int = 128) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of (known, target) standardised profiles of random mixtures of the cells `rows`,
    `per_size` of each size in MIXTURE_SIZES.

    Each mixture sums the counts of its cells (drawn with replacement; `data.depth` recovers
    counts from the log-normalised values) and is normalised over its known genes as a cell
    is, then standardised with the cells' scalers (`data.scalers`). Seeded: the same mixtures
    every call.
    """
    known_scaler, target_scaler = data.scalers
    depth = None if data.depth is None else np.asarray(data.depth, np.float64).ravel()
    pool = np.asarray(rows) if depth is None else np.asarray(rows)[depth[rows] > 0]
    if len(pool) == 0:
        return
    rng = np.random.default_rng([seed, 4])

    def expression(values: np.ndarray, scaler) -> np.ndarray:  # back to count x factor
        return np.expm1(values.astype(np.float64) * scaler.std + scaler.mean)

    # Each pool cell's expression computed once, where it fits in EXPRESSED_BYTES, rather than
    # once per mixture that draws it (each cell about 7 times on average): the same values
    # (elementwise), gathered. With 5,000 known genes this was the largest part of the ridge
    # prior's fit (profile in benchmarks/results/scale_default.md).
    expressed = None
    if len(pool) * (data.known.shape[1] + data.target.shape[1]) * 8 <= EXPRESSED_BYTES:
        expressed = (expression(np.asarray(data.known[pool]), known_scaler),
                     expression(np.asarray(data.target[pool]), target_scaler))
    for size in MIXTURE_SIZES:
        for start in range(0, per_size, block):
            picks = rng.integers(0, len(pool), (min(block, per_size - start), size))
            members = pool[picks]
            flat = members.ravel()
            weight = (np.ones(len(flat)) if depth is None else depth[flat])[:, None]
            out = []
            for side, scaler in enumerate((known_scaler, target_scaler)):
                if expressed is not None:
                    values = expressed[side][picks.ravel()]
                else:
                    values = expression((data.known, data.target)[side][flat], scaler)
                mixed = (values * weight).reshape(*members.shape, -1).sum(1)
                mixed /= weight.reshape(members.shape).sum(1, keepdims=True)
                out.append((np.log1p(mixed) - scaler.mean) / scaler.std)
            yield out[0], out[1]
