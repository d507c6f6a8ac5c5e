"""Components by kind and name, filled by the plugins' ``molbridge_register_*`` hooks.

A plugin registers a component with ``register(name, factory, config_schema=None, description="")``:

- ``factory(config, **kwargs)`` builds the component from its recipe section (an OmegaConf
  ``DictConfig`` already validated against ``config_schema``); kind-specific keyword arguments are
  documented on the contracts in :mod:`molbridge.core.contracts`.
- ``config_schema`` is a dataclass whose fields are the keys the recipe section may hold. It must
  have a ``name: str`` field; without one molbridge uses :class:`ComponentConfig` (name only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from molbridge.core.errors import PluginError, unknown_name

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from molbridge.core.contracts import Components

KINDS = ("encoder", "projector", "llm", "task")
HOOK_BY_KIND = {kind: f"molbridge_register_{kind}s" for kind in KINDS}


@dataclass
class ComponentConfig:
    """The schema of a component that takes no options beyond its name."""

    name: str = "???"


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    config_schema: type
    description: str
    plugin: str
    distribution: str | None = None
    version: str | None = None

    def build(self, config: DictConfig, **kwargs: Any) -> Any:
        return self.factory(config, **kwargs)


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    contested: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) registered by two plugins -> the message saying how to choose; using it is an error."""

    def contest(self, kind: str, name: str, message: str) -> None:
        self.contested[(kind, name)] = message

    def add(self, component: Component) -> None:
        existing = self.components[component.kind].get(component.name)
        if existing is not None:
            raise PluginError(
                f"{component.kind} '{component.name}' is registered twice: by plugin '{existing.plugin}'"
                f" ({existing.distribution or 'built-in'}) and by plugin '{component.plugin}'"
                f" ({component.distribution or 'built-in'}); uninstall or disable one of them"
            )
        self.components[component.kind][component.name] = component

    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise unknown_name("component kind", kind, KINDS)
        if (kind, name) in self.contested:
            raise PluginError(self.contested[(kind, name)])
        try:
            return self.components[kind][name]
        except KeyError:
            raise unknown_name(kind, name, self.components[kind]) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def build(self, kind: str, config: DictConfig, **kwargs: Any) -> Any:
        return self.get(kind, config.name).build(config, **kwargs)


class Register(Protocol):
    """The ``register`` callback a ``molbridge_register_*`` hook receives (see the module docstring)."""

    def __call__(
        self, name: str, factory: Callable[..., Any], config_schema: type | None = None, description: str = ""
    ) -> None: ...


def make_register(
    registry: Registry, kind: str, plugin: str, distribution: str | None, version: str | None
) -> Register:
    """The ``register`` callback handed to one plugin's hook for one kind."""

    def register(
        name: str, factory: Callable[..., Any], config_schema: type | None = None, description: str = ""
    ) -> None:
        schema = config_schema or ComponentConfig
        if not dataclasses.is_dataclass(schema) or "name" not in {f.name for f in dataclasses.fields(schema)}:
            raise PluginError(
                f"plugin '{plugin}': config schema of {kind} '{name}' must be a dataclass with a 'name' field"
            )
        registry.add(Component(kind, name, factory, schema, description, plugin, distribution, version))

    return register


def build_components(recipe: DictConfig, registry: Registry) -> Components:
    """The recipe's encoder, projector and LLM, each built with the width of the one before it.

    A projector needs an encoder and an LLM a projector (their ``input_dim``); a section without the one
    it reads from is a recipe error naming both.
    """
    from molbridge.core.contracts import Components
    from molbridge.core.errors import RecipeError

    sections = {kind: recipe.get(kind) for kind in ("encoder", "projector", "llm")}
    needs = {"projector": "encoder", "llm": "projector"}
    problems = [
        f"{kind}: '{sections[kind].name}' reads the output of a {needs[kind]}, "
        f"but the recipe has no {needs[kind]} section"
        for kind in needs
        if sections[kind] is not None and sections[needs[kind]] is None
    ]
    if problems:
        raise RecipeError(str(recipe.get("recipe", "recipe")), problems)
    built = Components()
    if sections["encoder"] is not None:
        built.encoder = registry.build("encoder", sections["encoder"])
    if sections["projector"] is not None:
        assert built.encoder is not None  # the problems above: a projector section comes with an encoder section
        built.projector = registry.build("projector", sections["projector"], input_dim=built.encoder.output_dim)
    if sections["llm"] is not None:
        assert built.projector is not None  # likewise an LLM section with a projector section
        built.llm = registry.build("llm", sections["llm"], input_dim=built.projector.output_dim)
    return built
