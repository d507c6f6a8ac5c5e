"""docs/plugins.md: each example plugin on the page is complete and passes molbridge's contract checks."""

import re
import types
from pathlib import Path

import pytest
import yaml

from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import validate
from molbridge.core.runner import run
from molbridge.core.testing import check_encoder, check_llm, check_projector

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def docs_plugins():
    modules = {}
    for source in blocks("python"):
        kind = re.match(r"# plugin: (\w+)", source).group(1)
        module = types.ModuleType(f"docs_{kind}")
        exec(compile(source, f"{PAGE}:{kind}", "exec"), module.__dict__)  # noqa: S102 - our own documentation
        modules[kind] = module
    assert set(modules) == {"encoder", "projector", "llm", "task"}
    assert all(m.molbridge_hook_api == 2 for m in modules.values())
    return load_plugins(external=False, extra=list(modules.values())).registry


def _default(registry, kind, name):
    component = registry.get(kind, name)
    return component, component.config_schema()


def test_the_encoder_and_projector_examples_meet_their_contracts(docs_plugins):
    encoder, config = _default(docs_plugins, "encoder", "shells")
    check_encoder(encoder.build(config))
    projector, config = _default(docs_plugins, "projector", "attnpool")
    check_projector(projector.build(config, input_dim=64), input_dim=64)


def test_the_llm_example_meets_its_contract(docs_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path / "cache"))
    llm, config = _default(docs_plugins, "llm", "chatml")
    model = llm.build(config, input_dim=64)
    check_llm(model, input_dim=64)
    assert model.format_prompt("Q?", "CCO").startswith("<|im_start|>user\nQ?\nMolecule: CCO <mol>")


def test_the_task_example_trains_with_the_recipe_on_the_page(docs_plugins, tmp_path):
    (recipe,) = blocks("yaml")
    data = yaml.safe_load(recipe)
    data["data"] |= {"limit": 32, "eval_limit": 16}
    data["train"] |= {"max_steps": 3, "warmup_steps": 1}
    data["tracking"] = {"enabled": False}
    result = run(validate(data, docs_plugins), docs_plugins, output=tmp_path / "out")
    assert result["status"] == "completed" and result["metrics"]["test/mae"] > 0
