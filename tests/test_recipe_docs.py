"""Every recipe key is documented: ``bench recipes show --doc`` never prints "(undocumented)"."""

import dataclasses

import pytest

from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import RecipeSchema
from molbridge.core.recipe_docs import undocumented

REGISTRY = load_plugins(external=False).registry
COMPONENTS = [(kind, name) for kind in ("encoder", "projector", "llm", "task") for name in REGISTRY.names(kind)]


def test_every_core_recipe_key_has_a_docstring():
    assert undocumented(RecipeSchema) == []


@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_every_built_in_component_key_has_a_docstring(kind, name):
    assert undocumented(REGISTRY.get(kind, name).config_schema) == []


def test_undocumented_finds_a_field_without_a_docstring():
    """The check can fail: a schema with one bare field is reported, nested sections by their dotted name."""

    @dataclasses.dataclass
    class Inner:
        documented: int = 1
        """Has one."""
        bare: int = 2

    @dataclasses.dataclass
    class Outer:
        name: str = "x"
        inner: Inner = dataclasses.field(default_factory=Inner)
        """A section."""

    assert undocumented(Outer) == ["inner.bare"]
