from __future__ import annotations

import pytest

from autoslim.recipe import Recipe
from autoslim.search.config import parse
from autoslim.search.costs import (
    MIN_TIMEOUT_SECONDS,
    TIMEOUT_FACTOR,
    CostModel,
    early_abort_windows,
    quiet_seconds,
)
from autoslim.search.study import trial_timeout

MODEL = CostModel(
    copy_seconds=2.0,
    eval_window_seconds=1.0,
    kd_step_seconds=7.9,
    workload_run_seconds=20.0,
    eval_windows=16,
    workload_runs=6,
    early_abort_windows=8,
    cpu_wait_fraction=0.3,
)


def test_waiting_for_a_cpu_is_taken_out_and_sleeping_is_not() -> None:
    # 10 s of wall time: 2 s on a CPU, 6 s waiting for one -> a quarter of it was its own.
    assert quiet_seconds(10.0, (0.0, 0.0), (2.0, 6.0)) == pytest.approx(2.5)
    assert quiet_seconds(10.0, (1.0, 1.0), (1.0, 1.0)) == 10.0  # asleep or hung
    assert quiet_seconds(10.0, None, (2.0, 6.0)) == 10.0  # no schedstat


def test_a_trial_is_predicted_from_its_stages_and_its_timeout_scales_with_it() -> None:
    # copy + early-abort check + 50 KD steps + perplexity and drift + 6 workload runs
    assert MODEL.trial_seconds(50) == pytest.approx(2 + 8 + 50 * 7.9 + 3 * 16 + 6 * 20)
    assert MODEL.timeout_seconds(50) == pytest.approx(TIMEOUT_FACTOR * MODEL.trial_seconds(50))
    tiny = CostModel(0.01, 0.001, 0.01, 0.01, 8, 4, 8, 0.0)
    assert tiny.timeout_seconds(0) == MIN_TIMEOUT_SECONDS


def test_the_start_line_says_what_a_trial_costs_and_how_many_fit() -> None:
    line = MODEL.describe(50, 8 * 3600)
    assert line.startswith("one KD step 7.9 s, one eval window 1.0 s, one workload run 20.0 s")
    assert "one trial with 50 KD steps ≈ 10 min (timeout 57 min)" in line
    assert line.endswith("about 50 trials in 8.0 h (measured with 30% CPU wait, taken out)")


def test_early_abort_windows_cost_at_most_a_twentieth_of_the_trial_they_may_save() -> None:
    assert early_abort_windows(0.001, 10.0, available=64) == 8  # cheap: the most useful
    assert early_abort_windows(1.0, 100.0, available=64) == 5
    assert early_abort_windows(10.0, 100.0, available=64) == 2  # never fewer than 2
    assert early_abort_windows(0.001, 10.0, available=3) == 3  # the eval split is short


def test_a_study_file_timeout_wins_and_an_unset_one_is_derived(tmp_path) -> None:
    recipe = Recipe(kd_steps=50)
    derived = parse({}, tmp_path / "s.toml", check_model=False)
    assert derived.study.trial_timeout_seconds is None
    assert derived.early_abort.windows is None
    assert trial_timeout(derived, MODEL, recipe) == MODEL.timeout_seconds(50)
    fixed = parse({"study": {"trial_timeout_seconds": 90}}, tmp_path / "s.toml", check_model=False)
    assert trial_timeout(fixed, MODEL, recipe) == 90.0


def test_a_time_limit_too_short_for_the_kd_steps_says_how_many_steps_fit() -> None:
    # 10 trials in 1 h leave 360 s each: 178 s without distillation, 7.9 s per step -> 23.
    line = MODEL.describe(50, 3600)
    assert line.endswith(
        "about 6 trials in 60 min; for 10 trials in that time, keep "
        "search.kd_steps at or below 23 (measured with 30% CPU wait, taken out)"
    )
    assert "keep search.kd_steps" not in MODEL.describe(50, 8 * 3600)


def test_kd_steps_left_out_of_a_timed_study_are_derived_to_fit_ten_trials() -> None:
    # 8 h: ten trials leave 2,702 s each beyond the 178 s of a trial without distillation,
    # 342 steps of 7.9 s, rounded down to 200; the short distillation a quarter of that.
    assert MODEL.derived_kd_steps(8 * 3600) == [0, 50, 200]
    assert MODEL.derived_kd_steps(3600) == [0, 20]  # a quarter of 20 recovers too little
    assert MODEL.derived_kd_steps(1800) == [0]  # not even ten steps fit
    assert MODEL.derived_kd_steps(100 * 3600) == [0, 500, 2000]  # capped


def test_only_a_timed_study_that_leaves_kd_steps_out_derives_them(tmp_path) -> None:
    fixed = {"precision": ["fp32"], "runtime": ["torch"]}  # left out: derived from the device

    def derive(raw: dict) -> tuple[str, ...]:
        return parse({"search": fixed, **raw}, tmp_path / "s.toml", check_model=False).derive

    timed = {"study": {"time_limit_seconds": 3600}}
    assert derive(timed) == ("kd_steps",)
    assert derive({**timed, "search": {**fixed, "kd_steps": [0, 20]}}) == ()
    assert derive({}) == ()  # no time to fit the steps into
    config = parse({**timed, "search": fixed}, tmp_path / "s.toml", check_model=False)
    derived = config.with_derived({"kd_steps": [0, 20]})
    assert derived.search["kd_steps"].values() == [0, 20]
    assert derived.search["precision"] == config.search["precision"]
    assert type(config).from_dict(derived.to_dict()).derive == ("kd_steps",)


def test_a_recovery_pass_is_part_of_the_trial_its_timeout_and_the_derived_steps(
    tmp_path,
) -> None:
    from dataclasses import replace

    healing = replace(MODEL, recovery_seconds={"bias": 40.0, "block_kd": 200.0})
    assert healing.longest_recovery == "block_kd"
    assert MODEL.longest_recovery == "none"
    plain = healing.trial_seconds(50)
    assert healing.trial_seconds(50, recovery="bias") == pytest.approx(plain + 40)
    assert healing.timeout_seconds(50, "block_kd") == pytest.approx(TIMEOUT_FACTOR * (plain + 200))
    recipe = Recipe(drop_layers=1, recovery="block_kd", kd_steps=50)
    assert trial_timeout(parse({}, tmp_path / "s.toml", check_model=False), healing, recipe) == (
        healing.timeout_seconds(50, "block_kd")
    )
    line = healing.describe(50, 8 * 3600)
    assert (
        "recovery bias 40.0 s, recovery block_kd 200.0 s; one trial with 50 KD steps and "
        "block_kd ≈ 13 min" in line
    )
    # Ten trials of the longest kind in 8 h: 200 s of recovery leave 2,502 s, 316 steps -> 200.
    assert healing.kd_steps_fitting(10, 8 * 3600) == 316
    assert CostModel.from_dict(healing.to_dict()) == healing
