"""Loading encoder weights from a file named in a recipe, safely and strictly."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from molbridge.core.errors import CheckpointError


def read_state_dict(path: str | Path, *, trust: bool = False, key: str = "model") -> dict[str, torch.Tensor]:
    """Tensors from ``path``: a bare state dict or ``{key: state_dict}`` (``model``: the Uni-Mol release format;
    ``state_dict``: a Lightning checkpoint such as 3D-MoLM's).

    Weights-only unpickling by default: a checkpoint from an untrusted source cannot run code. ``trust``
    (recipe ``trust_checkpoint: true``) allows full unpickling for files that need it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        hint = "" if trust else " (if you trust this file and it needs full unpickling, set trust_checkpoint: true)"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}{hint}") from exc
    state = loaded.get(key, loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected tensors, or {{'{key}': tensors}})")
    return state


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    ignore_prefixes: tuple[str, ...] = (),
    optional: Callable[[str], bool] | None = None,
) -> None:
    """Load every parameter; keys under ``ignore_prefixes`` are dropped; anything else amiss is listed.

    ``optional(name)`` marks the module's parameters a checkpoint may lack (they keep their values), e.g.
    the Q-Former text path a 3D-MoLM stage-2/3 checkpoint does not store.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not (optional and optional(k)))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        details = [
            f"missing: {', '.join(missing)}" if missing else "",
            f"unexpected: {', '.join(unexpected)}" if unexpected else "",
            "shape mismatch: "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched)
            if mismatched
            else "",
        ]
        raise CheckpointError(f"checkpoint {path} does not match the model; " + "; ".join(d for d in details if d))
    module.load_state_dict(state, strict=optional is None)
