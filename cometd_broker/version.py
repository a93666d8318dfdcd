"""The distribution's version, in a module of its own so any module may import it without importing the package."""

__version__ = "0.1.0"
