"""A front you can trust: untrusted stored timings are held back, and re-timing side by side
undoes a base model that was timed slow by chance (issue: NF4 exported because the base was
timed while the machine was busy)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from autoslim.cli import main
from autoslim.measure.measurement import CONTENDED
from autoslim.outputs import retime
from autoslim.outputs.pick import rank, retime_numbers
from autoslim.outputs.retime import Retimed, stored_retimings, untrusted_timing
from autoslim.outputs.weights import parse_weights
from autoslim.recipe import Recipe
from autoslim.search.trials import read_trials
from autoslim.testing import save_tiny_model
from autoslim.testing.studies import (
    TINY_WORKLOAD,
    base,
    complete,
    make_built_study,
    make_study,
)

TIME = parse_weights("time=1")
NF4 = Recipe(bits=4, quant_backend="bitsandbytes")


def test_a_base_timed_on_a_busy_cpu_is_held_back_and_named(tmp_path: Path) -> None:
    # The study: the base timed at 11.04 s while waiting for a CPU, NF4 at 6.04 s.
    busy_base = replace(base(8.36, 11.04, 110.0), timing_flags=(CONTENDED,))
    study = make_study(
        f"sqlite:///{tmp_path / 's.db'}",
        trials=[
            busy_base,
            complete(Recipe(bits=8), 8.52, 9.0, 90.0),
            complete(NF4, 10.26, 6.04, 60.0),
        ],
        max_ppl_increase=0.25,
    )
    records = read_trials(study)
    assert retime.CONTENDED == CONTENDED  # declared torch-free there, for pick and report
    assert untrusted_timing(records[0]).startswith(CONTENDED)
    assert not untrusted_timing(records[2])
    choice = rank(study, TIME)
    assert 0 not in [c.number for c in choice.ranking]
    assert set(choice.held_back) == {0}
    # Nothing says NF4 is faster than a base whose own timing is untrusted: no recommendation,
    # and each candidate's figure beside the base's.
    assert not choice.recommended and choice.to_dict()["best_trial"] is None
    assert choice.reason.startswith(
        "no candidate can be recommended until the base model is re-timed: its own timing is "
        "held back (trial 0: cpu_contended"
    )
    assert "run `autoslim pick --retime`" in choice.reason
    assert "trial 2 (nf4+dq) 6.04 s (base 11.04)" in choice.reason
    # What --retime measures: the base, the top of the stored ranking, the held-back trial.
    assert retime_numbers(study, TIME) == [0, 2, 1]


def test_retimed_figures_decide_and_a_gap_within_noise_goes_to_the_lower_perplexity(
    tmp_path: Path,
) -> None:
    study = make_study(
        f"sqlite:///{tmp_path / 's.db'}",
        trials=[base(100.0, 11.0, 110.0), complete(NF4, 110.0, 6.0, 60.0)],
    )

    def figures(number: int, seconds: float) -> Retimed:
        return Retimed(number, seconds, 0.05, float("nan"), 0.0, (seconds,) * 5, 0.0, (), 5)

    # Side by side, NF4 is 2 % faster, well within the 5 % spread: the base keeps its place.
    choice = rank(study, TIME, retimed={0: figures(0, 1.00), 1: figures(1, 0.98)})
    assert choice.best.is_base
    assert choice.best.values["seconds"] == 1.00
    assert "within measurement noise" in choice.reason
    assert "re-timing trials 0, 1 side by side (5 interleaved rounds)" in choice.reason
    # Twice as fast side by side: NF4 wins on the re-timed figures.
    assert rank(study, TIME, retimed={0: figures(0, 1.0), 1: figures(1, 0.5)}).best.number == 1


@pytest.mark.slow
def test_pick_retime_is_not_fooled_by_a_base_timed_slow(tmp_path: Path, corpus, capsys) -> None:
    """Through the CLI (``autoslim pick --retime --json``), which shows the re-timing's stages
    on stderr while it runs."""
    model = save_tiny_model("qwen3", tmp_path / "tiny")
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    # Real builds; the stored seconds are made up: the base 1.0 s, NF4 0.9 s (the base "timed
    # on a busy moment"). On a CPU, bitsandbytes 4-bit runs far slower than fp32.
    study = make_built_study(
        storage, model, corpus, [Recipe(), NF4], workload={**TINY_WORKLOAD, "repeats": 5}
    )
    assert rank(study, TIME).best.recipe == NF4  # fooled by the stored figures
    capsys.readouterr()
    assert main(["pick", storage, "--weights", "time=1", "--retime", "--json"]) == 0
    out, err = capsys.readouterr()
    choice = json.loads(out)
    assert choice["retimed"] == [0, 1]
    assert choice["best_trial"] == 0, choice["reason"]  # the base model
    # off a terminal: a line per stage (each rebuild, the rounds), no bar
    assert "re-timing | rebuild trial 0\n" in err and "re-timing | rebuild trial 1\n" in err
    assert "re-timing | interleaved rounds " in err and "\r" not in err
    again = stored_retimings(optuna.load_study(study_name="built", storage=storage))
    assert set(again) == {0, 1} and again[0].beside == (1,) and len(again[1].seconds_samples) == 5
    assert again[1].seconds > again[0].seconds


def test_the_report_says_which_trials_were_held_back_and_which_re_timed(tmp_path: Path) -> None:
    from autoslim.outputs.report import get_summary_info
    from autoslim.outputs.retime import store_retimings

    busy_base = replace(base(8.36, 11.04, 110.0), timing_flags=(CONTENDED,))
    study = make_study(
        f"sqlite:///{tmp_path / 's.db'}",
        trials=[busy_base, complete(NF4, 10.26, 6.04, 60.0)],
        max_ppl_increase=0.25,
    )
    before = get_summary_info(study).choice
    assert before.startswith("no candidate can be recommended until the base model is re-timed")
    assert "(trial 0: cpu_contended" in before and "trial 1 (" in before

    def figures(number: int, seconds: float, beside: int) -> Retimed:
        return Retimed(number, seconds, 0.01, 1.0, 0.01, (seconds,) * 3, 0.0, (beside,), 3)

    store_retimings(study, {0: figures(0, 4.0, 1), 1: figures(1, 6.5, 0)})
    after = get_summary_info(study).choice
    assert after.startswith("trial 0 (base model")
    assert "Figures from re-timing trials 0, 1 side by side (3 interleaved rounds)" in after
    assert "Kept out" not in after


def test_with_no_trusted_timing_pick_ranks_the_stored_figures_and_says_so(tmp_path: Path) -> None:
    busy = (CONTENDED,)
    study = make_study(
        f"sqlite:///{tmp_path / 's.db'}",
        trials=[
            replace(base(8.36, 11.04, 110.0), timing_flags=busy),
            replace(complete(NF4, 8.9, 6.04, 60.0), timing_flags=busy),
        ],
        max_ppl_increase=0.25,
    )
    choice = rank(study, TIME)
    assert choice.best.number == 1 and not choice.recommended
    assert set(choice.held_back) == {0, 1}
    assert "no candidate can be recommended until the base model is re-timed" in choice.reason
    assert "autoslim pick --retime" in choice.reason
