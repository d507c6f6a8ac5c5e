"""Exceptions molbridge raises on purpose. Each message names the record, file or key at fault."""

import difflib
from collections.abc import Iterable


class MolbridgeError(Exception):
    """Base class: an error the user can act on (the CLI prints it without a traceback)."""


class PluginError(MolbridgeError):
    """A plugin failed to load, registered a clashing name, or implemented an unknown hook."""


class UnknownComponentError(MolbridgeError, KeyError):
    """A recipe or command named an encoder, projector, LLM, task or recipe that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RecipeError(MolbridgeError):
    """A recipe is invalid; the message lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in recipe {source}:\n{lines}")


class CheckpointError(MolbridgeError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


class ContractError(MolbridgeError):
    """A plugin's component broke its contract (shapes, dtypes, mask convention); the message names the plugin."""


class NonFiniteLossError(MolbridgeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def suggest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnknownComponentError:
    valid = sorted(valid)
    listed = ", ".join(valid) if valid else "none registered"
    return UnknownComponentError(f"unknown {kind} '{name}'{suggest(name, valid)}; valid {kind}s: {listed}")


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raise a MolbridgeError naming ``key`` when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise MolbridgeError(f"{key}: '{value}' is not one of {', '.join(choices)}{suggest(value, choices)}")
