"""Parameter and compute counts: :func:`count_params`, :func:`count_flops`, :func:`summary`.

Convention (the same as the paper's and mmcv's "FLOPs"): the headline number is **multiply-adds (MACs)**; one
multiply-add is 2 FLOPs, so ``report.flops == 2 * report.macs``. The paper's "2.71 GFLOPs" for RedNet-50 means
2.71 G multiply-adds.

What is counted: :class:`torch.utils.flop_counter.FlopCounterMode` counts matrix products and convolutions (the
``aten`` convolution, ``mm``, ``addmm``, ``bmm`` and attention ops) and, with the formulas the op registers
(:mod:`involution.ops.flops`: ``N * C * Ho * Wo * Kh * Kw`` each, backward ops too), the involution aggregation; an
involution's kernel generator (two 1x1 convolutions) counts as convolutions. Not counted: normalisation,
activations, pooling, additions and other elementwise work, and convolution biases. The published numbers follow
mmcv's ``get_model_complexity_info`` (through mmcls' ``get_flops``), which does count BN/ReLU/pooling/biases, but
not the involution aggregation; :func:`mmcv_style_macs` repeats its rules for comparison. ``docs/models.md``
compares all the models with the published numbers and reconstructs how those were counted.

The counts run on the ``meta`` device by default: no memory is allocated and nothing is computed, so even
RedNet-152 at 224x224 takes well under a second.

>>> from involution.models import count_flops, summary
>>> report = count_flops("rednet50")                 # or a model instance; input (1, 3, 224, 224)
>>> round(report.macs / 1e9, 2), report.by_op["involution.involution2d"] > 0
(2.65, True)
>>> print(summary("rednet26"))                         # a table per top-level stage  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from ..layers.pool import CeilAvgPool2d
from ..ops.flops import FLOP_FORMULAS, register_flop_formulas
from .input_shape import InputSize, input_shape
from .registry import create_model

__all__ = ["FLOP_FORMULAS", "FlopReport", "count_flops", "count_params", "mmcv_style_macs", "register_flop_formulas",
           "summary"]



# --------------------------------------------------------------------------------------------- helpers
def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters of ``model`` (shared parameters once; ``trainable_only``: requires_grad only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _build(model: nn.Module | str, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """A registry name is built on the meta device (no memory, no initialisation cost); a module is returned as is."""
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise TypeError(f"model keyword arguments {sorted(model_kwargs)} only apply to a model name")
        return model
    with torch.device("meta"):
        return create_model(model, **model_kwargs)


#: The forward involution ops, as FlopCounterMode names them in ``by_op``.
INVOLUTION_OPS = ("involution.involution2d", "involution.involution3d")


def _involution_total(by_op: Mapping[str, int]) -> int:
    return sum(by_op.get(name, 0) for name in INVOLUTION_OPS)


def _float_dtype(model: nn.Module) -> torch.dtype:
    floats = (t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    return next(floats, torch.get_default_dtype())


def _model_device(model: nn.Module) -> torch.device:
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


def _strip_root(name: str) -> str:
    """FlopCounterMode names modules ``RootClass.child.grandchild``; keep the state-dict style ``child.grandchild``."""
    return name.split(".", 1)[1] if "." in name else ""


# --------------------------------------------------------------------------------------------- the report
@dataclass
class FlopReport:
    """What :func:`count_flops` measured. All compute counts are **multiply-adds** unless the name says FLOPs.

    Attributes:
        input_size: the input shape ``(N, C, H, W)``; counts are for the whole batch.
        params: :func:`count_params` of the model.
        macs: forward multiply-adds (convolutions, linear layers and matmuls, involution aggregation).
        by_op: forward MACs per op, e.g. ``{"aten.convolution": ..., "involution.involution2d": ...,
            "aten.addmm": ...}``.
        by_module: forward MACs per module, keyed by state-dict style names (``""`` is the whole model,
            ``"layer1"``, ``"layer1.0.conv2"`` ...); a module's count includes its children's.
        backward_macs: MACs of the backward pass (0 unless counted with ``backward=True``; with
            ``grad_checkpointing`` it includes the recomputed forward).
        backward_by_op: the same per op.
        device: where the count ran ("meta", or the model's device).
    """

    input_size: tuple[int, ...]
    params: int
    macs: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    backward_macs: int = 0
    backward_by_op: dict[str, int] = field(default_factory=dict)
    device: str = "meta"

    @property
    def flops(self) -> int:
        """Forward FLOPs, counting a multiply-add as 2 (FlopCounterMode's convention): ``2 * macs``."""
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        """Forward multiply-adds in units of 1e9 (what the paper calls GFLOPs)."""
        return self.macs / 1e9

    @property
    def training_macs(self) -> int:
        """Forward plus backward multiply-adds (the backward part only if it was counted)."""
        return self.macs + self.backward_macs

    @property
    def involution_macs(self) -> int:
        """Forward MACs of the involution aggregations alone (their kernel generators are convolutions)."""
        return _involution_total(self.by_op)

    def __str__(self) -> str:
        ops = ", ".join(f"{k} {v / 1e9:.4f}" for k, v in sorted(self.by_op.items(), key=lambda kv: -kv[1]))
        text = (
            f"input {tuple(self.input_size)}: {self.params / 1e6:.3f} M params, {self.gmacs:.4f} GMACs "
            f"({self.flops / 1e9:.4f} GFLOPs at 2 FLOPs per multiply-add); by op (GMACs): {ops}"
        )
        if self.backward_macs:
            text += f"; backward {self.backward_macs / 1e9:.4f} GMACs"
        return text


def _split_counts(counts: Mapping[str, Mapping[Any, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """FlopCounterMode FLOP counts -> (MACs per op, MACs per module)."""
    by_op = {str(op): v // 2 for op, v in counts.get("Global", {}).items()}
    by_module = {_strip_root(name): sum(ops.values()) // 2 for name, ops in counts.items() if name != "Global"}
    return by_op, by_module


def _subtract(after: Mapping[str, Mapping[Any, int]], before: Mapping[str, Mapping[Any, int]]) -> dict:
    """``after - before`` per module and op, without the zeros."""
    diffs = {name: {op: v - before.get(name, {}).get(op, 0) for op, v in ops.items()} for name, ops in after.items()}
    return {name: nonzero for name, d in diffs.items() if (nonzero := {op: v for op, v in d.items() if v})}


def _run(
    model: nn.Module, x: Tensor, backward: bool, meta: bool, hooks: Callable[[], list] | None = None
) -> tuple[dict, dict]:
    """Run ``model(x)`` (and backward) under FlopCounterMode: (forward counts, backward counts)."""
    handles = hooks() if hooks is not None else []
    was_training = model.training
    model.eval()  # counts do not depend on the mode; eval keeps BatchNorm statistics untouched
    # Count the model's own work, not the recomputation (kernels, stem) that trades compute for memory in training.
    recomputing = [(m, flag) for m in model.modules() for flag in ("recompute_kernel", "recompute_stem")
                   if getattr(m, flag, False) is True]
    for m, flag in recomputing:
        setattr(m, flag, False)
    try:
        grad = torch.enable_grad() if backward else torch.no_grad()
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter, grad:
            if meta:
                params = {k: torch.empty_like(v, device="meta").requires_grad_(backward and v.requires_grad)
                          for k, v in model.named_parameters()}
                buffers = {k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()}
                out = torch.func.functional_call(model, {**params, **buffers}, (x,))
                weights = [p for p in params.values() if p.requires_grad]
            else:
                out = model(x)
                weights = [p for p in model.parameters() if p.requires_grad]
            forward_counts = copy.deepcopy(counter.get_flop_counts())
            if backward:
                outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.requires_grad]
                if not outs or not weights:
                    raise ValueError("backward=True, but the model has no output that requires grad")
                # autograd.grad, not .backward(): nothing is accumulated into the parameters' .grad
                total = cast(Tensor, sum(t.float().sum() for t in outs))  # a tensor: outs is not empty
                torch.autograd.grad(total, weights, allow_unused=True)
        counts = counter.get_flop_counts()
    finally:
        for m, flag in recomputing:
            setattr(m, flag, True)
        model.train(was_training)
        for h in handles:
            h.remove()
    return forward_counts, _subtract(counts, forward_counts) if backward else {}


def count_flops(
    model: nn.Module | str, input_size: InputSize | None = (1, 3, 224, 224), *, backward: bool = False,
    device: str | torch.device | None = "meta", **model_kwargs: Any,
) -> FlopReport:
    """Count parameters and multiply-adds of one forward pass (and optionally the backward pass).

    Args:
        model: an ``nn.Module``, or a registry name (built on the meta device with ``model_kwargs``).
        input_size: ``(N, C, H, W)``, ``(C, H, W)`` (batch 1), ``(H, W)`` or an int (square image; both with the
            model's input channels), or ``None`` for the model's ``pretrained_cfg["input_size"]``. Default ``(1, 3, 224, 224)``.
        backward: also count the backward pass of ``sum(outputs)`` (grads of every trainable parameter and of
            nothing else; the input does not require grad).
        device: ``"meta"`` (default): run on meta tensors standing in for the parameters, buffers and input, so
            nothing is allocated or computed and the model itself is not touched. ``None``: run for real, on the
            model's own device (under ``torch.no_grad`` unless ``backward``); use it for models whose forward
            does not work on meta tensors. If the meta run fails, the count is retried for real with a warning.

    Returns:
        a :class:`FlopReport`; ``report.macs`` is the headline number (the paper's "FLOPs"), ``report.flops`` is
        ``2 * report.macs``.
    """
    model = _build(model, model_kwargs)
    shape = input_shape(model, input_size)
    dtype = _float_dtype(model)
    on_meta = device is not None and torch.device(device).type == "meta"
    if device is not None and not on_meta:
        raise ValueError(f"device must be 'meta' or None (the model's own device), got {device!r}")
    model_on_meta = _model_device(model).type == "meta"
    forward_counts: dict | None = None
    backward_counts: dict = {}  # set together with forward_counts (by _run)
    if on_meta or model_on_meta:
        try:
            x = torch.empty(shape, dtype=dtype, device="meta")
            forward_counts, backward_counts = _run(model, x, backward, meta=not model_on_meta)
            run_device = "meta"
        except (NotImplementedError, RuntimeError, TypeError) as err:
            if model_on_meta:
                raise
            warnings.warn(f"counting on the meta device failed ({type(err).__name__}: {err}); counting with a real "
                          "forward", stacklevel=2)
    if forward_counts is None:
        dev = _model_device(model)
        x = torch.zeros(shape, dtype=dtype, device=dev)
        forward_counts, backward_counts = _run(model, x, backward, meta=False)
        run_device = str(dev)
    by_op, by_module = _split_counts(forward_counts)
    bw_by_op, _ = _split_counts(backward_counts) if backward else ({}, {})
    return FlopReport(input_size=shape, params=count_params(model), macs=sum(by_op.values()), by_op=by_op,
                      by_module=by_module, backward_macs=sum(bw_by_op.values()), backward_by_op=bw_by_op,
                      device=run_device)


# --------------------------------------------------------------------------------------------- mmcv rules
def mmcv_style_macs(
    model: nn.Module | str, input_size: InputSize | None = (1, 3, 224, 224), **model_kwargs: Any
) -> dict[str, int]:
    """Multiply-adds as mmcv's ``get_model_complexity_info`` (the tool behind the official numbers) counts them.

    For comparison with published numbers only. Its rules, applied by module hooks to a forward pass on meta
    tensors: ``Conv2d`` ``K*K*Cin/groups*Cout`` per output pixel plus ``Cout`` per output pixel for a bias;
    ``Linear`` ``in * out`` (no bias); BatchNorm/GroupNorm 2 per input element (1 without affine); ReLU 1 per
    output element; max/average pooling 1 per *input* element (this library's ``CeilAvgPool2d`` included, as the
    official ``nn.AvgPool2d``). Everything that is not a module, the involution aggregation included, counts 0:
    the official model computes it with ``nn.Unfold`` and a product, which mmcv does not see.

    Returns MACs per category (``conv``, ``conv_bias``, ``linear``, ``norm``, ``act``, ``pool``), ``total`` (their
    sum, what mmcv reports) and ``involution`` (the aggregation MACs that mmcv leaves out, not in ``total``).
    """
    model = _build(model, model_kwargs)
    shape = input_shape(model, input_size)
    counts = dict.fromkeys(("conv", "conv_bias", "linear", "norm", "act", "pool"), 0)
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, CeilAvgPool2d)
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.BatchNorm1d)
    acts = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)

    def hook(mod: nn.Module, inputs: tuple, out: Any) -> None:
        inp = inputs[0]
        if isinstance(mod, nn.Conv2d):
            per_pixel = math.prod(mod.kernel_size) * mod.in_channels * (mod.out_channels // mod.groups)
            pixels = out.shape[0] * math.prod(out.shape[2:])
            counts["conv"] += per_pixel * pixels
            if mod.bias is not None:
                counts["conv_bias"] += mod.out_channels * pixels
        elif isinstance(mod, nn.Linear):
            counts["linear"] += inp.numel() * out.shape[-1]
        elif isinstance(mod, norms):
            affine = getattr(mod, "affine", False) or getattr(mod, "elementwise_affine", False)
            counts["norm"] += inp.numel() * (2 if affine else 1)
        elif isinstance(mod, acts):
            counts["act"] += out.numel()
        elif isinstance(mod, pools):
            counts["pool"] += inp.numel()

    counts_by_op = _meta_forward(model, shape, lambda: [m.register_forward_hook(hook) for m in model.modules()])
    by_op, _ = _split_counts(counts_by_op)
    counts["total"] = sum(counts.values())
    counts["involution"] = _involution_total(by_op)
    return counts


# --------------------------------------------------------------------------------------------- summary
def _meta_forward(model: nn.Module, shape: tuple[int, ...], hooks: Callable[[], list]) -> dict:
    """FlopCounterMode's forward counts of ``model`` on a meta input of ``shape``, with ``hooks()`` installed."""
    x = torch.empty(shape, dtype=_float_dtype(model), device="meta")
    return _run(model, x, False, meta=_model_device(model).type != "meta", hooks=hooks)[0]


def _mmacs(macs: int, dash_if_zero: bool = False) -> str:
    return "-" if dash_if_zero and not macs else f"{macs / 1e6:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], footer: Sequence[str]) -> list[str]:
    """Aligned lines: the first two columns to the left, the others to the right, rules around the rows."""
    widths = [max(len(r[i]) for r in (header, *rows, footer)) for i in range(len(header))]
    align = ["<", "<", *[">"] * (len(header) - 2)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in rows), rule, line(footer)]


def _notes(model: nn.Module, params: int, macs: int, by_op: Mapping[str, int]) -> list[str]:
    """The lines under the table: totals, the convention, and the published numbers if ``pretrained_cfg`` has them."""
    ops = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]))
    lines = [
        (f"{params / 1e6:.2f} M params, {macs / 1e9:.3f} GMACs = {2 * macs / 1e9:.3f} GFLOPs "
         "(1 multiply-add = 2 FLOPs; the paper's 'FLOPs' are multiply-adds)"),
        f"MMACs by op: {ops}",
        "counted: convolutions, linear layers, involution aggregation; not: norm, activations, pooling, adds",
    ]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "paper_params_m" in cfg:
        lines.append(
            f"published: {cfg['paper_params_m']} M params, {cfg['paper_gflops']} GFLOPs (multiply-adds, counted "
            "with other rules: see docs/models.md)"
        )
    elif "torchvision_gflops" in cfg:
        lines.append(f"torchvision publishes {cfg['torchvision_gflops']} GFLOPs (multiply-adds)")
    return lines


def summary(
    model_name_or_model: nn.Module | str, input_size: InputSize | None = None, *, depth: int = 1, **model_kwargs: Any
) -> str:
    """A readable table of parameters, multiply-adds and output shapes per top-level stage of a model.

    Args:
        model_name_or_model: a registry name (built on the meta device, ``model_kwargs`` passed to
            :func:`~involution.models.create_model`) or a module.
        input_size: as for :func:`count_flops`; ``None`` (default) takes the model's ``pretrained_cfg``
            input size (224x224 for ImageNet models, 32x32 for ``*_small``), else ``(1, 3, 224, 224)``.
        depth: 1 lists the model's children (stem, layer1..4, fc ...); 2 also their children (the blocks).

    Returns the table as a string (ends without a newline); the convention (MACs = multiply-adds, 1 MAC =
    2 FLOPs) is printed under it, with the published numbers where ``pretrained_cfg`` records them.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    model = _build(model_name_or_model, model_kwargs)
    shape = input_shape(model, input_size)
    names = {m: n for n, m in model.named_modules() if n and n.count(".") < depth}
    out_shapes: dict[str, tuple[int, ...]] = {}

    def hook(mod: nn.Module, inputs: tuple, out: Any) -> None:
        if isinstance(out, Tensor):
            out_shapes[names[mod]] = tuple(out.shape)

    counts = _meta_forward(model, shape, lambda: [m.register_forward_hook(hook) for m in names])
    by_op, by_module = _split_counts(counts)
    inv_ops = (torch.ops.involution.involution2d, torch.ops.involution.involution3d)
    inv = {_strip_root(k): sum(ops.get(op, 0) for op in inv_ops) // 2 for k, ops in counts.items() if k != "Global"}
    rows = [
        (
            "  " * name.count(".") + name,
            type(mod).__name__,
            f"{count_params(mod):,}",
            _mmacs(by_module.get(name, 0)),
            _mmacs(inv.get(name, 0), dash_if_zero=True),
            "x".join(str(s) for s in out_shapes[name][1:]) if name in out_shapes else "-",
        )
        for mod, name in names.items()
    ]
    params, macs = count_params(model), sum(by_op.values())
    header = ("module", "type", "params", "MMACs", "of which inv.", "output (C x H x W)")
    footer = ("total", "", f"{params:,}", _mmacs(macs), _mmacs(_involution_total(by_op), True), "")
    title = getattr(model, "model_name", None) or type(model).__name__
    lines = [f"{title}, input {tuple(shape)}", *_table(header, rows, footer), *_notes(model, params, macs, by_op)]
    return "\n".join(lines)
