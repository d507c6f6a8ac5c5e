"""Build ``molbridge-mini``, the embedded default dataset, from molecules shipped in RDKit's wheel.

Sources: RDKit ``Data/NCI/first_5K.smi`` (4,999 NCI open-set structures) and ``Contrib/PBF/testData/
egfr.sdf`` (365 ZINC EGFR ligands, read as MOL blocks). Each molecule gets ETKDGv3 + MMFF conformers,
RDKit properties, GFN2-xTB (tblite) orbital energies on the lowest-energy MMFF geometry, a templated
description of computed facts and 3D-MoIT-style instruction records. Deterministic: ``bench data
build-mini --out DIR`` twice gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from rdkit import Chem

from molbridge.core.data import conformer_properties, describe, properties
from molbridge.core.data.conformers import ConformerConfig, Failure, MoleculeInput, MoleculeRecord
from molbridge.core.data.prepare import prepare
from molbridge.core.data.readers import read_sdf, read_smi

SEED = 20240124
# Salts keep their largest organic fragment: counter-ions placed far from it would make shape, radius of
# gyration and dipole describe the arrangement of the ions rather than the molecule. MMFF94 only and the
# 200-atom limit, as when the shipped copy was built, so `build-mini` still reproduces it (the UFF fallback
# would add the 203 molecules MMFF94 cannot type, with a different force field).
CONFIG = ConformerConfig(
    num_conformers=3,
    seed=SEED,
    max_iters=2000,
    max_atoms=200,
    timeout_s=60.0,
    fragments="largest",
    forcefields=("mmff",),
)


def _rdkit_root() -> Path:
    import rdkit

    return Path(os.path.dirname(rdkit.__file__))


def sources() -> list[tuple[str, Path]]:
    root = _rdkit_root()
    return [
        ("nci", root / "Data" / "NCI" / "first_5K.smi"),
        ("egfr", root / "Contrib" / "PBF" / "testData" / "egfr.sdf"),
    ]


def mini_inputs(limit: int | None = None) -> list[MoleculeInput]:
    """All source molecules in a fixed order, ids prefixed by source (``nci:1``, ``egfr:ZINC...``)."""
    inputs: list[MoleculeInput] = []
    for source, path in sources():
        reader = read_smi if path.suffix == ".smi" else read_sdf
        for item in reader(path):
            item.index, item.id = len(inputs), f"{source}:{item.id}"
            inputs.append(item)
    return inputs[:limit] if limit else inputs


def molecule_seed(mol_id: str) -> int:
    """Per-molecule seed for template choice: stable across runs and Python hash randomisation."""
    return int.from_bytes(hashlib.sha256(f"{SEED}:{mol_id}".encode()).digest()[:4], "little")


def enrich(record: MoleculeRecord) -> MoleculeRecord | Failure:
    """Add properties, GFN2-xTB values, a description and instruction records (runs in workers)."""
    mol = record.mol
    values = properties.rdkit_properties(mol)
    try:
        charge = Chem.GetFormalCharge(mol)
        values.update(properties.xtb_properties(record.atomic_numbers, record.conformers[0], charge))
    except Exception as exc:  # noqa: BLE001 - tblite raises its own types; an SCF failure is a record
        detail = f"{type(exc).__name__}: {exc}"
        return Failure(record.index, record.id, record.smiles, "xtb", "xtb_failed", detail)
    dipole = values.pop("xtb_dipole")
    facts = describe.structure_facts(mol, conf_id=0, dipole=dipole)
    seed = molecule_seed(record.id)
    text = describe.describe(facts, seed)
    record.properties = {
        **record.properties,
        **{k: round(v, 6) for k, v in values.items()},
        "xtb_dipole_debye": round(dipole, 6),
        "radius_of_gyration": round(facts.radius_of_gyration, 6),
    }
    record.texts = {**record.texts, "description": text, "scaffold": facts.scaffold, "formula": facts.formula}
    record.instructions = describe.instructions(facts, record.properties, record.smiles, text, seed)
    return record


def build_mini(
    out: str | Path,
    *,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    conformers: int = CONFIG.num_conformers,
) -> dict | None:
    """Build molbridge-mini (or its first ``limit`` inputs) into ``out``.

    ``conformers``: embeddings per molecule before pruning (the shipped copy: 3). More give conformer-level tasks
    more pairs per molecule; the molecules, their splits and every per-molecule value except those of conformer 0
    (the lowest-energy one of more embeddings) stay those of the shipped copy. Such a build is named
    ``molbridge-mini-cN`` so that runs on it never share an identity with the shipped copy's."""
    config = dataclasses.replace(CONFIG, num_conformers=conformers)
    shipped = conformers == CONFIG.num_conformers
    inputs = mini_inputs(limit)
    meta = {
        "sources": [
            {"name": name, "file": f"rdkit/{path.relative_to(_rdkit_root()).as_posix()}"} for name, path in sources()
        ],
        "property_units": {
            "molecular_weight": "g/mol",
            "logp": "Crippen LogP",
            "tpsa": "A^2",
            "bertz_ct": "RDKit BertzCT (not PubChem Complexity)",
            "xtb_homo": "eV GFN2-xTB",
            "xtb_lumo": "eV GFN2-xTB",
            "xtb_gap": "eV GFN2-xTB",
            "xtb_energy": "eV GFN2-xTB",
            "xtb_dipole_debye": "debye GFN2-xTB",
            "radius_of_gyration": "A, MMFF conformer 0",
        },
        # the 3D facts every description states in a sentence describe.read_shape_facts reads back: the
        # captioning task scores them only for datasets that declare them
        "caption_facts": ["shape_class", "radius_of_gyration"],
        "build": {
            "command": "bench data build-mini --out DIR" + ("" if shipped else f" --conformers {conformers}"),
            "seed": SEED,
            "limit": limit,
            "conformers": dataclasses.asdict(config),
        },
    }
    built = prepare(
        inputs,
        out,
        name="molbridge-mini" if shipped else f"molbridge-mini-c{conformers}",
        config=config,
        enrich=enrich,
        shard_size=2000,
        workers=workers,
        split_seed=SEED,
        progress=progress,
        extra_meta=meta,
    )
    if built is None:
        return None
    conformer_properties.compute(out, workers=workers, progress=progress)  # conformer-level tasks ask them
    return json.loads((Path(out) / "dataset.json").read_text())
