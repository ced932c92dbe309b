"""`make lint`: fail when the project's own modules import each other in a cycle.

Builds the import graph of every top-level package of the repository (a folder
holding an `__init__.py`) with the standard library's `ast`, and prints each
strongly connected component of more than one module, with the import lines
that tie it together. Exits 1 when there is any.

What counts as an edge from module M to module N:
- `import N` and `from N import name` anywhere in M, at module level or inside a
  function or class: a function-local import only postpones the cycle.
- `from P import name` where `P.name` is a module is an edge to `P.name`;
  otherwise it is an edge to P (a package's `__init__`).
- A package's `__init__` is a module like any other, so its re-exports are edges
  from the package.
- Imports under `if TYPE_CHECKING:` do not count: they never run.

Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`, but those implicit
edges are left out, as import-linter and grimp do: a module does not depend on
what its parent package re-exports.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "node_modules", "__pycache__", "static", "templates", "data"}


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of every top-level package under root, by dotted name."""
    modules: dict[str, Path] = {}
    for package in sorted(root.iterdir()):
        if package.name in SKIP_DIRS or not (package / "__init__.py").is_file():
            continue
        for path in sorted(package.rglob("*.py")):
            relative = path.relative_to(root)
            if SKIP_DIRS.intersection(relative.parts):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """True for `TYPE_CHECKING` and `typing.TYPE_CHECKING`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def import_nodes(tree: ast.AST):
    """Every import statement in tree, skipping the bodies of `if TYPE_CHECKING:`."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))


def resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute dotted name that `from <base> import ...` refers to."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - node.level + 1]
    return ".".join(anchor + ([node.module] if node.module else []))


def known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of name that is a project module, if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]):
    """(target module, line) for each import of a project module in module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = resolve_base(module, is_package, node)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for name in names:
            target = known_prefix(name, modules)
            if target and target != module:
                yield target, node.lineno


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: the first line importing it}."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module, path in modules.items():
        for target, line in imports_of(module, path, modules):
            graph[module][target] = min(line, graph[module].get(target, line))
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def group(module: str, depth: int) -> str:
    """The first depth parts of a dotted name (all of them when depth is 0)."""
    return ".".join(module.split(".")[:depth]) if depth else module


def report(root: Path, depth: int = 0) -> list[str]:
    """One paragraph per cycle: its members and the import lines inside it.

    With depth, modules are first merged into their packages of that depth
    (1: apps, 2: ai.api, ai.gateway, ...), to show cycles between layers.
    """
    modules = project_modules(root)
    graph = import_graph(modules)
    grouped: dict[str, dict[str, int]] = defaultdict(dict)
    for module, targets in graph.items():
        source = group(module, depth)
        grouped[source].update({group(target, depth): 0 for target in targets})
        grouped[source].pop(source, None)
    paragraphs = []
    for component in strongly_connected(grouped):
        members = set(component)
        lines = [f"cycle of {len(component)}: {', '.join(component)}"]
        shown = set()
        for module, targets in sorted(graph.items()):
            for target, line in sorted(targets.items()):
                pair = group(module, depth), group(target, depth)
                if pair in shown or pair[0] == pair[1] or not members.issuperset(pair):
                    continue
                shown.add(pair)
                lines.append(f"  {modules[module].relative_to(root)}:{line}: {module} -> {target}")
        paragraphs.append("\n".join(lines))
    return paragraphs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=ROOT)
    parser.add_argument(
        "--depth", type=int, default=0, help="merge modules into packages of this depth first"
    )
    args = parser.parse_args(argv)
    paragraphs = report(args.root.resolve(), args.depth)
    for paragraph in paragraphs:
        print(paragraph)
    if paragraphs:
        print(f"{len(paragraphs)} import cycle(s)", file=sys.stderr)
        return 1
    print("no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
