"""The workbench's version: one place, importable by the broker without the client."""

__version__ = "0.1.0"
