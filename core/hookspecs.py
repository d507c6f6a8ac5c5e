"""The hook specifications every molbridge plugin implements some of.

Each hook is callback style: molbridge calls it with a ``register`` function, and the plugin calls
``register(name, factory, config_schema=..., description=...)`` once per component it provides, so
one plugin can contribute several components, each with its own recipe schema.
See :mod:`molbridge.core.registry` for what ``register`` accepts and what a factory receives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from molbridge.core.registry import Register

PROJECT_NAME = "molbridge"
#: The hook API: the hooks below and the contracts of molbridge.core.contracts. A plugin declares the version
#: it was written for with a module attribute ``molbridge_hook_api = 2``; another number is refused at load.
#: 2: tasks receive built components (``Task.build_model(components)``); a projector only needs ``forward``.
HOOK_API_VERSION = 2

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def molbridge_register_encoders(register: Register) -> None:
    """Register 3D molecular encoders (:class:`molbridge.core.contracts.Encoder` factories)."""


@hookspec
def molbridge_register_projectors(register: Register) -> None:
    """Register projectors from encoder outputs to soft tokens (:class:`~molbridge.core.contracts.Projector`)."""


@hookspec
def molbridge_register_llms(register: Register) -> None:
    """Register language-model wrappers (:class:`molbridge.core.contracts.LanguageModel` factories)."""


@hookspec
def molbridge_register_tasks(register: Register) -> None:
    """Register tasks: datasets, training step and metrics (:class:`molbridge.core.contracts.Task`)."""
