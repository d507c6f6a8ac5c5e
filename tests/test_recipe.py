"""Recipes: struct-mode validation with every problem reported at once, extends, overrides."""

from dataclasses import dataclass

import pytest

from molbridge.core.errors import RecipeError, UnknownComponentError
from molbridge.core.identity import experiment_name, identify
from molbridge.core.recipe import find_recipe, flatten, load_recipe, packaged_recipes
from molbridge.core.registry import Registry, make_register


@dataclass
class EncCfg:
    name: str = "enc"
    preset: str = "small"
    width: int = 16


@pytest.fixture
def registry():
    reg = Registry()
    make_register(reg, "encoder", "test", None, None)("enc", lambda c: c, EncCfg)
    make_register(reg, "encoder", "test", None, None)("other", lambda c: c)
    make_register(reg, "task", "test", None, None)("toy", lambda c: c)
    return reg


@pytest.fixture
def recipe_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  lr: 0.001\n  max_steps: 50\ndata:\n  batch_size: 8\n")
    child = tmp_path / "child.yaml"
    child.write_text(
        "# bench run toy --recipe child.yaml\nextends: base.yaml\nrecipe: child\n"
        "train:\n  max_steps: 7\nencoder:\n  name: enc\n  width: 32\ntask:\n  name: toy\n"
    )
    return child


def test_extends_merges_over_the_base_and_overrides_win(recipe_file, registry):
    recipe = load_recipe(recipe_file, ["train.lr=0.5", "seed=3"], registry=registry)
    assert (recipe.train.lr, recipe.train.max_steps, recipe.data.batch_size) == (0.5, 7, 8)
    assert (recipe.encoder.width, recipe.encoder.preset) == (32, "small")  # plugin schema defaults filled
    assert identify(recipe, registry).name.startswith("enc-none-none-s3-")
    assert experiment_name(recipe) == "toy-molbridge-mini"


def test_every_problem_is_reported_at_once_with_location_and_suggestion(recipe_file, registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(
            recipe_file,
            ["trian.max_steps=3", "encoder.nmae=x", "train.lr=fast", "train.precision=bf16"],
            registry=registry,
        )
    problems = info.value.problems
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "trian (command line 'trian.max_steps=3'): unknown key" in text and "did you mean 'train'" in text
    assert "encoder.nmae (command line 'encoder.nmae=x')" in text and "did you mean 'name'" in text
    assert "train.lr" in text and "fast" in text
    assert "did you mean 'bf16-true'" in text


def test_problems_in_the_file_name_the_file_and_line(tmp_path, registry):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  name: toy\nencoder:\n  name: enc\n  widht: 3\n")
    with pytest.raises(RecipeError, match=r"encoder.widht \(.*bad.yaml:5\).*did you mean 'width'"):
        load_recipe(bad, registry=registry)


def test_unknown_component_lists_the_registered_ones(recipe_file, registry):
    with pytest.raises(
        RecipeError,
        match=r"unknown encoder 'enk' \(did you mean 'enc'\?\); valid encoders: enc, "
        r"other",
    ):
        load_recipe(recipe_file, ["encoder.name=enk"], registry=registry)


def test_switching_component_drops_the_previous_components_options(recipe_file, registry):
    recipe = load_recipe(recipe_file, registry=registry, components={"encoder": "other"})
    assert dict(recipe.encoder) == {"name": "other"}


def test_switching_component_keeps_shared_options_but_not_weights(registry):
    from molbridge.core.recipe import replace_component

    @dataclass
    class WeightedCfg:
        name: str = "weighted"
        preset: str = "small"
        checkpoint: str | None = None

    make_register(registry, "encoder", "test", None, None)("weighted", lambda c: c, WeightedCfg)
    data = {"encoder": {"name": "enc", "preset": "base", "checkpoint": "/weights/enc.pt", "width": 8}}
    assert replace_component(data, "encoder", "weighted", registry)["encoder"] == {"name": "weighted", "preset": "base"}


def test_deletion_restores_the_schema_default(recipe_file, registry):
    recipe = load_recipe(recipe_file, ["~train.max_steps", "~encoder.width"], registry=registry)
    assert (recipe.train.max_steps, recipe.encoder.width) == (1000, 16)  # schema and plugin defaults
    with pytest.raises(RecipeError, match="cannot delete 'train.nothing'"):
        load_recipe(recipe_file, ["~train.nothing"], registry=registry)


def test_validated_recipe_is_struct(recipe_file, registry):
    recipe = load_recipe(recipe_file, registry=registry)
    with pytest.raises(Exception, match="widht"):
        recipe.encoder.widht = 3


def test_missing_task_section_is_an_error(tmp_path, registry):
    path = tmp_path / "r.yaml"
    path.write_text("encoder:\n  name: enc\n")
    with pytest.raises(RecipeError, match="task: required section missing; registered tasks: toy"):
        load_recipe(path, registry=registry)


def test_extends_cycle_is_reported(tmp_path, registry):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml", registry=registry)


def test_flatten_keys_are_valid_overrides(recipe_file, registry):
    recipe = load_recipe(recipe_file, registry=registry)
    flat = flatten(recipe)
    assert flat["train.lr"] == 0.001 and flat["encoder.width"] == 32
    again = load_recipe(
        recipe_file,
        [f"{k}={v}" for k, v in flat.items() if k.startswith(("train.lr", "encoder.width"))],
        registry=registry,
    )
    assert flatten(again) == flat


def test_unknown_recipe_name_lists_the_packaged_ones():
    with pytest.raises(UnknownComponentError, match="unknown recipe 'no-such-recipe'"):
        find_recipe("no-such-recipe")


def test_every_packaged_recipe_starts_with_the_command_that_runs_it():
    for name, path in packaged_recipes().items():
        first = path.read_text().splitlines()[0]
        assert first.startswith("# bench run "), f"{name}: first line is {first!r}"


@pytest.fixture
def per_component_file(recipe_file, registry):
    make_register(registry, "encoder", "test", None, None)("twin", lambda c: c, EncCfg)
    recipe_file.write_text(
        recipe_file.read_text()
        + "per_component:\n  encoder:\n    twin: {preset: wide}\n    enc: {width: 64}\n"
        + "  task:\n    toy: {}\n"
    )
    return recipe_file


def test_per_component_settings_apply_to_their_component_only_and_yield_to_the_command_line(
    per_component_file, registry
):
    assert load_recipe(per_component_file, registry=registry).encoder.width == 64  # over the section's 32
    swapped = load_recipe(per_component_file, registry=registry, components={"encoder": "twin"})
    assert (swapped.encoder.preset, swapped.encoder.width) == ("wide", 32)  # enc's 64 stays with enc
    assert load_recipe(per_component_file, ["encoder.width=8"], registry=registry).encoder.width == 8
    dropped = load_recipe(per_component_file, ["~per_component.encoder.enc"], registry=registry)
    assert dropped.encoder.width == 32


def test_per_component_settings_are_in_the_identity_as_what_they_resolve_to(per_component_file, tmp_path, registry):
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("extends: child.yaml\nencoder:\n  width: 64\n")
    via_table, spelled_out = (
        load_recipe(per_component_file, registry=registry),
        load_recipe(explicit, registry=registry),
    )
    assert identify(via_table, registry).name == identify(spelled_out, registry).name
    assert identify(load_recipe(per_component_file, ["encoder.width=65"], registry=registry), registry).name != (
        identify(via_table, registry).name
    )


def test_every_per_component_entry_is_validated_used_or_not(recipe_file, registry):
    recipe_file.write_text(
        recipe_file.read_text() + "per_component:\n  encoder:\n    enk: {width: 3}\n    enc: {widht: 3, name: other}\n"
        "  encoders: {}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, registry=registry, components={"encoder": "other"})
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4, text
    assert "per_component.encoder.enk (" in text and "did you mean 'enc'" in text
    assert "per_component.encoder.enc.widht (" in text and "child.yaml:13" in text and "did you mean 'width'" in text
    assert "per_component.encoder.enc.name" in text and "cannot rename" in text
    assert "per_component.encoders (" in text and "did you mean 'encoder'" in text


def test_conformer_recipes_give_schnet_the_cutoff_that_reads_conformers():
    for name in ("conformer_retrieval", "conformer_qa", "conformer_order"):
        assert load_recipe(name, components={"encoder": "schnet"}).encoder.cutoff == 10.0
        assert load_recipe(name, ["encoder.cutoff=5"], components={"encoder": "schnet"}).encoder.cutoff == 5.0
    assert load_recipe("retrieval", components={"encoder": "schnet"}).encoder.cutoff is None  # the preset's 5 Å
