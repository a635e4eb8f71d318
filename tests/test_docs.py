"""Documentation that cannot rot: the API page matches the docstrings, CITATION.cff is valid
CFF 1.2 and cites the paper, the README's Python quick start runs, and the docs' links and
file references exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import spalstf

ROOT = Path(__file__).resolve().parents[1]


def test_api_page_is_up_to_date():
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (
        "docs/api.md differs from the docstrings; regenerate it with "
        f"`python docs/make_api.py` and commit it.\n{run.stderr[-2000:]}")


def test_api_page_covers_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    names = [f"spalstf.{n}" for n in ("impute", "fit", "load", "Model", "Config",
                                      "cross_validate")]
    names += [f"spalstf.pl.{n}" for n in spalstf.pl.__all__]
    names += [f"spalstf.metrics.{n}" for n in spalstf.metrics.__all__
              if callable(getattr(spalstf.metrics, n))]
    names += [f"spalstf.datasets.{n}" for n in spalstf.datasets.__all__
              if callable(getattr(spalstf.datasets, n))]
    names += [f"spalstf.io.{n}" for n in spalstf.io.__all__]
    missing = [n for n in names if f"### `{n}`" not in text]
    assert not missing, f"add these to SECTIONS in docs/make_api.py: {missing}"


def test_docstring_to_markdown():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_api
    finally:
        sys.path.pop(0)
    doc = ("Do it.\n\nParameters\n----------\nx, y\n    The ``inputs``,\n    two lines.\n"
           "flag\n    See :func:`spalstf.fit`.\n\nReturns\n-------\nA plain sentence.\n\n"
           ">>> import spalstf\n>>> spalstf.fit(sc)\n")
    assert make_api.docstring_md(doc) == (
        "Do it.\n\n**Parameters**\n\n- `x, y`: The `inputs`, two lines.\n"
        "- `flag`: See `spalstf.fit`.\n\n**Returns**\n\nA plain sentence.\n\n"
        "```python\nimport spalstf\nspalstf.fit(sc)\n```\n")


# --- CITATION.cff ----------------------------------------------------------------------------
#: Keys CFF 1.2.0 allows (schema.json of citation-file-format/citation-file-format, 1.2.0).
CFF_ROOT = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
            "identifiers", "keywords", "license", "license-url", "message",
            "preferred-citation", "references", "repository", "repository-artifact",
            "repository-code", "title", "type", "url", "version"}
CFF_PERSON = {"address", "affiliation", "alias", "city", "country", "email", "family-names",
              "fax", "given-names", "name-particle", "name-suffix", "orcid", "post-code",
              "region", "tel", "website"}
CFF_ENTITY = {"address", "alias", "city", "country", "date-end", "date-start", "email", "fax",
              "location", "name", "orcid", "post-code", "region", "tel", "website"}
DOI = re.compile(r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$")


def _check_authors(authors):
    assert isinstance(authors, list) and authors
    for a in authors:
        keys = set(a)
        if "name" in a:
            assert keys <= CFF_ENTITY, keys - CFF_ENTITY
        else:
            assert keys <= CFF_PERSON, keys - CFF_PERSON
            assert a.get("family-names") and a.get("given-names")


def test_citation_cff_is_valid_and_cites_the_paper_and_the_software():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert set(cff) <= CFF_ROOT, set(cff) - CFF_ROOT
    for key in ("message", "title", "authors"):
        assert cff.get(key), key
    assert cff["type"] == "software"
    assert str(cff["version"]) == spalstf.__version__
    _check_authors(cff["authors"])
    paper = cff["preferred-citation"]
    assert paper["type"] == "article" and paper["title"].startswith("SpaLSTF:")
    assert paper["doi"] == "10.1371/journal.pcbi.1013954" and DOI.match(paper["doi"])
    assert isinstance(paper["year"], int)
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", str(paper["date-published"]))
    _check_authors(paper["authors"])
    assert [a["family-names"] for a in paper["authors"]] == [
        "Yuan", "Jiang", "Meng", "Wang", "Wang", "Huang"]


def test_citation_and_changelog_name_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {spalstf.__version__}" in changelog


# --- README and docs ---------------------------------------------------------------------------
def _code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def test_readme_python_quick_start_runs(tmp_path, monkeypatch):
    """The first Python block of the README, as written, on small data and short training (the
    calls are wrapped so that they add fast settings; the code itself is unchanged)."""
    import functools

    from conftest import FAST

    block = _code_blocks((ROOT / "README.md").read_text(), "python")[0]
    assert "spalstf.impute(" in block
    simulate = spalstf.datasets.simulate
    monkeypatch.setattr(spalstf.datasets, "simulate", functools.partial(
        simulate, n_st=60, n_sc=150, n_genes=30, n_measured=22))
    for name in ("impute", "fit"):
        monkeypatch.setattr(spalstf, name, functools.partial(getattr(spalstf, name), **FAST))
    monkeypatch.chdir(tmp_path)
    import warnings

    import matplotlib.pyplot as plt

    names: dict = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(block, "README.md", "exec"), names)  # noqa: S102 - our own README
    finally:
        plt.close("all")
    # a call the README shows is not one its library has deprecated (scanpy's sc.pl.spatial
    # without an image: "FutureWarning: Use `squidpy.pl.spatial_scatter` instead")
    deprecated = [f"{w.category.__name__}: {w.message}" for w in caught
                  if w.filename == "README.md"
                  and issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecated, deprecated
    # what the block says it made: the interval beside the values, the self-check's estimate,
    # and scanpy's next steps on the result (the reference is not named `sc`, scanpy is)
    imputed = names["imputed"]
    assert {"std", "lower", "upper"} <= set(imputed.layers)
    assert (imputed.layers["lower"] <= imputed.X + 1e-6).all()
    assert (imputed.X <= imputed.layers["upper"] + 1e-6).all()
    assert "median_pcc" in imputed.uns["spalstf"]["self_check"]
    if "sc.pp." in block:
        assert names["sc"].__name__ == "scanpy"
        assert "X_umap" in imputed.obsm and "spatial" in imputed.obsm


def test_docs_links_and_paths_exist():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", text):
            if target.startswith("http"):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
        for path in re.findall(r"`((?:examples|docs|benchmarks|scripts|tests)/[\w./-]+)`", text):
            path = path.split("::")[0]
            assert (ROOT / path).exists(), f"{page.name}: no file {path}"
