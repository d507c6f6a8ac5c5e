"""The hook specifications every molbridge plugin implements some of.

Each hook is callback style: molbridge calls it with a ``register`` function, and the plugin calls
``register(name, factory, config_schema=..., description=...)`` once per component it provides, so
one plugin can contribute several components, each with its own recipe schema.
See :mod:`molbridge.core.registry` for what ``register`` accepts and what a factory receives.
"""

import pluggy

PROJECT_NAME = "molbridge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def molbridge_register_encoders(register):
    """Register 3D molecular encoders (:class:`molbridge.core.contracts.Encoder` factories)."""


@hookspec
def molbridge_register_projectors(register):
    """Register projectors from encoder outputs to soft tokens (:class:`~molbridge.core.contracts.Projector`)."""


@hookspec
def molbridge_register_llms(register):
    """Register language-model wrappers (:class:`molbridge.core.contracts.LanguageModel` factories)."""


@hookspec
def molbridge_register_tasks(register):
    """Register tasks: datasets, training step and metrics (:class:`molbridge.core.contracts.Task`)."""
