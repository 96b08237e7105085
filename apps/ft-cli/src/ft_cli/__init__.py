"""The `ft` command. An app, not a library: use `ft` from a shell, import the packages in code."""

__version__ = "0.1.0"
