"""The tree's architecture as a test (tools/structure.py): the import rules hold over every import,
those inside functions included. The core never imports the application, a plugin, the exporter or
the public face; densreg.export never imports the application or a plugin; the torch-free runtime
never imports torch or scikit-learn; there are no import cycles."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from structure import analyse, closure, modules, read_imports, lazy_tables, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Every cycle and breach the tree has today, being removed by the restructuring under way. The
# list must match exactly: a new violation fails the test, and so does a fixed one still listed
# here (delete its line). Breaches read "importer -> imported"; cycles list their modules.
KNOWN_VIOLATIONS: tuple[str, ...] = ()  # none: a new cycle or breach must be fixed, not listed


def test_this_tree_keeps_its_import_rules_but_for_the_known_violations():
    found = analyse(ROOT)["violations"]
    new = sorted(set(found) - set(KNOWN_VIOLATIONS))
    gone = sorted(set(KNOWN_VIOLATIONS) - set(found))
    assert not new, f"new import cycles or layering breaches (python tools/structure.py says where): {new}"
    assert not gone, f"fixed, so delete them from KNOWN_VIOLATIONS: {gone}"
    assert len(found) == len(KNOWN_VIOLATIONS), "KNOWN_VIOLATIONS lists a violation twice"


def test_the_analysis_sees_the_real_tree():
    result = analyse(ROOT)
    assert result["edges"] > 200 and result["edges"] > result["module_edges"]  # function-level ones counted
    assert set(result["folders"]) >= {"registry", "app", "plugins", "export", "densreg", "tests", "tools"}
    name, lines = result["longest"]
    assert name.startswith("densreg.") and lines == max(
        len(p.read_text().splitlines()) for p in modules(ROOT).values())
    mods = modules(ROOT)
    runtime = closure(read_imports(mods, lazy_tables(mods)), "densreg.export.runtime")
    assert {"densreg.export.format", "densreg.export.manifest", "densreg.registry.errors"} <= set(runtime)
    assert not runtime["densreg.export.__init__"][1]  # a parent package: its lazy __getattr__ is not followed
    assert "densreg.export.exporter" not in runtime


@pytest.fixture
def bad_tree(tmp_path):
    files = {
        "densreg/__init__.py": "_EXPORTS = {'densreg.registry.a': ('thing',)}\n",
        "registry/__init__.py": "from .lazy import x\n_EXPORTS = {'.a': ('thing',)}\n",
        "registry/lazy.py": "x = 1\n",
        "registry/a.py": "from . import b\nthing = 1\n",
        "registry/b.py": "from densreg.registry import thing\n",  # through the lazy table: b -> a -> b
        "registry/c.py": "def late():\n    from densreg.app import tool\n",
        "registry/d.py": "try:\n    from densreg.export import runtime\nexcept ImportError:\n    pass\n",
        "registry/e.py": "from densreg import thing\n",  # the public face, even for a core name
        "registry/f.py": "def g():\n    from . import h\n",  # a cycle through a function: f -> h -> f
        "registry/h.py": "from . import f\n",
        "registry/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                             "    from densreg.app import tool\n",
        "registry/heavy.py": "def g():\n    import sklearn.datasets\n",
        "app/__init__.py": "", "app/tool.py": "import torch\n",
        "export/__init__.py": "def __getattr__(name):\n    from . import exporter\n",
        "export/exporter.py": "import torch\n",
        "export/runtime.py": "from densreg.registry import typed\ndef f():\n    import densreg.plugins.p\n"
                             "    from densreg.registry import heavy\n",
        "plugins/__init__.py": "", "plugins/p.py": "import torch.nn\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_analysis_finds_cycles_and_breaches_at_every_level(bad_tree):
    result = analyse(bad_tree)
    assert result["cycles"] == [["densreg.registry.a", "densreg.registry.b"],
                                ["densreg.registry.f", "densreg.registry.h"]]
    assert result["module_cycles"] == [["densreg.registry.a", "densreg.registry.b"]]
    assert result["violations"] == [
        "cycle: densreg.registry.a <-> densreg.registry.b",
        "cycle: densreg.registry.f <-> densreg.registry.h",
        "densreg.export.runtime -> densreg.plugins.p",  # inside a function
        "densreg.plugins.p -> torch",  # the runtime's closure reaches it through a function
        "densreg.registry.c -> densreg.app.tool",  # inside a function
        "densreg.registry.d -> densreg.export.runtime",  # in a module-level try block
        "densreg.registry.e -> densreg.__init__",
        "densreg.registry.heavy -> sklearn",
    ]  # not: typed (TYPE_CHECKING), export.__init__'s lazy exporter (a parent package of the runtime)
    text = render(result, "a bad tree")
    assert "| registry/ | 11 |" in text and "densreg.registry.f -> densreg.registry.h (in a function)" in text
    assert "densreg.plugins.p -> torch (via densreg.export.runtime -> densreg.plugins.p)" in text


def test_import_densreg_is_the_public_face():
    import densreg
    import densreg.export
    import densreg.registry

    for name in densreg.__all__:
        assert getattr(densreg, name) is not None, name
    assert densreg.create_model is densreg.registry.create_model and densreg.hookimpl is densreg.registry.hookimpl
    assert densreg.ExportError is densreg.export.ExportError  # one errors module, one identity
    assert issubclass(densreg.RuntimeLoadError, densreg.DensregError)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        densreg.nothing  # noqa: B018


def test_python_dash_m_densreg_runs_the_cli():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "densreg", "models", "mark*"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.splitlines()[1].startswith("markov"), result
