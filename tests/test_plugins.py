"""Plugin loading: entry points, isolation of broken plugins, clashes, misspelled hooks, switches."""

import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest

from molbridge.core.errors import PluginError
from molbridge.core.hookspecs import HOOK_API_VERSION
from molbridge.core.plugins import (
    ENV_BLOCKED,
    ENV_NO_EXTERNAL,
    PluginLoadWarning,
    load_plugins,
)

GOOD = """
from dataclasses import dataclass
from molbridge.core import hookimpl

@dataclass
class Cfg:
    name: str = "{name}"
    width: int = 8

@hookimpl
def molbridge_register_encoders(register):
    register("{name}", lambda cfg: ("built", cfg.width), Cfg, description="test encoder")
"""


def make_distribution(root, dist: str, module: str, source: str, version: str = "1.0") -> None:
    """Write an installed distribution (module + dist-info with an entry point) that importlib finds."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[molbridge]\n{module} = {module}\n")


def external_encoders(loaded) -> list[str]:
    registry = loaded.registry
    return [n for n in registry.names("encoder") if registry.get("encoder", n).distribution != "molbridge"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_NO_EXTERNAL, raising=False)
    monkeypatch.delenv(ENV_BLOCKED, raising=False)
    return tmp_path


def test_entry_point_plugin_registers_with_its_distribution(site):
    make_distribution(site, "acme-encoders", "acme_enc", GOOD.format(name="acme"), version="2.3")
    loaded = load_plugins()
    component = loaded.registry.get("encoder", "acme")
    assert (component.distribution, component.version, component.plugin) == ("acme-encoders", "2.3", "acme_enc")
    assert component.build(component.config_schema()) == ("built", 8)


def test_plugin_raising_at_import_is_isolated_and_named(site):
    make_distribution(site, "acme-encoders", "acme_enc", GOOD.format(name="acme"))
    make_distribution(site, "broken-dist", "broken_mod", "raise ImportError('needs libfoo')", version="0.9")
    with pytest.warns(PluginLoadWarning, match=r"plugin 'broken_mod' \(broken-dist 0.9\).*needs libfoo"):
        loaded = load_plugins()
    assert external_encoders(loaded) == ["acme"]
    broken = next(p for p in loaded.plugins if p.name == "broken_mod")
    assert "needs libfoo" in broken.error


def test_strict_mode_makes_a_broken_plugin_fatal(site):
    make_distribution(site, "broken-dist", "broken_mod", "raise ImportError('needs libfoo')")
    with pytest.raises(PluginError, match="broken_mod.*broken-dist"):
        load_plugins(strict=True)


def test_a_name_clash_disables_the_later_plugin_and_the_name_until_one_is_blocked(site, monkeypatch):
    make_distribution(site, "first-dist", "first_mod", GOOD.format(name="same"))
    two = GOOD.format(name="same") + '    register("extra", lambda cfg: ("built", 0), Cfg, description="another")\n'
    make_distribution(site, "second-dist", "second_mod", two)
    with pytest.warns(PluginLoadWarning, match=r"'second_mod' \(second-dist 1.0\) is disabled") as caught:
        loaded = load_plugins()
    message = str(caught[0].message)
    assert "already registered by plugin 'first_mod' (first-dist 1.0)" in message
    assert "MOLBRIDGE_BLOCKED_PLUGINS=second_mod" in message and "MOLBRIDGE_BLOCKED_PLUGINS=first_mod" in message
    # the rest keeps working: other components, listing; the later plugin registered nothing
    assert "unimol" in loaded.registry.names("encoder") and "extra" not in loaded.registry.names("encoder")
    with pytest.raises(PluginError, match="is disabled: its encoder 'same'"):
        loaded.registry.get("encoder", "same")  # neither plugin's 'same' is taken silently
    monkeypatch.setenv(ENV_BLOCKED, "second_mod")
    assert load_plugins().registry.get("encoder", "same").distribution == "first-dist"
    monkeypatch.delenv(ENV_BLOCKED)
    with pytest.raises(PluginError, match="is disabled"):
        load_plugins(strict=True)


def test_a_module_without_hook_implementations_gets_a_warning(site):
    forgot = GOOD.format(name="plain").replace("@hookimpl\n", "")
    make_distribution(site, "plain-dist", "plain_mod", forgot)
    with pytest.warns(PluginLoadWarning, match=r"'plain_mod' \(plain-dist 1.0\) defines no hook implementation"):
        loaded = load_plugins()
    assert "plain" not in loaded.registry.names("encoder")


def test_a_plugin_declaring_another_hook_api_is_refused_by_name(site):
    make_distribution(site, "old-dist", "old_mod", "molbridge_hook_api = 1\n" + GOOD.format(name="old"))
    make_distribution(
        site, "new-dist", "new_mod", f"molbridge_hook_api = {HOOK_API_VERSION}\n" + GOOD.format(name="new")
    )
    with pytest.warns(
        PluginLoadWarning,
        match=f"'old_mod' was written for molbridge hook API 1; this molbridge has {HOOK_API_VERSION}",
    ):
        loaded = load_plugins()
    assert "old" not in loaded.registry.names("encoder")
    assert next(p for p in loaded.plugins if p.name == "new_mod").hook_api == HOOK_API_VERSION


def test_misspelled_hook_is_caught_at_start_up_with_a_suggestion(site):
    typo = GOOD.format(name="typo").replace("molbridge_register_encoders", "molbridge_register_encoder")
    make_distribution(site, "typo-dist", "typo_mod", typo)
    with pytest.warns(
        PluginLoadWarning, match="unknown hook 'molbridge_register_encoder'.*did you mean 'molbridge_register_encoders'"
    ):
        loaded = load_plugins()
    assert "typo" not in loaded.registry.names("encoder")
    with pytest.raises(PluginError, match="unknown hook"):
        load_plugins(strict=True)


def test_plugin_failing_midway_registers_nothing(site):
    partial = GOOD.format(name="half") + "\n    raise RuntimeError('second component broke')\n"
    make_distribution(site, "half-dist", "half_mod", partial)
    with pytest.warns(PluginLoadWarning, match="second component broke"):
        loaded = load_plugins()
    assert "half" not in loaded.registry.names("encoder")
    assert loaded.manager.get_plugin("half_mod") is None


def test_environment_switches_disable_external_or_blocked_plugins(site, monkeypatch):
    make_distribution(site, "acme-encoders", "acme_enc", GOOD.format(name="acme"))
    make_distribution(site, "other-dist", "other_enc", GOOD.format(name="other"))
    monkeypatch.setenv(ENV_BLOCKED, "other_enc")
    assert external_encoders(load_plugins()) == ["acme"]
    monkeypatch.setenv(ENV_NO_EXTERNAL, "1")
    assert external_encoders(load_plugins()) == []


def test_builtin_plugins_load_cleanly():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        loaded = load_plugins(external=False, strict=True)
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    modules = declared["project"]["entry-points"]["molbridge"].values()
    assert sorted(p.module for p in loaded.plugins) == sorted(modules)
    assert all(p.builtin and p.error is None and p.components for p in loaded.plugins)
