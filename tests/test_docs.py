"""Documentation that cannot drift (issue 34): the examples in docs/ and in the API reference's
docstrings run, the checked-in CLI reference is what tools/cli_reference.py writes, every hook is
documented, the generated pages are the files they come from, and the README's numbers and links
are those of the repository."""

import doctest
import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.example import SybilFailure
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))
import cli_reference  # noqa: E402
import docs_pages  # noqa: E402

CHECKER = doctest.OutputChecker()


def run_console(example) -> str | None:
    """A ``console`` block: each ``$ densreg ...`` line runs (in the current folder), and its stdout
    and stderr together must match the lines below it (``...`` matches anything); a last line
    ``[exit N]`` is the expected exit status (else 0)."""
    for command, expected in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", example.parsed, re.M):
        args = shlex.split(command)
        assert args[0] == "densreg", f"console blocks run densreg commands only, not {command!r}"
        status = 0
        if match := re.search(r"^\[exit (\d+)\]\n\Z", expected, re.M):
            status, expected = int(match.group(1)), expected[:match.start()]
        done = subprocess.run([sys.executable, "-m", "densreg", *args[1:]], capture_output=True, text=True,
                              timeout=120)
        got = done.stdout + done.stderr
        if done.returncode != status or not CHECKER.check_output(expected, got, doctest.ELLIPSIS):
            return f"$ {command}\nexpected (exit {status}):\n{expected}got (exit {done.returncode}):\n{got}"
    return None


SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser(), CodeBlockParser("console", run_console)],
              pattern="*.md")
PAGES = {str(path.relative_to(DOCS)): path for path in sorted(DOCS.rglob("*.md"))}
RUNNABLE = [name for name, path in PAGES.items() if list(SYBIL.parse(path).examples())]


def test_the_pages_with_examples_are_found():
    assert {"guide/python-api.md", "guide/command-line.md", "deployment/runtime.md", "plugins/hooks.md",
            "plugins/conformance.md"} <= set(RUNNABLE)


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_examples_of_a_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the examples write lands in an empty folder
    ran = 0
    for example in SYBIL.parse(PAGES[page]).examples():
        try:
            example.evaluate()
            ran += 1
        except unittest.SkipTest:  # <!-- skip: next "why" -->: that block only, the page goes on
            pass
    assert ran


def test_a_console_block_that_differs_from_its_output_fails(tmp_path):
    page = tmp_path / "page.md"
    usage = "```console\n$ densreg sample\nUsage: densreg sample [OPTIONS] CHECKPOINT\n...\n"
    page.write_text(f"{usage}[exit 2]\n```\n\n{usage}```\n\n```console\n$ densreg sample\nsomething else\n[exit 2]\n```\n")
    right, wrong_status, wrong_output = SYBIL.parse(page).examples()
    right.evaluate()
    with pytest.raises(SybilFailure, match="expected \\(exit 0\\)"):
        wrong_status.evaluate()
    with pytest.raises(SybilFailure, match="something else"):
        wrong_output.evaluate()


def api_reference_modules() -> list[str]:
    """The modules whose objects docs/reference/api.md shows (``::: name`` lines)."""
    found = []
    for name in re.findall(r"^::: ([\w.]+)", (DOCS / "reference" / "api.md").read_text(), re.M):
        parts = name.split(".")
        while parts:  # the longest prefix that imports is the module (the rest names an object in it)
            try:
                found.append(importlib.import_module(".".join(parts)).__name__)
                break
            except ImportError:
                parts.pop()
    return sorted(set(found))


def docstring_examples(module: str) -> list[doctest.DocTest]:
    return [test for test in doctest.DocTestFinder().find(importlib.import_module(module)) if test.examples]


@pytest.mark.parametrize("module", api_reference_modules())
def test_the_docstring_examples_of_the_api_reference_run(module):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in docstring_examples(module):
        runner.run(test)
    assert not runner.failures, f"{runner.failures} docstring example(s) of {module} failed (output above)"


def test_the_api_reference_has_docstring_examples():
    modules = api_reference_modules()
    assert {"densreg", "densreg.registry.api", "densreg.registry.protocol"} <= set(modules)
    assert sum(len(t.examples) for m in modules for t in docstring_examples(m)) >= 10


def test_the_cli_reference_is_what_the_tool_writes():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr.strip() or done.stdout


def test_a_stale_cli_reference_fails_with_the_command_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DENSREG_LOAD_PLUGINS", "")  # main() sets it; monkeypatch puts it back
    monkeypatch.setattr(cli_reference, "render", lambda: "# the page\n")
    page = tmp_path / "cli.md"
    page.write_text("# the page, before an option changed\n")
    assert cli_reference.main(["--check", "--out", str(page)]) == 1
    assert capsys.readouterr().err.strip() == f"{page} is stale: run python tools/cli_reference.py"
    page.write_text("# the page\n")
    assert cli_reference.main(["--check", "--out", str(page)]) == 0


def test_the_cli_reference_has_every_command_the_plugins_add_included():
    from densreg.app.cli import BUILTIN_COMMANDS

    documented = set(re.findall(r"^## densreg (\S+)$", (DOCS / "reference" / "cli.md").read_text(), re.M))
    assert documented == set(BUILTIN_COMMANDS) | {"grow"}  # grow: the pixelrnn plugin's command


HOOK = re.compile(r"^## `(\w+)\(([\w, ]*)\)` \{ #(\w+) \}$", re.M)


def documented_hooks(text: str) -> dict[str, list[str]]:
    """Hook name -> documented arguments, from the hook reference's section headings."""
    found = {}
    for name, args, anchor in HOOK.findall(text):
        assert anchor == name, f"the section of {name} has the anchor #{anchor}"
        found[name] = [a.strip() for a in args.split(",") if a.strip()]
    return found


def test_every_hook_is_documented_with_its_arguments_and_nothing_else():
    from densreg.registry import hookspecs

    specs = {name: list(inspect.signature(f).parameters) for name, f in vars(hookspecs).items()
             if callable(f) and getattr(f, "densreg_spec", None) is not None}
    documented = documented_hooks((DOCS / "plugins" / "hooks.md").read_text())
    assert specs, "no hookspec found"
    assert sorted(set(specs) - set(documented)) == [], "hooks missing from docs/plugins/hooks.md"
    assert sorted(set(documented) - set(specs)) == [], "docs/plugins/hooks.md documents hooks that do not exist"
    assert documented == specs
    assert documented_hooks("## `register_models(register)` { #register_models }\n") == {
        "register_models": ["register"]}


def test_the_generated_pages_are_the_repository_files():
    pages = docs_pages.pages()
    results = ROOT / "benchmarks" / "results"
    for path in results.glob("*.md"):
        assert pages[f"results/{path.name}"] == path.read_bytes()
        assert f"]({path.stem}.md)" in pages["results/index.md"].decode()
    for path in results.glob("*.png"):
        assert pages[f"results/{path.name}"] == path.read_bytes()
    assert pages["changelog.md"] == (ROOT / "CHANGELOG.md").read_bytes()


def test_the_api_source_tree_lays_out_the_package(tmp_path):
    top = docs_pages.api_source_tree(ROOT, tmp_path) / "densreg"
    assert (top / "registry" / "hookspecs.py").resolve() == ROOT / "registry" / "hookspecs.py"
    assert (top / "__init__.py").resolve() == ROOT / "densreg" / "__init__.py"
    assert {p.name for p in top.iterdir()} >= {"app", "export", "plugins", "registry", "__init__.py"}


def test_the_readme_is_a_front_page_whose_first_bash_block_ci_runs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    block = re.search(r"^```bash\n(.*?)^```", text, re.M | re.S).group(1)
    assert block.splitlines()[1] == "python -m pytest -q" and len(block.splitlines()) == 2


def test_the_readme_model_table_quotes_the_results_files():
    mnist = json.loads((ROOT / "benchmarks" / "results" / "nll.json").read_text())["rows"]
    colour = json.loads((ROOT / "benchmarks" / "results" / "color.json").read_text())
    rows = re.findall(r"^\| `([\w-]+)` \| [^|]+ \| ([\d.]+) \| ([\d.]+) \|$", (ROOT / "README.md").read_text(), re.M)
    assert len(rows) == 6
    for model, nats, bits in rows:
        assert nats == f"{min(r['nll_nats'] for r in mnist if r['model'] == model):.2f}", model
        assert bits == f"{next(r['test_bits_per_dim'] for r in colour if r['model'] == model):.3f}", model


@pytest.mark.parametrize("name", ["README.md", "PLUGINS.md", "examples/densreg-mixture/README.md"])
def test_relative_links_outside_the_site_point_at_files(name):
    source = ROOT / name
    for target in re.findall(r"\]\((?!https?:)([^)#]+)(?:#[^)]*)?\)", source.read_text()):
        assert (source.parent / target).exists(), f"{name} links to {target}, which does not exist"


def test_the_compile_help_quotes_the_compile_results():
    from densreg.app.cli.train import train

    help_text = next(p.help for p in train.params if p.name == "compile")
    results = (ROOT / "benchmarks" / "results" / "compile.md").read_text()
    ratios = re.findall(r"(\d\.\d\d)(?:-(\d\.\d\d))?x", help_text)
    assert ratios
    for ratio in (r for pair in ratios for r in pair if r):
        assert f"{ratio}×" in results, f"--compile's help quotes {ratio}x, which compile.md does not have"
