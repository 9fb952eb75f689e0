"""The popserv version, kept in one place for setup.cfg and the code."""

__version__ = "0.1.0"
