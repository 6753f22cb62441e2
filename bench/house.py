"""How the package is built, in figures anyone can re-run: modules and lines, import circles,
imports running back up the layers (``tests/test_architecture.py`` declares them), and the
longest functions.

    .venv/bin/python bench/house.py [--top 8]

To read another checkout with the same layers (before and after a change), put it first on the
path: ``git worktree add /tmp/old COMMIT`` then ``PYTHONPATH=/tmp/old .venv/bin/python
bench/house.py``; layers its package does not have are left out of the check.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path

import grimp

LONG = 80  # the house rule: no longer function unless its docstring opens with "numerics:"


def _layers() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The layers ``tests/test_architecture.py`` declares, read from this checkout's file."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_architecture.py"
    spec = importlib.util.spec_from_file_location("_architecture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layers: tuple[tuple[str, tuple[str, ...]], ...] = module.LAYERS
    return layers


def functions(package: Path) -> list[tuple[int, str]]:
    """(lines, "file:line name") of every function in ``package``, numerics kernels left out."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (ast.get_docstring(node) or "").startswith("numerics:"):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(package.parent)}:{node.lineno} {node.name}"
                found.append((length, where))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    spec = importlib.util.find_spec("autoslim")
    assert spec is not None and spec.origin is not None, "autoslim is not importable"
    package = Path(spec.origin).parent
    graph = grimp.build_graph("autoslim", exclude_type_checking_imports=True)
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in package.rglob("*.py"))
    print(f"package: {package} ({len(graph.modules)} modules, {lines:,} lines)")
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    circles = {p: graph.nominate_cycle_breakers(p) for p in packages}
    breakers = sorted((p, b) for p, found in circles.items() for b in found)
    print(f"imports to remove for no circle at any level: {len(breakers)}")
    for where, (importer, imported) in breakers:
        print(f"  in {where}: {importer} -> {imported}")
    top = {m.removeprefix("autoslim.") for m in graph.find_children("autoslim")}
    declared = _layers()
    layers = [
        grimp.Layer(*(n for n in names if n in top), independent=False)
        for _, names in declared
        if any(n in top for n in names)
    ]
    unplaced = sorted(top - {n for _, names in declared for n in names})
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"autoslim"})
    print(f"layer pairs with an import running back up: {len(illegal)} (unplaced: {unplaced})")
    for dependency in sorted(illegal, key=lambda d: (d.importer, d.imported)):
        print(f"  {dependency.importer} -> {dependency.imported}")
    found = functions(package)
    over = [f for f in found if f[0] > LONG]
    print(f"functions over {LONG} lines: {len(over)}; longest {args.top}:")
    for length, where in found[: args.top]:
        print(f"  {length:4d}  {where}")


if __name__ == "__main__":
    main()
