"""The layer contract (pyproject.toml, [tool.importlinter]): each layer imports only the layers below it and no
modules import each other in a cycle, checked by import-linter on the package's import graph."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_the_layer_and_acyclic_contracts(monkeypatch, capsys):
    cli = pytest.importorskip("importlinter.cli", reason="import-linter comes with the test and lint extras")
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    exit_code = cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "2 kept, 0 broken" in out


def test_every_package_of_harness_is_in_a_layer():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    packages = {f"harness.{p.parent.name}" for p in (REPO / "harness").glob("*/__init__.py")}
    modules = {f"harness.{p.stem}" for p in (REPO / "harness").glob("*.py")} - {"harness.__init__", "harness.__main__"}
    assert set(layers) == packages | modules
