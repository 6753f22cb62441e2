"""The figures a study can minimise, declared once: each one's name (the Measurement field and
the ``[objectives] names`` entry), its unit and how the model card shows it. The study file's
check, the report's axes, pick's reasons and the card's table all read them from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """One figure to minimise: ``name`` (a Measurement field), ``unit`` ("" for none),
    ``label`` and ``card_format`` (how the model card shows it)."""

    name: str
    unit: str
    label: str
    card_format: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("perplexity", "", "perplexity", "{:.4f}"),
        Objective("seconds", "s", "seconds of the timed workload (median)", "{:.4f} s"),
        Objective("joules", "J", "joules of the timed workload (median)", "{:.3f} J"),
        Objective("size_bytes", "B", "size of the weights", "{:,} bytes"),
        Objective("peak_memory_bytes", "B", "peak memory while measuring", "{:,} bytes"),
    )
}
# What a study minimises when its file names no objectives.
DEFAULT_OBJECTIVES = ("perplexity", "seconds", "joules")


def unit_of(name: str) -> str:
    """The unit of objective ``name``; "" for none or for a task's score."""
    objective = OBJECTIVES.get(name)
    return objective.unit if objective else ""
