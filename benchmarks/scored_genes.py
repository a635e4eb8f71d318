"""The self-check's bound on the hidden genes it scores (`MAX_SCORED_GENES`), tried where it
does not engage by default: `benchmarks/accuracy.py` with the bound lowered, beside the same
command at the default, so that the effect of scoring a sample of each fold's hidden genes on
the imputation's accuracy is measured on a real set.

    python benchmarks/scored_genes.py 60 --datasets visium_lymph --methods knn,spage,ridge,spalstf \
        --no-clustering --name scored60
    python benchmarks/accuracy.py --datasets visium_lymph --methods knn,spage,ridge,spalstf \
        --no-clustering --name scored_default

(visium_lymph: 558 shared genes, 446 known in each outer fold, 223 hidden per inner fold:
the bound 60 scores about a quarter of them.) The first argument is the bound; the rest are
`benchmarks/accuracy.py`'s.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    import accuracy

    from spalstf.combine import selfcheck

    selfcheck.MAX_SCORED_GENES = int(sys.argv[1])
    sys.exit(accuracy.main(sys.argv[2:]))
