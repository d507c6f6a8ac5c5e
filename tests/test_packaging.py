"""Packaging: one import name over core/ and plugins/, and nothing else installed at top level."""

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _packages_on_disk() -> set[str]:
    found = set()
    for top, name in (("core", "molbridge.core"), ("plugins", "molbridge.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *relative)))
    return found


def test_declared_packages_match_the_folders():
    assert _declared_packages() == _packages_on_disk()


def test_no_top_level_core_or_plugins_module_is_importable(tmp_path):
    """Asked of a fresh interpreter in a neutral folder: the installed environment, however pytest was started."""
    probe = (
        "import importlib.util as u; print([u.find_spec(m) is not None for m in ('molbridge.core', 'core', 'plugins')])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip() == "[True, False, False]"
    assert importlib.util.find_spec("core") is None  # and not in this process either (conftest drops the root)


def test_python_m_pytest_works_from_the_repository_root():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_declared_packages_match_the_folders",
            f"{__file__}::test_no_top_level_core_or_plugins_module_is_importable",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]


def test_wheel_holds_only_the_molbridge_namespace_and_ships_recipes_and_data(tmp_path):
    # build from a clean copy: an in-tree build/ left by an earlier build would hide missing package data
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "mlruns", "runs", "mlflow.db", "__pycache__", "wt-*"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("molbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"molbridge"}
    assert {"molbridge/core/py.typed", "molbridge/plugins/py.typed"} <= set(names)  # typed for type checkers
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[molbridge]" in zipfile.ZipFile(wheel).read(entry_points).decode()  # the built-ins, as plugins
    packaged = {n for n in names if n.startswith("molbridge/core/recipes/") and n.endswith(".yaml")}
    expected = {f"molbridge/core/recipes/{p.name}" for p in (ROOT / "core" / "recipes").glob("*.yaml")}
    assert packaged == expected
    data = ROOT / "core" / "data" / "molbridge_mini"
    shipped = {
        f"molbridge/core/data/molbridge_mini/{p.relative_to(data).as_posix()}" for p in data.rglob("*") if p.is_file()
    }
    assert shipped <= set(names), f"dataset files missing from the wheel: {sorted(shipped - set(names))}"
