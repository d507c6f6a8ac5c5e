"""molbridge core: plugin system, recipes, the training loop, tracking and the ``bench`` CLI.

Plugin authors need one import: ``from molbridge.core import hookimpl``.
"""

from molbridge.core.hookspecs import hookimpl

__all__ = ["hookimpl"]
