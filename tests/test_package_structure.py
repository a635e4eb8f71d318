"""Signature rules of the public API (as scanpy checks them): data first, options keyword-only."""

import inspect

import pytest

import spalstf

PUBLIC = [spalstf.impute, spalstf.fit, spalstf.load, spalstf.Model.impute, spalstf.Model.save,
          spalstf.datasets.simulate]


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__qualname__)
def test_options_are_keyword_only_and_documented(func):
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
    assert len(positional) <= 3, f"{func.__qualname__}: too many positional parameters"
    for p in params:
        if p.kind is p.POSITIONAL_OR_KEYWORD and isinstance(p.default, bool):
            pytest.fail(f"{func.__qualname__}: positional boolean {p.name}")
    doc = inspect.getdoc(func) or ""
    assert "Parameters" in doc
    for p in positional:
        assert p.name in doc, f"{func.__qualname__} does not document {p.name}"


def test_library_never_configures_the_root_logger():
    import logging

    assert not any(h.__class__.__module__.startswith("spalstf") for h in logging.root.handlers)
    assert logging.getLogger("spalstf").handlers  # a NullHandler only
