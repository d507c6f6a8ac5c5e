"""Contracts enforced at run time: a component that breaks one fails at once, naming its plugin."""

import ast
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from molbridge.core import hookimpl
from molbridge.core.cli import main
from molbridge.core.contracts import EncoderOutput
from molbridge.core.errors import ContractError
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import load_recipe
from molbridge.core.runner import run
from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

CORE = Path(__file__).resolve().parents[1] / "core"
TINY = [
    "data.limit=16",
    "data.eval_limit=8",
    "data.batch_size=8",
    "train.max_steps=1",
    "train.warmup_steps=0",
    "task.baseline=false",
    "tracking.enabled=false",
]


def broken_plugin(name: str, breaks) -> types.ModuleType:
    """A third-party encoder plugin: Uni-Mol whose output ``breaks`` rewrites."""

    encoder_name = name  # a class body that assigns `name` cannot read the enclosing one

    @dataclass
    class Config(UniMolConfig):
        name: str = encoder_name

    class Broken(UniMolEncoder):
        def forward(self, inputs):
            return breaks(super().forward(inputs))

    module = types.ModuleType(f"acme_{name}")

    @hookimpl
    def molbridge_register_encoders(register):
        register(name, Broken, Config, description="breaks its contract")

    module.molbridge_register_encoders = molbridge_register_encoders
    return module


BREAKS = {
    "inverted": (
        lambda out: EncoderOutput(out.atom_embeddings, ~out.padding_mask, out.pooled),
        "(is padding_mask inverted? it is True at padding)",
    ),
    "transposed": (
        lambda out: EncoderOutput(out.atom_embeddings.transpose(1, 2), out.padding_mask, out.pooled),
        "atom_embeddings width must equal output_dim",
    ),
    "flat": (lambda out: EncoderOutput(out.pooled, out.padding_mask, out.pooled), "atom_embeddings must be (B, N, D)"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_an_encoder_breaking_its_contract_fails_before_training_naming_the_plugin(name, tmp_path):
    breaks, expected = BREAKS[name]
    registry = load_plugins(external=False, extra=[broken_plugin(name, breaks)]).registry
    recipe = load_recipe("retrieval", TINY, registry, {"encoder": name})
    steps = []

    class Count:
        def on_step_end(self, loop, step, logs):
            steps.append(step)

    with pytest.raises(ContractError) as caught:
        run(recipe, registry, output=tmp_path / "out", callbacks=[Count()])
    message = str(caught.value)
    assert f"encoder '{name}' (plugin 'acme_{name}', distribution no distribution) breaks its contract" in message
    assert expected in message
    assert steps == []  # not one training step


def test_a_correct_encoder_passes_the_same_checks(tmp_path):
    registry = load_plugins(external=False, extra=[broken_plugin("honest", lambda out: out)]).registry
    recipe = load_recipe("retrieval", TINY, registry, {"encoder": "honest"})
    assert run(recipe, registry, output=tmp_path / "out")["status"] == "completed"


def test_a_task_whose_step_returns_no_scalar_loss_is_named(toy_registry, tmp_path, monkeypatch):
    from molbridge.core.contracts import StepOutput

    task_class = toy_registry.get("task", "toy-regression").factory
    original = task_class.training_step
    monkeypatch.setattr(
        task_class, "training_step", lambda self, model, batch: StepOutput(original(self, model, batch).loss.expand(3))
    )
    recipe = load_recipe(_toy_recipe(tmp_path), ["tracking.enabled=false"], toy_registry)
    with pytest.raises(
        ContractError, match=r"task 'toy-regression': training_step's loss must be a 0-dim tensor, got \(3,\)"
    ):
        run(recipe, toy_registry, output=tmp_path / "out")


def _toy_recipe(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(
        "recipe: toy\ntask: {name: toy-regression, size: 16}\ndata: {batch_size: 8}\n"
        "train: {max_steps: 2, accelerator: cpu}\n"
    )
    return path


def test_out_of_range_values_are_rejected_at_validation_naming_each_key(monkeypatch, capsys):
    import molbridge.core.runner as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a model was built"))
    assert main(["run", "retrieval", "train.max_steps=0", "train.lr=-1", "data.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "train.max_steps (command line 'train.max_steps=0'): 0 is out of range: must be >= 1" in err
    assert "train.lr (command line 'train.lr=-1'): -1 is out of range: must be > 0" in err
    assert "data.batch_size (command line 'data.batch_size=0'): 0 is out of range: must be >= 1" in err
    assert main(["run", "retrieval", "train.max_steps=-5"]) == 2
    assert main(["run", "retrieval", "train.warmup_steps=2000"]) == 2  # the recipe trains 1500 steps
    assert "train.warmup_steps=2000 must be < train.max_steps=1500" in capsys.readouterr().err
    assert main(["run", "retrieval", "projector.dropout=1.5", "task.temperature=0"]) == 2
    err = capsys.readouterr().err
    assert "projector.dropout" in err and "must be <= 1" in err and "task.temperature" in err


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("molbridge.plugins")
        ):
            names.append(node.value)  # importlib.import_module("molbridge.plugins...")
    return names


def test_core_imports_nothing_from_the_plugins():
    offenders = {
        str(path.relative_to(CORE.parent)): [n for n in _imports(path) if n.startswith("molbridge.plugins")]
        for path in sorted(CORE.rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_scan_sees_lazy_and_dynamic_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from molbridge.plugins.llms import base\n"
        "import importlib\nimportlib.import_module('molbridge.plugins.tasks.qa')\n"
    )
    assert _imports(sample) == ["importlib", "molbridge.plugins.llms", "molbridge.plugins.tasks.qa"]


def test_the_runtime_checks_use_the_first_training_molecules(tmp_path):
    """The projector is checked on the encoder's real outputs too: a projector that reads padding is named."""
    from molbridge.plugins.projectors import qformer

    registry = load_plugins(external=False).registry
    recipe = load_recipe("retrieval", TINY, registry)
    original = qformer.QFormer.memory_mask

    def ignore_padding(self, padding_mask):
        return original(self, torch.zeros_like(padding_mask))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qformer.QFormer, "memory_mask", ignore_padding)
        with pytest.raises(
            ContractError, match=r"projector 'qformer' \(plugin 'qformer', distribution molbridge .*extra padding"
        ):
            run(recipe, registry, output=tmp_path / "out")


def test_bench_plugins_check_names_a_component_that_breaks_its_contract(monkeypatch, capsys):
    import molbridge.core.plugins as plugins

    registry = load_plugins(external=False, extra=[broken_plugin("inverted", BREAKS["inverted"][0])]).registry
    for kind in ("projector", "llm", "task"):  # keep the check to encoders: the others have their own tests
        registry.components[kind] = {}
    loaded = lambda strict=None: type("L", (), {"registry": registry})  # noqa: E731
    monkeypatch.setattr(plugins, "default_plugins", loaded)
    monkeypatch.setattr("molbridge.core.cli.plugins.default_plugins", loaded)
    assert main(["plugins", "--check"]) == 1
    out = capsys.readouterr().out
    assert "encoder   inverted       [acme_inverted] breaks its contract: every molecule must have" in out
    assert "encoder   unimol         [molbridge" in out and "] ok" in out
    assert "1 component(s) failed their contract checks" in out


def test_llm_and_task_checks_pass_on_the_built_ins(tmp_path, monkeypatch):
    from molbridge.core.testing import check_component

    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path / "cache"))
    registry = load_plugins(external=False).registry
    assert check_component(registry, "llm", "llama") is None
    assert check_component(registry, "task", "retrieval") is None
