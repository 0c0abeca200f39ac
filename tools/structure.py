"""The shape of the tree: modules and lines per top-level folder, the import graph, its cycles and
layering breaches. Prints a table and writes it to benchmarks/results/structure.md.

    python tools/structure.py                 # this checkout
    python tools/structure.py --tree DIR      # another checkout (e.g. a git worktree of an old commit)

Folders map to packages as in pyproject.toml: X/ is densreg.X, densreg/ is densreg. An import
edge is drawn from a module to the module it names; a name a lazy package (densreg,
densreg.registry) re-exports counts as an import of the module that defines it. Imports at
module level make the graph whose cycles are listed; imports inside functions only count for
the layering rules.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGES = {"densreg": "densreg", "registry": "densreg.registry", "app": "densreg.app",
            "plugins": "densreg.plugins", "export": "densreg.export"}
COUNTED = (*PACKAGES, "tests")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "structure.md"
# (importer prefix, forbidden prefixes, only at module level?): the core never imports the
# application, a plugin or the public face, and the exporter only inside a function (the
# conformance kit's export check); the exporter never imports the application or a plugin.
LAYERS = (("densreg.registry", ("densreg.app", "densreg.plugins", "densreg.__init__"), False),
          ("densreg.registry", ("densreg.export",), True),
          ("densreg.export", ("densreg.app", "densreg.plugins"), False))


def modules(tree: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the densreg packages in ``tree``."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((tree / folder).rglob("*.py")):
            parts = path.relative_to(tree / folder).with_suffix("").parts
            out[".".join((package, *parts))] = path
    return out


def lazy_tables(mods: dict[str, Path]) -> dict[str, dict[str, str]]:
    """For each package whose __init__ has an ``_EXPORTS`` table: re-exported name -> defining module."""
    tables = {}
    for name, path in mods.items():
        if not name.endswith(".__init__"):
            continue
        package = name.removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                table = ast.literal_eval(node.value)
                tables[package] = {n: (package + m if m.startswith(".") else m)
                                   for m, names in table.items() for n in names}
    return tables


def imports(name: str, path: Path, mods: dict[str, Path], lazy: dict) -> list[tuple[str, bool]]:
    """(imported densreg module, at module level?) for each import in one module."""
    package = name.removesuffix(".__init__") if name.endswith(".__init__") else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    found = []

    def known(target: str) -> str | None:
        for candidate in (target, target + ".__init__"):
            if candidate in mods:
                return candidate
        return None

    for node in ast.walk(tree):
        level = id(node) in top_level
        if isinstance(node, ast.Import):
            found += [(m, level) for a in node.names if (m := known(a.name))]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = known(f"{base}.{alias.name}") or known(lazy.get(base, {}).get(alias.name, "")) or known(base)
                if target:
                    found.append((target, level))
    return [(m, lvl) for m, lvl in found if m != name]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def analyse(tree: Path) -> dict:
    mods = modules(tree)
    lazy = lazy_tables(mods)
    edges, breaches = {}, []
    for name, path in mods.items():
        found = imports(name, path, mods, lazy)
        edges[name] = {m for m, level in found if level}
        for prefix, forbidden, module_level in LAYERS:
            if name.startswith(prefix):
                breaches += [f"{name} -> {m}" for m, level in found
                             if m.startswith(forbidden) and (level or not module_level)]
    folders = {}
    for folder in COUNTED:
        files = sorted((tree / folder).rglob("*.py")) if (tree / folder).is_dir() else []
        folders[folder] = (len(files), sum(len(f.read_text().splitlines()) for f in files))
    return {"folders": folders, "edges": sum(map(len, edges.values())), "cycles": cycles(edges),
            "breaches": sorted(set(breaches))}


def render(result: dict, tree: Path) -> str:
    lines = [f"# Structure of {tree.name}", "", "| folder | modules | lines |", "|---|---|---|"]
    lines += [f"| {folder}/ | {n} | {size} |" for folder, (n, size) in result["folders"].items()]
    lines += ["", f"module-level import edges between densreg modules: {result['edges']}",
              f"import cycles: {len(result['cycles'])}"]
    lines += [f"- {' <-> '.join(c)}" for c in result["cycles"]]
    lines += [f"layering breaches: {len(result['breaches'])}", *[f"- {b}" for b in result["breaches"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    text = render(analyse(args.tree.resolve()), args.tree.resolve())
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
