"""Contract checks: what every encoder, projector, LLM and task must satisfy, for plugin authors and at run time.

Plugin authors run them in their own tests (``bench plugins --check`` runs them on every installed
component)::

    from molbridge.core.testing import check_encoder, check_projector, check_llm, check_task
    check_encoder(MyEncoder(config))                           # shapes, masks, invariances, on real molecules
    check_projector(MyProjector(config, input_dim=64), input_dim=64)
    check_llm(my_llm, input_dim=64)                            # prompts, labels, a loss, generation
    check_task("my-task", overrides=["data.limit=8"])          # datasets, a training step, evaluation

Each raises AssertionError saying which property failed and by how much. Every ``bench run`` also checks
its encoder, projector and LLM on the first molecules of its training set before training
(:func:`check_run_contracts`), so a component that returns an inverted mask or a transposed output fails at
once with a :class:`~molbridge.core.errors.ContractError` naming its plugin and distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from molbridge.core import batch as keys
from molbridge.core.contracts import Components, Encoder, EncoderOutput, LanguageModel, Projector
from molbridge.core.errors import ContractError

if TYPE_CHECKING:
    from lightning_fabric import Fabric
    from omegaconf import DictConfig

    from molbridge.core.contracts import Task
    from molbridge.core.registry import Registry

Molecule = tuple[np.ndarray, np.ndarray]  # atomic numbers (N,), positions (N, 3) in angstrom

EXAMPLE_SMILES = ("CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1", "OCC(O)CO", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C")


def example_molecules(smiles: Sequence[str] = EXAMPLE_SMILES, seed: int = 0) -> list[Molecule]:
    """Real molecules with hydrogens, embedded with RDKit (ETKDGv3 + MMFF), sizes deliberately different."""
    from rdkit import Chem
    from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

    molecules = []
    for text in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = seed  # type: ignore[assignment]  # rdkit stub: property typed as a method
        rdDistGeom.EmbedMolecule(mol, params)
        rdForceFieldHelpers.MMFFOptimizeMolecule(mol)
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        molecules.append((z, mol.GetConformer().GetPositions().astype(np.float32)))
    return molecules


def example_items(smiles: Sequence[str] = EXAMPLE_SMILES, seed: int = 0) -> list[dict[str, Any]]:
    """:func:`example_molecules` as dataset items (``MOL_ID``, ``SMILES``, ``ATOMIC_NUMBERS``, ``POSITIONS``): what
    tasks hand an encoder's ``featurize_item``, so encoders of any input (3D or SMILES) can be checked."""
    return [
        {keys.MOL_ID: f"example-{i}", keys.SMILES: text, keys.ATOMIC_NUMBERS: z, keys.POSITIONS: pos}
        for i, (text, (z, pos)) in enumerate(zip(smiles, example_molecules(smiles, seed), strict=True))
    ]


def _geometry(molecule: Molecule | Mapping[str, Any]) -> Molecule:
    return (molecule[keys.ATOMIC_NUMBERS], molecule[keys.POSITIONS]) if isinstance(molecule, Mapping) else molecule


def _with_geometry(molecule: Molecule | Mapping[str, Any], z: np.ndarray, pos: np.ndarray) -> Molecule | dict[str, Any]:
    """The same molecule (tuple or item) with other atoms/positions (an item keeps its SMILES)."""
    if isinstance(molecule, Mapping):
        return {**molecule, keys.ATOMIC_NUMBERS: z, keys.POSITIONS: pos}
    return (z, pos)


def _encode(
    encoder: Encoder, molecules: Sequence[Molecule | Mapping[str, Any]], device: torch.device | str | None = None
) -> EncoderOutput:
    """Encode (z, positions) molecules or dataset items (through ``featurize_item``) as one batch."""
    features = [encoder.featurize_item(m) if isinstance(m, Mapping) else encoder.featurize(*m) for m in molecules]
    inputs = encoder.collate(features)
    if device is not None:
        inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    with torch.no_grad():
        return encoder(inputs)


def _rows(out: EncoderOutput, i: int) -> Tensor:
    return out.atom_embeddings[i][~out.padding_mask[i]]


def _close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return (q if np.linalg.det(q) > 0 else -q).astype(np.float32)


def check_encoder_outputs(
    encoder: Encoder, molecules: Sequence[Molecule | Mapping[str, Any]], device: torch.device | str | None = None
) -> EncoderOutput:
    """Shapes, dtypes, the padding-mask convention and zero rows at padding."""
    out = _encode(encoder, molecules, device)
    b = len(molecules)
    assert isinstance(out, EncoderOutput), f"forward must return EncoderOutput, got {type(out).__name__}"
    assert out.atom_embeddings.dim() == 3 and out.atom_embeddings.shape[0] == b, "atom_embeddings must be (B, N, D)"
    assert out.atom_embeddings.shape[2] == encoder.output_dim, "atom_embeddings width must equal output_dim"
    assert out.padding_mask.dtype == torch.bool, "padding_mask must be bool (True at padding)"
    assert out.padding_mask.shape == out.atom_embeddings.shape[:2], "padding_mask must be (B, N)"
    assert out.pooled.shape == (b, encoder.output_dim), "pooled must be (B, output_dim)"
    assert torch.isfinite(out.atom_embeddings).all() and torch.isfinite(out.pooled).all(), "non-finite outputs"
    assert (~out.padding_mask).any(1).all(), (
        "every molecule must have at least one non-padding position (is padding_mask inverted? it is True at padding)"
    )
    assert not out.atom_embeddings[out.padding_mask].any(), (
        "rows at padding positions must be zero (is padding_mask inverted? it is True at padding)"
    )
    return out


def check_rigid_motion_invariance(
    encoder: Encoder, molecules: Sequence[Molecule | Mapping[str, Any]], atol: float = 1e-4
) -> None:
    """Rotating and translating every molecule changes no output beyond ``atol``."""
    moved = []
    for i, molecule in enumerate(molecules):
        z, pos = _geometry(molecule)
        moved.append(
            _with_geometry(molecule, z, pos @ _random_rotation(i).T + np.array([3.0, -7.5, 12.0], dtype=np.float32))
        )
    a, b = _encode(encoder, molecules), _encode(encoder, moved)
    _close(a.atom_embeddings, b.atom_embeddings, atol, "atom embeddings after rotation + translation")
    _close(a.pooled, b.pooled, atol, "pooled output after rotation + translation")


def check_padding_invariance(
    encoder: Encoder,
    molecules: Sequence[Molecule | Mapping[str, Any]],
    atol: float = 1e-5,
    device: torch.device | str | None = None,
) -> None:
    """A molecule's outputs are the same alone and in a batch padded to a larger molecule."""
    together = _encode(encoder, molecules, device)
    for i, molecule in enumerate(molecules):
        alone = _encode(encoder, [molecule], device)
        _close(_rows(alone, 0), _rows(together, i), atol, f"molecule {i}: atom embeddings alone vs padded batch")
        _close(alone.pooled[0], together.pooled[i], atol, f"molecule {i}: pooled alone vs padded batch")


def check_permutation_equivariance(
    encoder: Encoder, molecules: Sequence[Molecule | Mapping[str, Any]], atol: float = 1e-4
) -> None:
    """Shuffling atoms permutes the per-atom outputs (same multiset of rows) and leaves pooled unchanged.

    Rows are matched by nearest neighbour, so encoders that add special tokens or drop hydrogens pass too.
    """
    rng = np.random.default_rng(0)
    shuffled = []
    for molecule in molecules:
        z, pos = _geometry(molecule)
        order = rng.permutation(len(z))
        shuffled.append(_with_geometry(molecule, z[order], pos[order]))
    a, b = _encode(encoder, molecules), _encode(encoder, shuffled)
    _close(a.pooled, b.pooled, atol, "pooled output after permuting atoms")
    for i in range(len(molecules)):
        ra, rb = _rows(a, i), _rows(b, i)
        assert ra.shape == rb.shape, f"molecule {i}: permuting atoms changed the number of positions"
        gap = torch.cdist(ra, rb, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max().item()
        assert gap <= atol * ra.shape[1] ** 0.5, f"molecule {i}: a row has no counterpart after permutation ({gap:.3g})"


def check_encoder(
    encoder: Encoder, molecules: Sequence[Molecule | Mapping[str, Any]] | None = None, atol: float = 1e-4
) -> None:
    """Every encoder property molbridge relies on (in eval mode, so dropout is off)."""
    molecules = molecules or example_items()
    encoder.eval()
    check_encoder_outputs(encoder, molecules)
    check_rigid_motion_invariance(encoder, molecules, atol)
    check_padding_invariance(encoder, molecules, atol)
    check_permutation_equivariance(encoder, molecules, atol)


def synthetic_encoder_output(
    sizes: Sequence[int], width: int, pad_to: int | None = None, seed: int = 0
) -> EncoderOutput:
    """Random per-position features for molecules of ``sizes`` positions, padded with garbage (not zeros)."""
    generator = torch.Generator().manual_seed(seed)
    n = pad_to or max(sizes)
    x = torch.randn(len(sizes), n, width, generator=generator)
    padding = torch.arange(n).unsqueeze(0) >= torch.tensor(sizes).unsqueeze(1)
    return EncoderOutput(atom_embeddings=x, padding_mask=padding, pooled=x.mean(1))


def check_projector(projector: Projector, input_dim: int, atol: float = 1e-5) -> None:
    """Output shape (B, num_tokens, output_dim), finite, and independent of the encoder's padding."""
    projector.eval()
    check_projector_on(projector, synthetic_encoder_output([5, 9, 3], input_dim), atol)


def _repadded(encoded: EncoderOutput, extra: int = 4) -> EncoderOutput:
    """The same molecules with ``extra`` more padding positions holding garbage that a correct mask ignores."""
    b, n, d = encoded.atom_embeddings.shape
    x = encoded.atom_embeddings.new_full((b, n + extra, d), 1e3)
    mask = torch.ones(b, n + extra, dtype=torch.bool, device=encoded.padding_mask.device)
    x[:, :n], mask[:, :n] = encoded.atom_embeddings, encoded.padding_mask
    x[mask] = 1e3
    return EncoderOutput(atom_embeddings=x, padding_mask=mask, pooled=encoded.pooled)


def check_projector_on(projector: Projector, encoded: EncoderOutput, atol: float = 1e-5) -> Tensor:
    """The projector contract on given encoder outputs: shape, finite, unchanged by extra padding."""
    with torch.no_grad():
        tight, padded = projector(encoded), projector(_repadded(encoded))
    b = encoded.atom_embeddings.shape[0]
    assert isinstance(tight, Tensor) and tight.shape == (b, projector.num_tokens, projector.output_dim), (
        f"projector output must be (B, num_tokens, output_dim) = {(b, projector.num_tokens, projector.output_dim)}, "
        f"got {tuple(tight.shape) if isinstance(tight, Tensor) else type(tight).__name__}"
    )
    assert torch.isfinite(tight).all(), "projector output has non-finite values"
    _close(tight.float(), padded.float(), atol, "projector output with extra padding (is the encoder mask used?)")
    return tight


# --- language models ---------------------------------------------------------------------------------------


def check_llm(llm: LanguageModel, input_dim: int) -> None:
    """Prompts carry ``num_mol_tokens`` placeholders, labels cover only the response, a teacher-forced pass gives
    a finite loss, and generation answers every prompt of a batch."""
    prompts = [llm.format_prompt("What is the LogP of this molecule?", smiles) for smiles in ("CCO", "c1ccccc1O")]
    responses = ["The LogP is -0.0014.", "The LogP is 1.39."]
    batch = llm.tokenize_batch(prompts, responses)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == batch["attention_mask"].shape, "tokenize_batch: ids, mask and labels differ"
    placeholders = (ids == llm.tokenizer.convert_tokens_to_ids(llm.mol_token)).sum(1)
    assert placeholders.tolist() == [llm.num_mol_tokens] * 2, f"each prompt needs {llm.num_mol_tokens} mol tokens"
    assert ((labels != -100) & (ids == llm.tokenizer.convert_tokens_to_ids(llm.mol_token))).sum() == 0, (
        "labels must be -100 on the prompt (loss on the response only)"
    )
    mol = torch.randn(2, llm.num_mol_tokens, input_dim)
    llm.eval()
    with torch.no_grad():
        out = llm(ids, batch["attention_mask"], mol, labels=labels)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss), f"the loss must be a finite scalar, got {out.loss}"
        prompt = llm.tokenize_prompts(prompts)
        answers = llm.generate(prompt["input_ids"], prompt["attention_mask"], mol, max_new_tokens=4)
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers), (
        f"generate must return one string per prompt, got {answers!r}"
    )


# --- tasks ---------------------------------------------------------------------------------------------------


def check_task(
    task: str, recipe: str | None = None, overrides: Sequence[str] = (), registry: Registry | None = None
) -> None:
    """Build task ``task`` from ``recipe`` (default: its packaged recipe) with ``overrides``, then check it: its
    datasets have a train split, a batch collates and trains to a finite loss with a gradient, evaluation returns
    finite floats including the monitored metric. Keep it small with overrides such as ``data.limit=8``."""
    from molbridge.core.contracts import StepOutput
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe
    from molbridge.core.registry import build_components

    registry = registry or get_registry()
    config = load_recipe(recipe or task, list(overrides), registry)
    built = registry.build("task", config.task, recipe=config, registry=registry)
    components = build_components(config, registry)
    model = built.build_model(components)
    splits = built.datasets()
    assert "train" in splits and len(splits["train"]) > 0, (
        f"datasets() needs a non-empty train split, got {list(splits)}"
    )
    size = min(len(splits["train"]), int(config.data.batch_size))
    batch = built.collate([splits["train"][i] for i in range(size)])
    out = built.training_step(model, batch)
    assert isinstance(out, StepOutput), f"training_step must return StepOutput, got {type(out).__name__}"
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.requires_grad, f"bad loss {out.loss!r}"
    out.loss.backward()

    class _Fabric:  # the two members evaluate() may use, on the CPU
        device = torch.device("cpu")
        is_global_zero, world_size, global_rank = True, 1, 0

        @staticmethod
        def to_device(value):
            return value

        @staticmethod
        def autocast():
            import contextlib

            return contextlib.nullcontext()

    split = "valid" if "valid" in splits else "train"
    metrics = built.evaluate(model, _Fabric(), split)
    assert isinstance(metrics, dict) and metrics, "evaluate must return a non-empty dict of metrics"
    assert built.monitor[0] in metrics, f"evaluate must return the monitored metric '{built.monitor[0]}'"
    assert all(isinstance(v, float | int) for v in metrics.values()), "metric values must be numbers"


# --- at run time ---------------------------------------------------------------------------------------------


def component_label(registry: Registry, kind: str, name: str) -> str:
    """``encoder 'x' (plugin 'p', distribution 'd 1.0')``: who to blame for a broken contract."""
    try:
        component = registry.get(kind, name)
    except KeyError:
        return f"{kind} '{name}'"
    origin = (
        f"{component.distribution} {component.version or ''}".strip() if component.distribution else "no distribution"
    )
    return f"{kind} '{name}' (plugin '{component.plugin}', distribution {origin})"


def check_run_contracts(
    components: Components,
    model: torch.nn.Module,
    task: Task,
    registry: Registry,
    recipe: DictConfig,
    fabric: Fabric,
    count: int = 3,
) -> None:
    """Cheap checks of the run's components on the first ``count`` molecules of its training set, before
    training: encoder outputs (shapes, dtypes, the padding mask, zero padding rows, independence from extra
    padding), projector outputs (shape, finite, independence from extra encoder padding) and that the LLM
    reads as many soft tokens as the projector makes. Only components the task's model runs are checked (a task
    may ignore a section). A failure is a ContractError naming the plugin."""
    used = {id(module) for module in model.modules()}
    encoder, projector, llm = components.encoder, components.projector, components.llm
    components = Components(
        encoder=encoder if encoder is not None and id(encoder) in used else None,
        projector=projector if projector is not None and id(projector) in used else None,
        llm=llm if llm is not None and id(llm) in used else None,
    )
    if components.encoder is None:
        return
    train = task.datasets()["train"]
    if not isinstance(train, Sized):
        raise ContractError(
            f"{component_label(registry, 'task', recipe.task.name)}: the train dataset ({type(train).__name__}) "
            "has no len(); datasets() must return map-style datasets"
        )
    samples = [train[i] for i in range(min(count, len(train)))]
    # a sample may be a group of items the task collates together (a molecule's conformers): check its first
    items = [sample[0] if isinstance(sample, list) else sample for sample in samples]
    modules = [m for _, m in components.items()]
    modes = [m.training for m in modules]
    low_precision = any(p.dtype in (torch.bfloat16, torch.float16) for m in modules for p in m.parameters())
    atol = 5e-2 if low_precision else 1e-4
    for module in modules:
        module.eval()
    kind, name = "encoder", recipe.encoder.name
    try:
        encoded = check_encoder_outputs(components.encoder, items, fabric.device)
        check_padding_invariance(components.encoder, items, atol, fabric.device)
        if components.projector is not None:
            kind, name = "projector", recipe.projector.name
            check_projector_on(components.projector, encoded, atol)
        if components.llm is not None and components.projector is not None:
            kind, name = "llm", recipe.llm.name
            tokens = getattr(components.llm, "num_mol_tokens", None)
            assert tokens == components.projector.num_tokens, (
                f"reads {tokens} soft tokens per molecule but projector '{recipe.projector.name}' makes "
                f"{components.projector.num_tokens} (set llm.num_mol_tokens)"
            )
    except AssertionError as exc:
        raise ContractError(f"{component_label(registry, kind, name)} breaks its contract: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own crash on real data, named as the plugin's
        ids = ", ".join(str(item.get(keys.MOL_ID)) for item in items)
        raise ContractError(
            f"{component_label(registry, kind, name)} failed on the first molecules ({ids}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)


# --- every installed component (bench plugins --check) ----------------------------------------------------

#: Overrides that keep a task check small whatever the task (its packaged recipe supplies the rest).
TASK_CHECK_OVERRIDES = (
    "data.limit=8",
    "data.eval_limit=4",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "train.init_from=null",
    "tracking.enabled=false",
)


def check_component(registry: Registry, kind: str, name: str) -> str | None:
    """Run the contract checks of one installed component with its default settings; None when it passes,
    else what failed. A task is checked with its packaged recipe (a task without one is skipped: say so)."""
    from omegaconf import OmegaConf

    from molbridge.core.recipe import packaged_recipes

    component = registry.get(kind, name)
    config = OmegaConf.structured(component.config_schema)
    config.name = name
    try:
        if kind == "encoder":
            check_encoder(component.build(config))
        elif kind == "projector":
            check_projector(component.build(config, input_dim=64), input_dim=64)
        elif kind == "llm":
            check_llm(component.build(config, input_dim=64), input_dim=64)
        elif name in packaged_recipes():
            check_task(name, overrides=TASK_CHECK_OVERRIDES, registry=registry)
        else:
            return "skipped: no packaged recipe of that name; run molbridge.core.testing.check_task with yours"
    except AssertionError as exc:
        return f"breaks its contract: {exc}"
    except Exception as exc:  # noqa: BLE001 - a plugin's own crash is a finding, named as the plugin's
        return f"failed: {type(exc).__name__}: {exc}"
    return None
