"""The single source of jacntk's version (read by pyproject.toml and written into every store)."""

__version__ = "0.1.0"
