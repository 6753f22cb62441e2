"""torch: the built model runs as it is, in PyTorch eager (the quantize operator's backends,
bitsandbytes and torchao, are its quantization), and saves as a Hugging Face folder that plain
``AutoModelForCausalLM.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoslim.runtimes.base import ConvertInput, Runtime, RuntimeModel

if TYPE_CHECKING:
    import torch


def cache_of(output: Any) -> dict[str, Any]:
    """The KV cache of a transformers forward's ``output``, as the keyword argument that hands
    it to the next forward: ``cache`` in recent transformers (5.25), ``past_key_values`` in
    earlier 5.x releases (5.5, which optimum-intel requires)."""
    if hasattr(output, "cache"):
        return {"cache": output.cache}
    return {"past_key_values": output.past_key_values}


class TorchModel(RuntimeModel):
    """A transformers model, run in PyTorch eager; ``model`` and ``tokenizer`` stay reachable
    (task evaluations wrap them)."""

    runtime = "torch"

    def __init__(self, model: Any, tokenizer: Any, threads: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.threads = threads

    def _device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device
        return device

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=input_ids.to(self._device()), use_cache=False)
        logits: torch.Tensor = out.logits
        return logits

    def prefill(self, input_ids: torch.Tensor) -> None:
        import torch

        with torch.no_grad():
            self.model(input_ids=input_ids)

    def decode(self, prompt: torch.Tensor, tokens: int) -> None:
        import torch

        if not tokens:
            return
        with torch.no_grad():
            out = self.model(input_ids=prompt, use_cache=True)
            for _ in range(tokens - 1):
                token = out.logits[:, -1:].argmax(-1)
                out = self.model(input_ids=token, use_cache=True, **cache_of(out))

    def save(self, folder: Path) -> None:
        from autoslim.compress.backends import save

        save(self.model, self.tokenizer, folder)

    def size_bytes(self) -> int:
        from autoslim.compress.size import size_bytes

        return size_bytes(self.model)

    def parameters(self) -> int:
        from autoslim.compress.size import parameter_count

        return parameter_count(self.model)

    def describe_dtype(self) -> str:
        return "+".join(
            sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters()})
        )

    def transformers_model(self) -> Any:
        return self.model

    def device(self) -> str:
        return str(self._device())

    def provenance(self) -> dict[str, Any]:
        import torch

        return {**super().provenance(), "torch_threads": torch.get_num_threads()}


class TorchRuntime(Runtime):
    name = "torch"
    doc = (
        "PyTorch eager: the built model as it is; bitsandbytes and torchao quantize it "
        "(quant_backend); exports a Hugging Face folder"
    )
    extra = ""
    modules = ("torch", "transformers")
    devices = ("cpu", "cuda", "mps")
    reloaded_with = "plain `AutoModelForCausalLM.from_pretrained`"

    def load_line(self, folder: str) -> str:
        return f"AutoModelForCausalLM.from_pretrained({folder!r})"

    def usage(self, folder: str) -> list[str]:
        return [
            "```python",
            "from transformers import pipeline",
            "",
            f'generate = pipeline("text-generation", model="{folder}")',
            'print(generate("def fibonacci(n):", max_new_tokens=32)[0]["generated_text"])',
            "```",
        ]

    def describe(self, recipe: Any) -> str:
        return ""

    def convert(self, source: ConvertInput) -> TorchModel:
        return TorchModel(source.model, source.tokenizer, source.threads)

    def load(self, folder: Path, *, recipe: Any, threads: int, device: str = "cpu") -> TorchModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": device})
        return TorchModel(model, AutoTokenizer.from_pretrained(folder), threads)


RUNTIME = TorchRuntime()
