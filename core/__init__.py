"""molbridge core: plugin system, recipes, the training loop, tracking and the ``bench`` CLI.

Plugin authors need one import: ``from molbridge.core import hookimpl`` (and ``bounded`` for recipe keys
with a valid range). docs/plugins.md shows a complete plugin of each kind.
"""

from molbridge.core.hookspecs import HOOK_API_VERSION, hookimpl
from molbridge.core.recipe import bounded

__all__ = ["HOOK_API_VERSION", "bounded", "hookimpl"]
