"""``bench ask`` against a tiny trained qa run: answers equal the model's own generate, SDF input, errors, REPL."""

import io
import re
import shutil

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from safetensors.torch import load_file

from molbridge.core import batch as keys
from molbridge.core.ask import Asker, from_sdf
from molbridge.core.checkpoint import RECIPE_FILE, STATE_FILE
from molbridge.core.cli import main
from molbridge.core.data import ConformerConfig, MoleculeInput, make_record, open_dataset
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe, to_yaml
from molbridge.core.registry import build_components
from molbridge.plugins.llms.demo import demo_model_path

# the smallest qa run that trains and checkpoints: one step, numeric answers only (no METEOR to load)
TINY = [
    "encoder.preset=small",
    "projector.num_layers=1",
    "data.batch_size=2",
    "data.limit=2",
    "data.eval_limit=1",
    "train.max_steps=1",
    "train.warmup_steps=0",
    "tracking.enabled=false",
    "train.init_from=null",
    "task.tasks=[LogP]",
    "task.max_new_tokens=3",
]
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
QUESTION = "What is the LogP of this molecule?"
TOKENS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained qa run (the slow part), with the demo LLM in the session's private cache."""
    root = tmp_path_factory.mktemp("ask")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOLBRIDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        patch.chdir(root)
        assert main(["run", "qa", "--output", "run", *TINY]) == 0
        yield root / "run"


@pytest.fixture(scope="module")
def direct(run_dir):
    """The run's model rebuilt by hand (recipe -> task.build_model -> state dict): what bench ask must match."""
    folder = next((run_dir / "checkpoints").glob("step-*"))
    registry = get_registry()
    recipe = load_recipe(folder / RECIPE_FILE, registry=registry)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    model = task.build_model(build_components(recipe, registry))
    model.load_state_dict(torch.load(folder / STATE_FILE, weights_only=True)["model"])
    model.eval()

    def generate(question, records):
        samples = [
            {
                keys.INSTRUCTION: question,
                keys.SMILES: r.smiles,
                keys.MOL_ID: r.id,
                keys.ATOMIC_NUMBERS: r.atomic_numbers,
                keys.POSITIONS: r.conformers[0],
            }
            for r in records
        ]
        return model.generate(task.collate_prompts(samples), max_new_tokens=TOKENS)

    return generate


def embedded(smiles):
    """The record the data layer makes with molbridge-mini's own conformer settings."""
    stored = open_dataset("molbridge-mini").meta["conformers"]
    config = ConformerConfig(**{k: v for k, v in stored.items() if k != "require_text"})
    return make_record(MoleculeInput(0, smiles, smiles=smiles), config)


def ask(run_dir, *args):
    return main(["ask", "--checkpoint", str(run_dir), "--max-new-tokens", str(TOKENS), *args])


def test_answer_equals_the_models_generate_on_the_same_prompt(run_dir, direct, monkeypatch, capsys):
    loaded = []
    load_model = Asker.load_model
    monkeypatch.setattr(Asker, "load_model", lambda self, **kw: loaded.append(load_model(self, **kw)) or loaded[0])
    assert ask(run_dir, "--smiles", ASPIRIN, QUESTION) == 0
    expected = direct(QUESTION, [embedded(ASPIRIN)])[0]
    assert expected and capsys.readouterr().out == expected + "\n"
    # what answered is the run's last checkpoint, every weight as saved, in eval mode
    [model] = loaded
    state_file = next((run_dir / "checkpoints").glob("step-*")) / STATE_FILE
    assert state_file.parent.name == "step-000001" and not model.training
    saved = torch.load(state_file, weights_only=True)["model"]
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # and the LLM was trained whole: its weights are the run's, not the demo model's initial ones
    initial = load_file(str(demo_model_path() / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(initial[name], model.llm.model.get_parameter(name).detach())


def write_sdf(path):
    """Aspirin with explicit hydrogens and phenol without any, both 3D (seeded ETKDG)."""
    writer = Chem.SDWriter(str(path))
    coordinates = []
    for name, smiles, hydrogens in (("aspirin", ASPIRIN, True), ("phenol", "Oc1ccccc1", False)):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        mol = mol if hydrogens else Chem.RemoveHs(mol)
        mol.SetProp("_Name", name)
        writer.write(mol)
        coordinates.append(mol.GetConformer().GetPositions())
    writer.close()
    return coordinates


def test_sdf_records_keep_their_coordinates_and_are_answered_one_by_one(run_dir, direct, tmp_path, capsys):
    coordinates = write_sdf(tmp_path / "two.sdf")
    records = from_sdf(tmp_path / "two.sdf", ConformerConfig())
    for record, given in zip(records, coordinates, strict=True):
        # the file's atoms come first with their coordinates as written; missing hydrogens are appended
        np.testing.assert_allclose(record.conformers[0][: len(given)], given, atol=1e-4)
    assert [r.smiles for r in records] == ["CC(=O)Oc1ccccc1C(=O)O", "Oc1ccccc1"]
    assert [len(r.atomic_numbers) for r in records] == [21, 13]  # every hydrogen, as in the training data
    assert ask(run_dir, "--sdf", str(tmp_path / "two.sdf"), QUESTION) == 0
    answers = direct(QUESTION, records)
    assert capsys.readouterr().out == f"[0] aspirin: {answers[0]}\n[1] phenol: {answers[1]}\n"


def test_2d_sdf_records_are_embedded_in_3d_with_a_warning(tmp_path):
    mol = Chem.MolFromSmiles("CCO")
    AllChem.Compute2DCoords(mol)
    Chem.MolToMolFile(mol, str(tmp_path / "flat.sdf"))
    with pytest.warns(UserWarning, match="record 0 .* has 2D coordinates; embedding a 3D conformer"):
        [record] = from_sdf(tmp_path / "flat.sdf", ConformerConfig())
    assert record.embedding == "etkdg" and len(record.atomic_numbers) == 9
    assert np.ptp(record.conformers[0][:, 2]) > 0.1  # no longer flat


def test_interactive_mode_answers_each_line_until_an_empty_one(run_dir, direct, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the LogP of this molecule?\nDescribe it.\n\nignored\n"))
    step = next((run_dir / "checkpoints").glob("step-*"))  # a checkpoint folder works as well as its run
    assert ask(step, "--smiles", ASPIRIN) == 0
    record = embedded(ASPIRIN)
    expected = [direct(q, [record])[0] for q in (QUESTION, "Describe it.")]
    assert capsys.readouterr().out == f"question> {expected[0]}\nquestion> {expected[1]}\nquestion> "


@pytest.fixture(scope="module")
def bad_inputs(run_dir, tmp_path_factory):
    """A retrieval checkpoint, a qa one whose state file is cut short, a folder that is neither, an SDF with a
    broken record."""
    root = tmp_path_factory.mktemp("bad")
    retrieval = root / "retrieval" / "checkpoints" / "step-000001"
    retrieval.mkdir(parents=True)
    (retrieval / RECIPE_FILE).write_text(to_yaml(load_recipe("retrieval", registry=get_registry())))
    (retrieval / STATE_FILE).write_bytes(b"")
    shutil.copytree(next((run_dir / "checkpoints").glob("step-*")), root / "corrupt")
    with open(root / "corrupt" / STATE_FILE, "r+b") as f:
        f.truncate(1000)
    (root / "empty").mkdir()
    (root / "bad.sdf").write_text(Chem.MolToMolBlock(Chem.MolFromSmiles("C")) + "$$$$\nbroken\n\n\n$$$$\n")
    return root


@pytest.mark.parametrize(
    ("where", "molecule", "message"),
    [
        ("run", ["--smiles", "C1CC"], "SMILES 'C1CC': the SMILES or MOL block could not be parsed"),
        ("run", ["--smiles", "C[U]"], "SMILES 'C[U]': an atom is a dummy/query atom or an element outside"),
        ("run", ["--smiles", "F[Xe]F"], "SMILES 'F[Xe]F': neither MMFF94 nor UFF has parameters for an atom"),
        ("run", ["--sdf", "none.sdf"], "--sdf none.sdf: no such file"),
        (
            "run",
            ["--sdf", "bad.sdf"],
            "--sdf bad.sdf: 1 unusable record(s):\n  record 1 (broken): the SMILES or MOL block",
        ),
        ("run", ["--sdf", "bad.sdf", "--record", "2"], "--record 2: bad.sdf has records 0..1"),
        (
            "retrieval",
            ["--smiles", "C"],
            "checkpoints/step-000001: a 'retrieval' run cannot answer questions (its task does not implement "
            "answer(); bench ask needs a run of a task with a language model, e.g. captioning or qa)",
        ),
        ("corrupt", ["--smiles", "C"], "cannot read ...corrupt/state.ckpt: "),
        ("empty", ["--smiles", "C"], "empty: neither a run directory (with checkpoints/) nor a checkpoint folder"),
        ("missing", ["--smiles", "C"], "missing: no such file or directory"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(run_dir, bad_inputs, where, molecule, message, capsys, monkeypatch):
    monkeypatch.chdir(bad_inputs)
    assert ask(run_dir if where == "run" else where, *molecule, QUESTION) == 2
    pattern = ".*".join(re.escape(part) for part in message.split("..."))  # "..." stands for a path
    assert re.search(pattern, capsys.readouterr().err), message
