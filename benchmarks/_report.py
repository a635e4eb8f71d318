"""What the small benchmark scripts do last: print their Markdown, write it to ``OUT.md`` and
a figure to ``OUT.png``, each atomically (a run stopped half-way leaves the earlier files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spalstf._atomic import atomic_path


def write_report(out: str | Path, text: str, draw: Callable[[Any], None], *,
                 figsize: tuple[float, float] = (6, 3)) -> None:
    """Print ``text`` and write it to ``out`` + ``.md``; ``draw(ax)`` fills one matplotlib
    axes (Agg backend), saved to ``out`` + ``.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(text)
    out = Path(out)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    fig, ax = plt.subplots(figsize=figsize)
    try:
        draw(ax)
        fig.tight_layout()
        with atomic_path(out.with_suffix(".png")) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
