"""Recipe keys documented from their schemas: ``bench recipes show NAME --doc``.

Every recipe key is a dataclass field, and its documentation is the string literal written after the field
(the convention of every schema in molbridge and its plugins). Python keeps no such attribute docstrings at run
time, so they are read from the schema's source with :mod:`ast`. The output is the resolved recipe as YAML with,
above each key, its docstring, type, default, choices and valid range.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from molbridge.core.recipe import RecipeSchema, to_dict
from molbridge.core.registry import Registry


@functools.cache
def field_docs(schema: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its bases (the string literal after each field)."""
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):  # no source (built dynamically): no docs, not an error
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None], strict=True):
            doc = _docstring(after)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and doc is not None:
                docs[node.target.id] = inspect.cleandoc(doc)
    return docs


def _docstring(node: ast.stmt | None) -> str | None:
    """The text of a statement that is a bare string literal, else None."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
        return node.value.value
    return None


def undocumented(schema: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``schema`` (nested dataclasses included) that have no docstring; ``name``, the
    component's own name, needs none."""
    docs, hints, missing = field_docs(schema), typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            missing += undocumented(hints[f.name], f"{prefix}{f.name}.")
        elif f.name not in docs and f.name != "name":
            missing.append(prefix + f.name)
    return missing


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def describe_field(field: dataclasses.Field, hint: Any, doc: str | None) -> list[str]:
    """Comment lines for one key: docstring, then type, default, choices and range."""
    default = (
        field.default
        if field.default is not dataclasses.MISSING
        else field.default_factory()
        if field.default_factory is not dataclasses.MISSING
        else "required"
    )
    facts = [f"type {_type_name(hint)}", f"default {default!r}"]
    if field.metadata.get("choices"):
        facts.append("one of " + ", ".join(map(str, field.metadata["choices"])))
    bounds = field.metadata.get("bounds", {})
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    if bounds:
        facts.append("range " + " and ".join(f"{symbols[k]} {v}" for k, v in bounds.items()))
    described = field.metadata.get("describe")
    lines = (doc or "(undocumented)").splitlines() + ["; ".join(facts)]
    if callable(described):
        lines += described()
    return lines


def _section_lines(schema: type, values: dict, indent: int) -> list[str]:
    docs, hints, out = field_docs(schema), typing.get_type_hints(schema), []
    pad = " " * indent
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            out += [f"{pad}# {line}" for line in (docs.get(f.name) or f.name).splitlines()]
            out.append(f"{pad}{f.name}:")
            out += _section_lines(hints[f.name], value, indent + 2)
            continue
        out += [f"{pad}# {line}".rstrip() for line in describe_field(f, hints[f.name], docs.get(f.name))]
        rendered = OmegaConf.to_yaml({f.name: value}).rstrip("\n").splitlines()
        out += [pad + line for line in rendered]
    return out


def document(recipe: DictConfig, registry: Registry) -> str:
    """The resolved recipe as YAML, each key preceded by its documentation (plugin sections by their schema)."""
    values = to_dict(recipe, resolve=True)
    lines = [f"# recipe {recipe.recipe}: every key, its documentation, type, default and range"]
    fixed = {k: v for k, v in values.items() if k not in ("encoder", "projector", "llm", "task")}
    lines += _section_lines(RecipeSchema, fixed, 0)
    for kind in ("encoder", "projector", "llm", "task"):
        section = values.get(kind)
        if section is None:
            continue
        component = registry.get(kind, section["name"])
        lines += ["", f"# {kind} '{component.name}': {component.description}".rstrip(), f"{kind}:"]
        lines += _section_lines(component.config_schema, section, 2)
    return "\n".join(lines) + "\n"
