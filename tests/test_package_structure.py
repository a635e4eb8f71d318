"""The house: public signatures follow one rule (as scanpy checks them), and the modules import
each other in layers, without a circle."""

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

import spalstf

PUBLIC = [spalstf.impute, spalstf.fit, spalstf.load, spalstf.Model.impute, spalstf.Model.save,
          spalstf.datasets.simulate]
PACKAGE = Path(spalstf.__file__).parent


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


def _public_functions():
    """Every public function of the public modules (those of docs/api.md), the public methods
    of their classes and the constructors of the classes users make (a dataclass lists its
    fields; `Model` is made by `fit` and `load`), the classes of the prior's interface,
    which other predictors follow, and the combinations of their predictions."""
    modules = ["spalstf", "spalstf.datasets", "spalstf.io", "spalstf.metrics", "spalstf.pl",
               "spalstf.evaluate.cv", "spalstf.evaluate.baselines", "spalstf.evaluate.metrics"]
    made_by_the_library = {spalstf.Model}
    prior = importlib.import_module("spalstf.prior")
    classes = [(f"spalstf.prior.{n}", getattr(prior, n)) for n in prior.__all__
               if inspect.isclass(getattr(prior, n))]
    classes += [(f"spalstf.combine.{module}.{n}",
                 getattr(importlib.import_module(f"spalstf.combine.{module}"), n))
                for module, n in (("stack", "Stack"), ("blend", "Blend"))]
    seen, out = set(), []
    for name in modules:
        module = importlib.import_module(name)
        names = getattr(module, "__all__", None) or [n for n in vars(module)
                                                     if not n.startswith("_")]
        for attr in names:
            obj = getattr(module, attr, None)
            if not getattr(obj, "__module__", "").startswith("spalstf"):
                continue
            if inspect.isfunction(obj):
                out.append((f"{name}.{attr}", obj))
            elif inspect.isclass(obj):
                classes.append((f"{name}.{attr}", obj))
    for name, cls in classes:
        for meth, value in vars(cls).items():
            func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            if inspect.isfunction(func) and not meth.startswith("_"):
                out.append((f"{name}.{meth}", func))
        if not dataclasses.is_dataclass(cls) and "__init__" in vars(cls) \
                and cls not in made_by_the_library:
            out.append((name, cls.__init__))
    unique = []
    for name, func in out:
        if id(func) not in seen:
            seen.add(id(func))
            unique.append(pytest.param(name, func, id=name, marks=[pytest.mark.xfail(
                reason=KNOWN_EXCEPTIONS[name], strict=True)] if name in KNOWN_EXCEPTIONS
                else []))
    return unique


#: Public functions that break the rule today, and why they are left so (a fix turns the
#: strict xfail into a failure, so that this list shrinks).
KNOWN_EXCEPTIONS: dict[str, str] = {}


@pytest.mark.parametrize("name,func", _public_functions())
def test_every_public_function_takes_its_data_first_and_the_rest_by_keyword(name, func):
    """At most three parameters by position (the data: matrices, genes, a path), never a
    flag: options are keyword-only."""
    params = [p for p in inspect.signature(func).parameters.values()
              if p.name not in ("self", "cls")]
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3, f"{name}: too many positional parameters {positional}"
    flags = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
             and isinstance(p.default, bool)]
    assert not flags, f"{name}: positional boolean(s) {flags}"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _lazy_parts(tree: ast.Module) -> list[ast.stmt]:
    """The statements of a module whose imports never run with it: its `if TYPE_CHECKING:`
    blocks, and a package's `__getattr__` (PEP 562), which loads a name on its first use."""
    return [node for node in tree.body if _is_type_checking(node)
            or isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]


def _import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of the package at `root` that importing or running it imports.

    - Deferred imports (inside a function) count: the function may run at any time.
    - Importing `p.a.b` (or `from p.a.b import x`, or `from p.a import b`) first runs the
      `__init__` of `p.a`: the importer depends on the package `p.a` too. Not on its own
      packages, though: they have run before it (this is why a module never depends on the
      top-level package merely by importing a sibling).
    - `from p.a import x`, where `x` is neither a module nor a lazy name, uses what
      `p/a/__init__.py` defines: an edge to `p.a`, even from inside `p.a`.
    - A package's lazy names (those its `__init__` imports only under `if TYPE_CHECKING:` or in
      its `__getattr__`, PEP 562) are no dependency of the package: they load on first use,
      and that use is the edge, to the module that defines the name (`from spalstf import
      impute`, or `import spalstf` and then `spalstf.impute`: an edge to `spalstf.api`).
    """
    package = root.name
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    packages = {_module_name(p, root) for p in root.rglob("__init__.py")}

    def imported(node: ast.AST) -> list[tuple[str, str | None]]:
        """(module, name) pairs an import statement brings in (name None: the module)."""
        if isinstance(node, ast.Import):
            return [(a.name, None) for a in node.names if a.name.split(".")[0] == package]
        if isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] == package and not node.level:
            return [(node.module, a.name) for a in node.names]
        return []

    lazy: dict[str, dict[str, str]] = {}
    for name in packages:
        for stmt in _lazy_parts(trees[name]):
            for node in ast.walk(stmt):
                for module, attr in imported(node):
                    if attr is not None and f"{module}.{attr}" not in modules:
                        lazy.setdefault(name, {})[attr] = module

    def resolve(module: str, attr: str) -> str | None:
        """The module that `module.attr` loads: a sub-module, or where a lazy name lives."""
        if f"{module}.{attr}" in modules:
            return f"{module}.{attr}"
        return lazy.get(module, {}).get(attr)

    graph = {}
    for name, tree in trees.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
        skipped = {id(n) for stmt in _lazy_parts(tree) for n in ast.walk(stmt)}
        nodes = [n for n in ast.walk(tree) if id(n) not in skipped]
        found: set[str] = set()
        bound: dict[str, str] = {}  # a name an `import` statement binds -> its module
        for node in nodes:
            for module, attr in imported(node):
                parts = module.split(".")
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own
                if attr is None:
                    alias = next(a for a in node.names if a.name == module)
                    bound[alias.asname or parts[0]] = module if alias.asname else parts[0]
                elif (target := resolve(module, attr)) is not None:
                    found.add(target)
                    if target == f"{module}.{attr}":
                        alias = next(a for a in node.names if a.name == attr)
                        bound[alias.asname or attr] = target
                else:
                    found.add(module)  # a name its __init__ defines
        for node in nodes:  # `spalstf.impute`, `spalstf.evaluate.cv`: what is used of a module
            if isinstance(node, ast.Attribute):
                chain = []
                inner: ast.AST = node
                while isinstance(inner, ast.Attribute):
                    chain.insert(0, inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id in bound:
                    module = bound[inner.id]
                    for attr in chain:
                        target = resolve(module, attr)
                        if target is None:
                            break
                        found.add(target)
                        if target != f"{module}.{attr}":
                            break
                        module = target
        graph[name] = found - {name}
    return graph


def _imports() -> dict[str, set[str]]:
    """The import graph of spalstf (see :func:`_import_graph`)."""
    return _import_graph(PACKAGE)


def test_only_the_package_and_the_cli_call_the_api_and_sampling_does_not_train():
    graph = _imports()
    users = {m for m, deps in graph.items() if "spalstf.api" in deps}
    # the evaluation harness too: it scores spalstf as a user calls it (`spalstf_method`)
    allowed = {"spalstf", "spalstf.cli.commands", "spalstf.cli.demo",
               "spalstf.evaluate.baselines"}
    assert users <= allowed, users - allowed

    def within(deps: set[str], *packages: str) -> set[str]:
        return {d for d in deps if any(d == p or d.startswith(p + ".") for p in packages)}

    # the self-check fits with the function it is handed: the combination (the self-check
    # among it) needs neither the API, nor the package (whose import runs the API), nor the
    # model
    for module, deps in graph.items():
        if module.startswith("spalstf.combine"):
            assert not within(deps, "spalstf.api", "spalstf.model") and "spalstf" not in deps
    # sampling does not train
    for module, deps in graph.items():
        if module.startswith("spalstf.diffusion"):
            assert not within(deps, "spalstf.train"), module
    assert "spalstf.prior.masked.train" not in graph["spalstf.prior.masked.sample"]
    # the prior sits below the model, the combination and the diffusion network's training
    # (which reads it); the masked network inside it trains through the shared loop and
    # samples as the network does
    for module, deps in graph.items():
        if module.startswith("spalstf.prior"):
            assert not within(deps, "spalstf.model", "spalstf.combine", "spalstf.api",
                              "spalstf.train.denoiser"), module


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import circle of `graph` (a depth-first search), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_the_modules_import_each_other_without_a_circle():
    """Every edge counts (see `_import_graph`): deferred imports, and the packages whose
    `__init__` an import runs. The top-level package `spalstf` is no exception but needs none:
    every module runs after it (it is their package), and its `__init__` imports only
    `spalstf._version` when it runs; its public names (`spalstf.impute`, ...) are lazy (PEP
    562), so using one is an edge to the module that defines it (`spalstf.api`), not to the
    package, and the package itself depends on none of them."""
    # the graph learns the package's lazy names from its TYPE_CHECKING block: it must name
    # each of them where `spalstf.__getattr__` loads it from
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {a.asname or a.name: node.module for stmt in _lazy_parts(init)
             for node in ast.walk(stmt) if isinstance(node, ast.ImportFrom) for a in node.names}
    assert {name: typed.get(name) for name in spalstf._DEFINED_IN} == spalstf._DEFINED_IN
    circle = _circle(_imports())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_import_graph_sees_package_inits_deferred_imports_and_lazy_names(tmp_path):
    """The detector itself, on a small package: `b` imports `p.a.x` inside a function, which
    first runs `p/a/__init__.py`, which imports `b`: a circle through an `__init__`. The lazy
    name of `p` (under TYPE_CHECKING, loaded by `__getattr__`) is an edge of its user only."""
    files = {
        "p/__init__.py": "from typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from p.c import thing\n"
                         "def __getattr__(name):\n    from p.c import thing\n    return thing\n",
        "p/a/__init__.py": "from p.b import helper\n",
        "p/a/x.py": "value = 1\n",
        "p/b.py": "def helper():\n    from p.a.x import value\n    return value\n",
        "p/c.py": "import p.a.x\nthing = 2\n",
        "p/d.py": "import p\ndef use():\n    return p.thing\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = _import_graph(tmp_path / "p")
    assert graph["p.b"] == {"p.a", "p.a.x"}  # the package whose __init__ runs first
    assert graph["p"] == set()  # its lazy name is no dependency of the package
    assert graph["p.d"] == {"p.c"}  # but of the module that uses it
    assert graph["p.c"] == {"p.a", "p.a.x"}
    assert _circle(graph) == ["p.a", "p.b", "p.a"]
    (tmp_path / "p/a/__init__.py").write_text("")
    assert _circle(_import_graph(tmp_path / "p")) is None


def test_library_never_configures_the_root_logger():
    import logging

    assert not any(h.__class__.__module__.startswith("spalstf") for h in logging.root.handlers)
    assert logging.getLogger("spalstf").handlers  # a NullHandler only
