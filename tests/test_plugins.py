"""Plugin loading: entry points, isolation of broken plugins, clashes, misspelled hooks, switches."""

import textwrap
import warnings

import pytest

from molbridge.core.errors import PluginError
from molbridge.core.plugins import (
    BUILTIN_PLUGINS,
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


def test_name_clash_names_both_plugins(site):
    make_distribution(site, "first-dist", "first_mod", GOOD.format(name="same"))
    make_distribution(site, "second-dist", "second_mod", GOOD.format(name="same"))
    with pytest.raises(PluginError, match=r"encoder 'same' is registered twice") as info:
        load_plugins()
    assert "'first_mod' (first-dist)" in str(info.value) and "'second_mod' (second-dist)" in str(info.value)


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
    assert [p.module for p in loaded.plugins] == list(BUILTIN_PLUGINS)
    assert all(p.builtin and p.error is None and p.components for p in loaded.plugins)
