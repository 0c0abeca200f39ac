"""The tree's architecture as a test: no import cycles, and the layers hold (the core never imports
the application or a plugin; the exporter never imports the application)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from structure import analyse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_this_tree_has_no_cycles_and_keeps_its_layers():
    result = analyse(ROOT)
    assert result["cycles"] == [] and result["breaches"] == []
    assert result["edges"] > 50  # the analysis saw the real graph
    assert set(result["folders"]) >= {"registry", "app", "plugins", "export", "densreg"}


@pytest.fixture
def bad_tree(tmp_path):
    files = {
        "registry/__init__.py": "from .lazy import x\n_EXPORTS = {'.a': ('thing',)}\n",
        "registry/lazy.py": "x = 1\n",
        "registry/a.py": "from . import b\nthing = 1\n",
        "registry/b.py": "from densreg.registry import thing\n",  # through the lazy table: b -> a -> b
        "registry/c.py": "def late():\n    from densreg.app import tool\n",
        "registry/d.py": "from densreg.export import runtime\n",
        "app/__init__.py": "", "app/tool.py": "",
        "export/__init__.py": "", "export/runtime.py": "def f():\n    import densreg.plugins.p\n",
        "plugins/__init__.py": "", "plugins/p.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_analysis_finds_cycles_and_breaches(bad_tree):
    result = analyse(bad_tree)
    assert result["cycles"] == [["densreg.registry.a", "densreg.registry.b"]]
    assert result["breaches"] == ["densreg.export.runtime -> densreg.plugins.p",
                                  "densreg.registry.c -> densreg.app.tool",
                                  "densreg.registry.d -> densreg.export.runtime"]


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
