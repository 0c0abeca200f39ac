"""The shape of the tree and its import rules: modules and lines per top-level folder, the longest
module, import cycles and layering breaches, counting EVERY import (those inside functions too).
Prints a table and writes it to benchmarks/results/structure.md.

    python tools/structure.py                 # this checkout
    python tools/structure.py --tree DIR      # another checkout (e.g. a git worktree of an old commit)

Folders map to packages as in pyproject.toml: X/ is densreg.X, densreg/ is densreg. An import
edge is drawn from a module to the module it names; ``from P import name`` also draws one to
P's ``__init__`` when ``name`` is not a submodule (it is read from P's namespace), and a name a
lazy package (``_EXPORTS`` table) re-exports counts as an import of the module that defines it.
Imports under ``if TYPE_CHECKING:`` never run and are not counted.

The rules (``LAYERS`` and ``TORCH_FREE``), each over imports at any level:

- the core (densreg.registry) never imports the application, a plugin, the exporter or the
  public face (densreg/__init__);
- densreg.export never imports the application or a plugin;
- the torch-free runtime (densreg.export.runtime and every module it imports, transitively,
  at any level; the packages above each such module with the imports they run when loaded)
  never imports torch or scikit-learn;
- no import cycles (strongly connected components of the graph of all imports).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from pathlib import Path

PACKAGES = {"densreg": "densreg", "registry": "densreg.registry", "app": "densreg.app",
            "plugins": "densreg.plugins", "export": "densreg.export"}
NOT_SOURCE = {"build", "dist", "__pycache__", "node_modules"}  # and hidden or *.egg-info folders
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "structure.md"
# (rule, importer prefix, forbidden module prefixes) over densreg modules.
LAYERS = (("the core never imports the application, a plugin, the exporter or the public face",
           "densreg.registry", ("densreg.app", "densreg.plugins", "densreg.export", "densreg.__init__")),
          ("densreg.export never imports the application or a plugin",
           "densreg.export", ("densreg.app", "densreg.plugins")))
# (rule, root module, forbidden top-level distributions) over the root's import closure.
TORCH_FREE = ("the torch-free runtime never imports torch or scikit-learn", "densreg.export.runtime",
              ("torch", "sklearn"))


def within(name: str, prefix: str) -> bool:
    """``name`` is the module ``prefix`` or inside it (``densreg.app`` holds ``densreg.app.cli``)."""
    return name == prefix or name.startswith(prefix + ".")


# -- reading the tree ----------------------------------------------------------------------------

def source_files(folder: Path) -> list[Path]:
    """The .py files under ``folder``, without hidden, build and egg-info folders."""
    return sorted(p for p in folder.rglob("*.py")
                  if not any(part.startswith(".") or part in NOT_SOURCE or part.endswith(".egg-info")
                             for part in p.relative_to(folder).parts[:-1]))


def modules(tree: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the densreg packages in ``tree``."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in source_files(tree / folder) if (tree / folder).is_dir() else []:
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


class ImportFinder(ast.NodeVisitor):
    """Every import statement of one module as (node, at module level?); module level means not
    inside a function (class bodies and top-level ``try``/``if`` blocks run on import)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self.depth = 0

    def visit_Import(self, node):
        self.found.append((node, self.depth == 0))

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)


class Resolver:
    """Turns import statements of one module into densreg modules and external distributions."""

    def __init__(self, mods: dict[str, Path], lazy: dict[str, dict[str, str]]) -> None:
        self.mods, self.lazy = mods, lazy

    def known(self, target: str) -> str | None:
        """The module name of ``target`` (a module, or a package as its __init__); None if not densreg's."""
        return next((c for c in (target, target + ".__init__") if c in self.mods), None)

    def absolute(self, name: str, node: ast.ImportFrom) -> str:
        """The absolute module a (possibly relative) ``from ... import`` in module ``name`` names."""
        if not node.level:
            return node.module or ""
        package = name.removesuffix(".__init__") if name.endswith(".__init__") else name.rpartition(".")[0]
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def targets(self, name: str, node: ast.Import | ast.ImportFrom) -> tuple[list[str], list[str]]:
        """(densreg modules, external top-level names) that one import statement of ``name`` loads."""
        if isinstance(node, ast.Import):
            internal = [m for a in node.names if (m := self.known(a.name))]
            return internal, [a.name.split(".")[0] for a in node.names if not self.known(a.name)]
        base = self.absolute(name, node)
        package = self.known(base)
        if package is None:
            return [], [base.split(".")[0]] if base and not base.startswith("__future__") else []
        internal = []
        for alias in node.names:
            submodule = self.known(f"{base}.{alias.name}")
            if submodule:
                internal.append(submodule)
                continue
            internal.append(package)  # the name is read from the package's namespace
            defined = self.known(self.lazy.get(base, {}).get(alias.name, ""))
            internal += [defined] if defined else []
        return internal, []


def read_imports(mods: dict[str, Path], lazy: dict) -> dict[str, list[tuple[str, bool]]]:
    """Module -> [(imported module or external top-level name, at module level?)]; densreg
    modules by their dotted name, external ones by their distribution's top-level name."""
    resolver, graph = Resolver(mods, lazy), {}
    for name, path in mods.items():
        finder = ImportFinder()
        finder.visit(ast.parse(path.read_text()))
        found = []
        for node, level in finder.found:
            internal, external = resolver.targets(name, node)
            found += [(m, level) for m in internal if m != name] + [(e, level) for e in external]
        graph[name] = list(dict.fromkeys(found))
    return graph


# -- the rules -----------------------------------------------------------------------------------

def edges(graph: dict, module_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the densreg modules it imports (only at module level, if asked)."""
    return {name: {t for t, level in found if t in graph and (level or not module_level_only)}
            for name, found in graph.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on.discard(w)
                component.append(w)
            on.discard(v)
            if component:
                out.append(sorted([v, *component]))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_breaches(graph: dict) -> dict[str, list[str]]:
    """Rule -> ["importer -> imported", ...] for every import a rule of ``LAYERS`` forbids."""
    out = {}
    for rule, importer, forbidden in LAYERS:
        out[rule] = sorted({f"{name} -> {target}" for name, found in graph.items() if within(name, importer)
                            for target, _ in found if target in graph and any(within(target, f) for f in forbidden)})
    return out


def parents(name: str, graph: dict) -> list[str]:
    """The package __init__ modules Python loads before ``name`` (densreg.export.format ->
    densreg.__init__, densreg.export.__init__)."""
    parts = name.removesuffix(".__init__").split(".")
    return [p for i in range(1, len(parts)) if (p := ".".join(parts[:i]) + ".__init__") in graph]


def closure(graph: dict, root: str) -> dict[str, tuple[list[str], bool]]:
    """Module -> (a chain of imports from ``root`` to it, loaded in full?) for what importing
    ``root`` and calling its functions can load: the modules it imports at any level,
    transitively (in full: their function-level imports count), and the packages above each
    (only their module-level imports count; a lazy ``__getattr__`` runs when a name is read)."""
    reached: dict[str, tuple[list[str], bool]] = {}
    queue = deque([(root, [root], True)])
    while queue:
        name, chain, full = queue.popleft()
        if name not in graph or (name in reached and (reached[name][1] or not full)):
            continue
        reached[name] = (chain, full)
        queue += [(t, chain + [t], True) for t, level in graph[name] if t in graph and (full or level)]
        queue += [(p, chain + [p], False) for p in parents(name, graph)]
    return reached


def torch_free_breaches(graph: dict) -> tuple[list[str], dict[str, str]]:
    """(["module -> torch", ...], breach -> the chain of imports from the root that loads the module)."""
    _, root, forbidden = TORCH_FREE
    found, chains = set(), {}
    for name, (chain, full) in closure(graph, root).items():
        for target, level in graph[name]:
            if target not in graph and target in forbidden and (full or level):
                found.add(breach := f"{name} -> {target}")
                chains[breach] = " -> ".join(chain)
    return sorted(found), chains


# -- the table -----------------------------------------------------------------------------------

def folder_sizes(tree: Path) -> dict[str, dict]:
    """Top-level folder -> modules, lines, and the longest module with its lines."""
    folders = [f for f in sorted(tree.iterdir(), key=lambda f: (f.name not in PACKAGES, f.name))
               if f.is_dir() and not f.name.startswith(".") and f.name not in NOT_SOURCE
               and not f.name.endswith(".egg-info")]
    out = {}
    for folder in folders:
        sizes = {str(p.relative_to(tree)): len(p.read_text().splitlines()) for p in source_files(folder)}
        if sizes:
            longest = max(sizes, key=sizes.get)
            out[folder.name] = {"modules": len(sizes), "lines": sum(sizes.values()), "longest": (longest, sizes[longest])}
    return out


def analyse(tree: Path) -> dict:
    """Sizes, cycles and breaches of ``tree``; ``violations`` lists every cycle and breach as one string."""
    mods = modules(tree)
    graph = read_imports(mods, lazy_tables(mods))
    all_edges, top_edges = edges(graph), edges(graph, module_level_only=True)
    breaches = layer_breaches(graph)
    breaches[TORCH_FREE[0]], chains = torch_free_breaches(graph)
    sizes = {name: len(path.read_text().splitlines()) for name, path in mods.items()}
    found_cycles = cycles(all_edges)
    violations = [f"cycle: {' <-> '.join(c)}" for c in found_cycles] + [b for v in breaches.values() for b in v]
    return {"folders": folder_sizes(tree), "longest": max(sizes.items(), key=lambda kv: kv[1], default=("", 0)),
            "edges": sum(map(len, all_edges.values())), "module_edges": sum(map(len, top_edges.values())),
            "cycles": found_cycles, "module_cycles": cycles(top_edges), "cycle_edges": cycle_edges(graph, found_cycles),
            "breaches": breaches, "chains": chains, "violations": sorted(violations)}


def cycle_edges(graph: dict, found: list[list[str]]) -> list[list[str]]:
    """For each cycle, its edges as "a -> b" (with "(in a function)" when no import of b in a is at module level)."""
    out = []
    for component in found:
        inside = set(component)
        out.append([f"{a} -> {b}" + ("" if any(t == b and level for t, level in graph[a]) else " (in a function)")
                    for a in component for b in sorted({t for t, _ in graph[a]} & inside)])
    return out


def render(result: dict, label: str) -> str:
    """The Markdown table of ``analyse``'s result for the tree called ``label``."""
    lines = [f"# Structure of {label}", "", "| folder | modules | lines | longest module | its lines |",
             "|---|---|---|---|---|"]
    lines += [f"| {folder}/ | {f['modules']} | {f['lines']} | {f['longest'][0]} | {f['longest'][1]} |"
              for folder, f in result["folders"].items()]
    name, size = result["longest"]
    lines += ["", f"longest module of the package: {name} ({size} lines)", "",
              f"import edges between densreg modules: {result['edges']} ({result['edges'] - result['module_edges']} "
              "only inside functions)",
              f"import cycles, counting imports inside functions: {len(result['cycles'])} "
              f"({len(result['module_cycles'])} at module level alone)"]
    for component, inner in zip(result["cycles"], result["cycle_edges"]):
        lines += [f"- {' <-> '.join(component)}: {'; '.join(inner)}"]
    total = sum(map(len, result["breaches"].values()))
    lines += [f"layering breaches, counting imports inside functions: {total}"]
    for rule, found in result["breaches"].items():
        lines += [f"- {rule}: {len(found)}"]
        lines += [f"  - {b}" + (f" (via {result['chains'][b]})" if b in result["chains"] else "") for b in found]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=None, help="the checkout to measure (default: this one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    tree = (args.tree or Path(__file__).resolve().parents[1]).resolve()
    text = render(analyse(tree), f"`{args.tree}`" if args.tree else "this checkout")
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
