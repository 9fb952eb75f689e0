"""
Sphinx configuration for the popserv documentation.

Plain Sphinx with no extension that needs the network: the build runs
offline with warnings as errors (make docs).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Read the version from the checkout being documented, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from popserv._version import __version__

project = "popserv"
author = "the popserv authors"
copyright = "the popserv authors"
version = __version__
release = __version__

extensions: list[str] = []
root_doc = "index"
exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []
default_role = "literal"
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "A pluggable POP3 server on Twisted",
    "fixed_sidebar": False,
}
html_show_sourcelink = False
