"""Recovery: heal structural cuts on the calibration batch, between the cuts and distillation.

Both methods walk the decoder layer by layer over the calibration windows (the GPTQ / SparseGPT
pattern): the hidden states entering every current layer are held for all windows, the layer
is healed, then run to give the next layer's input. So each layer is healed on the stream the
already-healed layers before it produce (sequential), at the cost of a few forward passes, and
memory stays at a couple of [windows, tokens, hidden] tensors. The base model is only read.

* ``bias`` (FLAP's bias compensation, An et al. 2024, done sequentially): a removed MLP channel
  or attention head contributed ``W[:, removed] · x_removed`` to its layer's output; its mean
  over the calibration tokens, ``W[:, removed] · E[x_removed]``, becomes a bias of the layer's
  output projection, with ``x_removed`` computed by the base model's weights on the healed
  stream. A run of dropped layers leaves its mean residual update as a bias on the MLP output
  of the kept layer before it. The bias rides on the config's own switches (Llama's
  ``mlp_bias`` / ``attention_bias``, Qwen3's ``attention_bias``; GPT-2 and OPT have the biases
  already), whose other biases stay zero, so plain ``from_pretrained`` reloads the result.
  FLAP also picks a different width per layer; stock configs carry one width for every layer
  (and every runtime's export needs it), so widths stay uniform.
* ``block_kd`` (block-local distillation; ``bias+block_kd`` runs it after ``bias``): each
  block whose structure changed, or that a run of dropped layers follows, is trained (the
  step budget shared equally between them) on the calibration windows to map the healed
  stream entering it to what the base model's hidden state is at the same depth (the output
  of the dropped run included), by Adam on the mean per-token relative squared error. The
  last 4 windows are held out: each block keeps the weights with the lowest error on them,
  checked after every pass over the others (its own, and recorded, when no step lowered it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoslim.compress.calibration import BATCH_SIZE
from autoslim.compress.depth import _hidden
from autoslim.compress.families import Family, get_path, layers
from autoslim.errors import ConfigError, UnsupportedError

logger = logging.getLogger(__name__)

# Calibration tokens each method needs at least: a mean over fewer fits the sample, not the
# text; block distillation takes its steps over batches of 4 windows of 256 tokens.
MIN_TOKENS = {"none": 0, "bias": 256, "block_kd": 1024, "bias+block_kd": 1024}

# Per family and site ("mlp": the MLP output projection, "attention": the attention output
# projection): the config switch that gives the site a bias and the projections (paths from a
# block) it governs, or None where the bias always exists. A family or site not listed cannot
# carry a compensation bias.
BIAS_SWITCHES: dict[str, dict[str, tuple[str, tuple[str, ...]] | None]] = {
    "llama": {
        "mlp": ("mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
        "attention": (
            "attention_bias",
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        ),
    },
    "qwen3": {
        "attention": (
            "attention_bias",
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        ),
    },
    "gpt2": {"mlp": None, "attention": None},
    "opt": {"mlp": None, "attention": None},
}
# Which site each cut's compensation needs.
_SITE_OF_CUT = {"prune_ratio": "mlp", "drop_layers": "mlp", "drop_heads": "attention"}


@dataclass(frozen=True)
class Cuts:
    """What the structural stages removed, per current decoder layer, in base-model indices."""

    base_layers: int
    kept_layers: tuple[int, ...]  # the base index of each current layer
    removed_channels: tuple[tuple[int, ...], ...]  # MLP channels removed from each layer
    removed_heads: tuple[tuple[int, ...], ...]  # query heads removed or masked in each layer

    @classmethod
    def of(
        cls,
        base_layers: int,
        kept_layers: Sequence[int] | None,
        removed_channels: Sequence[Sequence[int]] | None,
        removed_heads: Sequence[Sequence[int]] | None,
    ) -> Cuts:
        kept = tuple(kept_layers) if kept_layers is not None else tuple(range(base_layers))
        empty: tuple[tuple[int, ...], ...] = tuple(() for _ in kept)
        return cls(
            base_layers=base_layers,
            kept_layers=kept,
            removed_channels=tuple(tuple(c) for c in removed_channels or ()) or empty,
            removed_heads=tuple(tuple(h) for h in removed_heads or ()) or empty,
        )

    def next_base(self, layer: int) -> int:
        """The base index of the layer after current layer ``layer`` (the base depth its
        output stands for): the next kept layer, or the base model's layer count."""
        kept = self.kept_layers
        return kept[layer + 1] if layer + 1 < len(kept) else self.base_layers

    def touched(self, layer: int) -> bool:
        """Whether current ``layer`` lost channels or heads, or dropped layers follow it."""
        gap = self.next_base(layer) > self.kept_layers[layer] + 1
        return bool(self.removed_channels[layer] or self.removed_heads[layer] or gap)

    @property
    def leading_gap(self) -> bool:
        """Whether layers before the first kept one were dropped."""
        return bool(self.kept_layers) and self.kept_layers[0] > 0

    def healed_layers(self) -> list[int]:
        """The current layers recovery heals: those ``touched``, and the first one when
        layers before it were dropped."""
        return [
            i
            for i in range(len(self.kept_layers))
            if self.touched(i) or (i == 0 and self.leading_gap)
        ]

    def any(self) -> bool:
        return bool(self.healed_layers())


def every_layer_cut(config: Any, method: str) -> Cuts:
    """A cut that makes ``method`` heal every decoder layer of a model with ``config``, for
    timing one pass: one MLP channel per layer (one query head where ``bias`` has no MLP
    output bias to ride on)."""
    count = int(config.num_hidden_layers)
    one: tuple[tuple[int, ...], ...] = ((0,),) * count
    none: tuple[tuple[int, ...], ...] = ((),) * count
    heads = "bias" in method and "mlp" not in bias_sites(config)
    return Cuts(count, tuple(range(count)), none if heads else one, one if heads else none)


def cut_knobs(recipe: Any) -> list[str]:
    """The structural knobs ``recipe`` sets, named as the study file names them."""
    named = [("drop_layers", recipe.drop_layers), ("prune_ratio", recipe.prune_ratio)]
    named.append(("drop_heads", recipe.drop_heads or recipe.drop_heads_per_layer))
    return [name for name, value in named if value]


def bias_sites(config: Any) -> set[str]:
    """The sites (``mlp``, ``attention``) a compensation bias can ride on in this model."""
    family = str(config.model_type)
    sites = set(BIAS_SWITCHES.get(family, {}))
    if family == "opt" and not getattr(config, "enable_bias", True):
        return set()
    return sites


def check(recipe: Any, config: Any) -> None:
    """Refuse a recovery ``recipe`` cannot use on this model, before any work: no cut to heal,
    or a cut whose compensation this family's config cannot carry."""
    method = recipe.recovery
    cuts = cut_knobs(recipe)
    if method != "none" and not cuts:
        raise ConfigError(
            f"recovery={method!r} heals structural cuts (drop_layers, drop_heads, prune_ratio) "
            "and the recipe makes none: set a cut or use recovery='none'"
        )
    if method in ("bias", "bias+block_kd"):
        sites = bias_sites(config)
        for cut in cuts:
            if _SITE_OF_CUT[cut] not in sites:
                heals = [c for c in _SITE_OF_CUT if _SITE_OF_CUT[c] in sites]
                raise UnsupportedError(
                    f"recovery={method!r} cannot heal {cut} on {config.model_type} models: their "
                    f"config has no {_SITE_OF_CUT[cut]} output bias to carry the compensation "
                    f"(here it heals {', '.join(heals) or 'no cut'}); use recovery='block_kd'"
                )


def check_tokens(method: str, calibration: torch.Tensor) -> None:
    """A calibration batch too small for ``method``'s statistics is refused with how many
    tokens it needs."""
    need = MIN_TOKENS[method]
    if calibration.numel() < need:
        raise ConfigError(
            f"recovery={method!r} needs at least {need} calibration tokens and the batch holds "
            f"{calibration.numel()} ({tuple(calibration.shape)}): give the KD split more text "
            "or use recovery='none'"
        )


class _Stop(Exception):
    """Raised by a hook to end a forward pass once it has what it needs."""


def decoder(model: nn.Module, family: Family) -> nn.Module:
    """The module that holds the decoder layers and runs them on ``input_ids``."""
    parent = family.layers_path.rpartition(".")[0]
    found: nn.Module = get_path(model, parent)
    return found


Call = tuple[tuple[Any, ...], dict[str, Any]]


def layer_calls(model: nn.Module, family: Family, ids: torch.Tensor) -> list[Call]:
    """The arguments (after the hidden states) and keyword arguments each decoder layer of
    ``model`` is called with on ``ids``; they depend only on the batch's shape (no padding)."""
    calls: list[Call] = []

    def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        calls.append((tuple(args[1:]) if args else (), rest))

    with contextlib.ExitStack() as stack, torch.no_grad():
        for block in layers(model, family):
            stack.callback(block.register_forward_pre_hook(record, with_kwargs=True).remove)
        decoder(model, family)(input_ids=ids, use_cache=False)
    return calls


def embeddings(model: nn.Module, family: Family, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states entering the first decoder layer for ``ids`` (fp32)."""
    found: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        found.append((args[0] if args else kwargs["hidden_states"]).detach().float())
        raise _Stop

    first = layers(model, family)[0]
    handle = first.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, len(ids), BATCH_SIZE):
                with contextlib.suppress(_Stop):
                    decoder(model, family)(
                        input_ids=ids[start : start + BATCH_SIZE], use_cache=False
                    )
    finally:
        handle.remove()
    return torch.cat(found)


@contextlib.contextmanager
def _hooks(*pairs: tuple[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Forward pre-hooks on modules for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for module, hook in pairs:
            stack.callback(module.register_forward_pre_hook(hook).remove)
        yield


class Stream:
    """Runs decoder layers over all calibration windows, ``BATCH_SIZE`` windows at a time,
    with the arguments each layer index was called with for a batch of that shape."""

    def __init__(self, calls: dict[int, list[Call]]) -> None:
        self.calls = calls  # batch size -> per layer

    def run(
        self, block: nn.Module, layer: int, hidden: torch.Tensor, *, grad: bool = False
    ) -> torch.Tensor:
        outs = [self.step(block, layer, batch, grad=grad) for batch in hidden.split(BATCH_SIZE)]
        return torch.cat(outs)

    def step(
        self, block: nn.Module, layer: int, hidden: torch.Tensor, *, grad: bool = False
    ) -> torch.Tensor:
        args, kwargs = self.calls[len(hidden)][layer]
        with torch.set_grad_enabled(grad):
            return _hidden(block(hidden, *args, **kwargs)).float()


def _fp32_tensors(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple | list):
        return type(value)(_fp32_tensors(v) for v in value)
    return value


def _stream(model: nn.Module, family: Family, calibration: torch.Tensor) -> Stream:
    """The per-layer call arguments of ``model`` for every batch size the stream uses, their
    floating tensors (rotary tables, masks) in fp32 like the stream (exact for an fp32 model;
    a 16-bit base model's tables are rounded)."""
    device = next(model.parameters()).device
    sizes = {len(batch) for batch in calibration.split(BATCH_SIZE)}
    calls = {
        size: [
            (_fp32_tensors(args), {k: _fp32_tensors(v) for k, v in kwargs.items()})
            for args, kwargs in layer_calls(model, family, calibration[:size].to(device))
        ]
        for size in sizes
    }
    return Stream(calls)


def _fp32(block: nn.Module) -> nn.Module:
    """``block`` itself if it computes in fp32, else an fp32 copy (the base model may be held
    in 16 bits; the stream is fp32)."""
    if all(p.dtype == torch.float32 for p in block.parameters()):
        return block
    return copy.deepcopy(block).float()


def _enable_bias(model: nn.Module, family: Family, site: str) -> None:
    """Give every layer's projections governed by ``site``'s switch a zero bias and set the
    switch, so the config describes the weights and plain ``from_pretrained`` reloads them."""
    switch = BIAS_SWITCHES[family.name][site]
    if switch is None:
        return
    key, paths = switch
    if getattr(model.config, key, False):
        return
    for block in layers(model, family):
        for path in paths:
            linear = get_path(block, path)
            if linear.bias is None:
                linear.bias = nn.Parameter(
                    torch.zeros(
                        linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device
                    )
                )
    setattr(model.config, key, True)


# Path from a block to its attention output projection, per family.
_ATTENTION_OUT = {"gpt2": "attn.c_proj", "opt": "self_attn.out_proj"}


def _output_module(block: nn.Module, family: Family, site: str) -> nn.Linear:
    if site == "mlp":
        path = family.mlp_out
    else:
        path = _ATTENTION_OUT.get(family.name, f"{family.attention}.o_proj")
    module: nn.Linear = get_path(block, path)
    return module


def _columns(module: Any) -> torch.Tensor:
    """An output projection's weight as [out, in] (GPT-2's Conv1D stores it [in, out])."""
    weight: torch.Tensor = module.weight.detach().float()
    return weight if isinstance(module, nn.Linear) else weight.T


def _add_bias(module: Any, value: torch.Tensor) -> None:
    with torch.no_grad():
        module.bias.add_(value.to(module.bias.dtype))


def _mean_of_inputs(
    stream: Stream,
    block: nn.Module,
    layer: int,
    hidden: torch.Tensor,
    watched: nn.Module,
    columns: torch.Tensor,
    feed: tuple[Sequence[nn.Module], list[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Mean over all tokens of ``watched``'s input features ``columns`` while ``block`` runs
    over ``hidden``; ``feed`` = (modules, inputs per batch) replaces those modules' input."""
    total = torch.zeros(len(columns))
    count = 0
    fed: list[torch.Tensor] = []  # the input replacing ``feed``'s modules' in this batch

    def watch(_module: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal total, count
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        total = total + x[:, columns.to(x.device)].sum(dim=0).cpu()
        count += len(x)

    def replace(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fed[0], *args[1:])

    pairs = [(watched, watch)] + [(m, replace) for m in (feed[0] if feed else ())]
    with _hooks(*pairs):
        for position, batch in enumerate(hidden.split(BATCH_SIZE)):
            fed[:] = [feed[1][position]] if feed else []
            stream.step(block, layer, batch)
    return total / max(count, 1)


def _inputs_of(
    stream: Stream, block: nn.Module, layer: int, hidden: torch.Tensor, module: nn.Module
) -> list[torch.Tensor]:
    """``module``'s input in each batch while ``block`` runs over ``hidden``."""
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())

    with _hooks((module, record)):
        for batch in hidden.split(BATCH_SIZE):
            stream.step(block, layer, batch)
    return seen


def _head_columns(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)])


def bias_compensation(
    model: nn.Module,
    base: nn.Module,
    family: Family,
    cuts: Cuts,
    calibration: torch.Tensor,
) -> dict[str, Any]:
    """Heal ``model`` in place with compensation biases (see the module doc)."""
    device = next(model.parameters()).device
    calibration = calibration.to(device)
    blocks, base_blocks = layers(model, family), layers(base, family)
    student, teacher = _stream(model, family, calibration), _stream(base, family, calibration)
    if any(cuts.removed_channels) or len(cuts.kept_layers) < cuts.base_layers:
        _enable_bias(model, family, "mlp")
    if any(cuts.removed_heads):
        _enable_bias(model, family, "attention")
    hidden = embeddings(model, family, calibration)
    norms: list[float] = []
    uncompensated: list[int] = []
    if cuts.leading_gap:
        # No kept layer before the run: its mean update goes on the first kept layer's
        # attention output (its attention then misses it; the residual stream has it).
        entering = hidden
        for dropped in range(cuts.kept_layers[0]):
            hidden = teacher.run(_fp32(base_blocks[dropped]), dropped, hidden)
        value = (hidden - entering).reshape(-1, hidden.shape[-1]).mean(dim=0)
        if "attention" in bias_sites(model.config):
            _enable_bias(model, family, "attention")
            _add_bias(_output_module(blocks[0], family, "attention"), value)
            norms.append(float(value.norm()))
        else:
            uncompensated = list(range(cuts.kept_layers[0]))
            logger.warning(
                "bias compensation: dropped leading layers %s have no kept layer before them "
                "and %s models no attention output bias; left uncompensated",
                uncompensated,
                family.name,
            )
        hidden = entering
    config: Any = base.config
    head_dim = int(getattr(config, "head_dim", 0) or 0) or (
        int(config.hidden_size) // int(config.num_attention_heads)
    )
    for layer, block in enumerate(blocks):
        index = cuts.kept_layers[layer]
        original = _fp32(base_blocks[index])
        if cuts.removed_heads[layer]:
            o_proj = _output_module(original, family, "attention")
            columns = _head_columns(cuts.removed_heads[layer], head_dim)
            mean = _mean_of_inputs(teacher, original, index, hidden, o_proj, columns)
            value = _columns(o_proj)[:, columns.to(o_proj.weight.device)] @ mean.to(device)
            _add_bias(_output_module(block, family, "attention"), value)
            norms.append(float(value.norm()))
        if cuts.removed_channels[layer]:
            first_in = get_path(block, family.mlp_in[0])
            inputs = _inputs_of(student, block, layer, hidden, first_in)
            out = _output_module(original, family, "mlp")
            columns = torch.tensor(cuts.removed_channels[layer], dtype=torch.long)
            feeds = [get_path(original, path) for path in family.mlp_in]
            mean = _mean_of_inputs(
                teacher, original, index, hidden, out, columns, feed=(feeds, inputs)
            )
            value = _columns(out)[:, columns.to(out.weight.device)] @ mean.to(device)
            _add_bias(_output_module(block, family, "mlp"), value)
            norms.append(float(value.norm()))
        hidden = student.run(block, layer, hidden)
        following = range(index + 1, cuts.next_base(layer))
        if following:
            entering = hidden
            for dropped in following:
                hidden = teacher.run(_fp32(base_blocks[dropped]), dropped, hidden)
            value = (hidden - entering).reshape(-1, hidden.shape[-1]).mean(dim=0)
            _add_bias(_output_module(block, family, "mlp"), value)
            norms.append(float(value.norm()))
            hidden = entering + value
    return {
        "recovery_biases": len(norms),
        "recovery_bias_norm_max": max(norms, default=0.0),
        "recovery_uncompensated_layers": uncompensated,
    }


def _relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ||out - target||^2 / ||target||^2."""
    scale = target.square().sum(dim=-1).clamp(min=1e-12)
    return ((out - target).square().sum(dim=-1) / scale).mean()


def block_distillation(
    model: nn.Module,
    base: nn.Module,
    family: Family,
    cuts: Cuts,
    calibration: torch.Tensor,
    *,
    steps: int,
    lr: float,
    keep_zero: dict[str, torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Heal ``model`` in place by block-local distillation (see the module doc): ``steps``
    Adam steps of ``BATCH_SIZE`` windows in all, shared equally by the healed blocks (at
    least one each), at learning rate ``lr``; the training steps compute in ``autocast`` (the
    recipe's precision; None: fp32), the stream in fp32."""
    device = next(model.parameters()).device
    calibration = calibration.to(device)
    blocks, base_blocks = layers(model, family), layers(base, family)
    student, teacher = _stream(model, family, calibration), _stream(base, family, calibration)
    hidden = embeddings(model, family, calibration)
    target = hidden
    for index in range(cuts.kept_layers[0]):  # dropped leading layers: the target moves on
        target = teacher.run(_fp32(base_blocks[index]), index, target)
    prefix = family.layers_path
    trained: list[int] = []
    reverted: list[int] = []
    before_after: list[tuple[float, float]] = []
    healed = cuts.healed_layers()
    per_block = max(1, steps // max(1, len(healed)))
    for layer, block in enumerate(blocks):
        for index in range(cuts.kept_layers[layer], cuts.next_base(layer)):
            target = teacher.run(_fp32(base_blocks[index]), index, target)
        if layer in healed:
            masks = {
                name: mask
                for name, mask in (keep_zero or {}).items()
                if name.startswith(f"{prefix}.{layer}.")
            }
            before, after, out = _train_block(
                student,
                block,
                layer,
                (hidden, target),
                (per_block, lr, autocast),
                masks,
                f"{prefix}.{layer}.",
            )
            trained.append(layer)
            before_after.append((before, after))
            if after > before:
                reverted.append(layer)
            hidden = out
        else:
            hidden = student.run(block, layer, hidden)
    error = float(_relative_error(hidden, target))
    return {
        "recovery_steps_per_block": per_block,
        "recovery_blocks_trained": trained,
        "recovery_blocks_reverted": reverted,
        "recovery_block_error_before": [round(b, 5) for b, _ in before_after],
        "recovery_block_error_after": [
            round(a, 5) if math.isfinite(a) else None for _, a in before_after
        ],
        "recovery_final_error": error,
    }


def _train_block(
    stream: Stream,
    block: nn.Module,
    layer: int,
    data: tuple[torch.Tensor, torch.Tensor],
    settings: tuple[int, float, torch.dtype | None],
    masks: dict[str, torch.Tensor],
    prefix: str,
) -> tuple[float, float, torch.Tensor]:
    """Train ``block`` to map ``data`` = (hidden, target) for ``settings`` = (steps, lr,
    autocast dtype); returns its error before and after and its output on ``hidden``.

    The last batch of windows is held out (when there are two or more): the block trains on
    the others, its error on the held-out windows is checked after every pass over them, and
    it keeps the weights with the lowest (its own if no step lowered it, then after is inf),
    so it cannot fit the calibration sample at the text's cost, nor end on a non-finite step.
    """
    hidden, target = data
    steps, lr, autocast = settings
    batches = list(zip(hidden.split(BATCH_SIZE), target.split(BATCH_SIZE), strict=True))
    held_x, held_y = batches[-1]
    training = batches[:-1] or batches
    context = (
        torch.autocast(hidden.device.type, dtype=autocast)
        if autocast not in (None, torch.float32)
        else contextlib.nullcontext()
    )

    def held_out_error() -> float:
        return float(_relative_error(stream.step(block, layer, held_x), held_y))

    before = best = held_out_error()
    best_state: dict[str, torch.Tensor] | None = None
    params = dict(block.named_parameters())
    handles = [
        params[name.removeprefix(prefix)].register_hook(
            lambda grad, mask=mask: grad.masked_fill(mask, 0.0)
        )
        for name, mask in masks.items()
        if name.removeprefix(prefix) in params
    ]
    optimizer = torch.optim.Adam(block.parameters(), lr=lr)
    saved = copy.deepcopy(block.state_dict())
    try:  # in eval mode: no dropout, as the block will run
        for step in range(steps):
            x, y = training[step % len(training)]
            with context:
                out = stream.step(block, layer, x, grad=True)
            loss = _relative_error(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % len(training) == 0 or step + 1 == steps:
                error = held_out_error()
                if error < best:  # NaN compares false: never kept
                    best, best_state = error, copy.deepcopy(block.state_dict())
    finally:
        for handle in handles:
            handle.remove()
    block.load_state_dict(best_state if best_state is not None else saved)
    if best_state is None and before > 0:  # (an uncut block, as the cost model times, has 0)
        logger.warning(
            "block distillation: no step lowered layer %d's held-out error %.4g; put back "
            "as it was",
            layer,
            before,
        )
    return before, best if best_state is not None else math.inf, stream.run(block, layer, hidden)


def recover(
    model: nn.Module,
    base: nn.Module,
    family: Family,
    cuts: Cuts,
    calibration: torch.Tensor,
    *,
    method: str,
    steps: int = 0,
    lr: float = 0.0,
    keep_zero: dict[str, torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Heal ``model`` (a cut copy of ``base``, which is left unchanged) with ``method``;
    block distillation trains in ``autocast`` (the recipe's precision; None: fp32)."""
    if method == "none" or not cuts.any():
        return {"recovery": method, "recovery_seconds": 0.0}
    check_tokens(method, calibration)
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    info: dict[str, Any] = {}
    try:
        if method in ("bias", "bias+block_kd"):
            info |= bias_compensation(model, base, family, cuts, calibration)
        if method in ("block_kd", "bias+block_kd"):
            info |= block_distillation(
                model,
                base,
                family,
                cuts,
                calibration,
                steps=steps,
                lr=lr,
                keep_zero=keep_zero,
                autocast=autocast,
            )
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    logger.info("recovery %s in %.1f s", method, seconds)
    return {"recovery": method, "recovery_seconds": seconds, **info}
