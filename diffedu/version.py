"""The version of diffedu (one place, read by the package and by the set-up cell)."""

__version__ = "0.1.0"
