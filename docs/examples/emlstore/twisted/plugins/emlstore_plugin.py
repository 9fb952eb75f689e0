"""
The emlstore dropin: makes C{--mailstore eml:ROOT} known to popserv.

Twisted imports every module in every C{twisted/plugins/} directory on
C{sys.path} when it looks for plugins, so this one only names the plugin
object.  There is no C{__init__.py} in C{twisted/} or C{twisted/plugins/}:
they must not hide Twisted's own package.
"""

from emlstore import emlStoreFactory

__all__ = ["emlStoreFactory"]
