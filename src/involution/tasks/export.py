"""Deployment: export a model to ONNX or to a ``torch.export`` program, and check the result against eager.

>>> from involution.tasks.export import export_model
>>> export_model("rednet26", "rednet26.onnx")                       # dynamic batch and image size
>>> export_model("rednet50", "rednet50.pt2", format="exported-program", checkpoint="rednet50.pth")

* ``format="onnx"``: ``torch.export.export`` with dynamic batch/height/width, then ``torch.onnx.export`` (the
  torch.export-based exporter) with the involution op lowered to standard ONNX operators
  (:mod:`involution.ops.onnx`), a light graph clean-up (constant folding, dead nodes), ``onnx.checker``, and,
  when onnxruntime is installed, a run compared with eager PyTorch at a batch and size other than the example's.
  The file runs in any ONNX runtime; nothing of this package is needed there. With ``onnx_ops="custom"`` each
  involution is instead one ``involution::Involution2d`` node, which onnxruntime runs with this package's
  custom-op library (:mod:`involution.ops.onnxruntime_library`, a C++ kernel): 2.4x faster for RedNet-50,
  onnxruntime only.
* ``format="exported-program"``: ``torch.export.export`` + ``torch.export.save`` (a ``.pt2`` archive). The
  program calls ``torch.ops.involution.involution2d``, so load it with ``torch.export.load`` in a process that has
  imported ``involution`` (which registers the op). It is checked by loading it back and comparing with eager.

Models are exported in eval mode and traced under ``torch.no_grad()`` (batch norm uses its running statistics;
``recompute_kernel`` only matters for gradients, so it plays no part), with every BatchNorm that follows a
convolution folded into it (:func:`involution.layers.fuse.fuse_conv_bn_`; ``fuse=False`` keeps them).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._atomic import refuse_same_file
from ..layers.fuse import fuse_conv_bn_

__all__ = [
    "FORMATS",
    "ExportCheck",
    "check_exported_program",
    "check_onnx",
    "export_model",
    "load_export_model",
    "onnx_session",
]

FORMATS = ("onnx", "exported-program")
_INSTALL_HINT = "pip install 'involution[export]' (or: pip install onnx onnxscript onnxruntime)"
# Names given to the symbolic input dimensions of an ONNX file (torch.export calls them s0, s1, ...).
_DIM_NAMES = ("batch", None, "height", "width")


@dataclass(frozen=True)
class ExportCheck:
    """The comparison of an exported model with eager PyTorch on one random input.

    ``input_shape``: the ``(N, C, H, W)`` input used; ``max_abs_error``: the largest absolute difference over all
    outputs; ``max_abs_value``: the largest absolute eager output (the scale of the error); ``runtime``: what ran
    the exported model (``"onnxruntime"`` or ``"torch.export"``).
    """

    input_shape: tuple[int, ...]
    max_abs_error: float
    max_abs_value: float
    runtime: str

    def __str__(self) -> str:
        return (
            f"{self.runtime} vs eager on input {tuple(self.input_shape)}: max abs error {self.max_abs_error:.2e} "
            f"(outputs up to {self.max_abs_value:.2e})"
        )


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the '{module}' package, which is not installed: {_INSTALL_HINT}")


def load_export_model(
    model_or_name: nn.Module | str,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """The model to export, in eval mode: a registry name (built, optionally from ``checkpoint``) or a module.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: unknown model name (with close matches); ``num_classes``/``model_kwargs`` given with a module.
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} does not exist (or is not a file); give the path of an official mmcls "
            ".pth or of a safetensors checkpoint written by this library"
        )
    if isinstance(model_or_name, str):
        from ..models import create_model, load_model
        from ..models.checkpoint import FORMAT, read_checkpoint

        kwargs = dict(model_kwargs)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        recorded = read_checkpoint(checkpoint)[1] if checkpoint is not None else {}
        if recorded.get("format") == FORMAT and recorded.get("model") == model_or_name:
            # This library's checkpoint records the constructor arguments (class count, width ...): rebuild from
            # them, so a fine-tuned 10-class model is not exported with a re-initialised 1000-class head.
            model = load_model(checkpoint, **kwargs)
        else:
            model = create_model(model_or_name, checkpoint=checkpoint, **kwargs)
    elif isinstance(model_or_name, nn.Module):
        if num_classes is not None or model_kwargs:
            raise ValueError("num_classes and model arguments apply to a model name, not to a model instance")
        model = model_or_name
        if checkpoint is not None:
            from ..models import load_checkpoint

            load_checkpoint(model, checkpoint)
    else:
        raise TypeError(f"model_or_name must be a registry name or an nn.Module, got {type(model_or_name).__name__}")
    return model.eval()


def _example_shape(model: nn.Module, input_size: Sequence[int] | None, batch_size: int) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the export example: ``input_size`` (C, H, W) or (H, W), else ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default = tuple(cfg.get("input_size", (3, 224, 224)))
    size = tuple(int(s) for s in (input_size if input_size is not None else default))
    if len(size) == 2:
        size = (int(default[0]), *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (H, W) with positive sizes, got {input_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (int(batch_size), *size)


def _check_shape(shape: tuple[int, int, int, int], dims: Sequence[int]) -> tuple[int, int, int, int]:
    """A different input than the example along the dynamic dimensions ``dims``, to show that they really are."""
    n, c, h, w = shape
    return (n + (0 in dims), c, h + 32 * (2 in dims), w + 16 * (3 in dims))


def _dynamic_shapes(dims: Sequence[int]) -> tuple[dict[int, Any], ...] | None:
    # Dim.AUTO lets torch.export work out the constraints itself (RedNets need H, W >= a few strides); named Dims
    # with hand-written ranges trip its solver on the ceil-mode pooling.
    if not dims:
        return None
    return ({d: torch.export.Dim.AUTO for d in dims},)


def _map_sizes(model: nn.Module, x: Tensor) -> list[tuple[int, int]]:
    """The (height, width) of every 4-D tensor the submodules of ``model`` return for ``x``, in call order."""
    sizes: list[tuple[int, int]] = []

    def record(_module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4:
            sizes.append((int(out.shape[-2]), int(out.shape[-1])))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _degenerate_map(model: nn.Module, example: Tensor) -> tuple[int, int] | None:
    """A feature map size that follows the input's and is 1 pixel at ``example`` (None if there is none).

    A map whose size is 1 whatever the input (a global pooling's) does not count: only sizes that change with the
    input are symbolic in the exported program.
    """
    n, c, h, w = example.shape
    at_example = _map_sizes(model, example)
    at_double = _map_sizes(model, example.new_zeros(n, c, 2 * h, 2 * w))
    for small, large in zip(at_example, at_double):
        if any(a == 1 and b != 1 for a, b in zip(small, large)):
            return small
    return None


def _flat_outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__}")


def _compare(expected: Any, got: Sequence[Any], shape: Sequence[int], runtime: str) -> ExportCheck:
    ref = _flat_outputs(expected)
    if len(ref) != len(got):
        raise RuntimeError(f"{runtime} returned {len(got)} outputs, eager PyTorch {len(ref)}")
    err = val = 0.0
    for r, g in zip(ref, got):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(r.shape):
            raise RuntimeError(f"{runtime} output shape {tuple(g.shape)} differs from eager {tuple(r.shape)}")
        err = max(err, (g.float() - r.float()).abs().max().item())
        val = max(val, r.abs().max().item())
    return ExportCheck(tuple(int(s) for s in shape), err, val, runtime)


def _assert_close(check: ExportCheck, rtol: float) -> ExportCheck:
    if not check.max_abs_error <= rtol * max(1.0, check.max_abs_value):
        raise RuntimeError(f"exported model disagrees with eager PyTorch: {check} (tolerance {rtol:g} x scale)")
    return check


def _random_input(shape: Sequence[int], seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for the ONNX file at ``path``; the involution custom-op library is registered
    when the file uses it (``onnx_ops="custom"``), built on first use."""
    _require("onnxruntime", "running an ONNX file")
    import onnx
    import onnxruntime as ort

    from ..ops import onnxruntime_library

    proto = onnx.load(str(path), load_external_data=False)
    custom = any(o.domain == onnxruntime_library.DOMAIN for o in proto.opset_import)
    opts = onnxruntime_library.session_options(threads, register_library=custom)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(
    path: str | os.PathLike, model: nn.Module, shape: Sequence[int], threads: int | None = None
) -> ExportCheck:
    """Run the ONNX file at ``path`` in onnxruntime (CPU) on a random ``shape`` input and compare with ``model``."""
    session = onnx_session(path, threads)
    x = _random_input(shape)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = model(x)
    return _compare(expected, got, shape, "onnxruntime")


def check_exported_program(path: str | os.PathLike, model: nn.Module, shape: Sequence[int]) -> ExportCheck:
    """Load the ``.pt2`` at ``path`` with ``torch.export.load`` and compare it with ``model`` on a random input."""
    program = torch.export.load(str(path))
    x = _random_input(shape)
    with torch.inference_mode():
        got = program.module()(x)
        expected = model(x)
    return _compare(expected, _flat_outputs(got), shape, "torch.export")


def _rename_input_dims(proto: Any) -> None:
    """Give the input's symbolic dimensions readable names (batch, height, width) wherever they appear."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(dims, _DIM_NAMES) if new and d.dim_param}
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def _export_onnx(
    program: torch.export.ExportedProgram, example: Tensor, out: Path, opset: int | None, onnx_ops: str
) -> None:
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    import onnx
    import onnxscript.optimizer

    from ..ops.onnx import onnx_translation_table

    kwargs = {} if opset is None else {"opset_version": opset}
    onnx_program = torch.onnx.export(
        program,
        (example,),
        dynamo=True,
        custom_translation_table=onnx_translation_table(onnx_ops),
        input_names=["input"],
        # The exporter's own optimizer runs pattern rewrites whose cost grows steeply with the graph (minutes for
        # a RedNet-50, whose involutions are 49 taps each); folding constants and dropping dead nodes is what
        # onnxruntime needs from it (it fuses Conv + BatchNorm itself), and takes well under a second.
        optimize=False,
        verbose=False,
        **kwargs,
    )
    model = onnx_program.model
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    proto = onnx_program.model_proto
    _rename_input_dims(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out))


def export_model(
    model_or_name: nn.Module | str,
    out: str | os.PathLike,
    format: str = "onnx",
    checkpoint: str | os.PathLike | None = None,
    input_size: Sequence[int] | None = None,
    batch_size: int = 2,
    dynamic: bool = True,
    num_classes: int | None = None,
    verify: bool = True,
    rtol: float = 1e-4,
    opset: int | None = None,
    onnx_ops: str = "standard",
    fuse: bool = True,
    log: Callable[[str], None] | None = None,
    **model_kwargs: Any,
) -> Path:
    """Export a model for deployment and check the result; returns the path written.

    Args:
        model_or_name: a registry name (``"rednet50"``) or a module.
        out: the file to write (``.onnx`` or ``.pt2`` by convention); its folder is created. It is written under a
            temporary name beside it, checked (``verify``), then renamed: a failed export leaves ``out`` as it was.
        format: ``"onnx"`` or ``"exported-program"``.
        checkpoint: weights to load first (official mmcls ``.pth`` or this library's safetensors).
        input_size: the example input's ``(C, H, W)`` or ``(H, W)``; default ``model.pretrained_cfg["input_size"]``.
        batch_size: the example's batch (default 2: torch.export specialises a batch of 1 to a constant).
        dynamic: batch, height and width dynamic (default); else fixed to the example's shape. Height and width
            are fixed anyway when the example makes a feature map 1 pixel wide, and the batch when it is 1
            (torch.export would specialise the program to those sizes); the log says so.
        num_classes: classifier outputs (a name only; default the model's 1000, 0: pooled features).
        verify: run the exported model (onnxruntime for ONNX, if installed; the loaded program otherwise) on a
            random input of another batch and size (if dynamic) and compare with eager PyTorch.
        rtol: the largest accepted max abs error, relative to the largest output (at least 1).
        opset: ONNX opset, at least 18 (default: the exporter's).
        onnx_ops: how involution is written in ONNX: ``"standard"`` operators (runs in any ONNX runtime) or one
            ``"custom"`` ``involution::Involution2d`` node per layer (onnxruntime with the library of
            :mod:`involution.ops.onnxruntime_library`, which ``check_onnx``/``onnx_session`` load; 2.4x faster
            for RedNet-50).
        fuse: fold every BatchNorm that follows a convolution into it before exporting (default; a copy is
            folded, the check compares with the unfolded model).
        log: called with one line per step (e.g. ``print``); silent by default.
        **model_kwargs: passed to ``create_model`` with a name (``features_only=True``, ``width=0.5`` ...).

    Raises:
        ValueError: unknown format or model name, bad ``input_size``; ``out`` is the ``checkpoint`` file itself.
        IsADirectoryError: ``out`` is a directory.
        FileNotFoundError: missing checkpoint.
        ImportError: onnx / onnxscript missing for ONNX export (naming the pip install).
        RuntimeError: the exported model disagrees with eager PyTorch.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None and opset < 18:
        raise ValueError(f"opset {opset} is too old: the involution lowering uses opset 18 operators; use >= 18")
    if format == "onnx":  # fail before the (slow) tracing when the exporter's packages are missing
        _require("onnx", "ONNX export")
        _require("onnxscript", "ONNX export")
        from ..ops.onnx import check_onnx_ops

        check_onnx_ops(onnx_ops)
        if onnx_ops == "custom" and verify and importlib.util.find_spec("onnxruntime") is not None:
            from ..ops.onnxruntime_library import library_path

            library_path()  # the check needs the custom-op library: build it (or say why not) before tracing
    say = log or (lambda _msg: None)
    out = Path(out)
    check_destination(out, checkpoint)
    model = load_export_model(model_or_name, checkpoint, num_classes, **model_kwargs)
    shape = _example_shape(model, input_size, batch_size)
    example = _random_input(shape)
    dims: tuple[int, ...] = (0, 2, 3) if dynamic else ()
    if dims and (size := _degenerate_map(model, example)) is not None:
        # torch.export assumes a dynamic size is never 0 or 1 and specialises the program to it when it is (a
        # RedNet-small's last map at 8x8 is 1x1): such an example fixes the height and width.
        dims = (0,)
        say(f"at input {shape} a feature map is {size[0]}x{size[1]}, and torch.export cannot keep a size of 1 "
            "dynamic: the height and width are fixed to the example's (give a larger input size to keep them "
            "dynamic)")
    if shape[0] < 2:
        dims = tuple(d for d in dims if d != 0)  # likewise a batch of 1
    names = {0: "batch", 2: "height", 3: "width"}
    traced = model
    if fuse:
        traced = copy.deepcopy(model)
        say(f"folded {fuse_conv_bn_(traced)} BatchNorms into the convolutions before them")
    say(f"tracing {getattr(model, 'model_name', type(model).__name__)} with torch.export on input {shape}"
        + (f" (dynamic {', '.join(names[d] for d in dims)})" if dims else " (static shape)"))
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(traced, (example,), dynamic_shapes=_dynamic_shapes(dims))

    # written beside --out under a temporary name, checked there, and only then renamed to --out: a failed export
    # (or a crash) leaves --out as it was (absent, or the previous export) and no temporary file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")  # torch.export.save wants .pt2 kept
    try:
        if format == "onnx":
            _export_onnx(program, example, tmp, opset, onnx_ops)
            what = "onnx.checker passed"
        else:
            torch.export.save(program, str(tmp))
            what = "load it with torch.export.load after `import involution`"
        size = f"{tmp.stat().st_size / 2**20:.1f} MiB"
        checked = verify and (format != "onnx" or importlib.util.find_spec("onnxruntime") is not None)
        if verify and not checked:
            say(f"onnxruntime not installed, run check skipped ({_INSTALL_HINT})")
        if checked:
            say(f"exported ({size}), {what}; comparing with eager PyTorch before writing {out}")
            check = check_onnx if format == "onnx" else check_exported_program
            say(str(_assert_close(check(tmp, model, _check_shape(shape, dims)), rtol)))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if not checked:
        say(f"wrote {out} ({size}), {what}")
    return out


def check_destination(out: Path, checkpoint: str | os.PathLike | None) -> None:
    """Refuse an ``out`` that is a directory, or the very file of ``checkpoint`` (by any name: symlinks, hard
    links and ``..`` compare equal), before any work."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give the file to write, e.g. {out / 'model.onnx'}")
    if checkpoint is not None:
        refuse_same_file(checkpoint, out)
