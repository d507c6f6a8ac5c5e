"""``bench ask``: questions about molecules to a trained captioning or qa model, from its checkpoint.

The model is rebuilt from the checkpoint's own ``recipe.yaml`` through the registry (core builds the
components, the task's ``build_model`` assembles them; no dataset is read), its weights loaded strictly,
and the question goes to the task's :meth:`~molbridge.core.contracts.Task.answer`: the path its evaluation
takes, so for the same molecule, question and generation settings the answer is the one ``bench run``
would have generated. Any task that implements ``answer`` can be asked (the built-in captioning and qa).

Molecules become 3D records through the data layer with the conformer settings of the run's dataset
(``dataset.json``), so a SMILES gets the conformer 0 that training and evaluation saw. An SDF record
with 3D coordinates keeps them; missing hydrogens are added at computed positions, because the data
layer's records carry every hydrogen and the encoder applies its own hydrogen policy to them.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from omegaconf import DictConfig
from rdkit import Chem
from rdkit.Chem.MolStandardize import rdMolStandardize

from molbridge.core import batch as keys
from molbridge.core.checkpoint import CHECKPOINTS, RECIPE_FILE, STATE_FILE, latest_checkpoint, read_best, step_dir
from molbridge.core.contracts import Task
from molbridge.core.data import (
    ConformerConfig,
    DatasetError,
    Failure,
    MoleculeInput,
    MoleculeRecord,
    make_record,
    open_dataset,
)
from molbridge.core.data.conformers import REASONS
from molbridge.core.data.readers import read_sdf
from molbridge.core.errors import CheckpointError, MolbridgeError
from molbridge.core.recipe import Precision, load_recipe
from molbridge.core.registry import Registry, build_components

log = logging.getLogger(__name__)


class AskError(MolbridgeError):
    """A molecule or question ``bench ask`` cannot use; the message names it."""


# --- which checkpoint ---------------------------------------------------------------------------------


def find_state_file(path: str | Path) -> Path:
    """The state file to load: a run directory's best checkpoint (else its latest), a checkpoint folder's
    ``state.ckpt``, or a state file itself (e.g. a consolidated sharded checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--checkpoint {path}: no such file or directory")
    if path.is_file():
        return path
    if (path / CHECKPOINTS).is_dir():
        return _run_checkpoint(path / CHECKPOINTS) / STATE_FILE
    if (path / STATE_FILE).is_dir():
        raise CheckpointError(
            f"{path / STATE_FILE} is sharded (FSDP/DeepSpeed); consolidate it into one file with "
            f"`python -m lightning_fabric.utilities.consolidate_checkpoint {path / STATE_FILE}` "
            "and pass that file"
        )
    if (path / STATE_FILE).is_file():
        return path / STATE_FILE
    raise CheckpointError(
        f"--checkpoint {path}: neither a run directory (with {CHECKPOINTS}/) nor a checkpoint "
        f"folder (with {STATE_FILE})"
    )


def _run_checkpoint(root: Path) -> Path:
    best, latest = read_best(root), latest_checkpoint(root)
    if best is not None:
        folder = step_dir(root, int(best["step"]))
        if (folder / STATE_FILE).exists():
            log.info("checkpoint: %s (best %s = %.4g)", folder, best["metric"], best["value"])
            return folder
        warnings.warn(
            f"{root / 'best.json'} names step {best['step']}, which is gone; using the latest checkpoint", stacklevel=2
        )
    if latest is None:
        raise CheckpointError(
            f"{root.parent}: a run directory without any checkpoint under {CHECKPOINTS}/ "
            "(was it stopped before its first save?)"
        )
    log.info("checkpoint: %s (latest)", latest)
    return latest


def checkpoint_recipe(state_file: Path, registry: Registry) -> DictConfig:
    """The recipe stored beside ``state_file``, validated against the installed plugins."""
    path = state_file.parent / RECIPE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{state_file.parent}: no {RECIPE_FILE} beside {state_file.name}; bench ask rebuilds "
            "the model from the recipe its run saved there"
        )
    return load_recipe(path, registry=registry)


def answering_task(recipe: DictConfig, registry: Registry, where: Path) -> Task:
    """The run's task, built without data; an error when its task cannot answer questions."""
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    if type(task).answer is Task.answer:
        raise CheckpointError(
            f"{where}: a '{recipe.task.name}' run cannot answer questions (its task does not implement "
            "answer(); bench ask needs a run of a task with a language model, e.g. captioning or qa)"
        )
    return task


# --- molecules -------------------------------------------------------------------------------------------


def conformer_config(recipe: DictConfig) -> ConformerConfig:
    """The conformer settings of the run's dataset, so new molecules are embedded as its molecules were."""
    try:
        stored = open_dataset(recipe.data.name).meta.get("conformers", {})
    except DatasetError:
        warnings.warn(
            f"the run's dataset '{recipe.data.name}' is not here; conformers use the data layer's default settings",
            stacklevel=2,
        )
        stored = {}
    known = {f.name for f in dataclasses.fields(ConformerConfig)}
    # the question's molecule has no text fields to require
    return ConformerConfig(**{k: v for k, v in stored.items() if k in known and k != "require_text"})


def _reason(failure: Failure) -> str:
    return REASONS.get(failure.reason, failure.reason) + (f" ({failure.detail})" if failure.detail else "")


def from_smiles(smiles: str, config: ConformerConfig) -> MoleculeRecord:
    """A 3D record for ``smiles`` (ETKDG + MMFF through the data layer), or an AskError naming it."""
    result = make_record(MoleculeInput(0, smiles, smiles=smiles), config)
    if isinstance(result, Failure):
        raise AskError(f"SMILES {smiles!r}: {_reason(result)}")
    return result


def from_sdf(path: str | Path, config: ConformerConfig, record: int | None = None) -> list[MoleculeRecord]:
    """Every record of an SDF (or only the 0-based ``record``), 3D coordinates kept; every bad record is named."""
    path = Path(path)
    if not path.is_file():
        raise AskError(f"--sdf {path}: no such file")
    try:
        items = list(read_sdf(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise AskError(f"--sdf {path}: cannot read it as SDF text: {exc}") from exc
    if not items:
        raise AskError(f"--sdf {path}: no MOL block in the file")
    if record is not None:
        if not 0 <= record < len(items):
            raise AskError(f"--record {record}: {path} has records 0..{len(items) - 1}")
        items = [items[record]]
    results = [_sdf_record(item, config) for item in items]
    problems = [f"record {r.index} ({r.id}): {_reason(r)}" for r in results if isinstance(r, Failure)]
    if problems:
        raise AskError(f"--sdf {path}: {len(problems)} unusable record(s):\n  " + "\n  ".join(problems))
    return [r for r in results if not isinstance(r, Failure)]


def _sdf_record(item: MoleculeInput, config: ConformerConfig) -> MoleculeRecord | Failure:
    """Given 3D coordinates as they are (with computed hydrogens added); 2D or unparsable blocks go through
    the data layer's MOL block path, which embeds or names the failure."""
    mol = Chem.MolFromMolBlock(item.molblock, removeHs=False)
    if mol is None or mol.GetNumAtoms() == 0:
        return make_record(item, config)
    if not mol.GetConformer().Is3D():
        warnings.warn(
            f"SDF record {item.index} ({item.id}) has 2D coordinates; embedding a 3D conformer instead", stacklevel=2
        )
        return make_record(item, config)
    if config.fragments == "largest" and len(Chem.GetMolFrags(mol)) > 1:
        mol = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(mol)
    mol = Chem.AddHs(mol, addCoords=True)
    given = MoleculeInput(
        item.index,
        item.id,
        smiles=Chem.MolToSmiles(Chem.RemoveHs(mol)),
        atoms=[atom.GetSymbol() for atom in mol.GetAtoms()],
        coordinates=[mol.GetConformer().GetPositions()],
    )
    return make_record(given, config)


# --- the model -------------------------------------------------------------------------------------------


def read_weights(state_file: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint (tensors only: reading it runs no code)."""
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"cannot read {state_file}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{state_file}: no 'model' state dict in it; not written by bench run")
    return state["model"]


def rebuild_model(state_file: Path, recipe: DictConfig, task: Task, registry: Registry) -> torch.nn.Module:
    """The run's model, built through the registry by its task, with every weight of ``state_file`` loaded.

    Shared by ``bench ask`` and the benchmarks that rescore finished runs, so a checkpoint that does not fit its
    recipe fails the same way everywhere, naming the tensors.
    """
    weights = read_weights(state_file)
    model = task.build_model(build_components(recipe, registry))
    mismatch = f"{state_file} does not fit the model its {RECIPE_FILE} builds"
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shapes differ; torch lists them one per line
        lines = [line.strip() for line in str(exc).splitlines()[1:6]]
        raise CheckpointError(f"{mismatch}:" + "".join(f"\n  {line}" for line in lines)) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{mismatch}: missing {_names(result.missing_keys)}; unexpected {_names(result.unexpected_keys)}"
        )
    return model


class Asker:
    """A trained captioning/qa run, ready for questions.

    ``Asker(path)`` reads the checkpoint's recipe (cheap: errors about the checkpoint and the molecules come
    before the model is built); :meth:`load_model` rebuilds the model and loads the weights; :meth:`answer`.
    """

    def __init__(self, path: str | Path, registry: Registry | None = None):
        from molbridge.core.plugins import get_registry

        self.registry = registry or get_registry()
        self.state_file = find_state_file(path)
        self.recipe = checkpoint_recipe(self.state_file, self.registry)
        self.task = answering_task(self.recipe, self.registry, self.state_file.parent)
        self.conformers = conformer_config(self.recipe)
        self.model: torch.nn.Module | None = None
        self.fabric: Fabric | None = None

    def load_model(self, device: str = "auto", precision: Precision | None = None) -> torch.nn.Module:
        """Rebuild the model through the registry (the task's ``build_model``), load the weights, eval mode.

        ``precision`` defaults to the run's (``train.precision``), applied by Lightning Fabric as in evaluation.
        """
        model = rebuild_model(self.state_file, self.recipe, self.task, self.registry)
        self.fabric = _fabric(device, precision or self.recipe.train.precision)
        self.model = self.fabric.setup_module(model.eval())
        return model

    def molecules(
        self, smiles: str | None = None, sdf: str | Path | None = None, record: int | None = None
    ) -> list[MoleculeRecord]:
        """The molecules to ask about: one SMILES, or the records of an SDF."""
        if smiles is not None and sdf is None:
            return [from_smiles(smiles, self.conformers)]
        if sdf is not None and smiles is None:
            return from_sdf(sdf, self.conformers, record)
        raise AskError("give exactly one of a SMILES or an SDF file")

    @torch.no_grad()
    def answer(self, question: str, molecules: Sequence[MoleculeRecord], **generation: Any) -> list[str]:
        """One answer per molecule, greedy unless ``generation`` says otherwise (recipe defaults for the rest)."""
        if not question.strip():
            raise AskError("the question is empty")
        if self.model is None:
            self.load_model()
        model, fabric = self.model, self.fabric
        assert model is not None and fabric is not None  # load_model sets both
        samples = [self._sample(question, mol) for mol in molecules]
        try:
            return self.task.answer(model, fabric, samples, **generation)
        except MolbridgeError as exc:  # e.g. an element the encoder has no token for
            raise AskError(f"molecule(s) {', '.join(str(s[keys.MOL_ID]) for s in samples)}: {exc}") from exc

    def _sample(self, question: str, mol: MoleculeRecord) -> dict[str, Any]:
        return {
            keys.INSTRUCTION: question,
            keys.SMILES: mol.smiles,
            keys.MOL_ID: mol.id,
            keys.ATOMIC_NUMBERS: mol.atomic_numbers,
            keys.POSITIONS: mol.conformers[0],
        }


def _fabric(device: str, precision: Precision) -> Fabric:
    try:
        return Fabric(accelerator=device, devices=1, precision=precision)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MolbridgeError(f"cannot run on --device {device} with precision {precision}: {exc}") from exc


def _names(names: Sequence[str], shown: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
