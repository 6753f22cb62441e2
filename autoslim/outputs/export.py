"""Export one trial as a Hugging Face checkpoint that plain transformers loads.

The trial's recipe is rebuilt from its stored record with the study's own base model, corpus
(refused when its fingerprint differs from the one the study measured on), seed and device,
then saved (safetensors, config with any quantization config, tokenizer) with a ``README.md``
model card (``autoslim.outputs.card``) and ``autoslim.json``:
study, trial, recipe, stored measurement, versions, corpus fingerprint and the sha256 of every
file. The saved folder is reloaded with plain ``AutoModelForCausalLM.from_pretrained`` (no
``trust_remote_code``) and its perplexity re-measured under the study's protocol; more than
``tolerance`` (1 %) away from the stored value fails the export.

Everything is written to a temporary folder beside the destination and renamed into place
only after the check passed, so a failed export leaves nothing behind. Over a previous export
(``force``), only the files its ``autoslim.json`` lists, unchanged since (their sha256), are
replaced: anything else in the folder (a ``.git`` of a Hub repository, the user's notes) is
kept, and a listed file the user has changed since is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoslim.errors import ConfigError, ModelError
from autoslim.measure.measurement import jsonable, versions
from autoslim.outputs.card import ExportFacts, model_card
from autoslim.outputs.pick import choose
from autoslim.outputs.weights import PRESETS, Weights
from autoslim.recipe import Recipe
from autoslim.search.config import StudyConfig
from autoslim.search.trials import TrialRecord, read_trials, stored_config

logger = logging.getLogger(__name__)

MANIFEST = "autoslim.json"
CARD = "README.md"
MANIFEST_FORMAT = "autoslim-export/1"
TOLERANCE = 0.01


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    trial: int
    recipe: Recipe
    stored_perplexity: float
    measured_perplexity: float
    files: dict[str, str]  # file name → sha256
    reason: str  # why this trial: the pick's reason, or "--trial N"
    kept: tuple[str, ...] = ()  # what --out held that the export did not write, kept as it was

    @property
    def relative_difference(self) -> float:
        return self.measured_perplexity / self.stored_perplexity - 1


@dataclass(frozen=True)
class Selection:
    """Which trial to export: ``trial`` by number, or the pick under ``weights`` and the budget
    (``max_ppl_increase``; ``tighten``: budget flags, as for pick; ``retime``: ranked on a
    side-by-side re-timing, :func:`autoslim.outputs.pick.choose`)."""

    trial: int | None = None
    weights: Weights | None = None
    max_ppl_increase: float | None = None
    tighten: Mapping[str, float] | None = None
    retime: bool = False


def select_trial(
    study: optuna.Study, selection: Selection = Selection()
) -> tuple[TrialRecord, str]:
    """The trial ``selection`` names, and why it was chosen."""
    if selection.trial is None:
        choice = choose(
            study,
            selection.weights or PRESETS["balanced"],
            selection.max_ppl_increase,
            selection.tighten,
            retime=selection.retime,
        )
        if not choice.recommended:
            raise ConfigError(
                f"{choice.reason}; export re-times by default (drop --no-retime), or name the "
                "trial with --trial N"
            )
        return _trial(study, choice.best.number), choice.reason
    chosen = selection.weights is not None or selection.max_ppl_increase is not None
    if chosen or selection.tighten or selection.retime:
        raise ConfigError(
            "give either --trial N or a choice (--prefer / --weights / --max-ppl-increase / "
            "budget flags / --retime), not both"
        )
    trial_number = selection.trial
    trial = _trial(study, trial_number)
    if trial.state != TrialState.COMPLETE:
        why = trial.reason
        fix = {
            TrialState.RUNNING: "wait until it finishes, or pick a completed trial",
            TrialState.WAITING: "it has not started yet; pick a completed trial",
        }.get(trial.state, "pick a completed trial (`autoslim pick` lists them)")
        raise ConfigError(
            f"--trial {trial_number} is {trial.state.name}"
            + (f" ({why})" if why else "")
            + f", so there is nothing to export: {fix}"
        )
    return trial, f"--trial {trial_number}"


def _trial(study: optuna.Study, number: int) -> TrialRecord:
    records = {r.number: r for r in read_trials(study)}
    if number not in records:
        shown = f"0..{max(records)}" if records else "none"
        raise ConfigError(
            f"--trial {number}: study {study.study_name!r} has no such trial (trials: {shown})"
        )
    return records[number]


def study_files(study: optuna.Study) -> list[Path]:
    """The files of ``study`` an export must never replace: its SQLite storage."""
    from autoslim.search.integrity import sqlite_path

    stored = study.user_attrs.get("config") or {}
    path = sqlite_path(str((stored.get("study") or {}).get("storage", "")))
    return [] if path is None else [path]


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
    return manifest if ours else None


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is a previous export (its manifest says so)."""
    return _manifest(folder) is not None


def previous_files(out: Path) -> list[str]:
    """The files of the previous export in ``out`` that ``--force`` may replace: those its
    manifest lists, each still as that export wrote it (its sha256), and the manifest itself.
    A listed file the user changed since, or a listing outside ``out``, is refused."""
    manifest = _manifest(out)
    listed = manifest.get("files") if manifest is not None else None
    if not isinstance(listed, dict):
        raise ConfigError(
            f"--out {str(out)!r}: {MANIFEST} lists no files, so nothing in it is known to be the "
            "export's; choose a new folder"
        )
    changed = []
    for name, digest in listed.items():
        path = out / str(name)
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not inside:
            raise ConfigError(
                f"--out {str(out)!r}: {MANIFEST} lists {name!r}, outside the folder; it is not "
                "an export autoslim wrote, so choose a new folder"
            )
        if path.is_symlink() or (
            path.exists() and (not path.is_file() or _sha256(path) != digest)
        ):
            changed.append(str(name))
    if changed:
        raise ConfigError(
            f"--out {str(out)!r}: {', '.join(changed)} changed since the previous export wrote "
            f"{'them' if len(changed) > 1 else 'it'}; --force never overwrites your changes, so "
            "move them out of the folder (or restore them) and run again"
        )
    return [*map(str, listed), MANIFEST]


def check_destination(out: Path, force: bool, protected: Sequence[Path] = ()) -> None:
    """Refuse, before any work: a destination that holds a study's files (``protected``:
    storage, study file, report) even with ``force``; a file; a non-empty folder unless
    ``force``, and with it anything but a previous export; a folder that accepts no files."""
    from autoslim.search.integrity import writable_folder

    target = out.resolve()
    for path in protected:
        folder = path.resolve().parent
        if folder == target or target in folder.parents:
            raise ConfigError(
                f"--out {str(out)!r} holds {str(path)!r}, a file of the study; an export "
                "there would replace it, so it is refused even with --force; choose a new "
                f"folder such as {str(folder / 'export')!r}"
            )
    inside = next((p for p in target.parents if is_export(p)), None)
    if inside is not None:
        raise ConfigError(
            f"--out {str(out)!r} is inside the previous export {str(inside)!r}; an export there "
            "would nest one model's folder in another's (and be uploaded with it), so choose a "
            "folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                f"--out {str(out)!r} exists and is not empty; choose a new folder or pass "
                "--force to replace a previous export"
            )
        if not is_export(out):
            raise ConfigError(
                f"--out {str(out)!r} is not empty and is not a previous export (no "
                f"{MANIFEST} of format {MANIFEST_FORMAT}); --force replaces only a previous "
                "export, so choose a new folder"
            )
        previous_files(out)
    parent = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    why = writable_folder(parent)
    if why is not None:
        raise ConfigError(
            f"--out {str(out)!r}: cannot write in {str(parent)!r} ({why}); choose a writable "
            "folder"
        )


def _study_setup(study: optuna.Study) -> StudyConfig:
    if "model" not in study.user_attrs:
        raise ConfigError(
            f"study {study.study_name!r} records no model: it was not written by "
            "`autoslim search`, so its trials cannot be rebuilt"
        )
    return stored_config(study)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reload_perplexity(
    folder: Path, corpus: Any, protocol: Any, device: str, recipe: Recipe | None = None
) -> float:
    """Perplexity of ``folder`` loaded back by ``recipe``'s runtime (torch: plain
    ``from_pretrained``, no remote code), on the eval tokens of the tokenizer saved there."""
    from transformers import AutoTokenizer

    from autoslim import data
    from autoslim.measure.perplexity import perplexity
    from autoslim.runtimes import get_runtime

    recipe = recipe or Recipe()
    runtime = get_runtime(recipe.runtime)
    try:
        model = runtime.load(folder, recipe=recipe, threads=0, device=device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"the exported folder does not load with {runtime.reloaded_with} "
            f"({type(e).__name__}: {e}); this recipe cannot be exported yet"
        ) from e
    with model:
        return perplexity(model, data.tokens(tokenizer, corpus, "eval"), protocol).perplexity


def export(
    study: optuna.Study,
    out: str | Path,
    selection: Selection = Selection(),
    *,
    force: bool = False,
    tolerance: float = TOLERANCE,
    protected: Sequence[Path] = (),
    hub_repo: str | None = None,
) -> ExportResult:
    """Rebuild, save, verify and move into ``out`` the trial of ``study`` that ``selection``
    names; ``hub_repo`` is the Hub repository it is going to (:func:`push_to_hub`), named in
    the card's load example. Nothing is left behind when any step fails."""
    from autoslim.pipeline import Pipeline

    out = Path(out)
    trial, reason = select_trial(study, selection)
    check_destination(out, force, [*study_files(study), *protected])
    config = _study_setup(study)
    pipeline = Pipeline.for_study(study, config)
    parent = out.absolute().parent
    created = _missing_ancestor(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the export is an ordinary folder
    try:
        logger.info("rebuilding trial %d: %s", trial.number, trial.recipe.describe())
        with pipeline.built(trial.recipe) as built:
            built.model.save(staging)
            engine = built.model.provenance()
        verification = _verify(staging, trial, pipeline, config.model.device, tolerance)
        facts = ExportFacts(
            model=str(study.user_attrs["model"]),
            study=study.study_name,
            trial=trial.number,
            recipe=trial.recipe,
            reason=reason,
            measurement=trial.measurement,
            verification=verification,
            workload=pipeline.workload.describe(),
            corpus={"name": pipeline.corpus.name, "fingerprint": pipeline.corpus.fingerprint},
            seed=pipeline.seed,
            out=hub_repo or str(out),
        )
        model_card(facts).save(staging / CARD)
        _ordinary_modes(staging)
        files = {
            p.relative_to(staging).as_posix(): _sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        manifest = jsonable(_new_manifest(facts, trial, engine, files))
        text = json.dumps(manifest, indent=2, allow_nan=False)
        (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")
        kept = _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    measured = verification["perplexity"]
    logger.info("exported trial %d to %s (perplexity %.4g)", trial.number, out, measured)
    return ExportResult(
        folder=out,
        trial=trial.number,
        recipe=trial.recipe,
        stored_perplexity=trial.perplexity,
        measured_perplexity=measured,
        files=files,
        reason=reason,
        kept=kept,
    )


def _verify(
    folder: Path, trial: TrialRecord, pipeline: Any, device: str, tolerance: float
) -> dict[str, Any]:
    """Reload the saved ``folder`` and re-measure its perplexity under the study's protocol;
    more than ``tolerance`` from the stored figure is an error."""
    protocol = pipeline.workload.protocol
    measured = reload_perplexity(folder, pipeline.corpus, protocol, device, trial.recipe)
    stored = trial.perplexity
    difference = measured / stored - 1
    if not abs(difference) <= tolerance:
        raise ModelError(
            f"trial {trial.number} re-measured at perplexity {measured:.6g} after export, "
            f"{difference:+.2%} from the stored {stored:.6g} (tolerance "
            f"{tolerance:.0%}): the rebuild does not reproduce the trial; check that the "
            "device, library versions and data match the search's"
        )
    return {
        "perplexity": measured,
        "stored_perplexity": stored,
        "relative_difference": difference,
        "tolerance": tolerance,
        "protocol": protocol.describe(),
        "device": device,
    }


def _new_manifest(
    facts: ExportFacts, trial: TrialRecord, engine: dict[str, Any], files: dict[str, str]
) -> dict[str, Any]:
    """``autoslim.json``: the facts the card states, in full, with the sha256 of every file."""
    return {
        "format": MANIFEST_FORMAT,
        "study": facts.study,
        "trial": facts.trial,
        "chosen_because": facts.reason,
        "model": facts.model,
        "seed": facts.seed,
        "recipe": facts.recipe.to_params(),
        "recipe_summary": facts.recipe.describe(),
        "stored_measurement": facts.measurement,
        "stored_tasks": trial.tasks,
        "build": trial.build,
        "verification": facts.verification,
        "corpus": facts.corpus,
        "runtime": engine,
        "versions": versions("optuna", "safetensors", "accelerate"),
        "files": files,
    }


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _ordinary_modes(folder: Path) -> None:
    """Every file under ``folder`` readable like any other (safetensors writes 0600)."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def _missing_ancestor(folder: Path) -> Path | None:
    """The outermost ancestor of ``folder`` (itself included) that does not exist yet."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _move_into_place(staging: Path, out: Path) -> tuple[str, ...]:
    """Rename ``staging`` to ``out``. Over a previous export, only its own unchanged files
    (:func:`previous_files`, checked again now) are set aside, the new ones moved in, and the
    old ones removed after; returns what else ``out`` holds, kept as it was."""
    if not out.exists():
        os.rename(staging, out)
        return ()
    old = previous_files(out)
    new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    theirs = [n for n in new if n not in old and ((out / n).exists() or (out / n).is_symlink())]
    if theirs:
        raise ConfigError(
            f"--out {str(out)!r}: {', '.join(theirs)} would be overwritten, and the previous "
            "export did not write it; move it out of the folder and run again"
        )
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            if (out / name).is_file():
                (aside / name).parent.mkdir(parents=True, exist_ok=True)
                os.rename(out / name, aside / name)
                moved_old.append(name)
        for name in new:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging / name, out / name)
            moved_new.append(name)
    except BaseException:
        for name in moved_new:
            os.rename(out / name, staging / name)
        for name in moved_old:
            os.rename(aside / name, out / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)  # only the emptied folders are left in it
    for name in old:  # folders only the old export's files were in
        for folder in (out / name).parents:
            if folder == out or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
    ours = {n.split("/", 1)[0] for n in new}
    return tuple(
        sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name not in ours)
    )


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload the export ``folder`` to the Hub model repository ``repo_id`` (created if
    missing) with ``huggingface_hub``, which finds the token itself (``HF_TOKEN`` or
    ``hf auth login``); the URL of the commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"autoslim export of {folder.name}",
        )
    # the client raises its own HTTP errors and its transport library's (httpx2 for
    # huggingface_hub 2, requests before), which share no base class but Exception
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"--push-to-hub {repo_id}: the Hub refused or could not be reached ({first}); the "
            f"verified export stays in {folder}: log in (`hf auth login` or HF_TOKEN), check "
            "the network and the repository name, then push that folder again"
        ) from e
    return str(commit.commit_url)
