"""Loading plugins: the built-ins from an explicit list, third-party ones from entry points.

A plugin that fails to import, implements a misspelled hook, or raises while registering is
reported with a :class:`PluginLoadWarning` naming the plugin and its distribution, and everything
else keeps working; ``strict=True`` (``bench --strict-plugins``, or ``MOLBRIDGE_STRICT_PLUGINS=1``)
turns that into an error. Two plugins registering the same name is always an error naming both.

Environment switches:
- ``MOLBRIDGE_NO_EXTERNAL_PLUGINS=1``: load the built-ins only.
- ``MOLBRIDGE_BLOCKED_PLUGINS=a,b``: skip these plugins (entry-point or module names).
- ``MOLBRIDGE_STRICT_PLUGINS=1``: a plugin that fails to load is fatal.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from molbridge.core import hookspecs
from molbridge.core.errors import PluginError, suggest
from molbridge.core.registry import HOOK_BY_KIND, Registry, make_register

ENTRY_POINT_GROUP = "molbridge"

#: Built-in plugins, loaded in this order before any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "molbridge.plugins.encoders.schnet",
    "molbridge.plugins.encoders.unimol",
    "molbridge.plugins.encoders.smiles",
    "molbridge.plugins.projectors.qformer",
    "molbridge.plugins.projectors.linear",
    "molbridge.plugins.tasks.retrieval",
    "molbridge.plugins.llms.llama",
    "molbridge.plugins.llms.vicuna",
    "molbridge.plugins.tasks.captioning",
    "molbridge.plugins.tasks.qa",
)

ENV_NO_EXTERNAL = "MOLBRIDGE_NO_EXTERNAL_PLUGINS"
ENV_BLOCKED = "MOLBRIDGE_BLOCKED_PLUGINS"
ENV_STRICT = "MOLBRIDGE_STRICT_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    error: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}" if self.distribution else "no distribution"


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def molbridge_version() -> str | None:
    """The installed molbridge distribution's version (None when running from an uninstalled tree)."""
    try:
        return metadata.version("molbridge")
    except metadata.PackageNotFoundError:
        return None


def _candidates(external: bool, extra: Iterable[Any]) -> list[tuple[PluginInfo, Callable[[], Any]]]:
    """(info, loader) pairs; nothing is imported yet, so one plugin's import error stays its own."""
    version = molbridge_version()
    found = [
        (PluginInfo(m.rsplit(".", 1)[-1], m, "molbridge", version, True), functools.partial(importlib.import_module, m))
        for m in BUILTIN_PLUGINS
    ]
    if external:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None, False)
            found.append((info, ep.load))
    for obj in extra:
        name = getattr(obj, "__name__", type(obj).__name__)
        found.append((PluginInfo(name, name, None, None, False), functools.partial(lambda o: o, obj)))
    return found


def _check_hook_names(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
    """Catch misspelled hook implementations before they silently register nothing."""
    specs = [h for h in vars(hookspecs) if h.startswith("molbridge_")]
    for attr in dir(plugin):
        if manager.parse_hookimpl_opts(plugin, attr) is not None and attr not in specs:
            raise PluginError(f"plugin '{info.name}' implements unknown hook '{attr}'{suggest(attr, specs)}")


def _register_components(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> Registry:
    """Run one plugin's register hooks into a registry of its own (merged only if all succeed)."""
    own = Registry()
    for kind, hook_name in HOOK_BY_KIND.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if impl.plugin is plugin:
                impl.function(register=make_register(own, kind, info.name, info.distribution, info.version))
    return own


def load_plugins(
    *, strict: bool | None = None, external: bool | None = None, extra: Iterable[Any] = ()
) -> LoadedPlugins:
    """Load built-in, entry-point and ``extra`` plugins (modules or objects with hook implementations)."""
    strict = _env_flag(ENV_STRICT) if strict is None else strict
    external = not _env_flag(ENV_NO_EXTERNAL) if external is None else external
    blocked = {b.strip() for b in os.environ.get(ENV_BLOCKED, "").split(",") if b.strip()}
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    registry, infos = Registry(), []
    for info, load in _candidates(external, extra):
        if info.name in blocked or info.module in blocked:
            continue
        infos.append(info)
        plugin = None
        try:
            plugin = load()
            _check_hook_names(manager, plugin, info)
            manager.register(plugin, name=info.name)
            own = _register_components(manager, plugin, info)
        except Exception as exc:  # noqa: BLE001 - isolating arbitrary plugin code is the point
            if plugin is not None and manager.is_registered(plugin):
                manager.unregister(plugin)
            info.error = f"{type(exc).__name__}: {exc}"
            message = f"plugin '{info.name}' ({info.origin}) failed to load and is skipped: {info.error}"
            if strict:
                raise PluginError(message) from exc
            warnings.warn(message, PluginLoadWarning, stacklevel=2)
            continue
        for kind_components in own.components.values():
            for component in kind_components.values():
                registry.add(component)  # raises on a clash, naming both plugins
                info.components.append((component.kind, component.name))
    manager.check_pending()
    return LoadedPlugins(manager, registry, infos)


@functools.cache
def default_plugins(strict: bool | None = None) -> LoadedPlugins:
    """The process-wide plugin set (loaded once)."""
    return load_plugins(strict=strict)


def get_registry() -> Registry:
    return default_plugins().registry
