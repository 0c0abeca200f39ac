"""Pages the documentation site generates at build time (mkdocs-gen-files runs this; mkdocs.yml).

- ``results/NAME.md`` for every ``benchmarks/results/NAME.md``, and the pictures they show, as the
  benchmark scripts wrote them: the site's results are those files, never a copy kept by hand;
- ``results/index.md``: one line per results page, its title and where it came from;
- ``changelog.md``: CHANGELOG.md;

and, outside the site, ``build/docs-api/densreg``: the package laid out as Python imports it
(``registry/`` as ``densreg/registry``, from pyproject's package-dir), as symbolic links, so that
mkdocstrings reads the API reference's docstrings from the source without importing anything.

``api_source_tree`` runs from mkdocs.yml's ``hooks`` (``on_config``, before mkdocstrings reads its
paths), the pages from mkdocs-gen-files. ``pages()`` is plain Python (path -> bytes), so tests/test_docs.py checks it without mkdocs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PICTURES = (".png", ".svg")


def title(text: str, fallback: str) -> str:
    """The first level-1 heading of a markdown text, else ``fallback``."""
    return next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), fallback)


def results_index(sources: dict[str, str]) -> str:
    """The results landing page: one row per results file, by name."""
    rows = "\n".join(f"| [{title(text, name)}]({name}.md) | `benchmarks/results/{name}.md` |"
                     for name, text in sorted(sources.items()))
    return ("# Results\n\nEvery table here is a file the benchmark scripts under `benchmarks/` write into "
            "`benchmarks/results/`, shown as it is (the site is built from those files; each page says "
            "which script and command wrote it, and when).\n\n| page | file |\n|---|---|\n" + rows + "\n")


def pages(root: Path = ROOT) -> dict[str, bytes]:
    """Every generated page and picture: site path -> content."""
    results = root / "benchmarks" / "results"
    sources = {path.stem: path.read_text() for path in sorted(results.glob("*.md"))}
    out = {f"results/{name}.md": text.encode() for name, text in sources.items()}
    out.update({f"results/{path.name}": path.read_bytes()
                for path in sorted(results.iterdir()) if path.suffix in PICTURES})
    out["results/index.md"] = results_index(sources).encode()
    out["changelog.md"] = (root / "CHANGELOG.md").read_bytes()
    return out


def api_source_tree(root: Path = ROOT, dest: Path | None = None) -> Path:
    """Lay out ``dest/densreg`` (default ``build/docs-api``) as the installed package: a folder of links to
    the files of ``densreg/`` and one link per subpackage folder of pyproject's package-dir."""
    dest = dest or root / "build" / "docs-api"
    package_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = dest / "densreg"
    top.mkdir(parents=True, exist_ok=True)
    links = {path.name: path for path in (root / package_dir["densreg"]).iterdir() if path.suffix == ".py"}
    links.update({name.split(".")[1]: root / folder for name, folder in package_dir.items() if name.count(".") == 1})
    for link in top.iterdir():
        if link.is_symlink() and link.name not in links:
            link.unlink()
    for name, target in links.items():
        link = top / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    return dest


def write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, content in pages().items():
        with mkdocs_gen_files.open(path, "wb") as handle:
            handle.write(content)


def _first(function):
    """Run a mkdocs event before every plugin's (mkdocstrings resolves its paths in its on_config)."""
    try:
        from mkdocs.plugins import event_priority
    except ImportError:  # imported without mkdocs (tests)
        return function
    return event_priority(100)(function)


@_first
def on_config(config):
    """mkdocs hook: the link tree mkdocstrings' ``paths`` names must exist before its handler starts."""
    api_source_tree()
    return config


if __name__ in ("__main__", "<run_path>"):  # mkdocs-gen-files runs the script with runpy
    write_with_gen_files()
