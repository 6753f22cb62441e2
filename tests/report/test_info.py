from __future__ import annotations

import json
import math
from dataclasses import replace

import optuna
import pytest

from autoslim.cli import main
from autoslim.errors import ConfigError
from autoslim.outputs.report import (
    get_history_info,
    get_parallel_info,
    get_pareto_info,
    get_summary_info,
    get_table_info,
    objective_sets,
    plot_history,
    plot_importances,
    plot_pareto,
    render_page,
    render_summary,
    render_table,
)
from autoslim.recipe import Recipe
from autoslim.testing.studies import base, complete, failed, make_study_file

SCRIPT = "<script>alert(1)</script>"  # the fail reason of trial 7 in DEMO_TRIALS


@pytest.fixture
def study(tmp_path):
    return optuna.load_study(study_name="demo", storage=make_study_file(tmp_path))


def numbers(points):
    return sorted(p.number for p in points)


@pytest.mark.parametrize(
    ("objectives", "front", "dominated"),
    [
        # perplexity vs seconds: 4 (118, 0.55) is dominated by 3 (110, 0.5), 5 by 2.
        (("perplexity", "seconds"), [0, 1, 2, 3], [4, 5]),
        # perplexity vs joules: 2, 3 and 5 are dominated by 1 (101, 6).
        (("perplexity", "joules"), [0, 1, 4], [2, 3, 5]),
        # seconds vs joules: 3 is fastest, 4 leanest within the budget.
        (("seconds", "joules"), [3, 4], [0, 1, 2, 5]),
        # all three: Optuna's front within the budget, 5 dominated by 2.
        (("perplexity", "seconds", "joules"), [0, 1, 2, 3, 4], [5]),
    ],
)
def test_pareto_info_per_objective_pair(study, objectives, front, dominated):
    info = get_pareto_info(study, objectives)
    assert numbers(info.front) == front
    assert numbers(info.dominated) == dominated
    assert numbers(info.over_budget) == [6]
    assert info.base is not None and info.base.number == 0
    figures = {"perplexity": 100.0, "seconds": 1.0, "joules": 10.0}
    assert info.base.values == tuple(figures[n] for n in objectives)
    limit = pytest.approx(120.0) if "perplexity" in objectives else None
    assert info.budget_perplexity == limit


def test_pareto_3d_front_is_optunas_best_trials(study):
    # The fixture stores the budget as an Optuna constraint too, so best_trials is feasible-only.
    front = get_pareto_info(study, ("perplexity", "seconds", "joules")).front
    assert numbers(front) == numbers(study.best_trials)


@pytest.mark.parametrize(
    ("objectives", "sets", "front"),
    [
        (["perplexity", "joules"], [("perplexity", "joules")], [0, 1, 4]),
        (["seconds", "perplexity"], [("seconds", "perplexity")], [0, 1, 2, 3]),
    ],
)
def test_report_reads_objectives_by_name(tmp_path, objectives, sets, front):
    url = make_study_file(tmp_path, objectives=objectives)
    study = optuna.load_study(study_name="demo", storage=url)
    assert objective_sets(study) == sets
    info = get_pareto_info(study, sets[0])
    assert numbers(info.front) == front and numbers(info.over_budget) == [6]
    assert info.axis_names == tuple(objectives)
    rows = {r.number: r for r in get_table_info(study).rows}
    assert set(rows[1].values) == set(objectives) and rows[1].values["perplexity"] == 101.0
    assert sorted(n for n, r in rows.items() if r.on_front) == front
    assert [d.label for d in get_parallel_info(study).dimensions][-2:] == objectives
    summary = get_summary_info(study)
    assert summary.objective_names == tuple(objectives) and summary.n_front == len(front)
    page = render_page(study)
    assert f"pareto-{sets[0][0]}-{sets[0][1]}" in page and "pareto-perplexity-seconds-" not in page


def test_pareto_info_rejects_bad_objectives(study):
    with pytest.raises(ConfigError, match="objectives"):
        get_pareto_info(study, ("perplexity",))
    with pytest.raises(ConfigError, match="size_bytes"):
        get_pareto_info(study, ("perplexity", "size_bytes"))


def test_pareto_plot_marks_budget_and_base(study):
    fig = plot_pareto(get_pareto_info(study, ("perplexity", "seconds")))
    names = [t.name for t in fig.data]
    assert names == ["Pareto front", "dominated", "over the perplexity budget", "base model"]
    assert list(fig.data[0].x) == [100.0, 101.0, 104.0, 110.0]
    assert [s.x0 for s in fig.layout.shapes] == [pytest.approx(120.0)]
    fig3 = plot_pareto(get_pareto_info(study, ("perplexity", "seconds", "joules")))
    assert fig3.data[-1].name == "perplexity budget"
    assert list(fig3.data[-1].x) == [pytest.approx(120.0)] * 4


def test_parallel_info_keeps_varying_knobs_then_objectives(study):
    info = get_parallel_info(study)
    labels = [d.label for d in info.dimensions]
    assert labels == [  # knobs in declaration order
        "drop_heads_per_layer",
        "prune_ratio",
        "kd_steps",
        "bits",
        "quant_type",
        "perplexity",
        "seconds",
        "joules",
    ]
    assert "kd_temperature" in info.constant_knobs
    quant = info.dimensions[4]
    assert quant.tick_text == ("fp4", "nf4")
    assert quant.values[5] == 0.0  # trial 5 is fp4
    assert info.trial_numbers == (0, 1, 2, 3, 4, 5, 6)
    assert info.dimensions[-1].values == (10.0, 6.0, 8.0, 9.0, 5.0, 8.5, 3.0)


def test_importances_per_objective_by_optuna(study):
    fig = plot_importances(study)
    assert [t.name for t in fig.data] == ["perplexity", "seconds", "joules"]
    for bars in fig.data:
        assert set(bars.y) <= {"bits", "quant_type", "prune_ratio", "drop_heads_per_layer"} | {
            "kd_steps"
        }
        assert sum(bars.x) == pytest.approx(1.0, abs=0.02)


def test_importances_guarded_for_too_few_trials(tmp_path):
    url = make_study_file(tmp_path, trials=[base(100, 1, 10), complete(Recipe(bits=8), 101, 1, 6)])
    fig = plot_importances(optuna.load_study(study_name="demo", storage=url))
    assert "at least 5 completed trials" in fig.layout.annotations[0].text


def test_history_info_per_objective_with_the_budget(study):
    info = get_history_info(study, "seconds")
    assert [p.number for p in info.feasible] == [0, 1, 2, 3, 4, 5]
    assert [p.values[0] for p in info.feasible] == [1.0, 0.9, 0.6, 0.5, 0.55, 0.7]
    # the stored constraint puts trial 6 (over the budget) apart, and out of the best line
    assert [p.number for p in info.infeasible] == [6]
    assert info.best == ((0, 1.0), (1, 0.9), (2, 0.6), (3, 0.5), (4, 0.5), (5, 0.5), (6, 0.5))
    assert not info.maximize and not info.budget_lines and not info.left_out
    fig = plot_history(info)
    assert [t.name for t in fig.data] == ["objective value", "infeasible trial", "best value"]
    assert not fig.layout.shapes
    perplexity = plot_history(get_history_info(study, "perplexity"))
    assert [s.y0 for s in perplexity.layout.shapes] == [pytest.approx(120.0)]
    with pytest.raises(ConfigError, match="objective='pydoc'"):
        get_history_info(study, "pydoc")


def test_plots_leave_out_the_values_of_skipped_tasks(tmp_path):
    """A trial whose task was skipped scores ±inf: the history and the parallel coordinates
    leave it out, as the fronts do."""
    objectives = ("perplexity", "seconds", "pydoc")
    trials = [
        replace(base(100.0, 1.0, 10.0), figures={"pydoc": 0.2}),
        replace(complete(Recipe(bits=8), 101.0, 0.8, 6.0), figures={"pydoc": 0.3}),
        replace(complete(Recipe(bits=4), 102.0, 0.6, 4.0), figures={"pydoc": math.inf}),
    ]
    url = make_study_file(tmp_path, trials=trials, objectives=objectives)
    s = optuna.load_study(study_name="demo", storage=url)
    assert numbers(get_pareto_info(s, ("seconds", "pydoc")).front) == [0, 1]
    history = get_history_info(s, "pydoc")
    assert [p.number for p in (*history.feasible, *history.infeasible)] == [0, 1]
    assert history.left_out == (2,) and history.best == ((0, 0.2), (1, 0.2))
    assert "not drawn, tasks skipped: trial 2" in plot_history(history).layout.title.text
    assert [p.number for p in get_history_info(s, "seconds").feasible] == [0, 1, 2]
    parallel = get_parallel_info(s)
    assert parallel.trial_numbers == (0, 1) and parallel.left_out == (2,)
    assert all(math.isfinite(v) for d in parallel.dimensions for v in d.values)


def test_table_info_every_state_with_reasons(study):
    rows = {r.number: r for r in get_table_info(study).rows}
    assert [rows[n].state for n in (0, 6, 7, 8, 9)] == [
        "COMPLETE",
        "COMPLETE",
        "FAIL",
        "PRUNED",
        "RUNNING",
    ]
    assert rows[0].is_base and rows[0].on_front and rows[0].within_budget
    assert rows[6].within_budget is False and not rows[6].on_front
    assert rows[7].reason == f"RuntimeError: {SCRIPT}"
    assert rows[8].reason == "perplexity 900 after pruning"
    assert rows[9].values == {}
    assert rows[1].energy_source == "estimate"
    assert rows[1].recipe == "int8"
    assert rows[5].flags == "cpu_contended" and rows[1].flags == ""


def test_summary_info_names_the_balanced_pick(study):
    info = get_summary_info(study)
    assert info.study_name == "demo"
    assert dict(info.state_counts) == {"COMPLETE": 7, "FAIL": 1, "PRUNED": 1, "RUNNING": 1}
    assert info.n_front == 5
    assert info.choice.startswith("trial 4 ")
    assert info.timing_flagged == (1, ("cpu_contended",))
    assert "1 trial(s): cpu_contended" in render_summary(info)


def test_summary_says_which_runtime_wins_each_phase(tmp_path):
    ov = Recipe(runtime="openvino", bits=8)
    trials = [
        base(100.0, 1.0, 10.0),
        replace(complete(ov, 101.0, 0.4, 4.0), figures={"decode_tokens_per_second": 1000.0}),
        replace(
            complete(Recipe(runtime="openvino", bits=4), 104.0, 0.3, 3.0),
            figures={"prefill_tokens_per_second": 50_000.0, "decode_tokens_per_second": 800.0},
        ),
        # over the budget: no runtime is judged by a trial nobody would ship
        replace(
            complete(Recipe(prune_ratio=0.5), 150.0, 0.2, 2.0),
            figures={"decode_tokens_per_second": 5000.0},
        ),
    ]
    study = optuna.load_study(study_name="demo", storage=make_study_file(tmp_path, trials=trials))
    info = get_summary_info(study)
    assert [p.runtime for p in info.runtime_phases] == ["torch", "openvino"]
    shown = render_summary(info)
    assert "prefill: openvino fastest, 50,000.0 tokens/s (trial 2), 2.50x torch" in shown
    assert (
        "decode: openvino fastest, 1,000.0 tokens/s (trial 1), 2.50x torch&#x27;s 400.0" in shown
    )


def test_summary_without_any_completed_trial(tmp_path):
    url = make_study_file(tmp_path, trials=[failed(Recipe(), "OOM")], base_perplexity=50.0)
    study = optuna.load_study(study_name="demo", storage=url)
    assert get_summary_info(study).choice.startswith("no pick: ")
    page = render_page(study)
    assert "<html" in page and "has no completed trial yet (1 fail)" in page
    assert "plotly" not in page.lower()  # a notice, not 4.9 MB of empty axes


def test_everything_typed_is_escaped(tmp_path):
    evil = '<img src=x onerror="alert(2)">'
    url = make_study_file(tmp_path, study_name=f"night {evil}", model=f"org/{evil}")
    study = optuna.load_study(study_name=f"night {evil}", storage=url)
    page = render_page(study)
    assert SCRIPT not in page and evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in render_table(get_table_info(study))
    assert "night &lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "org/&lt;img" in page
    assert "<script src=" not in page and "<link" not in page  # plotly.js is inlined


def test_cli_writes_the_page(tmp_path, capsys):
    url = make_study_file(tmp_path)
    out = tmp_path / "sub" / "r.html"
    assert main(["report", url, "--out", str(out)]) == 0
    assert out.stat().st_size > 1_000_000  # plotly.js inlined
    assert str(out) in capsys.readouterr().out


def test_cli_json(tmp_path, capsys):
    url = make_study_file(tmp_path, objectives=["perplexity", "joules"])
    out = tmp_path / "r.html"
    assert main(["report", url, "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and doc["command"] == "report"
    assert doc["path"] == str(out) and doc["size_bytes"] == out.stat().st_size
    assert doc["objectives"] == ["perplexity", "joules"]
    assert doc["max_perplexity"] == pytest.approx(120.0)
    assert [t["number"] for t in doc["pareto"]] == [0, 1, 4]
    assert doc["pareto"][1]["values"] == {"perplexity": 101.0, "joules": 6.0}
    assert Recipe.from_params(doc["pareto"][1]["recipe"]) == Recipe(bits=8)
    assert doc["balanced_pick"].startswith("trial 4 ")
