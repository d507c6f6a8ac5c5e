"""Checkpoints: one folder per step, written atomically, each describing itself.

Layout under a run's output directory::

    checkpoints/step-000123/state.ckpt      Fabric state (model, optimizer, scheduler, sampler, step, best)
    checkpoints/step-000123/rng-rank0.pt    RNG states of each rank (python, numpy, torch, cuda)
    checkpoints/step-000123/recipe.yaml     the resolved recipe that produced it
    checkpoints/best.json                   which step holds the best validation metric

A checkpoint is written to ``step-000123.tmp`` and renamed when complete, so a crash mid-save never
leaves a broken folder that ``resume: auto`` would pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from molbridge.core.errors import CheckpointError
from molbridge.core.recipe import to_yaml

if TYPE_CHECKING:
    from lightning_fabric import Fabric
    from omegaconf import DictConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.ckpt"
RECIPE_FILE = "recipe.yaml"
BEST_FILE = "best.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temp folders are never listed).

    ``state.ckpt`` is a file, or a folder for sharded strategies (FSDP, DeepSpeed).
    """
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint folder to resume from: ``auto`` (latest, if any), ``never``, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir / CHECKPOINTS)
    path = Path(resume)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).exists():
        raise CheckpointError(f"train.resume={resume!r}: no checkpoint there (expected {path / STATE_FILE})")
    return path


# --- RNG states, per rank -----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- save / load ----------------------------------------------------------------------------------------


def save(fabric: Fabric, root: Path, step: int, state: dict[str, Any], recipe: DictConfig) -> Path:
    """Write a checkpoint of ``state`` for ``step`` atomically; every rank must call this."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if fabric.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash
        tmp.mkdir(parents=True)
    fabric.barrier()
    fabric.save(tmp / STATE_FILE, state)
    # fabric.save keeps rank 0's copy of plain values only, so each rank writes its own RNG file
    torch.save(rng_state(), tmp / f"rng-rank{fabric.global_rank}.pt")
    fabric.barrier()
    if fabric.is_global_zero:
        (tmp / RECIPE_FILE).write_text(to_yaml(recipe))
        if final.exists():  # the same step saved twice (e.g. best, then last): the newer one wins
            shutil.rmtree(final)
        os.replace(tmp, final)
    fabric.barrier()
    return final


def load(fabric: Fabric, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Restore ``state`` in place from a checkpoint folder, and this rank's RNG; return the remainder."""
    path = folder / STATE_FILE
    try:
        remainder = fabric.load(path, state)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    rng_file = folder / f"rng-rank{fabric.global_rank}.pt"
    if rng_file.is_file():
        try:
            set_rng_state(torch.load(rng_file, weights_only=False))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot load RNG state {rng_file}: {type(exc).__name__}: {exc}") from exc
    return remainder


# --- starting from another run's weights (stage chaining) --------------------------------------------


def _state_file(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise CheckpointError(
            f"train.init_from: {source} does not exist; run the previous stage first (its run "
            "writes there; see the recipe's description), or set train.init_from=null to start "
            "from scratch"
        )
    if (path / CHECKPOINTS).is_dir():  # a run's output directory: its latest checkpoint
        latest = latest_checkpoint(path / CHECKPOINTS)
        if latest is None:
            raise CheckpointError(f"train.init_from: {path} has no checkpoint under {CHECKPOINTS}/")
        path = latest
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"train.init_from: {source} is not a run directory, checkpoint folder or {STATE_FILE}")
    return path


def _prefixes(names: Iterable[str], depth: int = 2) -> dict[str, int]:
    """Parameter names summarised by their first ``depth`` components, with counts."""
    counts: dict[str, int] = {}
    for name in names:
        key = ".".join(name.split(".")[:depth])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def init_weights(model: torch.nn.Module, source: str | Path) -> dict[str, Any]:
    """Copy the weights of another run whose names match ``model``'s; report what loaded and what did not.

    Names that match but differ in shape are an error (e.g. a different preset), not a skip.
    """
    path = _state_file(source)
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)["model"]
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"train.init_from: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    own = model.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"train.init_from: {path} does not fit the model: " + "; ".join(mismatched[:5]))
    loaded = {k: v for k, v in weights.items() if k in own}
    if not loaded:
        theirs, ours = ", ".join(_prefixes(weights, 1)), ", ".join(_prefixes(own, 1))
        raise CheckpointError(
            f"train.init_from: no weight of {path} matches the model (it holds {theirs}; the model has {ours})"
        )
    model.load_state_dict(loaded, strict=False)
    return {
        "source": str(path),
        "loaded": len(loaded),
        "new": _prefixes(set(own) - set(loaded)),
        "unused": _prefixes(set(weights) - set(own)),
    }


# --- the best checkpoint and pruning -------------------------------------------------------------


def write_best(root: Path, step: int, metric: str, value: float) -> None:
    tmp = root / (BEST_FILE + ".tmp")
    tmp.write_text(json.dumps({"step": step, "metric": metric, "value": value}))
    os.replace(tmp, root / BEST_FILE)


def read_best(root: Path) -> dict[str, Any] | None:
    path = root / BEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def prune(root: Path, keep: int) -> None:
    """Delete old periodic checkpoints, keeping the newest ``keep``, the best and the latest."""
    found = list_checkpoints(root)
    best = read_best(root)
    protected = set(found[-max(keep, 1) :])
    if best is not None:
        protected.add(step_dir(root, best["step"]))
    for folder in found:
        if folder not in protected:
            shutil.rmtree(folder, ignore_errors=True)
