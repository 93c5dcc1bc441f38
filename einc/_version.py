"""The einc version, in one place: the package, its metadata (pyproject.toml) and emitted files read it."""

__version__ = "0.1.0"
