"""The large-panel searches (`spalstf.prior.neighbours.COMPONENT_SEARCH_MIN_GENES`: the neighbour
average and the aligned estimate searching in the reference's leading principal components, the
SpaGE-style projection keeping at most that many principal vectors, from partial
eigen-decompositions) tried where they do not engage by default: `benchmarks/accuracy.py` with
the panel size lowered, beside the same command at the default, so that their effect on the
imputation's accuracy is measured on real sets with many known genes.

    python benchmarks/component_search.py 50 100 --datasets visium_lymph,visium_brain \
        --methods knn,spage,ridge,spalstf --no-clustering --name components100
    python benchmarks/accuracy.py --datasets visium_lymph,visium_brain \
        --methods knn,spage,ridge,spalstf --no-clustering --name components_default

The first argument is the panel size (known genes) from which the searches engage, the second
the components they keep (`SEARCH_COMPONENTS`); the rest are `benchmarks/accuracy.py`'s. The
knn, spage and ridge baselines (`spalstf.evaluate.baselines`) are the project's own
implementations and do not change: they are the references of the same run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    import accuracy

    from spalstf.prior import neighbours, spage

    for module in (neighbours, spage):
        module.COMPONENT_SEARCH_MIN_GENES = int(sys.argv[1])
        module.SEARCH_COMPONENTS = int(sys.argv[2])
    sys.exit(accuracy.main(sys.argv[3:]))
