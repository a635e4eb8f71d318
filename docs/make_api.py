"""Write docs/api.md, the API reference, from the docstrings of the public objects.

    python docs/make_api.py            # rewrite docs/api.md
    python docs/make_api.py --check    # exit 1 when docs/api.md differs from the docstrings

No network and no Sphinx: `inspect` reads signatures and docstrings, and a small converter
turns numpydoc sections into Markdown. tests/test_docs.py fails when the committed page is
out of date, so a docstring change comes with a regenerated page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

#: The page: (section title, intro, [(public name, import path of the documented object)]).
SECTIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Impute", "One call fits the model on the reference and imputes the spatial data.", [
        ("spalstf.impute", "spalstf.api.impute"),
    ]),
    ("Fit once, impute many", "A trained model is an object: save it, load it, reuse it.", [
        ("spalstf.fit", "spalstf.api.fit"),
        ("spalstf.Model", "spalstf.model.Model"),
        ("spalstf.Model.impute", "spalstf.model.Model.impute"),
        ("spalstf.Model.save", "spalstf.model.Model.save"),
        ("spalstf.load", "spalstf.model.load"),
    ]),
    ("Settings", "Every setting of `impute`, `fit` and `Model.impute` beyond their own "
     "arguments is a field of `Config`, passed as `config={\"depth\": 2}` (a dict of fields) "
     "or `config=spalstf.Config(depth=2)`; a field as a keyword (`depth=2`) works too. The "
     "fields are grouped by stage: those of the model and train stages are fixed at fit, those "
     "of the sample and readout stages may differ at `Model.impute`; (prior) marks those that "
     "change the prior's own prediction.", [
        ("spalstf.Config", "spalstf.config.Config"),
    ]),
    ("Evaluation", "Leave-genes-out cross-validation, its metrics and the baseline methods.", [
        ("spalstf.cross_validate", "spalstf.evaluate.cv.cross_validate"),
        ("spalstf.evaluate.cv.CrossValidationResult", "spalstf.evaluate.cv.CrossValidationResult"),
        ("spalstf.evaluate.cv.CrossValidationResult.table",
         "spalstf.evaluate.cv.CrossValidationResult.table"),
        ("spalstf.evaluate.cv.gene_folds", "spalstf.evaluate.cv.gene_folds"),
        ("spalstf.metrics.pcc", "spalstf.evaluate.metrics.pcc"),
        ("spalstf.metrics.spcc", "spalstf.evaluate.metrics.spcc"),
        ("spalstf.metrics.ssim", "spalstf.evaluate.metrics.ssim"),
        ("spalstf.metrics.rmse", "spalstf.evaluate.metrics.rmse"),
        ("spalstf.metrics.js", "spalstf.evaluate.metrics.js"),
        ("spalstf.metrics.score_genes", "spalstf.evaluate.metrics.score_genes"),
        ("spalstf.metrics.summarize", "spalstf.evaluate.metrics.summarize"),
        ("spalstf.metrics.accuracy_score", "spalstf.evaluate.metrics.accuracy_score"),
        ("spalstf.metrics.leiden_clusters", "spalstf.evaluate.metrics.leiden_clusters"),
        ("spalstf.metrics.clustering_scores", "spalstf.evaluate.metrics.clustering_scores"),
        ("spalstf.evaluate.baselines.get_method", "spalstf.evaluate.baselines.get_method"),
        ("spalstf.evaluate.baselines.reference_mean",
         "spalstf.evaluate.baselines.reference_mean"),
        ("spalstf.evaluate.baselines.knn", "spalstf.evaluate.baselines.knn"),
        ("spalstf.evaluate.baselines.spage", "spalstf.evaluate.baselines.spage"),
        ("spalstf.evaluate.baselines.ridge", "spalstf.evaluate.baselines.ridge"),
        ("spalstf.evaluate.baselines.tangram", "spalstf.evaluate.baselines.tangram"),
        ("spalstf.evaluate.baselines.gimvi", "spalstf.evaluate.baselines.gimvi"),
        ("spalstf.evaluate.baselines.spalstf_method",
         "spalstf.evaluate.baselines.spalstf_method"),
    ]),
    ("Plots", "Each returns the matplotlib Figure and saves it when given `path`.", [
        ("spalstf.pl.spatial", "spalstf.pl.spatial"),
        ("spalstf.pl.uncertainty", "spalstf.pl.uncertainty"),
        ("spalstf.pl.confidence", "spalstf.pl.confidence"),
        ("spalstf.pl.metric_boxplot", "spalstf.pl.metric_boxplot"),
        ("spalstf.pl.loss_curve", "spalstf.pl.loss_curve"),
    ]),
    ("Data sets", "The simulator, the real pair shipped with the package, the readers of "
     "real paired data and the pooling of cells into spots.", [
        ("spalstf.datasets.simulate", "spalstf.datasets._simulate.simulate"),
        ("spalstf.datasets.load", "spalstf.datasets._loaders.load"),
        ("spalstf.datasets.osmfish_example", "spalstf.datasets._loaders.osmfish_example"),
        ("spalstf.datasets.read_h5ad_pair", "spalstf.datasets._loaders.read_h5ad_pair"),
        ("spalstf.datasets.read_li_format", "spalstf.datasets._loaders.read_li_format"),
        ("spalstf.datasets.read_rctd_pair", "spalstf.datasets._loaders.read_rctd_pair"),
        ("spalstf.datasets.read_rctd_csv", "spalstf.datasets._loaders.read_rctd_csv"),
        ("spalstf.datasets.pool_spots", "spalstf.datasets._spots.pool_spots"),
    ]),
    ("Files", "`.h5ad` through anndata; R's `.rds` through rpy2 (`pip install 'spalstf[r]'` "
     "and R).", [
        ("spalstf.io.read", "spalstf.io.read"),
        ("spalstf.io.write_h5ad", "spalstf.io.write_h5ad"),
        ("spalstf.io.H5adWriter", "spalstf.io._stream.H5adWriter"),
        ("spalstf.io.merge_h5ad", "spalstf.io._stream.merge_h5ad"),
        ("spalstf.io.read_rds", "spalstf.io._rds.read_rds"),
        ("spalstf.io.write_rds", "spalstf.io._rds.write_rds"),
    ]),
]

HEADER = """# API reference

Generated by `python docs/make_api.py` from the docstrings; do not edit by hand (the test
suite fails when this page and the docstrings differ). The usage principles are in
[usage.md](usage.md); the command line documents itself (`spalstf --help`,
`spalstf impute --help`); the R package documents itself (`?SpaLSTF::Impute`).
"""


def resolve(path: str):
    """The object at a dotted import path (module, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def signature(name: str, obj) -> str:
    """`name(params)`, one parameter per line when long; `self` dropped."""
    sig = inspect.signature(obj)
    params, star_done = [], False
    items = [p for p in sig.parameters.values() if p.name != "self"]
    for i, p in enumerate(items):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            params.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        params.append(_param(p))
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(items)
                                            or items[i + 1].kind is not p.POSITIONAL_ONLY):
            params.append("/")
    ret = "" if sig.return_annotation is inspect.Signature.empty else \
        f" -> {_annotation(sig.return_annotation)}"
    flat = f"{name}({', '.join(params)}){ret}"
    if len(flat) <= 96:
        return flat
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _annotation(a) -> str:
    """An annotation as written in the source (they are strings under `from __future__ import
    annotations`)."""
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _param(p: inspect.Parameter) -> str:
    star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    text = star + p.name
    if p.annotation is not p.empty:
        text += f": {_annotation(p.annotation)}"
    if p.default is not p.empty:
        text += (" = " if p.annotation is not p.empty else "=") + repr(p.default)
    return text


_ROLE = re.compile(r":(?:func|data|mod|class|meth|attr|obj):`~?([^`]+)`")


def inline(text: str) -> str:
    """reST inline markup to Markdown: ``x`` and :role:`x` -> `x`."""
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def docstring_md(doc: str) -> str:
    """A numpydoc docstring as Markdown: sections in bold, parameters as a list, doctests and
    code in fenced blocks."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and nxt.strip() and set(nxt.strip()) == {"-"} \
                and len(nxt.strip()) >= len(line.strip()) and not line.startswith(" "):
            out += [f"**{line.strip()}**", ""]
            i += 2
            body = []
            while i < len(lines):
                after = lines[i + 1] if i + 1 < len(lines) else ""
                if lines[i].strip() and after.strip() and set(after.strip()) == {"-"} \
                        and not lines[i].startswith(" "):
                    break
                if lines[i].startswith(">>>"):  # examples end a section
                    break
                body.append(lines[i])
                i += 1
            out += _section(body)
            continue
        if line.lstrip().startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i].strip().removeprefix(">>> ").removeprefix("... "))
                i += 1
            out += ["```python", *block, "```"]
            continue
        out.append(inline(line))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _section(body: list[str]) -> list[str]:
    """The body of a numpydoc section: `name` + indented description -> a list item; lines
    that no indented line follows stay prose."""
    groups: list[tuple[str, list[str]]] = []
    for line in body:
        if not line.strip():
            groups.append(("", []))
        elif line.startswith(" ") and groups and groups[-1][0]:
            groups[-1][1].append(line.strip())
        else:
            groups.append((line.strip(), []))
    out: list[str] = []
    for head, desc in groups:
        if not head:
            out.append("")
        elif desc:
            out.append(f"- `{head}`: {inline(' '.join(desc))}")
        else:
            out.append(inline(head))
    return out + [""]


def config_md(cls) -> str:
    """The fields of the Config dataclass: name, default, and the `#:` comment above each."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    last = ("", "")  # the last commented field and its comment
    # the fields are declared in the stages' classes Config inherits, in their order
    source = "\n".join(inspect.getsource(c) for c in reversed(cls.__mro__)
                       if dataclasses.is_dataclass(c))
    for line in source.splitlines():
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:\s*[^=]+=", s)
        if m:
            name, text = m.group(1), " ".join(pending)
            if text:
                last = (name, text)
            elif re.search(rf"\b{name}\b", last[1]):  # one comment for several fields
                text = f"See `{last[0]}`."
            comments[name] = text
            pending = []
        elif not s.startswith("#"):
            pending = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for stage in dict.fromkeys(f.metadata["stage"] for f in fields.values()):
        rows = [f"#### Stage `{stage}`\n", "| field | default | meaning |", "|---|---|---|"]
        for name in cls.fields(stage):
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = comments.get(f.name, "").replace("|", "\\|")
            mark = " (prior)" if f.metadata["prior"] else ""
            rows.append(f"| `{f.name}`{mark} | `{default!r}` | {inline(text)} |")
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def render() -> str:
    sys.path.insert(0, str(ROOT))
    import spalstf

    parts = [HEADER, f"spalstf {spalstf.__version__}.\n"]
    parts.append("## Contents\n")
    for title, _, entries in SECTIONS:
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        parts.append(f"- [{title}](#{anchor}): " + ", ".join(f"`{n}`" for n, _ in entries))
    parts.append("")
    for title, intro, entries in SECTIONS:
        parts.append(f"## {title}\n\n{intro}\n")
        for name, path in entries:
            obj = resolve(path)
            parts.append(f"### `{name}`\n")
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and name.endswith("Config"):
                parts.append(docstring_md(inspect.getdoc(obj) or ""))
                parts.append(docstring_md(inspect.getdoc(resolve(obj.__module__)) or ""))
                parts.append(config_md(obj))
                continue
            if inspect.isclass(obj):  # made by the library, not by the user
                parts.append(f"*class* `{name}`\n")
            elif callable(obj):
                parts.append(f"```python\n{signature(name, obj)}\n```\n")
            parts.append(docstring_md(inspect.getdoc(obj) or "(no docstring)"))
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/api.md from the docstrings.")
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
