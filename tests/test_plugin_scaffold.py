"""`densreg plugin new NAME`: the package it writes (imported from its folder, registered in-process,
its model through the conformance kit, its own tests run), name validation and the overwrite refusal.
.ci/run installs a generated package with pip and runs its tests and `densreg check` on it (export included)."""

import importlib
import re
import sys
import tomllib

import pytest
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.app.scaffold import render
from densreg.registry import __version__, register_plugin, unregister_plugin
from densreg.registry.conformance import run_checks

FILES = ["README.md", "densreg_toy_ar/__init__.py", "densreg_toy_ar/data.py", "densreg_toy_ar/model.py",
         "densreg_toy_ar/plugin.py", "pyproject.toml", "tests/test_densreg_toy_ar.py"]


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The package `densreg plugin new toy-ar` writes, importable from its folder and registered in-process
    as its entry point would register it."""
    out = tmp_path_factory.mktemp("scaffold") / "densreg-toy-ar"
    result = run("plugin", "new", "toy-ar", "--out", out)
    assert result.exit_code == 0, result.output
    sys.path.insert(0, str(out))
    try:
        register_plugin(importlib.import_module("densreg_toy_ar.plugin"), "toy-ar")
        yield out, result.output
    finally:
        unregister_plugin("toy-ar")
        sys.path.remove(str(out))
        for module in [m for m in sys.modules if m == "densreg_toy_ar" or m.startswith(("densreg_toy_ar.",
                                                                                        "test_densreg_toy_ar"))]:
            del sys.modules[module]


def test_writes_the_package_and_says_what_next(generated):
    out, output = generated
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
        == FILES
    lines = output.splitlines()
    assert lines[0] == f"wrote {out}/ (7 files):"
    assert lines[1:8] == [f"  {out / path}" for path in FILES]
    assert lines[8:] == ["next:", f"  pip install -e {out}", f"  (cd {out} && python -m pytest)",
                         "  densreg check toy-ar",
                         "  densreg train toy-ar --dataset toy-ar-runs --epochs 10 --lr 0.1 --out toy-ar.safetensors"]
    project = tomllib.loads((out / "pyproject.toml").read_text())
    assert project["project"]["name"] == "densreg-toy-ar"
    assert project["project"]["entry-points"]["densreg"] == {"toy-ar": "densreg_toy_ar.plugin"}
    assert project["tool"]["setuptools"]["packages"] == ["densreg_toy_ar"]
    major, minor = __version__.split(".")[:2]  # the plugin needs this densreg's API: its minor version on
    assert f"densreg>={major}.{minor}" in project["project"]["dependencies"]
    for path in FILES:
        assert "{{" not in (out / path).read_text(), path  # every template field filled


def test_its_model_passes_the_conformance_kit(generated):
    """Every check but export (14 s here; .ci/run's scaffold step runs it), through the registered name."""
    results = run_checks("toy-ar", skip=("export",))
    assert [(r.name, r.status) for r in results] == [
        (name, "passed") for name in ("normalization", "chain_rule", "causality", "gradient_path", "step", "sampling",
                                      "round_trip")]
    shared = run_checks("toy-ar", {"shared": True}, checks=["normalization", "step", "sampling"])
    assert all(r.status == "passed" for r in shared), [r.detail for r in shared]


def test_its_own_tests_pass_and_fail_on_a_broken_model(generated, monkeypatch):
    """The generated test module's plain tests (the conformance classes are the kit, run above)."""
    monkeypatch.syspath_prepend(str(generated[0] / "tests"))
    tests = importlib.import_module("test_densreg_toy_ar")
    names = [name for name in dir(tests) if name.startswith("test_")]
    assert names == ["test_dataset_is_registered_and_its_rows_are_runs",
                     "test_log_prob_is_the_product_of_the_table_entries",
                     "test_registered_through_the_entry_point_as_the_class_says", "test_training_learns_the_runs"]
    for name in names:
        getattr(tests, name)()
    model_class = importlib.import_module("densreg_toy_ar.model").ToyAr
    monkeypatch.setattr(model_class, "description", "something else")
    with pytest.raises(AssertionError):
        tests.test_registered_through_the_entry_point_as_the_class_says()


@pytest.mark.parametrize("name, message", [
    ("Toy", "bad plugin name 'Toy': use lower-case letters and digits"),
    ("my model", "bad plugin name 'my model'"),
    ("2d", "bad plugin name '2d'"),
    ("a--b", "bad plugin name 'a--b'"),
    ("x" * 41, f"bad plugin name '{'x' * 41}': use lower-case letters and digits, with single - or _ between them, "
               "starting with a letter, at most 40 characters (e.g. my-model)"),
    ("densreg-x", "bad plugin name 'densreg-x': give the name without densreg (the distribution is densreg-NAME)"),
    ("pixelrnn", "a plugin named 'pixelrnn' is already installed (densreg); pick another name"),
    ("row-lstm", "a model named 'row-lstm' is already registered by plugin pixelrnn (densreg "),
])
def test_refuses_a_bad_or_taken_name_in_one_line(tmp_path, name, message):
    result = run("plugin", "new", name, "--out", tmp_path / "p")
    assert result.exit_code == 1
    assert len(result.output.splitlines()) == 1 and result.output.startswith(f"Error: {message}"), result.output
    assert not (tmp_path / "p").exists()


def test_refuses_a_folder_that_is_not_empty_and_fills_an_empty_one(tmp_path):
    """(A name other than the module fixture's, which is registered while this module runs.)"""
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = run("plugin", "new", "toy-b", "--out", full)
    assert result.exit_code == 1
    assert result.output == (f"Error: refusing to write the plugin into {full}: it is a folder that is not empty; "
                             "give --out a new folder\n")
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    result = run("plugin", "new", "toy-b", "--out", tmp_path / "file")
    assert result.exit_code == 1 and "it is not a folder" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("plugin", "new", "toy-b", "--out", empty).exit_code == 0
    assert {str(p.relative_to(empty)) for p in empty.rglob("*") if p.is_file()} == set(render("toy-b"))
    assert (empty / "densreg_toy_b" / "model.py").read_bytes() == render("toy-b")["densreg_toy_b/model.py"]


def test_default_folder_and_names_from_the_plugin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("plugin", "new", "my_ar2").exit_code == 0
    package = tmp_path / "densreg-my_ar2" / "densreg_my_ar2"
    assert re.search(r"^class MyAr2\(DensityModel\):$", (package / "model.py").read_text(), re.M)
    assert 'registry_name = "my_ar2"' in (package / "model.py").read_text()
    assert set(render("my_ar2")) == {path.replace("toy_ar", "my_ar2") for path in FILES}
