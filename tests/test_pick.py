from __future__ import annotations

import json

import optuna
import pytest

from autoslim.cli import main
from autoslim.errors import ConfigError
from autoslim.outputs.pick import rank
from autoslim.outputs.weights import PRESETS, Weights, parse_weights, weights_from
from autoslim.recipe import Recipe
from autoslim.testing.studies import DEMO_TRIALS, base, complete, make_study_file

# DEMO_TRIALS (base 100, budget +20 % = 120), by hand:
#   trial  ppl   s     J     Pareto within 120?
#   0      100   1.00  10    yes (base)
#   1      101   0.90   6    yes
#   2      104   0.60   8    yes
#   3      110   0.50   9    yes
#   4      118   0.55   5    yes
#   5      106   0.70   8.5  no: dominated by 2
#   6      150   0.30   3    no: over budget (though on the unconstrained front)
# With --max-ppl-increase 0.15 (limit 115) the candidates are 0-3, normalised as the relative
# excess over the best candidate:
#   seconds / 0.5 - 1: 1, 0.8, 0.2, 0       joules / 6 - 1: 2/3, 0, 1/3, 1/2
#   time 0.8/0.2:     0.9333, 0.64, 0.2267, 0.1   → 3
#   energy 0.2/0.8:   0.7333, 0.16, 0.3067, 0.4   → 1
#   balanced 0.5/0.5: 0.8333, 0.40, 0.2667, 0.25  → 3


@pytest.fixture
def study(tmp_path):
    url = make_study_file(tmp_path)
    return optuna.load_study(study_name="demo", storage=url)


@pytest.mark.parametrize(
    ("prefer", "order", "scores"),
    [
        ("time", [3, 2, 1, 0], [0.1, 0.68 / 3, 0.64, 2.8 / 3]),
        ("energy", [1, 2, 3, 0], [0.16, 0.92 / 3, 0.4, 2.2 / 3]),
        ("balanced", [3, 2, 1, 0], [0.25, 0.8 / 3, 0.4, 2.5 / 3]),
    ],
)
def test_presets_rank_by_hand_computed_scores(study, prefer, order, scores):
    choice = rank(study, PRESETS[prefer], max_ppl_increase=0.15)
    assert [c.number for c in choice.ranking] == order
    assert [c.score for c in choice.ranking] == pytest.approx(scores)
    assert choice.budget.max_perplexity == pytest.approx(115.0)
    assert f"trial {order[0]} " in choice.reason


def test_study_budget_excludes_dominated_and_over_budget_trials(study):
    choice = rank(study, PRESETS["balanced"])
    assert sorted(c.number for c in choice.ranking) == [0, 1, 2, 3, 4]
    # relative excess: seconds 0.55 / 0.5 - 1 = 0.1, joules 5 / 5 - 1 = 0: 0.5*0.1 + 0.5*0
    assert choice.best.number == 4
    assert choice.best.score == pytest.approx(0.05)
    assert choice.best.normalised == pytest.approx({"seconds": 0.1, "joules": 0.0})
    assert choice.best.recipe == Recipe(bits=4, prune_ratio=0.2)


def test_explicit_weights_are_normalised():
    assert parse_weights("time=7,energy=3") == Weights(time=0.7, energy=0.3)
    assert parse_weights("energy=1") == Weights(time=0.0, energy=1.0)
    assert weights_from(None, None) == PRESETS["balanced"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("speed=1", "'speed=1'"),
        ("time=fast", "'fast'"),
        ("time=0,energy=0", "at least one weight"),
        ("time=-1", "time=-1"),
        ("", "empty"),
    ],
)
def test_bad_weights_name_the_value(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_weights(text)


def test_equal_values_normalise_to_zero_and_ties_go_to_lower_perplexity(tmp_path):
    url = make_study_file(
        tmp_path,
        trials=[base(100.0, 1.0, 10.0), complete(Recipe(bits=8), 105.0, 1.0, 10.0)],
    )
    choice = rank(optuna.load_study(study_name="demo", storage=url), PRESETS["time"])
    # Trial 1 is dominated (same seconds and joules, higher perplexity): the base alone.
    assert [c.number for c in choice.ranking] == [0]
    assert choice.best.score == 0.0
    assert choice.best.is_base


@pytest.mark.parametrize(
    ("slower", "winner"),
    [
        # 1 % slower and hungrier: a score gap of 0.01, inside the noise allowance of
        # 0.5 x 1 % (seconds CV) + 0.5 x 2 % (joules CV) = 0.015, so lower perplexity wins.
        (1.01, 2),
        # 5 % worse: a real difference, the lower score wins.
        (1.05, 1),
    ],
)
def test_scores_within_measurement_noise_go_to_the_lower_perplexity(tmp_path, slower, winner):
    url = make_study_file(
        tmp_path,
        trials=[
            base(100.0, 1.0, 10.0),
            complete(Recipe(bits=4), 115.0, 0.5, 5.0),
            complete(Recipe(bits=8), 105.0, 0.5 * slower, 5.0 * slower),
        ],
    )
    choice = rank(optuna.load_study(study_name="demo", storage=url), PRESETS["balanced"])
    assert choice.best.number == winner
    assert [c.number for c in choice.ranking] == [winner, 3 - winner, 0]
    assert choice.best.cv == {"seconds": 0.01, "joules": 0.02}
    if winner == 2:
        assert "within measurement noise of the lowest" in choice.reason
        assert "trial 1's 0.000, noise 0.015" in choice.reason
    else:
        assert "has the lowest weighted score 0.000" in choice.reason
        assert "within measurement noise" not in choice.reason


def test_no_trial_within_budget_names_the_closest(tmp_path):
    url = make_study_file(
        tmp_path,
        trials=[complete(Recipe(bits=4), 130.0, 0.5, 5.0), complete(Recipe(bits=8), 125.0, 1, 9)],
        base_perplexity=100.0,
    )
    with pytest.raises(ConfigError, match=r"closest is trial 1 at perplexity 125 \(\+25.0%"):
        rank(optuna.load_study(study_name="demo", storage=url), PRESETS["balanced"])


def test_budget_can_only_be_tightened(study):
    with pytest.raises(ConfigError, match="looser than the study's 0.2"):
        rank(study, PRESETS["balanced"], max_ppl_increase=0.5)
    with pytest.raises(ConfigError, match="must be >= 0"):
        rank(study, PRESETS["balanced"], max_ppl_increase=-0.1)


@pytest.mark.parametrize(
    ("objectives", "order", "scores"),
    [
        # (perplexity, joules) within 120: 2, 3 and 5 are dominated by 1 (101, 6 J); only
        # energy is weighed: joules / 5 - 1 = 1, 0.2, 0 for trials 0, 1, 4.
        (["perplexity", "joules"], [4, 1, 0], [0.0, 0.2, 1.0]),
        # (seconds, perplexity): 4 is dominated by 3, 5 by 2; only time is weighed:
        # seconds / 0.5 - 1 = 0, 0.2, 0.8, 1 for trials 3, 2, 1, 0.
        (["seconds", "perplexity"], [3, 2, 1, 0], [0.0, 0.2, 0.8, 1.0]),
        # neither seconds nor joules: ranked by perplexity (1 at 5 MB dominates 2-5).
        (["perplexity", "size_bytes"], [0, 1], [0.0, 0.0]),
    ],
)
def test_objectives_are_read_by_name(tmp_path, objectives, order, scores):
    url = make_study_file(tmp_path, objectives=objectives)
    choice = rank(optuna.load_study(study_name="demo", storage=url), PRESETS["balanced"])
    assert [c.number for c in choice.ranking] == order
    assert [c.score for c in choice.ranking] == pytest.approx(scores)
    assert choice.objectives == tuple(objectives)
    best = DEMO_TRIALS[order[0]]
    assert choice.best.values["perplexity"] == best.perplexity
    assert set(choice.best.values) == set(objectives)
    assert choice.reason.startswith(f"trial {order[0]} ")
    if "size_bytes" in objectives:
        assert "minimises neither seconds nor joules" in choice.reason
        assert "within measurement noise" not in choice.reason


def test_weights_on_objectives_the_study_lacks_are_refused(tmp_path):
    url = make_study_file(tmp_path, objectives=["perplexity", "joules"])
    study = optuna.load_study(study_name="demo", storage=url)
    with pytest.raises(ConfigError, match=r"weigh only seconds, .*perplexity, joules.*energy"):
        rank(study, parse_weights("time=1"))


def test_cli_json_and_table(tmp_path, capsys):
    url = make_study_file(tmp_path)
    assert main(["pick", url, "--prefer", "energy", "--max-ppl-increase", "0.15", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema_version"] == 1 and out["command"] == "pick"
    assert out["objectives"] == ["perplexity", "seconds", "joules"]
    assert out["best_trial"] == 1
    assert [r["trial"] for r in out["ranking"]] == [1, 2, 3, 0]
    assert out["ranking"][0]["values"] == {"perplexity": 101.0, "seconds": 0.9, "joules": 6.0}
    assert out["ranking"][0]["recipe"] == Recipe(bits=8).to_params()
    assert out["weights"] == {"time": 0.2, "energy": 0.8}

    assert main(["pick", str(tmp_path / "demo.db"), "--weights", "time=1"]) == 0
    out_text = capsys.readouterr().out
    assert "chosen: trial 3 " in out_text
    assert "0 (base)" in out_text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prefer", "time", "--weights", "time=1"], "not both"),
        (["--study-name", "nope"], "study 'nope' is not in"),
        (["--max-ppl-increase", "0.01"], "closest is trial 0"),
    ],
)
def test_cli_errors_exit_2(tmp_path, capsys, args, needle):
    url = make_study_file(tmp_path, base_perplexity=90.0)
    assert main(["pick", url, *args]) == 2
    assert needle in capsys.readouterr().err


def test_cli_reads_the_study_file(tmp_path, capsys):
    url = make_study_file(tmp_path)
    toml = tmp_path / "night.toml"
    toml.write_text(f'[study]\nname = "demo"\nstorage = "{url}"\n')
    assert main(["pick", str(toml), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["study"] == "demo"


def test_cli_missing_sqlite_file_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["pick", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()
