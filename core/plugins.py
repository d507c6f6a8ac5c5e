"""Loading plugins: every plugin, built-in or third-party, through the ``molbridge`` entry-point group.

molbridge's own components are plugins like any other: its distribution declares them as entry points
(pyproject.toml), so core imports no plugin; they load first. A plugin that fails to import, implements a
misspelled hook, declares another hook-API version, or raises while registering is reported with a
:class:`PluginLoadWarning` naming the plugin and its distribution, and everything else keeps working;
``strict=True`` (``bench --strict-plugins``, or ``MOLBRIDGE_STRICT_PLUGINS=1``) turns that into an error.
A plugin module with no hook implementation at all gets a warning (a forgotten ``@hookimpl``).

Two plugins registering one name: the later plugin is disabled (with a warning naming both and the switch
that chooses, ``MOLBRIDGE_BLOCKED_PLUGINS``), and the name itself is unusable until one is blocked, so no
recipe silently gets the other plugin's component; every command that does not use that name keeps working.

A plugin declares the hook API it was written for with a module attribute ``molbridge_hook_api = N``
(:data:`~molbridge.core.hookspecs.HOOK_API_VERSION`); ``bench plugins`` shows it.

Environment switches:
- ``MOLBRIDGE_NO_EXTERNAL_PLUGINS=1``: load the built-ins only.
- ``MOLBRIDGE_BLOCKED_PLUGINS=a,b``: skip these plugins (entry-point or module names).
- ``MOLBRIDGE_STRICT_PLUGINS=1``: a plugin that fails to load is fatal.
"""

from __future__ import annotations

import functools
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
DISTRIBUTION = "molbridge"  # whose entry points are the built-ins

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
    hook_api: int | None = None
    warning: str | None = None

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
    """(info, loader) pairs, built-ins first; nothing is imported yet, so one plugin's import error stays its own."""
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        name = dist.name if dist else None
        builtin = name is not None and name.lower() == DISTRIBUTION
        if builtin or external:
            found.append((PluginInfo(ep.name, ep.value, name, dist.version if dist else None, builtin), ep.load))
    # built-ins first in their declared order, then the others by distribution: "later" in a clash is well defined
    found.sort(key=lambda pair: (not pair[0].builtin, "" if pair[0].builtin else (pair[0].distribution or "")))
    for obj in extra:
        label = getattr(obj, "__name__", type(obj).__name__)
        found.append((PluginInfo(label, label, None, None, False), functools.partial(lambda o: o, obj)))
    return found


def _check_hook_api(plugin: Any, info: PluginInfo) -> None:
    declared = getattr(plugin, "molbridge_hook_api", None)
    info.hook_api = declared
    if declared is not None and declared != hookspecs.HOOK_API_VERSION:
        raise PluginError(
            f"plugin '{info.name}' was written for molbridge hook API {declared}; this molbridge has "
            f"{hookspecs.HOOK_API_VERSION} (CHANGELOG.md says what changed)"
        )


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
            _check_hook_api(plugin, info)
            _check_hook_names(manager, plugin, info)
            manager.register(plugin, name=info.name)
            own = _register_components(manager, plugin, info)
            if not manager.get_hookcallers(plugin):
                info.warning = (
                    f"plugin '{info.name}' ({info.origin}) defines no hook implementation (forgot @hookimpl?)"
                )
                warnings.warn(info.warning, PluginLoadWarning, stacklevel=2)
            _check_clashes(registry, own, info)
        except Exception as exc:  # noqa: BLE001 - isolating arbitrary plugin code is the point
            if plugin is not None and manager.is_registered(plugin):
                manager.unregister(plugin)
            info.error = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            message = (
                info.error
                if isinstance(exc, PluginError)
                else (f"plugin '{info.name}' ({info.origin}) failed to load and is skipped: {info.error}")
            )
            if strict:
                raise PluginError(message) from exc
            warnings.warn(message, PluginLoadWarning, stacklevel=2)
            continue
        for kind_components in own.components.values():
            for component in kind_components.values():
                registry.add(component)
                info.components.append((component.kind, component.name))
    manager.check_pending()
    return LoadedPlugins(manager, registry, infos)


def _check_clashes(registry: Registry, own: Registry, info: PluginInfo) -> None:
    """A name already registered by an earlier plugin disables this one; the name becomes unusable (contested)
    until the user blocks one of the two."""
    for kind, components in own.components.items():
        for name in components:
            existing = registry.components[kind].get(name)
            if existing is None:
                continue
            earlier = (
                f"{existing.distribution} {existing.version or ''}".strip()
                if existing.distribution
                else "no distribution"
            )
            message = (
                f"plugin '{info.name}' ({info.origin}) is disabled: its {kind} '{name}' is already registered by "
                f"plugin '{existing.plugin}' ({earlier}); choose one with MOLBRIDGE_BLOCKED_PLUGINS={info.name} "
                f"or MOLBRIDGE_BLOCKED_PLUGINS={existing.plugin}"
            )
            registry.contest(kind, name, message)
            raise PluginError(message)


@functools.cache
def default_plugins(strict: bool | None = None) -> LoadedPlugins:
    """The process-wide plugin set (loaded once)."""
    return load_plugins(strict=strict)


def get_registry() -> Registry:
    return default_plugins().registry
