"""The ``README.md`` model card of an export, written with ``huggingface_hub.ModelCard``.

Its metadata says what the Hub and ``transformers`` read (``base_model`` when the base is a hub
id, ``library_name``, ``pipeline_tag``, ``tags``) plus an ``autoslim`` entry (study, trial,
recipe); its text gives the recipe, every figure the trial stored with the protocol, workload
and energy source it was measured under, the reload check, and the commands that reproduce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from autoslim import __version__
from autoslim.objectives import OBJECTIVES
from autoslim.operators import OPERATORS
from autoslim.recipe import KNOBS, Recipe

# The stored figures the card lists, in this order, with how each is shown.
FIGURES: tuple[tuple[str, str, str], ...] = (
    *((o.name, o.label, o.card_format) for o in OBJECTIVES.values()),
    ("seconds_cv", "seconds, coefficient of variation", "{:.1%}"),
    ("joules_cv", "joules, coefficient of variation", "{:.1%}"),
    ("parameters", "parameters", "{:,}"),
    ("top1_agreement", "top-1 agreement with the base model", "{:.2%}"),
    ("teacher_kl", "KL divergence from the base model", "{:.4f} nats/token"),
    ("cpu_wait_fraction", "time the timed runs waited for a CPU", "{:.1%}"),
)

# bitsandbytes' int8 matmul warns on every call whose input is not float16, in the user's
# process: autoslim filters it in its own (autoslim.compress.backends.bitsandbytes).
INT8_CAST_NOTE = (
    "bitsandbytes logs `MatMul8bitLt: inputs will be cast ... to float16` on every int8 "
    "matmul whose input is not float16. autoslim filters it while it measures; in your own "
    "process load with `dtype=torch.float16`, or drop it with `logging.getLogger("
    '"bitsandbytes.autograd._functions").setLevel(logging.ERROR)`.'
)


def changed_knobs(recipe: Recipe) -> dict[str, Any]:
    """The knobs that matter for ``recipe`` and differ from their default, as params."""
    return {
        name: value
        for name, value in recipe.active_params().items()
        if value != KNOBS[name].to_param(KNOBS[name].default)
    }


def measure_flags(recipe: Recipe) -> list[str]:
    """The ``autoslim measure`` flags that build ``recipe``: its changed knobs, and always its
    precision (``measure`` otherwise computes in the base model's own)."""
    params = {**changed_knobs(recipe), "precision": recipe.precision}
    flags: list[str] = []
    for name, value in params.items():
        knob = KNOBS[name]
        if knob.type is bool:
            flags.append(knob.flag if value else "--no-" + knob.flag[2:])
        else:
            flags += [knob.flag, str(value)]
    return flags


def _hub_id(model: str) -> str | None:
    """``model`` when it names a hub repository (``owner/name``), not a folder or the reference."""
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not Path(model).exists():
        return model
    return None


def _figure(value: Any, fmt: str) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN (not measured)" if math.isnan(value) else str(value)
    return fmt.format(int(value) if fmt.startswith("{:,}") else value)


@dataclass(frozen=True)
class ExportFacts:
    """What an export states about itself, once: its card and its manifest both read it.
    ``out`` is where the export goes (a folder, or the Hub repository it is pushed to)."""

    model: str
    study: str
    trial: int
    recipe: Recipe
    reason: str
    measurement: dict[str, Any]
    verification: dict[str, Any]
    workload: str
    corpus: dict[str, str]
    seed: int
    out: str


def model_card(facts: ExportFacts) -> ModelCard:
    """The model card of an export: metadata, what it is and how to load it, its recipe, its
    figures and how they were measured, how to reproduce it, and its runtime's notes."""
    from autoslim.runtimes import get_runtime

    runtime = get_runtime(facts.recipe.runtime)
    model, recipe = facts.model, facts.recipe
    changed = changed_knobs(recipe)
    base = f"[{model}](https://huggingface.co/{model})" if _hub_id(model) else f"`{model}`"
    if model == "reference":
        base = "autoslim's bundled reference model (`reference`)"
    lines = [
        f"# {recipe.describe()}",
        "",
        f"{base} compressed by [autoslim](https://pypi.org/project/autoslim/): trial "
        f"{facts.trial} of study `{facts.study}`, chosen because: {facts.reason}. It runs in "
        f"**{runtime.name}**.",
        "",
        *runtime.usage(facts.out),
        "",
        "## Recipe",
        "",
        "| knob | value |",
        "|---|---|",
        *(f"| `{k}` | `{v}` |" for k, v in changed.items()),
        *(["| (none: the base model as it is) | |"] if not changed else []),
        *_measured(facts, runtime.reloaded_with),
        *_reproduce(facts),
    ]
    provenance = facts.measurement.get("provenance") or {}
    notes = runtime.card_notes(provenance.get("runtime") or {})
    if recipe.bits == 8 and recipe.runtime == "torch" and recipe.quant_backend == "bitsandbytes":
        notes.append(INT8_CAST_NOTE)
    if notes:
        lines += ["", "## Note"] + [line for note in notes for line in ("", note)]
    data = _card_data(facts, runtime, changed)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _card_data(facts: ExportFacts, runtime: Any, changed: dict[str, Any]) -> ModelCardData:
    """The card's metadata: what the Hub and transformers read, and autoslim's own entry."""
    operators = [op.name for op in OPERATORS if any(k.name in changed for k in op.knobs)]
    return ModelCardData(
        base_model=_hub_id(facts.model),
        library_name=runtime.library_name,
        pipeline_tag="text-generation",
        tags=[
            "autoslim",
            *([runtime.name] if runtime.name != "torch" else []),
            *(["compressed", *operators] if operators else []),
        ],
        autoslim={
            "version": __version__,
            "study": facts.study,
            "trial": facts.trial,
            "recipe": facts.recipe.to_params(),
        },
    )


def _measured(facts: ExportFacts, reloaded_with: str) -> list[str]:
    """The "Measured" section: every stored figure, and what it was measured under."""
    measurement, verification, corpus = facts.measurement, facts.verification, facts.corpus
    lines = ["", "## Measured", "", "| figure | value |", "|---|---|"]
    for key, label, fmt in FIGURES:
        shown = _figure(measurement.get(key), fmt)
        if shown is not None:
            lines.append(f"| {label} (`{key}`) | {shown} |")
    energy = str(measurement.get("energy_source", "unknown"))
    flags = ", ".join(measurement.get("energy_flags") or []) or "none"
    provenance = measurement.get("provenance") or {}
    return [
        *lines,
        "",
        f"- protocol and workload: {facts.workload}",
        f"- energy source: `{energy}` (flags: {flags})",
        f"- device: {provenance.get('device', 'unknown')}"
        + (f" ({provenance['device_name']})" if provenance.get("device_name") else ""),
        f"- corpus: {corpus['name']} (eval split), fingerprint `{corpus['fingerprint']}`",
        f"- reloaded with {reloaded_with} at export: perplexity "
        f"{verification['perplexity']:.4f} against the stored "
        f"{verification['stored_perplexity']:.4f} ({verification['relative_difference']:+.3%}"
        f", tolerance {verification['tolerance']:.0%})",
    ]


def _reproduce(facts: ExportFacts) -> list[str]:
    """The "Reproduce" section: the measure and export commands that give this model again."""
    flags = measure_flags(facts.recipe)
    return [
        "",
        "## Reproduce",
        "",
        "```bash",
        " ".join(["autoslim measure --model", facts.model, *flags, "--seed", str(facts.seed)]),
        f"autoslim export STUDY --study-name {facts.study} --trial {facts.trial} "
        f"--out {Path(facts.out).name}",
        "```",
        "",
        "`STUDY` is the study file or storage the search wrote; `autoslim.json` beside this card "
        "holds the full stored measurement, library versions and the sha256 of every file.",
    ]
