"""``visualize``: the kernels an involution layer generates for an image, drawn as in the paper's figure.

Li et al. (CVPR 2021) show, for each group of an involution layer, the generated K x K kernel reduced (summed) at
every pixel, as a heat map over the input: the kernels follow the image's content. Here the kernels are captured
with forward pre-hooks on the :class:`~involution.layers.Involution2d` modules (the layer's input is recorded and
``layer.generate_kernel`` is applied to it; the layers themselves are not changed).

>>> kernels = involution_kernels(model, image)                    # every involution layer
>>> kernels["layer1.2.conv2"].shape                               # (G, K, K, Ho, Wo)
>>> visualize("runs/digits", "seven.png", out="kernels.png")      # checkpoint + image file -> figure
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...layers import Involution2d
from .._images import read_image
from ..engine.plots import pyplot, save_figure
from ..engine.run_dir import run_dir_of
from .inference import load_classifier_and_spec
from .transforms import build_image_transform

REDUCTIONS = ("sum", "norm")


@dataclass
class InvolutionLayerInfo:
    """One involution layer of a model: its name, the layer, and (when measured) its output size ``(Ho, Wo)``."""

    name: str
    module: Involution2d
    output_size: tuple[int, int] | None = None

    @property
    def groups(self) -> int:
        return self.module.groups

    @property
    def kernel_size(self) -> tuple[int, int]:
        kh, kw = self.module.kernel_size
        return kh, kw

    @property
    def stride(self) -> tuple[int, int]:
        sh, sw = self.module.stride
        return sh, sw

    def describe(self) -> str:
        """``"layer1.0.conv2  C=16 G=1 K=7x7 stride 1 out 8x8"``."""
        k, s = self.kernel_size, self.stride
        size = "" if self.output_size is None else f"  out {self.output_size[0]}x{self.output_size[1]}"
        stride = f"{s[0]}" if s[0] == s[1] else f"{s[0]}x{s[1]}"
        return f"{self.name}  C={self.module.channels} G={self.groups} K={k[0]}x{k[1]} stride {stride}{size}"


def list_involution_layers(model: nn.Module, example: Tensor | None = None) -> list[InvolutionLayerInfo]:
    """The model's :class:`Involution2d` layers in module order (names as in ``model.named_modules()``).

    With ``example`` (one image ``(C, H, W)`` or ``(1, C, H, W)``), one forward pass also records each layer's output
    size.
    """
    infos = [InvolutionLayerInfo(name, m) for name, m in model.named_modules() if isinstance(m, Involution2d)]
    if example is None or not infos:
        return infos
    by_module = {id(info.module): info for info in infos}

    def record(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        by_module[id(module)].output_size = (int(output.shape[-2]), int(output.shape[-1]))

    _forward(model, example, [info.module.register_forward_hook(record) for info in infos])
    return infos


def default_layer(model: nn.Module) -> str:
    """The paper's choice: the last involution of the first stage (``layer1``) holding one; else the first one."""
    names = [info.name for info in list_involution_layers(model)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Involution2d layer to visualise")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        inside = [n for n in names if n.startswith(stage + ".")]
        if inside:
            return inside[-1]
    return names[0]


def involution_kernels(
    model: nn.Module, image: Tensor, layer: str | Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The kernels the involution layers of ``model`` generate for one image.

    Args:
        model: any module holding :class:`Involution2d` layers; run in eval mode (its mode is restored afterwards).
        image: the preprocessed image, ``(C, H, W)`` or ``(1, C, H, W)``.
        layer: a layer name, several names, or None for every involution layer.

    Returns:
        ``{name: kernel}`` in module order, each kernel ``(G, Kh, Kw, Ho, Wo)`` float32 on the CPU, equal to
        ``module.generate_kernel(x)[0]`` for the input ``x`` the layer received.
    """
    infos = list_involution_layers(model)
    valid = [info.name for info in infos]
    wanted = valid if layer is None else [layer] if isinstance(layer, str) else list(layer)
    for name in wanted:
        if name not in valid:
            raise ValueError(_unknown_layer_message(name, valid, model))
    modules = {info.name: info.module for info in infos if info.name in wanted}
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def capture(module: Involution2d, inputs: tuple[Tensor, ...]) -> None:
            captured[name] = module.generate_kernel(inputs[0])[0].float().cpu().contiguous()

        return capture

    _forward(model, image, [m.register_forward_pre_hook(make_hook(name)) for name, m in modules.items()])
    return {name: captured[name] for name in modules if name in captured}


def reduce_kernels(kernels: Tensor, reduce: str = "sum") -> Tensor:
    """``(G, Kh, Kw, Ho, Wo) -> (G, Ho, Wo)``: each pixel's kernel summed (the paper's maps) or its L2 norm."""
    if kernels.dim() != 5:
        raise ValueError(f"kernels must be (G, Kh, Kw, Ho, Wo), got {tuple(kernels.shape)}")
    if reduce == "sum":
        return kernels.sum(dim=(1, 2))
    if reduce == "norm":
        return kernels.flatten(1, 2).norm(dim=1)
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def check_pixel(pixel: Sequence[int] | None, height: int, width: int) -> tuple[int, int]:
    """``pixel`` as a ``(y, x)`` inside an ``height x width`` image; None gives the centre."""
    if pixel is None:
        return height // 2, width // 2
    if len(pixel) != 2:
        raise ValueError(f"pixel must be (Y, X), got {tuple(pixel)}")
    y, x = int(pixel[0]), int(pixel[1])
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(
            f"pixel (Y={y}, X={x}) lies outside the {height}x{width} model input: Y must be in [0, {height - 1}] "
            f"and X in [0, {width - 1}]"
        )
    return y, x


def pixel_to_grid(pixel: tuple[int, int], image_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    """The cell of a ``grid_size`` map (a layer's output) that covers ``pixel`` of an ``image_size`` image."""
    (py, px), (sy, sx), (gy, gx) = pixel, image_size, grid_size
    return min(gy - 1, py * gy // sy), min(gx - 1, px * gx // sx)


def plot_kernels(
    image: np.ndarray | Tensor, kernels: Tensor, path: str | os.PathLike, pixel: Sequence[int] | None = None,
    reduce: str = "sum", title: str = "", columns: int = 8, alpha: float = 0.6,
) -> Path:
    """Write the figure: the input with a cross at ``pixel``; per group the kernel reduced over K x K at every pixel,
    upsampled to the image and laid over it; and per group the K x K kernel at ``pixel``.

    Args:
        image: the picture to draw under the maps, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, values in [0, 1].
        kernels: one layer's kernels ``(G, Kh, Kw, Ho, Wo)`` (from :func:`involution_kernels`).
        pixel: ``(y, x)`` in image coordinates (default: the centre); mapped to the layer's ``Ho x Wo`` grid.
        reduce: ``"sum"`` (the paper) or ``"norm"`` (L2 norm) of each kernel.
        columns: groups per row.
        alpha: opacity of the heat maps over the image (1: the maps alone).
    """
    plt = pyplot()
    picture = _as_picture(image)
    height, width = picture.shape[:2]
    y, x = check_pixel(pixel, height, width)
    kernels = kernels.detach().float().cpu()
    maps = reduce_kernels(kernels, reduce)
    groups, kh, kw, ho, wo = kernels.shape
    gy, gx = pixel_to_grid((y, x), (height, width), (ho, wo))
    upsampled = F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0].numpy()
    at_pixel = kernels[:, :, :, gy, gx].numpy()

    cols = max(1, min(columns, groups))
    group_rows = -(-groups // cols)
    rows = 2 * group_rows
    cell = 1.9
    size = (max(7.5, cell * (cols + 1) + 0.8), cell * rows + 1.0)
    fig, axes = plt.subplots(rows, cols + 1, figsize=size, squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    gray = "gray" if picture.ndim == 2 else None
    cross = dict(marker="+", color="red", markersize=12, markeredgewidth=2)

    ax = axes[0, 0]
    ax.imshow(picture, cmap=gray, vmin=0, vmax=1)
    ax.plot([x], [y], **cross)
    ax.set_title(f"input {height}x{width}\n+ at (y={y}, x={x})", fontsize=8)
    label = f"{kh}x{kw} kernels at +\n= cell ({gy}, {gx}) of the\nlayer's {ho}x{wo} output"
    note = axes[group_rows, 0]
    note.text(0.5, 0.5, label, ha="center", va="center", fontsize=8, transform=note.transAxes)

    bound = float(np.abs(at_pixel).max()) or 1.0
    shown = None
    for g in range(groups):
        row, col = divmod(g, cols)
        ax = axes[row, col + 1]
        ax.imshow(picture, cmap=gray, vmin=0, vmax=1)
        ax.imshow(upsampled[g], cmap="jet", alpha=alpha)
        ax.plot([x], [y], **{**cross, "color": "white", "markersize": 8})
        ax.set_title(f"group {g}: {reduce}", fontsize=8)
        ax = axes[group_rows + row, col + 1]
        shown = ax.imshow(at_pixel[g], cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.plot([(kw - 1) / 2], [(kh - 1) / 2], marker="s", markersize=3, color="black")
        ax.set_title(f"group {g}", fontsize=8)
    if shown is not None:
        fig.colorbar(shown, ax=axes[group_rows:, -1].tolist(), label="weight", shrink=0.9)
    fig.suptitle(title or f"involution kernels: per-pixel {reduce} over {kh}x{kw}, {groups} groups", fontsize=9)
    return save_figure(fig, path)


@dataclass
class KernelFigure:
    """What :func:`visualize` drew: the figure's path, the layer, its kernels ``(G, K, K, Ho, Wo)`` and the pixel."""

    path: Path
    layer: InvolutionLayerInfo
    kernels: Tensor
    pixel: tuple[int, int]
    grid_pixel: tuple[int, int]


def describe_layers(checkpoint: str | os.PathLike, model: str | None = None) -> list[InvolutionLayerInfo]:
    """The involution layers of a checkpoint's model, with their output sizes at the model's input size."""
    net, spec = load_classifier_and_spec(checkpoint, model)
    example = torch.zeros(spec.in_chans, spec.image_size, spec.image_size)
    return list_involution_layers(net, example)


def visualize(
    checkpoint: str | os.PathLike, image: str | os.PathLike, layer: str | None = None,
    pixel: Sequence[int] | None = None, reduce: str = "sum", out: str | os.PathLike | None = None,
    model: str | None = None,
) -> KernelFigure:
    """Draw the kernels one involution layer of a trained classifier generates for an image file.

    Args:
        checkpoint: a run directory, its ``best.safetensors`` / ``last.pt``, or an official file (with ``model``).
        image: the image file (preprocessed with the checkpoint's DataSpec, as ``predict`` does).
        layer: an involution layer's name (see :func:`list_involution_layers`); default: the last one of the first
            stage, as in the paper.
        pixel: ``(y, x)`` in the preprocessed ``image_size x image_size`` input; default the centre.
        reduce: per-pixel reduction of the K x K kernel for the heat maps: ``"sum"`` (paper) or ``"norm"``.
        out: the PNG to write; default ``kernels-<image>-<layer>.png`` in the run directory (beside the file).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    net, spec = load_classifier_and_spec(checkpoint, model)
    infos = {info.name: info for info in list_involution_layers(net)}
    is_default = layer is None
    name = default_layer(net) if layer is None else layer
    if name not in infos:
        raise ValueError(_unknown_layer_message(name, list(infos), net))
    x = read_image(image, build_image_transform(spec))
    height, width = x.shape[-2:]
    y_x = check_pixel(pixel, height, width)
    kernels = involution_kernels(net, x, name)[name]
    info = infos[name]
    info.output_size = (int(kernels.shape[-2]), int(kernels.shape[-1]))
    grid = pixel_to_grid(y_x, (height, width), info.output_size)

    if out is None:
        out = run_dir_of(Path(checkpoint)) / f"kernels-{Path(image).stem}-{name.replace('.', '_')}.png"
    which = " (last involution of the first stage)" if is_default and name.startswith("layer1.") else ""
    ho, wo = info.output_size
    title = (
        f"{getattr(net, 'model_name', None) or type(net).__name__}: {name}{which}, G={info.groups}, "
        f"K={info.kernel_size[0]}x{info.kernel_size[1]}, stride {info.stride[0]}, output {ho}x{wo}\n"
        f"{Path(image).name}: per-pixel kernel {reduce} over K x K per group (top), kernels at + (bottom)"
    )
    path = plot_kernels(_denormalise(x, spec), kernels, out, pixel=y_x, reduce=reduce, title=title)
    return KernelFigure(path, info, kernels, y_x, grid)


# -- helpers ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _forward(model: nn.Module, image: Tensor, hooks: list[Any]) -> None:
    """Run ``model`` in eval mode (its mode restored) on one image ``(C, H, W)`` or ``(1, C, H, W)``; then remove
    the ``hooks`` (handles), whatever happened."""
    was_training = model.training
    try:
        if not (image.dim() == 3 or (image.dim() == 4 and image.shape[0] == 1)):
            raise ValueError(f"image must be one image (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
        model.eval()
        param = next(model.parameters(), None)
        batch = image.reshape(1, *image.shape[-3:])
        model(batch.to(param.device) if param is not None else batch)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def _unknown_layer_message(name: str, valid: Sequence[str], model: nn.Module) -> str:
    if not valid:
        return f"{type(model).__name__} has no Involution2d layer to visualise"
    return f"unknown involution layer {name!r}; valid names: {', '.join(valid)}"


def _denormalise(x: Tensor, spec: Any) -> np.ndarray:
    """A normalised ``(C, H, W)`` input back to a picture in [0, 1]: ``(H, W)`` grey or ``(H, W, 3)``."""
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(-1, 1, 1)
    return _as_picture((x * std + mean).clamp(0, 1))


def _as_picture(image: np.ndarray | Tensor) -> np.ndarray:
    picture = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
    if picture.ndim == 3 and picture.shape[0] in (1, 3) and picture.shape[-1] not in (1, 3):
        picture = picture.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    if picture.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W), (H, W, C) or (C, H, W), got {picture.shape}")
    return np.clip(picture, 0, 1)
