"""Checkpoints: one folder per step, written atomically, each describing and verifying itself.

Layout under a run's output directory::

    checkpoints/step-000123/state.ckpt      Fabric state (model, optimizer, scheduler, sampler, step, best)
    checkpoints/step-000123/rng-rank0.json  RNG states of each rank (python, numpy, torch, cuda), plain JSON
    checkpoints/step-000123/recipe.yaml     the resolved recipe that produced it
    checkpoints/step-000123/manifest.json   size and SHA-256 of every file above
    checkpoints/best.json                   which step holds the best validation metric

A checkpoint is written to ``step-000123.tmp`` and renamed when complete, so a crash mid-save never
leaves a folder that ``resume: auto`` would pick. Reading one never runs code from the folder: the state
is loaded with ``weights_only=True``, everything else is JSON or YAML. :func:`verify` checks a folder
against its manifest before any expensive set-up; ``resume: auto`` skips a corrupt latest checkpoint
(with a warning naming it) and resumes from the newest intact one.

Checkpoints written before manifests and JSON RNG files existed (``rng-rank0.pt``, a pickle) still
resume; their RNG files are read only with ``trust_pickle`` (``bench run --trust-pickle``), otherwise
the run resumes with fresh RNG states and says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
import zipfile
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

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.ckpt"
RECIPE_FILE = "recipe.yaml"
BEST_FILE = "best.json"
MANIFEST_FILE = "manifest.json"
LEGACY_RNG = "rng-rank{rank}.pt"  # pickled; read only with trust_pickle
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temp folders are never listed).

    ``state.ckpt`` is a file, or a folder for sharded strategies (FSDP, DeepSpeed).
    """
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (match := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found, key=lambda pair: pair[0])]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint folder to resume from: ``auto`` (the newest intact one, if any), ``never``, or a path.

    Under ``auto`` a checkpoint that fails :func:`verify` is skipped with a warning naming it and what is
    wrong, and the one before it is used; an explicit path that fails is an error.
    """
    if resume == "never":
        return None
    if resume == "auto":
        for folder in reversed(list_checkpoints(output_dir / CHECKPOINTS)):
            problem = verify(folder)
            if problem is None:
                return folder
            log.warning("checkpoint %s is unusable (%s); trying the one before it", folder, problem)
        return None
    path = Path(resume)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).exists():
        raise CheckpointError(f"train.resume={resume!r}: no checkpoint there (expected {path / STATE_FILE})")
    problem = verify(path)
    if problem is not None:
        raise CheckpointError(f"train.resume={resume!r}: checkpoint {path} is unusable: {problem}")
    return path


# --- integrity ----------------------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    """Every file of a checkpoint folder (``state.ckpt`` may itself be a folder of shards), manifest excluded."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and SHA-256 of every file, so corruption is found before a resume loads anything."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder, or None when it is intact.

    With a manifest: every listed file must exist with its size and SHA-256. Without one (checkpoints of
    molbridge before 0.2): the state file must be a complete torch zip archive.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        state = folder / STATE_FILE
        if state.is_file() and not zipfile.is_zipfile(state):
            return f"{state.name} is not a complete torch archive"
        return None if state.exists() else f"{STATE_FILE} is missing"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_FILE} is unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    return None


# --- RNG states, per rank, as plain JSON ----------------------------------------------------------------


def _bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON-able data (no pickle: a checkpoint folder may not be trusted)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    assert isinstance(numpy_state, tuple)  # legacy=True, the default: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = numpy_state
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, base64.b64encode(keys.astype("<u4").tobytes()).decode(), pos, has_gauss, cached],
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.frombuffer(base64.b64decode(keys), dtype="<u4").copy(), pos, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng-rank{rank}.json"


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
    _rng_file(tmp, fabric.global_rank).write_text(json.dumps(rng_state()))
    fabric.barrier()
    if fabric.is_global_zero:
        (tmp / RECIPE_FILE).write_text(to_yaml(recipe))
        write_manifest(tmp)
        if final.exists():  # the same step saved twice (e.g. best, then last): the newer one wins
            shutil.rmtree(final)
        os.replace(tmp, final)
    fabric.barrier()
    return final


def load(fabric: Fabric, folder: Path, state: dict[str, Any], *, trust_pickle: bool = False) -> dict[str, Any]:
    """Restore ``state`` in place from a checkpoint folder, and this rank's RNG; return the remainder.

    Nothing is unpickled: the state with ``weights_only=True``, the RNG states from JSON. A legacy pickled
    RNG file is read only with ``trust_pickle``; otherwise the run goes on with its current RNG states.
    """
    path = folder / STATE_FILE
    try:
        remainder = fabric.load(path, state, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    rng_file, legacy = _rng_file(folder, fabric.global_rank), folder / LEGACY_RNG.format(rank=fabric.global_rank)
    try:
        if rng_file.is_file():
            set_rng_state(json.loads(rng_file.read_text()))
        elif legacy.is_file() and trust_pickle:
            set_rng_state(_legacy_rng(torch.load(legacy, weights_only=False)))  # the caller opted in
        elif legacy.is_file():
            log.warning(
                "%s is a pickle (an older checkpoint) and is not read without --trust-pickle; resuming with "
                "fresh RNG states, so the run will not repeat an uninterrupted one exactly",
                legacy,
            )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load RNG state of {folder}: {type(exc).__name__}: {exc}") from exc
    return remainder


def load_model(fabric: Fabric, folder: Path, module: torch.nn.Module) -> None:
    """Restore only the model's weights from a checkpoint folder (set up by ``fabric``; any strategy's layout)."""
    path = folder / STATE_FILE
    try:
        fabric.load(path, {"model": module}, strict=False, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"cannot load the model of checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def _legacy_rng(state: dict[str, Any]) -> dict[str, Any]:
    """The pickled RNG dict of older checkpoints, in the JSON layout :func:`set_rng_state` reads."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    converted = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, base64.b64encode(np.asarray(keys, "<u4").tobytes()).decode(), pos, has_gauss, cached],
        "torch": _bytes(state["torch"]),
    }
    if "cuda" in state:
        converted["cuda"] = [_bytes(s) for s in state["cuda"]]
    return converted


# --- starting from another run's weights (stage chaining) --------------------------------------------


def init_state_file(source: str | Path) -> Path:
    """The state file ``train.init_from`` names: a run folder (its newest intact checkpoint), a checkpoint
    folder or a ``state.ckpt``."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(
            f"train.init_from: {source} does not exist; run the previous stage first (its run "
            "writes there; see the recipe's description), or set train.init_from=null to start "
            "from scratch"
        )
    if (path / CHECKPOINTS).is_dir():  # a run's output directory: its newest intact checkpoint
        latest = resolve_resume("auto", path)
        if latest is None:
            raise CheckpointError(f"train.init_from: {path} has no intact checkpoint under {CHECKPOINTS}/")
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
    path = init_state_file(source)
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
