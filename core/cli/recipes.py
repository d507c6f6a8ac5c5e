"""``bench recipes``: list, show, validate and copy the packaged recipes."""

import argparse
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from molbridge.core.cli.run import IntermixedParser
from molbridge.core.recipe import (
    ProfileSetting,
    find_recipe,
    flatten,
    load_recipe,
    packaged_recipes,
    profile_path,
    to_yaml,
)

COMPONENTS = ("encoder", "projector", "llm")


def _component_options(parser) -> None:
    for kind in COMPONENTS:
        parser.add_argument(f"--{kind}", metavar="NAME", help=f"swap the {kind} as bench run --{kind} does")


def _load(args):
    return load_recipe(args.name, args.overrides, components={k: getattr(args, k) for k in COMPONENTS})


def add_parser(sub):
    parser = sub.add_parser(
        "recipes",
        help="list, show, validate or copy recipes",
        description="Recipes are YAML files that assemble a run. Packaged recipes ship with molbridge; "
        "copy one to edit it, then pass its path to `bench run TASK --recipe PATH`.\n"
        "NAME is a packaged recipe name or a path to a YAML file.",
        epilog="examples:\n  bench recipes list\n  bench recipes show retrieval --doc\n"
        "  bench recipes validate 3d-molm-stage3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub_recipes = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub_recipes.add_parser(
        "list",
        help="packaged recipes with their descriptions",
        epilog="example:\n  bench recipes list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=list_recipes)
    show = sub_recipes.add_parser(
        "show",
        help="print a recipe resolved (extends and overrides applied); --doc documents every key",
        description="Print the recipe as a run would use it: extends, component swaps and overrides applied. "
        "--doc adds, above every key, its documentation, type, default, choices and valid range, from the "
        "schemas of core and of the plugins the recipe names.",
        epilog="examples:\n  bench recipes show retrieval --doc\n  bench recipes show captioning --encoder schnet "
        "train.lr=5e-4\n  bench recipes show retrieval --raw",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.__class__ = IntermixedParser  # overrides before and after options, as for bench run
    show.add_argument("name")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as for bench run")
    _component_options(show)
    show.add_argument("--doc", action="store_true", help="document every key (docstring, type, default, range)")
    show.add_argument("--raw", action="store_true", help="print the file as written instead")
    show.set_defaults(func=show_recipe)
    validate = sub_recipes.add_parser(
        "validate",
        help="check a recipe and overrides; list every problem at once",
        description="Exit 0 if the recipe is valid, else 2 with every unknown key, bad value or unknown "
        "component listed, each with where it was set and the closest valid name. A valid recipe "
        "is then sized: its model is built on the meta device (no weights read, no memory) and a "
        "table gives parameters, trainable parameters (after the task's and the recipe's freezing) "
        "and memory by component. Model folders not on this machine are sized by their known shape "
        "(SciBERT, Llama-2-7B), and the report says so. It also names the protocol profile (compat) and "
        "lists every key the profile changed.",
    )
    validate.epilog = (
        "examples:\n  bench recipes validate 3d-molm-stage3\n  bench recipes validate retrieval --encoder schnet "
        "train.max_steps=200\n  bench recipes validate my_recipe.yaml --no-size"
    )
    validate.formatter_class = argparse.RawDescriptionHelpFormatter
    validate.__class__ = IntermixedParser
    validate.add_argument("name")
    validate.add_argument("overrides", nargs="*", metavar="key=value")
    _component_options(validate)
    validate.add_argument("--no-size", action="store_true", help="check the recipe only; do not size the model")
    validate.set_defaults(func=validate_recipe)
    copy = sub_recipes.add_parser(
        "copy",
        help="copy a packaged recipe to a file you can edit",
        epilog="example:\n  bench recipes copy retrieval mine.yaml && bench run retrieval --recipe mine.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument("name")
    copy.add_argument("dest", type=Path)
    copy.set_defaults(func=copy_recipe)


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def list_recipes(args) -> int:
    for name, path in sorted(packaged_recipes().items()):
        print(f"{name:<24} {_first_comment(path)}")
    return 0


def show_recipe(args) -> int:
    if args.raw:
        print(find_recipe(args.name).read_text(), end="")
    elif args.doc:
        from molbridge.core.plugins import get_registry
        from molbridge.core.recipe_docs import document

        print(document(_load(args), get_registry()), end="")
    else:
        print(to_yaml(_load(args)), end="")
    return 0


def validate_recipe(args) -> int:
    profile: list[ProfileSetting] = []
    recipe = load_recipe(
        args.name, args.overrides, components={k: getattr(args, k) for k in COMPONENTS}, profile_report=profile
    )
    data_note = check_data(recipe)  # a prepared dataset without the recipe's split kind is an error
    sizing = None
    if not args.no_size:  # before saying "valid": a freezing glob that matches no parameter fails here
        from molbridge.core.plugins import get_registry
        from molbridge.core.sizing import size_recipe

        sizing = size_recipe(recipe, get_registry())
    print(
        f"recipe {args.name} is valid: task {recipe.task.name}, "
        + ", ".join(f"{k} {recipe[k].name}" for k in ("encoder", "projector", "llm") if recipe.get(k))
    )
    print(profile_summary(recipe.compat, profile))
    for line in per_component_summary(recipe):
        print(line)
    if data_note:
        print(data_note)
    if sizing is not None:
        print(sizing.table())
    return 0


def profile_summary(name: str, settings: list[ProfileSetting]) -> str:
    """The active profile and what it did: each key it changed (before -> after), kept or skipped."""
    if not settings:
        return (
            f"profile {name}: molbridge's defaults (compat=3d-molm for the 3D-MoLM reference's protocol; "
            "docs/reproducing-3d-molm.md)"
            if name == "molbridge"
            else f"profile {name}: no key applies to this recipe"
        )
    changed = [s for s in settings if s.status == "set"]
    lines = [f"profile {name} ({profile_path(name)}): {len(changed)} key(s) changed from molbridge's defaults"]
    width = max(len(s.key) for s in settings)
    lines += [f"  {s.key:<{width}}  {_shown(s.before)} -> {_shown(s.value)}" for s in changed]
    lines += [f"  {s.key:<{width}}  kept the recipe's {s.note}" for s in settings if s.status == "kept"]
    lines += [f"  {s.key:<{width}}  not applied: {s.note}" for s in settings if s.status == "skipped"]
    return "\n".join(lines)


def per_component_summary(recipe) -> list[str]:
    """What the recipe's ``per_component`` table gives this run's components, and what the command line kept."""
    lines = []
    for kind, entries in recipe.per_component.items():
        name = recipe[kind].name if recipe.get(kind) is not None else None
        for key, value in flatten(entries.get(name) or {}).items():
            used = OmegaConf.select(recipe[kind], key)
            note = "" if used == value else f" (not used: {kind}.{key}={_shown(used)} is set on the command line)"
            lines.append(f"per_component {kind} {name}: {kind}.{key}={_shown(value)}{note}")
    return lines


def check_data(recipe) -> str | None:
    """Raise when ``data.name`` exists but lacks ``data.split`` (naming its kinds); a note when it is not there yet."""
    from molbridge.core.data.store import DatasetError, open_dataset

    try:
        store = open_dataset(recipe.data.name)
    except DatasetError:
        return f"data.name {recipe.data.name}: not prepared on this machine yet (bench data prepare ... --out it)"
    store.check_split_kind(recipe.data.split)
    return None


def copy_recipe(args) -> int:
    source = find_recipe(args.name)
    dest = args.dest / source.name if args.dest.is_dir() else args.dest
    if dest.exists():
        print(f"error: {dest} exists; not overwritten")
        return 2
    shutil.copyfile(source, dest)
    print(f"copied {source.name} to {dest}; run it with: bench run TASK --recipe {dest}")
    return 0


def _shown(value) -> str:
    """A value as a recipe would write it (null, strings bare)."""
    return "null" if value is None else str(value)
