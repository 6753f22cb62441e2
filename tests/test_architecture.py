"""The package's import graph, checked: no circles, and every arrow points down the layers data
flows through (README's Architecture section shows the same layers; a test keeps it true).

Imports are read by grimp from the source (function-level imports included, ``TYPE_CHECKING``
ones left out), so a lazy import inside a function is an arrow like any other.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# Top to bottom; a module may import from its own layer and the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry points and test fakes", ("__main__", "cli", "testing")),
    ("outputs: report, pick, export", ("outputs", "zoo")),
    ("search: study files, the study loop, its worker, storage", ("search", "studies")),
    ("load, build, convert, measure in sequence", ("pipeline",)),
    ("measuring and evaluating a model", ("measure", "tasks")),
    ("building a recipe", ("build",)),
    ("the recipe: every knob", ("recipe",)),
    ("runtimes", ("runtimes",)),
    ("operator declarations", ("operators",)),
    ("operator implementations (torch)", ("compress",)),
    ("base models and text", ("models", "gguf", "data")),
    (
        "foundation",
        (
            "errors",
            "knobs",
            "precisions",
            "protocol",
            "progress",
            "quiet",
            "scratch",
            "memory",
            "objectives",
            "urls",
        ),
    ),
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("autoslim", exclude_type_checking_imports=True)


def test_every_module_of_the_package_sits_in_one_layer(graph):
    placed = [name for _, names in LAYERS for name in names]
    assert len(placed) == len(set(placed))
    top = {m.removeprefix("autoslim.") for m in graph.find_children("autoslim")}
    assert top == set(placed)


def test_no_import_circles_at_any_level(graph):
    # a package is locally acyclic when no import needs to go for its children (each with its
    # descendants) to form no circle; checked for the package and every subpackage
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    circles = {p: graph.nominate_cycle_breakers(p) for p in packages}
    assert {p: sorted(b) for p, b in circles.items() if b} == {}


def test_every_import_points_down_the_layers(graph):
    layers = [grimp.Layer(*names, independent=False) for _, names in LAYERS]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"autoslim"})
    found = sorted(
        f"{d.importer} -> {d.imported}: {sorted(r.heads)} -> {list(r.middle)} -> {sorted(r.tails)}"
        for d in illegal
        for r in d.routes
    )
    assert not illegal, f"imports running back up the layers: {found}"


def layers_block() -> str:
    width = max(len(title) for title, _ in LAYERS)
    rows = [f"{title:<{width}}  {' · '.join(names)}" for title, names in LAYERS]
    return "```\n" + "\n".join(rows) + "\n```"


def test_readme_shows_the_checked_layers():
    text = README.read_text(encoding="utf-8")
    begin, end = "<!-- layers:begin -->\n", "\n<!-- layers:end -->"
    shown = text[text.index(begin) + len(begin) : text.index(end)]
    assert shown == layers_block(), f"README's layers block should read:\n{layers_block()}"
