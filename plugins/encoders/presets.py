"""Named encoder presets: a frozen dataclass per encoder, one instance per preset, fields documented.

An encoder module keeps ``PRESETS: dict[str, <its Preset subclass>]`` and declares its config's ``preset``
field as ``field(default=..., metadata=preset_metadata(PRESETS))``: the valid names (``choices``, checked by
recipe validation), the table itself (``presets``) and ``describe``, a callable returning one line per preset
for ``bench recipes show --doc`` (which prints what a field's ``describe`` returns under its documentation).
A command that only has the config class finds every encoder's presets the same way::

    from molbridge.plugins.encoders.presets import describe_preset, preset_table
    table = preset_table(UniMolConfig)            # {"base": UniMolPreset(...), "small": ...}
    describe_preset(table, "base")["summary"]     # "preset=base sets layers=15, embed_dim=512, ..."

Each field's documentation is the docstring written under it in the dataclass (the convention of the
recipe schemas), read from the source by :func:`molbridge.core.recipe_docs.field_docs`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from molbridge.core.errors import check_choice
from molbridge.core.recipe_docs import field_docs


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named shape of an encoder. Subclasses add the fields it sets, each with a docstring."""

    description: str
    """One line: what the preset is for."""

    def values(self) -> dict[str, Any]:
        """The settings the preset fixes (every field except ``description``), in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "description"}


def preset_table(config_class: type) -> dict[str, Preset] | None:
    """The presets an encoder config offers (from its ``preset`` field's metadata), or None."""
    for f in dataclasses.fields(config_class):
        if f.name == "preset":
            return f.metadata.get("presets")
    return None


def describe_preset(presets: dict[str, Preset], name: str) -> dict[str, Any]:
    """What ``preset=name`` sets: its description, each value with its field's docstring, and a summary line.

    Raises :class:`~molbridge.core.errors.MolbridgeError` listing the valid names for an unknown one.
    """
    check_choice("preset", name, presets)
    preset = presets[name]
    docs = field_docs(type(preset))
    values = preset.values()
    return {
        "preset": name,
        "description": preset.description,
        "sets": {key: {"value": value, "doc": docs.get(key, "")} for key, value in values.items()},
        "summary": f"preset={name} sets {_settings(preset)}",
    }


def _settings(preset: Preset) -> str:
    return ", ".join(f"{key}={value}" for key, value in preset.values().items())


def preset_lines(presets: dict[str, Preset]) -> list[str]:
    """One line per preset: ``preset=base sets layers=15, ... (what it is for)``."""
    return [f"preset={name} sets {_settings(preset)} ({preset.description})" for name, preset in presets.items()]


def preset_metadata(presets: dict[str, Preset]) -> dict[str, Any]:
    """The ``preset`` field's metadata: ``choices``, the ``presets`` table and ``describe`` (see the module doc)."""
    return {"choices": tuple(presets), "presets": presets, "describe": partial(preset_lines, presets)}
