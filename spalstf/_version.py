"""The package version: the one source of truth (pyproject.toml and the R DESCRIPTION follow it)."""

__version__ = "0.1.0"
