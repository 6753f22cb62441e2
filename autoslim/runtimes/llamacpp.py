"""llamacpp: the built model written as GGUF, quantized by llama.cpp's own quantizer, run by
llama.cpp (through llama-cpp-python) on the CPU.

Conversion writes the built model, as the operators left it (layers dropped, MLP pruned, heads
dropped: the shapes are read from its tensors, per layer), with the ``gguf`` package's
``GGUFWriter``: the architecture's metadata, every tensor under llama.cpp's name (in float32,
so nothing is rounded before the quantizer; Llama's and Mistral's q/k rows permuted to the
pairs llama.cpp rotates, GPT-2's ``Conv1D`` weights transposed), and the tokenizer, copied
from the GGUF file the base model came from where there is one, else converted from the
Hugging Face tokenizer (byte-level BPE). llama.cpp's ``llama_model_quantize`` then writes
the ``gguf_type`` asked for, with llama.cpp's own per-tensor choices (a ``_K_M`` type keeps
some tensors wider; a weight whose input width is not a multiple of the type's block falls
back to another type, which ``describe_dtype`` shows). With ``imatrix`` the quantizer is given
an importance matrix: per weight, the mean squared input of each column over the calibration
windows, the statistic ``llama-imatrix`` collects (with ``--process-output``), computed here on
the built model in PyTorch.

Measured on token ids: ``logits`` evaluates exactly the Hugging Face tokenizer's ids (each row
from an empty KV cache), so a pre-tokenizer difference cannot skew a perplexity; a sample of
text is also tokenized by both at conversion, and whether they agree is in ``provenance``.
``prefill`` evaluates every window (all logits, as the other runtimes' forward passes do) and
``decode`` is greedy through llama.cpp's KV cache, on the workload's threads.

The artifact is ``model.gguf`` with an Ollama ``Modelfile`` naming it (and the Hugging Face
tokenizer files), which ``llama-cli -m``, ``ollama create -f`` and llama-cpp-python load.

Installed with ``pip install 'autoslim[llamacpp]'``, which builds llama.cpp from source (10-15
min on 2 cores); on a VM whose native build faults (AMX tile instructions), build with
``CMAKE_ARGS="-DGGML_NATIVE=OFF"`` plus the instruction sets the CPU has (``run.sh`` derives
them). CPU only: a CUDA build of llama-cpp-python would run these files too, but autoslim
neither builds nor tests one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from autoslim.errors import UnsupportedError
from autoslim.knobs import Knob
from autoslim.runtimes.base import ConvertInput, Runtime, RuntimeModel

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NAME = "llamacpp"
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
FACTS_FILE = "llamacpp.json"
# The gguf package's LlamaFileType member of each gguf_type (llama.cpp's LLAMA_FTYPE).
GGUF_TYPES: dict[str, str] = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q6_K": "MOSTLY_Q6_K",
    "Q5_K_M": "MOSTLY_Q5_K_M",
    "Q5_1": "MOSTLY_Q5_1",
    "Q5_0": "MOSTLY_Q5_0",
    "Q4_K_M": "MOSTLY_Q4_K_M",
    "Q4_1": "MOSTLY_Q4_1",
    "Q4_0": "MOSTLY_Q4_0",
    "IQ4_NL": "MOSTLY_IQ4_NL",
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# Types whose quantizer ignores an importance matrix.
IMATRIX_BLIND = (*FLOAT_TYPES, "Q8_0")
# The type of about ``bits`` bits a weight: what the other runtimes' ``bits`` stands for here.
WEIGHT_BITS = {16: "F16", 8: "Q8_0", 4: "Q4_K_M"}
# What llama.cpp stores a weight as when its input width is not a multiple of the k-quant's
# 256-wide block (llama-quant.cpp, tensor_type_fallback); other types use 32-wide blocks.
K_FALLBACK = {"Q6_K": "Q8_0", "Q5_K_M": "Q5_1", "Q4_K_M": "Q5_0"}
K_BLOCK = 256
BLOCK = 32
# Hugging Face model_type -> llama.cpp architecture; the llama architecture's rope rotates
# interleaved pairs, so its q/k rows are permuted from Hugging Face's half-split layout.
ARCHITECTURES = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
# GPT-2's activations llama.cpp's gpt2 architecture computes (GELU, tanh approximation).
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
PERMUTED_QK = ("llama",)
# Families whose llama.cpp architecture sizes the query and output projections by the hidden
# size (llama.cpp's models/qwen2.cpp), so their query heads cannot be dropped.
FULL_WIDTH_QUERIES = ("qwen2",)
# tokenizer.json pre-tokenizer regexes -> llama.cpp's name for them (tokenizer.ggml.pre).
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}
TOKENIZER_SAMPLE = (
    "def mean(values: list[float]) -> float:\n    return sum(values) / len(values)  # 3.14\n"
    "Naïve café, 東京, emoji 🙂 and  two  spaces.\n"
)
INSTALL = (
    "pip install 'autoslim[llamacpp]' (llama.cpp builds from source, 10-15 min; where the "
    'native build faults, CMAKE_ARGS="-DGGML_NATIVE=OFF")'
)
# llama.cpp's CPU features (llama_print_system_info) -> the /proc/cpuinfo flag each needs.
CPU_FEATURES = {
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


def _runs_here(chosen: Mapping[str, Any]) -> bool:
    return chosen.get("runtime") == NAME


def _uses_imatrix(chosen: Mapping[str, Any]) -> bool:
    return _runs_here(chosen) and chosen.get("gguf_type") not in IMATRIX_BLIND


# ggml's log levels (ggml.h) -> Python's; CONT continues the previous message's level.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.DEBUG, 4: logging.WARNING}
_log_state: dict[str, Any] = {}


def _llama_cpp() -> Any:
    """The llama_cpp module, its log routed to this module's logger on first use (llama.cpp's
    own warnings, such as a quantization's fallbacks, at debug level; its errors as warnings)."""
    import ctypes

    import llama_cpp

    if "callback" not in _log_state:

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def route(level: int, text: bytes, _user: Any) -> None:
            if level != 5:
                _log_state["level"] = _LOG_LEVELS.get(level, logging.DEBUG)
            line = text.decode(errors="replace").rstrip()
            if line:
                logger.log(_log_state.get("level", logging.DEBUG), "llama.cpp: %s", line)

        _log_state["callback"] = route  # kept alive: llama.cpp holds only the pointer
        llama_cpp.llama_log_set(route, ctypes.c_void_p(0))
    return llama_cpp


def system_info() -> str:
    """llama.cpp's build features (``CPU : SSE3 = 1 | AVX = 1 | ...``)."""
    info: bytes = _llama_cpp().llama_print_system_info()
    return info.decode().strip()


def missing_cpu_features(info: str, flags: frozenset[str]) -> list[str]:
    """The instruction sets llama.cpp was built for (``info``) that a CPU of ``flags`` lacks."""
    built = set()
    for part in info.split("|"):
        name, _, value = part.rpartition("=")
        if value.strip() == "1":
            built.add(name.split(":")[-1].strip())
    return sorted(f for f in built if f in CPU_FEATURES and CPU_FEATURES[f] not in flags)


class LlamaCppModel(RuntimeModel):
    """A GGUF file run by llama.cpp. The llama.cpp context is opened on first use, with a
    context length that grows (reopening it) to the longest input asked for."""

    runtime = NAME

    def __init__(
        self,
        path: Path,
        threads: int,
        facts: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.path = path
        self.threads = threads
        self.facts = dict(facts or {})  # what conversion found: the type asked, tokenizer check
        self.tokenizer = tokenizer
        self._llama: Any = None
        self._n_ctx = 0

    def _context(self, tokens: int) -> Any:
        """The llama.cpp model with a context of at least ``tokens`` tokens."""
        if self._llama is None or tokens > self._n_ctx:
            self.close()
            n_ctx = max(512, 1 << math.ceil(math.log2(max(tokens, 1))))
            threads = self.threads or None
            self._llama = _llama_cpp().Llama(
                str(self.path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, 512),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                verbose=False,
            )
            self._n_ctx = n_ctx
        return self._llama

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        llama = self._context(int(input_ids.shape[-1]))
        rows = []
        for row in input_ids.tolist():
            llama.reset()
            llama.eval(row)
            rows.append(torch.from_numpy(np.array(llama.scores[: len(row)], dtype=np.float32)))
        return torch.stack(rows)

    def prefill(self, input_ids: torch.Tensor) -> None:
        llama = self._context(int(input_ids.shape[-1]))
        for row in input_ids.tolist():
            llama.reset()
            llama.eval(row)

    def decode(self, prompt: torch.Tensor, tokens: int) -> None:
        if tokens:
            self.generate(prompt[0].tolist(), tokens)

    def generate(self, prompt: list[int], tokens: int) -> list[int]:
        """The ``tokens`` token ids greedy decoding picks after ``prompt``: one evaluation of
        the prompt, then one per picked token but the last, through llama.cpp's KV cache."""
        import numpy as np

        llama = self._context(len(prompt) + tokens)
        llama.reset()
        llama.eval(prompt)
        picked = [int(np.argmax(llama.scores[llama.n_tokens - 1]))]
        while len(picked) < tokens:
            llama.eval(picked[-1:])
            picked.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
        return picked

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, folder / GGUF_FILE)
        (folder / MODELFILE).write_text(f"FROM ./{GGUF_FILE}\n")
        (folder / FACTS_FILE).write_text(json.dumps(self.facts, indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def _tensors(self) -> list[tuple[str, int, int]]:
        """(type, elements, bytes) of every tensor in the file."""
        import gguf

        reader = gguf.GGUFReader(str(self.path))
        return [(t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors]

    def parameters(self) -> int:
        return sum(elements for _, elements, _ in self._tensors())

    def tensor_types(self) -> dict[str, int]:
        """Tensor count per storage type, the type holding the most bytes first."""
        size: Counter[str] = Counter()
        count: Counter[str] = Counter()
        for kind, _, nbytes in self._tensors():
            size[kind] += nbytes
            count[kind] += 1
        return {kind: count[kind] for kind, _ in size.most_common()}

    def describe_dtype(self) -> str:
        return "+".join(self.tensor_types())

    def provenance(self) -> dict[str, Any]:
        return {
            **super().provenance(),
            "llama_cpp_python": metadata.version("llama-cpp-python"),
            "system_info": system_info(),
            "tensor_types": self.tensor_types(),
            **self.facts,
        }

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None
            self._n_ctx = 0


class LlamaCppRuntime(Runtime):
    name = NAME
    doc = (
        "llama.cpp (llama-cpp-python): the built model written as GGUF, quantized by "
        "llama.cpp's own quantizer to gguf_type (with an importance matrix from the "
        "calibration windows where imatrix is set), run on the CPU; exports a .gguf file and "
        "an Ollama Modelfile"
    )
    extra = "llamacpp"
    modules = ("llama_cpp", "gguf")
    devices = ("cpu",)
    unsupported_families: ClassVar[Mapping[str, str]] = {
        "opt": "llama.cpp has no OPT architecture",
    }
    install_note = (
        'it builds llama.cpp from source (10-15 min); where that build faults, set CMAKE_ARGS="'
        '-DGGML_NATIVE=OFF" before pip install'
    )
    library_name = "gguf"
    reloaded_with = "llama-cpp-python's `Llama`"
    knobs = (
        Knob(
            "gguf_type",
            str,
            "F16",
            "llamacpp: the GGUF type llama.cpp's quantizer writes (a _K_M type keeps some "
            "tensors wider; a weight whose input width is not a multiple of 256 falls back "
            "from a k-quant to a 32-wide type, which the trial's dtype and provenance show)",
            choices=tuple(GGUF_TYPES),
            search=["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "IQ4_NL"],
            active=_runs_here,
        ),
        Knob(
            "imatrix",
            bool,
            False,
            "llamacpp: quantize with an importance matrix (the mean squared input of each "
            "weight column over the calibration windows, as llama-imatrix collects it)",
            search=[False, True],
            active=_uses_imatrix,
        ),
    )

    def usage(self, folder: str) -> list[str]:
        return [
            "```sh",
            f'llama-cli -m {folder}/{GGUF_FILE} -p "def fibonacci(n):" -n 32',
            f"ollama create my-model -f {folder}/{MODELFILE} && ollama run my-model",
            "```",
            "",
            "or from Python (`pip install llama-cpp-python`):",
            "",
            "```python",
            "from llama_cpp import Llama",
            "",
            f'llm = Llama("{folder}/{GGUF_FILE}")',
            'print(llm("def fibonacci(n):", max_tokens=32)["choices"][0]["text"])',
            "```",
        ]

    def card_notes(self, provenance: Mapping[str, Any]) -> list[str]:
        notes = []
        check = provenance.get("tokenizer_check") or {}
        if check and not check.get("matches_hf", True):
            notes.append(
                f"llama.cpp's own tokenizer splits text differently from the Hugging Face "
                f"tokenizer (a {check.get('sample_tokens')}-token sample first differs at "
                f"token {check.get('first_difference')}): the figures here were measured on "
                "the Hugging Face tokenizer's ids; prompts tokenized by llama.cpp may score "
                "differently."
            )
        if provenance.get("fallback"):
            notes.append(f"Tensor types: {provenance['fallback']}.")
        return notes

    def with_weight_bits(self, recipe: Any, bits: int) -> Any:
        return recipe.replace(gguf_type=WEIGHT_BITS[bits])

    def describe(self, recipe: Any) -> str:
        imatrix = " imatrix" if recipe.imatrix and recipe.gguf_type not in IMATRIX_BLIND else ""
        return f"llamacpp {recipe.gguf_type}{imatrix}"

    def check(self, recipe: Any, config: Any, device: str) -> None:
        from autoslim.operators.quantize import final_shapes
        from autoslim.precisions import proc_cpu_flags

        if recipe.bits != 16:
            raise UnsupportedError(
                f"bits={recipe.bits} under runtime={NAME!r}: llama.cpp's weight format is "
                "gguf_type (Q8_0 for 8 bits; Q4_K_M, Q4_0, IQ4_NL ... for 4); leave bits at 16"
            )
        family = str(config.model_type)
        if family not in ARCHITECTURES:
            raise UnsupportedError(
                f"runtime={NAME!r} cannot convert {family} models: autoslim writes GGUF for "
                f"{', '.join(sorted(ARCHITECTURES))}"
            )
        activation = getattr(config, "activation_function", GPT2_ACTIVATIONS[0])
        if family == "gpt2" and activation not in GPT2_ACTIVATIONS:
            raise UnsupportedError(
                f"runtime={NAME!r} cannot convert a gpt2 model with activation_function="
                f"{activation!r} (llama.cpp's gpt2 computes {GPT2_ACTIVATIONS[0]})"
            )
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type != "default":
            raise UnsupportedError(
                f"runtime={NAME!r} cannot convert a model with rope_type={rope_type!r} "
                "(autoslim writes GGUF with plain RoPE only); use another runtime"
            )
        try:
            info = system_info()
        except (OSError, RuntimeError) as e:
            raise UnsupportedError(
                f"runtime={NAME!r}: llama_cpp does not load ({str(e).splitlines()[0]}); "
                f"reinstall it: {INSTALL}"
            ) from e
        lacking = missing_cpu_features(info, proc_cpu_flags())
        if lacking:
            raise UnsupportedError(
                f"runtime={NAME!r}: llama-cpp-python was built for {', '.join(lacking)}, which "
                "this CPU lacks (it would stop on an illegal instruction); rebuild it here: "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir '
                "llama-cpp-python"
            )
        shapes = final_shapes(recipe, config)
        if family in FULL_WIDTH_QUERIES and shapes["q_proj"][1] != config.hidden_size:
            raise UnsupportedError(
                f"runtime={NAME!r} cannot convert a {family} model with query heads dropped: "
                f"llama.cpp's {ARCHITECTURES[family]} architecture needs the query width to "
                f"equal the hidden size ({config.hidden_size}, here {shapes['q_proj'][1]}); "
                "leave drop_heads out, or use another runtime"
            )

    def convert(self, source: ConvertInput) -> LlamaCppModel:
        from autoslim import gguf as gguf_files

        recipe = source.recipe
        unquantized = source.workdir / "model-f32.gguf"
        write_gguf(source.model, source.tokenizer, unquantized, gguf_files.original(source.source))
        matrix = None
        if recipe.imatrix and recipe.gguf_type not in IMATRIX_BLIND:
            if source.calibration is None:
                raise UnsupportedError("imatrix=true needs calibration windows; none were given")
            matrix = importance_matrix(source.model, source.calibration)
        out = source.workdir / GGUF_FILE
        quantize(unquantized, out, recipe.gguf_type, matrix, source.threads)
        unquantized.unlink()
        facts = {
            "gguf_type": recipe.gguf_type,
            "imatrix": matrix is not None,
            "fallback": fallback(recipe.gguf_type, source.model),
            "tokenizer_check": tokenizer_check(out, source.tokenizer, source.calibration),
        }
        if facts["fallback"]:
            logger.info("%s", facts["fallback"])
        return LlamaCppModel(out, source.threads, facts, source.tokenizer)

    def load(
        self, folder: Path, *, recipe: Any = None, threads: int, device: str = "cpu"
    ) -> LlamaCppModel:
        from transformers import AutoTokenizer

        path = folder / GGUF_FILE
        if not path.is_file():
            raise UnsupportedError(f"{str(folder)!r} holds no {GGUF_FILE}; export it again")
        facts_file = folder / FACTS_FILE
        facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
        tokenizer = (
            AutoTokenizer.from_pretrained(folder)
            if (folder / "tokenizer_config.json").is_file()
            else None
        )
        return LlamaCppModel(path, threads, facts, tokenizer)


def fallback(gguf_type: str, model: Any) -> str:
    """What llama.cpp stores instead of ``gguf_type`` for the weights of ``model`` whose input
    width the type's block does not divide ("" when it divides every one): a k-quant falls back
    to a 32-wide type (llama-quant.cpp's tensor_type_fallback), a 32-wide type to F16."""
    import torch

    if gguf_type in FLOAT_TYPES:
        return ""
    widths = {
        int(m.weight.shape[-1] if isinstance(m, torch.nn.Linear) else m.weight.shape[0])
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or _conv1d(m)
    }
    block = K_BLOCK if gguf_type in K_FALLBACK else BLOCK
    odd = sorted(w for w in widths if w % block)
    if not odd:
        return ""
    instead = (
        f"in 32-wide types instead (mostly {K_FALLBACK[gguf_type]}; F16 where 32 does not "
        "divide either)"
        if gguf_type in K_FALLBACK
        else "in F16 instead"
    )
    return (
        f"gguf_type={gguf_type!r}: input widths {odd} are not multiples of {block}, so "
        f"llama.cpp stores those weights {instead}"
    )


def _rope_theta(config: Any) -> float:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _permute(weight: Any, heads: int) -> Any:
    """Rows of a q or k projection (or bias) reordered from Hugging Face's rotate-half layout
    to the interleaved pairs llama.cpp's llama architecture rotates (convert_hf_to_gguf)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _per_layer(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def _conv1d(module: Any) -> bool:
    """Whether ``module`` is transformers' GPT-2 ``Conv1D`` (a linear layer stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _llama_metadata(writer: Any, config: Any, state: Mapping[str, Any]) -> dict[str, list[int]]:
    """The llama/qwen hyperparameters, per layer from the tensors; the heads per layer."""
    layers = int(config.num_hidden_layers)
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )

    def rows(i: int, key: str) -> int:
        return int(state[f"model.layers.{i}.{key}.weight"].shape[0])

    heads = [rows(i, "self_attn.q_proj") // head_dim for i in range(layers)]
    kv_heads = [rows(i, "self_attn.k_proj") // head_dim for i in range(layers)]
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(layers)
    writer.add_feed_forward_length(_per_layer([rows(i, "mlp.gate_proj") for i in range(layers)]))
    writer.add_head_count(_per_layer(heads))
    writer.add_head_count_kv(_per_layer(kv_heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    return {"q_proj": heads, "k_proj": kv_heads}


def _gpt2_metadata(writer: Any, model: Any) -> None:
    """GPT-2's hyperparameters; the MLP width per layer from its weights (pruned or not)."""
    config = model.config
    widths = [int(block.mlp.c_fc.bias.shape[0]) for block in model.transformer.h]
    writer.add_context_length(int(config.n_positions))
    writer.add_embedding_length(int(config.n_embd))
    writer.add_block_count(len(widths))
    writer.add_feed_forward_length(_per_layer(widths))
    writer.add_head_count(int(config.n_head))
    writer.add_layer_norm_eps(float(config.layer_norm_epsilon))


def write_gguf(model: Any, tokenizer: Any, path: Path, source: Path | None = None) -> None:
    """Write ``model`` (a built transformers model of a family in ``ARCHITECTURES``) as a
    float32 GGUF file at ``path``: shapes per layer from its tensors, the tokenizer copied from
    GGUF file ``source`` when given, else converted from the Hugging Face ``tokenizer``."""
    import gguf
    import numpy as np

    config = model.config
    family = str(config.model_type)
    if family not in ARCHITECTURES:
        raise UnsupportedError(f"runtime={NAME!r} cannot convert {family} models")
    arch = ARCHITECTURES[family]
    state = {name: t.detach().float().cpu().numpy() for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    stored_in_out = {f"{name}.weight" for name, m in model.named_modules() if _conv1d(m)}
    vocab = int(model.get_input_embeddings().weight.shape[0])

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(str(getattr(config, "_name_or_path", "") or "autoslim model"))
    heads: dict[str, list[int]] = {}
    if arch == "gpt2":
        _gpt2_metadata(writer, model)
    else:
        heads = _llama_metadata(writer, config, state)
    writer.add_vocab_size(vocab)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    if source is not None:
        _copy_tokenizer(gguf.GGUFReader(str(source)), writer, vocab)
    else:
        _convert_tokenizer(tokenizer, writer, vocab, path.parent)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for key, array in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedError(
                f"runtime={NAME!r}: tensor {key} of this {family} model has no llama.cpp name"
            )
        if key in stored_in_out:
            array = np.ascontiguousarray(array.T)
        projection = key.rsplit(".", 2)[-2]
        if arch in PERMUTED_QK and projection in heads:
            array = _permute(array, heads[projection][int(key.split(".")[2])])
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _copy_tokenizer(reader: Any, writer: Any, vocab: int) -> None:
    """Copy every ``tokenizer.*`` field of a GGUF file (the base model's own vocabulary)."""
    import gguf

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab:
        raise UnsupportedError(
            f"the source GGUF's vocabulary does not match the model's {vocab} embeddings"
        )
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub)


def _pre_tokenizer(spec: Mapping[str, Any] | None) -> str:
    """llama.cpp's name of a tokenizer.json pre-tokenizer ("default" when unknown)."""
    if not spec:
        return "default"
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    for part in parts:
        regex = (part.get("pattern") or {}).get("Regex")
        if part.get("type") == "Split" and regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    return "default"


def _convert_tokenizer(tokenizer: Any, writer: Any, vocab: int, scratch: Path) -> None:
    """A Hugging Face byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary."""
    import gguf
    from gguf.vocab import BpeVocab, SpecialVocab

    folder = scratch / "tokenizer"
    tokenizer.save_pretrained(folder)
    try:
        bpe = BpeVocab(folder)
    except (FileNotFoundError, ValueError) as e:
        raise UnsupportedError(
            f"runtime={NAME!r} converts byte-level BPE tokenizers only ({e}); this model's "
            f"is {type(tokenizer).__name__}"
        ) from e
    special = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = {int(i) for i in tokenizer.added_tokens_decoder} - special
    tokens: list[bytes] = []
    types: list[int] = []
    for i, (text, _, _) in enumerate(bpe.all_tokens()):
        tokens.append(text if isinstance(text, bytes) else str(text).encode())
        kind = gguf.TokenType.NORMAL
        if i in special:
            kind = gguf.TokenType.CONTROL
        elif i in added:
            kind = gguf.TokenType.USER_DEFINED
        types.append(int(kind))
    if len(tokens) > vocab:
        raise UnsupportedError(
            f"the tokenizer has {len(tokens)} tokens, more than the model's {vocab} embeddings"
        )
    for i in range(len(tokens), vocab):
        tokens.append(f"[PAD{i}]".encode())
        types.append(int(gguf.TokenType.UNUSED))
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(folder, load_merges=True, n_vocab=vocab).add_to_gguf(writer)
    shutil.rmtree(folder)


def importance_matrix(model: Any, calibration: torch.Tensor) -> dict[str, Any]:
    """Per GGUF weight name: the mean over ``calibration``'s tokens of each input column's
    squared activation (float32 numpy), what ``llama-imatrix`` stores for the quantizer."""
    import gguf
    import torch

    from autoslim.compress.calibration import input_sums

    config = model.config
    layers = int(config.num_hidden_layers)
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[ARCHITECTURES[config.model_type].upper()], layers
    )
    modules = {}
    for key, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) and not _conv1d(module):
            continue
        if key == "lm_head" and getattr(config, "tie_word_embeddings", False):
            modules["token_embd.weight"] = module
            continue
        name = names.get_name(key)
        if name is not None:
            modules[name + ".weight"] = module
    sums = input_sums(model, modules, calibration, torch.square)
    return {name: value.float().cpu().numpy() for name, value in sums.items()}


def quantize(
    source: Path, out: Path, gguf_type: str, matrix: Mapping[str, Any] | None, threads: int
) -> None:
    """llama.cpp's quantizer: ``source`` (GGUF) written to ``out`` as ``gguf_type``, with the
    importance matrix ``matrix`` (GGUF tensor name -> per-column values) where given."""
    import ctypes

    import gguf
    import numpy as np

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[GGUF_TYPES[gguf_type]])
    params.nthread = threads
    keep: list[Any] = []
    if matrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(matrix) + 1))()
        for entry, (name, values) in zip(entries, matrix.items(), strict=False):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(array)
            entry.name = name.encode()
            entry.data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = array.size
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"llama_model_quantize to {gguf_type} failed (status {status})")


def tokenizer_check(
    path: Path, tokenizer: Any, calibration: torch.Tensor | None
) -> dict[str, Any]:
    """Whether llama.cpp tokenizes a sample of text (a fixed sample, and the first
    calibration window's text) exactly as the Hugging Face tokenizer does."""
    llama = _llama_cpp().Llama(str(path), vocab_only=True, verbose=False)
    try:
        text = TOKENIZER_SAMPLE
        if calibration is not None and len(calibration):
            text += tokenizer.decode(calibration[0].tolist())
        ours = [int(t) for t in llama.tokenize(text.encode(), add_bos=False, special=False)]
    finally:
        llama.close()
    theirs = [int(t) for t in tokenizer(text, add_special_tokens=False).input_ids]
    same = ours == theirs
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if not same and first is None:
        first = min(len(ours), len(theirs))
    return {
        "matches_hf": same,
        "sample_tokens": len(theirs),
        "llamacpp_tokens": len(ours),
        "first_difference": first,
    }


RUNTIME = LlamaCppRuntime()
