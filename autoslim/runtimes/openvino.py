"""openvino: the built model exported to OpenVINO IR by optimum-intel, its weights compressed by
NNCF, run by OpenVINO's CPU plugin.

``bits`` keeps its meaning: 16 leaves the weights as built, 8 compresses every weight to int8
(asymmetric, per output channel, data-free), 4 to int4 with this runtime's own knobs: symmetric
or asymmetric, the group size, the share of layers in int4 against an int8 backup (``ratio``),
and NNCF's data-aware methods (AWQ, scale estimation, GPTQ) fed with the calibration windows of
the KD split autoslim already uses. ``precision`` is what OpenVINO computes in
(``INFERENCE_PRECISION_HINT``: f32, bf16, f16), so a CPU's native bf16 is used only where the
recipe asks for it. Inference runs on the workload's threads (``INFERENCE_NUM_THREADS``), one
stream, latency hint, and with OpenVINO's model cache off, so nothing is written beside a study.

The artifact is optimum-intel's folder: ``openvino_model.xml`` / ``.bin``, ``config.json``, the
tokenizer, and OpenVINO tokenizer models where ``openvino-tokenizers`` converts them, so
``OVModelForCausalLM.from_pretrained(DIR)`` and ``openvino_genai.LLMPipeline(DIR, "CPU")`` load
it. Installed with ``pip install 'autoslim[openvino]'`` and then ``pip install --no-deps
optimum-intel==2.2.0`` (its unpinned ``torchvision`` requirement would pull a CUDA torch onto a
CPU machine; autoslim never imports torchvision).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob
from autoslim.quiet import muted
from autoslim.runtimes.base import ConvertInput, Runtime, RuntimeModel

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

GROUP_SIZES = (32, 64, 128, -1)
DATA_AWARE = ("none", "awq", "scale_estimation", "awq+scale_estimation", "gptq")
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _int4(chosen: Mapping[str, Any]) -> bool:
    return chosen.get("runtime") == "openvino" and int(chosen.get("bits", 16)) == 4


def ov_config(precision: str, threads: int) -> dict[str, str]:
    """OpenVINO's CPU settings for a recipe's precision at ``threads`` (0: its default)."""
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
        "CACHE_DIR": "",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def logical_parameters(folder: Path) -> int:
    """Parameters of the model ``folder``'s ``config.json`` describes, counted on the meta
    device (no weights read): what a compressed IR holds in fewer bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoslim.compress.size import parameter_count

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return parameter_count(model)


class OpenVINOModel(RuntimeModel):
    runtime = "openvino"

    def __init__(self, model: Any, folder: Path, threads: int, config: dict[str, str]) -> None:
        self.model = model
        self.folder = folder  # the saved IR this model was compiled from
        self.threads = threads
        self.config = config
        self._parameters = logical_parameters(folder)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        logits: torch.Tensor = out.logits.float()
        return logits

    def prefill(self, input_ids: torch.Tensor) -> None:
        import torch

        self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))

    def decode(self, prompt: torch.Tensor, tokens: int) -> None:
        import torch

        if not tokens:
            return
        self.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )

    def transformers_model(self) -> Any:
        """optimum-intel's ``OVModelForCausalLM``: transformers' ``generate`` and forward."""
        return self.model

    def save(self, folder: Path) -> None:
        import shutil

        shutil.copytree(self.folder, folder, dirs_exist_ok=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("openvino_model.bin"))

    def parameters(self) -> int:
        return self._parameters

    def describe_dtype(self) -> str:
        types = {
            op.get_element_type().get_type_name()
            for op in self.model.model.get_ops()
            if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2
        }
        return "+".join(sorted(types))

    def provenance(self) -> dict[str, Any]:
        found = {}
        for package in ("openvino", "optimum-intel", "nncf", "openvino-tokenizers"):
            try:
                found[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                found[package] = "absent"
        return {**super().provenance(), "versions": found, "ov_config": dict(self.config)}


class OpenVINORuntime(Runtime):
    name = "openvino"
    doc = (
        "OpenVINO IR exported by optimum-intel, weights compressed by NNCF (int8; int4 with "
        "group size, ratio and data-aware methods), run by OpenVINO's CPU plugin"
    )
    extra = "openvino"
    modules = ("openvino", "nncf", "optimum.intel")
    devices = ("cpu",)
    install_note = "then pip install --no-deps optimum-intel==2.2.0"
    library_name = "openvino"
    reloaded_with = "`OVModelForCausalLM.from_pretrained`"

    def load_line(self, folder: str) -> str:
        return (
            f"OVModelForCausalLM.from_pretrained({folder!r}) (optimum-intel) or "
            f"openvino_genai.LLMPipeline({folder!r}, 'CPU')"
        )

    def usage(self, folder: str) -> list[str]:
        return [
            "```python",
            "from optimum.intel import OVModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = OVModelForCausalLM.from_pretrained("{folder}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{folder}")',
            'ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))",
            "```",
            "",
            "or with OpenVINO GenAI (`pip install openvino-genai`):",
            "",
            "```python",
            "import openvino_genai",
            "",
            f'pipe = openvino_genai.LLMPipeline("{folder}", "CPU")',
            'print(pipe.generate("def fibonacci(n):", max_new_tokens=32))',
            "```",
        ]

    knobs = (
        Knob(
            "ov_int4_sym",
            bool,
            False,
            "openvino int4: symmetric weights (no zero point) instead of asymmetric",
            search=[False],
            active=_int4,
        ),
        Knob(
            "ov_group_size",
            int,
            64,
            "openvino int4: weights per quantization group (-1: one group per output channel)",
            choices=GROUP_SIZES,
            search=[64],
            active=_int4,
        ),
        Knob(
            "ov_ratio",
            float,
            1.0,
            "openvino int4: share of the weight layers in int4, the rest int8 (NNCF chooses "
            "which by sensitivity)",
            minimum=0.0,
            maximum=1.0,
            search=[1.0, 0.8],
            active=_int4,
        ),
        Knob(
            "ov_data_aware",
            str,
            "none",
            "openvino int4: NNCF's data-aware method on the calibration windows (none: data-free)",
            choices=DATA_AWARE,
            search=["none", "awq+scale_estimation"],
            active=_int4,
        ),
    )

    def describe(self, recipe: Any) -> str:
        if recipe.bits == 16:
            return "openvino"
        if recipe.bits == 8:
            return "openvino int8 weights"
        parts = [f"int4 {'sym' if recipe.ov_int4_sym else 'asym'}"]
        parts.append("per channel" if recipe.ov_group_size == -1 else f"g{recipe.ov_group_size}")
        if recipe.ov_ratio < 1:
            parts.append(f"{recipe.ov_ratio:.0%} int4, rest int8")
        if recipe.ov_data_aware != "none":
            parts.append(recipe.ov_data_aware)
        return "openvino " + " ".join(parts[:2]) + "".join(f", {p}" for p in parts[2:])

    def check(self, recipe: Any, config: Any, device: str) -> None:
        if recipe.bits != 4 or recipe.ov_group_size == -1:
            return
        from autoslim.operators.quantize import final_shapes

        for layer, (inputs, _) in final_shapes(recipe, config).items():
            if inputs % recipe.ov_group_size:
                raise UnsupportedError(
                    f"ov_group_size={recipe.ov_group_size} does not divide the {inputs} inputs "
                    f"of the {layer} (runtime='openvino', bits=4); choose a group size that "
                    "divides it, or -1 (per channel)"
                )

    def _quantization(self, source: ConvertInput, folder: Path) -> Any:
        from optimum.intel import OVWeightQuantizationConfig

        recipe = source.recipe
        if recipe.bits == 16:
            return None
        if recipe.bits == 8:
            return OVWeightQuantizationConfig(bits=8, sym=False)
        method = recipe.ov_data_aware
        options: dict[str, Any] = {}
        if method != "none":
            if source.calibration is None:
                raise UnsupportedError(
                    f"ov_data_aware={method!r} needs calibration windows; none were given"
                )
            texts = [source.tokenizer.decode(row) for row in source.calibration]
            options = {
                "dataset": texts,
                "tokenizer": str(folder),
                "num_samples": len(texts),
                "quant_method": "awq" if "awq" in method else "default",
                "scale_estimation": "scale_estimation" in method,
                "gptq": method == "gptq",
            }
        return OVWeightQuantizationConfig(
            bits=4,
            sym=recipe.ov_int4_sym,
            group_size=recipe.ov_group_size,
            ratio=recipe.ov_ratio,
            **options,
        )

    def convert(self, source: ConvertInput) -> OpenVINOModel:
        from optimum.intel import OVModelForCausalLM

        from autoslim.compress.backends import save

        built = source.workdir / "built"
        ir = source.workdir / "openvino"
        config = ov_config(source.recipe.precision, source.threads)
        with muted():
            save(source.model, source.tokenizer, built)
            model = OVModelForCausalLM.from_pretrained(
                built,
                export=True,
                load_in_8bit=False,
                quantization_config=self._quantization(source, built),
                ov_config=config,
                trust_remote_code=False,
            )
            model.save_pretrained(ir)
            source.tokenizer.save_pretrained(ir)
            _save_openvino_tokenizers(source.tokenizer, ir)
        return OpenVINOModel(model, ir, source.threads, config)

    def load(
        self, folder: Path, *, recipe: Any, threads: int, device: str = "cpu"
    ) -> OpenVINOModel:
        from optimum.intel import OVModelForCausalLM

        config = ov_config(recipe.precision, threads)
        model = OVModelForCausalLM.from_pretrained(folder, ov_config=config)
        return OpenVINOModel(model, folder, threads, config)


def _save_openvino_tokenizers(tokenizer: Any, folder: Path) -> None:
    """The tokenizer as OpenVINO models (what ``openvino_genai.LLMPipeline`` reads), where
    ``openvino-tokenizers`` converts it; a tokenizer it cannot convert is logged, not fatal:
    ``OVModelForCausalLM`` uses the Hugging Face tokenizer saved beside it."""
    try:
        import openvino
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        return
    try:
        encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as e:  # the converter raises its own and third-party errors
        logger.info("openvino-tokenizers cannot convert this tokenizer: %s", e)
        return
    openvino.save_model(encoder, folder / "openvino_tokenizer.xml")
    openvino.save_model(decoder, folder / "openvino_detokenizer.xml")


RUNTIME = OpenVINORuntime()
