from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import optuna
import pytest
import torch

from autoslim.cli import build_parser, main
from autoslim.errors import ConfigError, DataError, ModelError
from autoslim.outputs.card import ExportFacts, measure_flags, model_card
from autoslim.outputs.export import CARD, MANIFEST, Selection, export, select_trial
from autoslim.outputs.weights import PRESETS
from autoslim.recipe import Recipe
from autoslim.testing import save_tiny_model
from autoslim.testing.studies import (
    DEMO_TRIALS,
    FakeTrial,
    failed,
    make_built_study,
    make_study,
    make_study_file,
    pruned,
    running,
)

RECIPES = (
    Recipe(),
    Recipe(bits=8),
    Recipe(bits=4, quant_type="nf4", double_quant=True),
    Recipe(prune_ratio=0.5, drop_heads_per_layer=2),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    """A study of real builds of a tiny qwen3: base (0), int8 (1), NF4 (2), MLP pruned with
    heads dropped (3); then FAIL (4), PRUNED (5) and RUNNING (6) trials."""
    root = tmp_path_factory.mktemp("export")
    model = save_tiny_model("qwen3", root / "base")
    storage = f"sqlite:///{root / 'study.db'}"
    study = make_built_study(
        storage,
        model,
        corpus,
        RECIPES,
        extra_trials=(
            failed(Recipe(bits=4, prune_ratio=0.3), "RuntimeError: out of memory"),
            pruned(Recipe(prune_ratio=0.5), "perplexity 9000 after drop_heads"),
            running(Recipe(kd_steps=10)),
        ),
        max_ppl_increase=0.5,
    )
    return study, storage


def variant(built, folder, name, **kwargs):
    """A one-trial copy of the built study's base trial with some attribute changed."""
    study, _ = built
    storage = f"sqlite:///{folder / 'variant.db'}"
    base = study.trials[0]
    values = dict(zip(("perplexity", "seconds", "joules"), base.values, strict=True))
    values["perplexity"] *= kwargs.pop("perplexity_factor", 1.0)
    attrs = {
        "model": study.user_attrs["model"],
        "corpus_fingerprint": study.user_attrs["corpus_fingerprint"],
        "workload": study.user_attrs["config"]["workload"],
        **kwargs,
    }
    return make_study(
        storage, name, [FakeTrial(Recipe(), is_base=True, **values)], max_ppl_increase=0.5, **attrs
    )


def assert_nothing_written(folder):
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert not folder.exists() and not leftovers


def test_base_trial_round_trip_with_plain_transformers(built, tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoslim.data import tokens
    from autoslim.measure import perplexity
    from autoslim.protocol import PerplexityProtocol

    study, _ = built
    out = tmp_path / "best"
    result = export(study, out, Selection(trial=0))
    assert result.trial == 0 and result.recipe.is_identity()
    assert abs(result.relative_difference) < 1e-4
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", MANIFEST} <= names
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["study"] == "built" and manifest["trial"] == 0
    assert manifest["corpus"]["fingerprint"] == corpus.fingerprint
    assert manifest["stored_measurement"]["perplexity"] == study.trials[0].values[0]
    assert manifest["verification"]["perplexity"] == pytest.approx(result.measured_perplexity)
    assert {"torch", "transformers", "optuna", "autoslim"} <= set(manifest["versions"])
    assert set(manifest["files"]) == names - {MANIFEST}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    protocol = PerplexityProtocol(window=128, max_windows=8, batch_size=8)
    ppl = perplexity(model, tokens(tokenizer, corpus, "eval"), protocol).perplexity
    assert ppl == pytest.approx(study.trials[0].values[0], rel=1e-4)


@pytest.mark.parametrize("number", [1, 2], ids=["int8", "nf4"])
def test_quantized_trial_reloads_with_its_quantization_config(built, tmp_path, number):
    study, _ = built
    result = export(study, tmp_path / "q", Selection(trial=number))
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert abs(result.relative_difference) <= 0.01


def test_export_re_times_before_it_chooses_unless_told_not_to_or_given_a_trial():
    parser = build_parser()
    assert parser.parse_args(["export", "s.toml", "--out", "x"]).retime is True
    assert parser.parse_args(["export", "s.toml", "--out", "x", "--no-retime"]).retime is False
    assert parser.parse_args(["pick", "s.toml"]).retime is False


def test_cli_exports_the_pick(built, tmp_path, capsys):
    _, storage = built
    out = tmp_path / "picked"
    assert (
        main(
            [
                "export",
                storage,
                "--study-name",
                "built",
                "--prefer",
                "time",
                "--no-retime",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["schema_version"] == 1 and summary["command"] == "export"
    assert summary["study"] == "built"
    assert Recipe.from_params(summary["recipe"]) == RECIPES[summary["trial"]]
    # Made-up seconds fall with the trial number: the last candidate within the budget wins.
    study, _ = built
    budget = study.user_attrs["base_perplexity"] * 1.5
    fastest = max(t.number for t in study.trials[:4] if t.values[0] <= budget)
    assert summary["trial"] == fastest
    assert summary["chosen_because"].startswith(f"trial {fastest} ")
    assert (out / MANIFEST).is_file()


def test_pruned_trial_reloads_with_its_smaller_shapes(built, tmp_path):
    from transformers import AutoModelForCausalLM

    study, _ = built
    result = export(study, tmp_path / "p", Selection(trial=3))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert model.config.intermediate_size < 256 and model.config.num_attention_heads == 2
    assert abs(result.relative_difference) <= 1e-4


def test_force_replaces_only_a_previous_export(built, tmp_path):
    study, _ = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(study, out, Selection(trial=0))
    with pytest.raises(ConfigError, match="is not a previous export"):
        export(study, out, Selection(trial=0), force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    previous = tmp_path / "previous"
    export(study, previous, Selection(trial=0))
    (previous / "notes.txt").write_text("mine")
    (previous / "README.md").write_text("my card")
    with pytest.raises(ConfigError, match="README.md changed since the previous export wrote"):
        export(study, previous, Selection(trial=0), force=True)
    (previous / "README.md").unlink()
    again = export(study, previous, Selection(trial=0), force=True)
    assert again.kept == ("notes.txt",) and (previous / "notes.txt").read_text() == "mine"
    assert (previous / MANIFEST).is_file() and (previous / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "previous"]


@pytest.mark.parametrize(
    ("number", "needle"),
    [
        (4, "--trial 4 is FAIL (RuntimeError: out of memory)"),
        (5, "--trial 5 is PRUNED (perplexity 9000 after drop_heads)"),
        (6, "--trial 6 is RUNNING, so there is nothing to export: wait"),
        (42, "has no such trial (trials: 0..6)"),
    ],
)
def test_unexportable_trials_are_refused(built, tmp_path, number, needle):
    study, _ = built
    out = tmp_path / "new" / "out"
    with pytest.raises(ConfigError) as info:
        export(study, out, Selection(trial=number))
    assert needle in str(info.value)
    assert not (tmp_path / "new").exists()


def test_no_trial_within_budget_names_the_closest(tmp_path):
    study = optuna.load_study(
        study_name="demo", storage=make_study_file(tmp_path, base_perplexity=50.0)
    )
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="the closest is trial 0 at perplexity 100"):
        export(study, out, Selection(weights=PRESETS["balanced"]))
    assert_nothing_written(out)


@pytest.mark.parametrize("objectives", [["seconds", "perplexity"], ["perplexity", "joules"]])
def test_the_trial_to_export_is_read_by_objective_name(tmp_path, objectives):
    study = optuna.load_study(
        study_name="demo", storage=make_study_file(tmp_path, objectives=objectives)
    )
    picked, reason = select_trial(study)
    winner = 3 if "seconds" in objectives else 4  # see tests/test_pick.py
    assert picked.number == winner and reason.startswith(f"trial {winner} ")
    assert picked.perplexity == DEMO_TRIALS[winner].perplexity
    chosen, reason = select_trial(study, Selection(trial=1))
    assert chosen.values["perplexity"] == 101.0 and reason == "--trial 1"


def test_trial_and_choice_together_are_refused(built, tmp_path):
    study, _ = built
    with pytest.raises(ConfigError, match="not both"):
        export(study, tmp_path / "out", Selection(trial=0, weights=PRESETS["time"]))


def test_other_corpus_is_refused(built, tmp_path):
    study = variant(built, tmp_path, "other-corpus", corpus_fingerprint="0000000000000000")
    out = tmp_path / "sub" / "out"
    with pytest.raises(DataError, match="was measured on 0000000000000000"):
        export(study, out, Selection(trial=0))
    assert not out.parent.exists()


def test_perplexity_mismatch_fails_and_leaves_nothing(built, tmp_path):
    study = variant(built, tmp_path, "tampered", perplexity_factor=1.05)
    out = tmp_path / "deep" / "out"
    with pytest.raises(ModelError, match=r"-4.\d\d% from the stored"):
        export(study, out, Selection(trial=0))
    assert not (tmp_path / "deep").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["variant.db"]


def test_cli_error_is_one_line(built, tmp_path, capsys):
    _, storage = built
    out = tmp_path / "x"
    assert (
        main(["export", storage, "--study-name", "built", "--trial", "4", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoslim export: error: --trial 4 is FAIL")
    assert len(err.splitlines()) == 1


def test_exported_weights_equal_the_base(built, tmp_path):
    from safetensors.torch import load_file

    study, _ = built
    export(study, tmp_path / "b", Selection(trial=0))
    base = load_file(f"{study.user_attrs['model']}/model.safetensors")
    exported = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert base.keys() == exported.keys()
    assert all(torch.equal(base[k], exported[k]) for k in base)


@pytest.mark.parametrize("number", [0, 1], ids=["base", "int8"])
def test_export_is_hugging_face_native(built, tmp_path, number):
    from huggingface_hub import ModelCard
    from transformers import pipeline

    study, _ = built
    out = tmp_path / "card"
    export(study, out, Selection(trial=number))
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():  # safetensors' own 0600 included
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name

    card = ModelCard.load(out / CARD)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # a local folder is no hub id
    assert card.data.autoslim["trial"] == number
    assert Recipe.from_params(card.data.autoslim["recipe"]) == RECIPES[number]
    stored = study.trials[number].values[0]
    assert f"| perplexity (`perplexity`) | {stored:.4f} |" in card.text
    assert "energy source: `" in card.text and "autoslim export STUDY" in card.text
    assert ("MatMul8bitLt" in card.text) == (RECIPES[number].bits == 8)

    generate = pipeline("text-generation", model=str(out))
    text = generate("def f(x):", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("def f(x):") and len(text) > len("def f(x):")


def test_card_names_a_hub_base_model_and_the_flags_that_rebuild_the_recipe():
    recipe = Recipe(bits=4, quant_type="fp4", double_quant=False, prune_ratio=0.25)
    card = model_card(
        ExportFacts(
            model="Qwen/Qwen3-0.6B",
            study="s",
            trial=3,
            recipe=recipe,
            reason="--trial 3",
            measurement={"perplexity": 12.0, "energy_source": "rapl", "size_bytes": 1000.0},
            verification={
                "perplexity": 12.0,
                "stored_perplexity": 12.0,
                "relative_difference": 0.0,
                "tolerance": 0.01,
            },
            workload="w",
            corpus={"name": "stdlib", "fingerprint": "f"},
            seed=0,
            out="me/model",
        )
    )
    assert card.data.base_model == "Qwen/Qwen3-0.6B"
    assert "| size of the weights (`size_bytes`) | 1,000 bytes |" in card.text
    flags = measure_flags(recipe)
    assert "--no-double-quant" in flags and "--drop-layers" not in flags  # defaults left out
    assert recipe == _recipe_from_flags(flags)


def _recipe_from_flags(flags):
    import argparse

    from autoslim.cli._common import add_recipe_args, recipe_from_args

    parser = argparse.ArgumentParser()
    add_recipe_args(parser)
    return recipe_from_args(parser.parse_args(flags))


def test_push_to_an_unreachable_hub_is_one_line_and_keeps_the_export(built, tmp_path, capsys):
    # HF_HUB_OFFLINE=1 (tests/conftest.py): no hub is reachable from the test machines, so a
    # real upload is not tested here; the refusal is.
    _, storage = built
    out = tmp_path / "pushed"
    argv = ["export", storage, "--study-name", "built", "--trial", "0", "--out", str(out)]
    assert main([*argv, "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoslim export: error: --push-to-hub me/tiny:")
    assert len(err.splitlines()) == 1 and str(out) in err
    assert (out / CARD).is_file() and (out / MANIFEST).is_file()


class _StubHub(BaseHTTPRequestHandler):
    """The four Hub endpoints ``create_repo`` + ``upload_folder`` call, files kept in memory
    (every file sent inline: the stub answers ``uploadMode: regular`` to the pre-upload)."""

    received: ClassVar[dict[str, bytes]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, obj: object, code: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"error": "not in this stub"}, 404)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        host = f"http://{self.headers['Host']}"
        if self.path.endswith("/api/repos/create"):
            self._send({"url": f"{host}/me/tiny", "name": "me/tiny"})
        elif self.path.endswith("/api/validate-yaml"):
            self._send({"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(data)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]
            self._send({"files": modes})
        elif "/commit/" in self.path:
            for line in data.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.received[value["path"]] = base64.b64decode(value["content"])
            self._send({"commitUrl": f"{host}/me/tiny/commit/1", "commitOid": "1" * 40})
        else:
            self._send({"error": "not in this stub"}, 404)


def test_push_to_hub_uploads_every_file_of_the_export(built, tmp_path):
    _, storage = built
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "HF_HOME": str(tmp_path / "hf"),  # no cached login of this machine
        "HF_TOKEN": "hf_stub",
    }
    out = tmp_path / "pushed"
    argv = ["export", storage, "--study-name", "built", "--trial", "0", "--out", str(out)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "autoslim", *argv, "--push-to-hub", "me/tiny", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.shutdown()
        thread.join()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["pushed_to"].endswith("/me/tiny/commit/1")
    assert "hf_stub" not in done.stdout + done.stderr
    sent = _StubHub.received
    assert set(sent) == {p.name for p in out.iterdir()}
    assert all(sent[name] == (out / name).read_bytes() for name in sent)
    assert 'model="me/tiny"' in sent[CARD].decode()  # the card loads it from the Hub
