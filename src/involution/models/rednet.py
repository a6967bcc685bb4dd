"""RedNet (Li et al., CVPR 2021): ResNet with the 3x3 convolution of every bottleneck replaced by involution.

The structure follows the official mmcls backbone (``style='pytorch'``, ``avg_down=False``) module for module, and
the module names are the official ones, so an official checkpoint maps onto this model by stripping prefixes
(``backbone.`` and ``head.``, see :mod:`involution.models.rednet_convert`):

* ``stem``: ``0`` 3x3 conv (C_in -> 32, stride 2) + BN + ReLU, ``1`` involution (32 channels, K=3, 2 groups),
  ``2`` BN, ``3`` ReLU, ``4`` 3x3 conv (32 -> 64) + BN + ReLU; then ``maxpool`` (3x3, stride 2, padding 1).
* ``layer1..4``: bottlenecks ``conv1`` (1x1) ``bn1`` ReLU, ``conv2`` (involution K=7, the stage's stride on the
  first block) ``bn2`` ReLU, ``conv3`` (1x1, x4 channels) ``bn3``, plus the identity or ``downsample`` (1x1 conv
  with the stride + BN wherever the shape changes), then ReLU.
* ``global_pool`` + ``fc``.

For the study of which half of involution matters (dynamic vs static kernels, shared vs per-channel), ``spatial``
swaps the bottlenecks' ``conv2`` for another K x K layer (:func:`involution.layers.spatial_layer`); the stem's
involution stays an :class:`~involution.layers.Involution2d` whatever ``spatial`` says, so the variants differ in
the bottlenecks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TypedDict, cast

import torch
from torch import Tensor, nn

from ..layers import ConvNormAct, Involution2d, spatial_layer
from ..layers.conv_norm_act import LayerFactory, resolve_norm
from ..layers.recompute import recompute
from ._base import ResidualNet
from ._stages import STAGE_DEPTHS, add_stages
from .rednet_convert import checkpoint_filter_fn
from .registry import build_model, default_cfg, register_model, small_cfg


class RedNetBottleneck(nn.Module):
    """Bottleneck with an involution in the middle: ``(N, C_in, H, W) -> (N, 4 * mid, ceil(H/s), ceil(W/s))``.

    Args:
        in_channels: C_in.
        mid_channels: channels of the involution; the block outputs ``expansion * mid_channels``.
        stride: stride of the involution (and of the downsample branch).
        downsample: module applied to the identity branch (``None``: the identity itself).
        kernel_size, group_channels, reduction_ratio: of the involution (official: 7, 16, 4).
        recompute_kernel: see :class:`~involution.layers.Involution2d`.
        spatial: which K x K layer ``conv2`` is, one of :data:`~involution.layers.SPATIAL_KINDS` (default
            ``"involution"``, the official block; see :func:`~involution.layers.spatial_layer`).
        coord_channels: give ``conv2``'s kernel generator the pixel coordinates (``involution``/``dynamic`` only).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        kernel_size: int = 7,
        group_channels: int = 16,
        reduction_ratio: int = 4,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        recompute_kernel: bool = True,
        spatial: str = "involution",
        coord_channels: bool = False,
    ) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = norm_layer(mid_channels)
        self.conv2 = spatial_layer(
            spatial,
            mid_channels,
            kernel_size=kernel_size,
            stride=stride,
            group_channels=group_channels,
            reduction_ratio=reduction_ratio,
            norm_layer=norm_layer,
            recompute_kernel=recompute_kernel,
            coord_channels=coord_channels,
        )
        self.bn2 = norm_layer(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # In place, as torchvision's bottleneck: no backward reads bn3's output (BatchNorm's reads its input, and
        # once fused, a convolution's too), and the ReLU after it keeps its own output.
        out += identity
        return self.relu(out)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The BatchNorms that directly follow a convolution (``bn2`` too when ``conv2`` is a depthwise conv)."""
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]


class _InvolutionArgs(TypedDict):
    """What the stem's involution and the blocks' share."""

    group_channels: int
    reduction_ratio: int
    norm_layer: LayerFactory
    recompute_kernel: bool


class RedNet(ResidualNet):
    """RedNet classifier / backbone.

    The network runs in the layout of its input and weights; it never converts either. The registered variants
    (``create_model("rednet50")``) are built with channels_last (NHWC) weights, the layout the involution kernels
    and oneDNN's convolutions are fastest in: an NCHW input is then converted by the stem's first convolution and
    every map after it is NHWC (on 2 CPU cores RedNet-50 at batch 8 in NCHW ran 1.13x ResNet-50's time, about 0.8x
    in NHWC; docs/benchmarks.md). ``create_model(..., channels_last=False)`` keeps the caller's layout throughout.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for RedNet-50.
        num_classes: classifier outputs; 0 keeps no classifier (``forward`` returns pooled features).
        in_chans: input channels.
        width: multiplier of every width (stem 64, stages 64/128/256/512 x4); groups stay
            ``max(1, C // group_channels)``, so narrow models (0.25) work.
        stem_kernel_size: K of the stem involution: 3 (official classification) or 7 (official det/seg backbone).
        small_input: for 8x8 to 32x32 images: the stem's first conv has stride 1 and there is no max-pool, so the
            stage reductions are 1/2/4/8 instead of 4/8/16/32.
        stem_stride: stride of the stem's first conv (default 1 with ``small_input``, else 2); 2 with
            ``small_input`` halves the resolution once (reductions 2/4/8/16) for about a quarter of the compute.
        kernel_size: K of the bottleneck involutions (official 7).
        group_channels: channels per involution group (official 16).
        reduction_ratio: the kernel generator's reduction (official 4).
        avg_down: downsample the identity with a 2x2 average pool before a stride-1 1x1 conv (official option,
            off in the official RedNets; adds no parameters).
        recompute_kernel: every involution regenerates its kernels in the backward instead of storing them
            (default True: less memory; False is a little faster for small models, where memory is no concern).
        recompute_stem: when taking gradients, keep only the stem's input and run the stem again in the backward
            (default True): its activations at half the input resolution are the largest of the model (about
            110 MiB for RedNet-50 at batch 8, 224x224), for about 9% of the forward's multiply-adds. Results and
            BatchNorm statistics are identical either way.
        spatial: the bottlenecks' K x K layer, one of :data:`~involution.layers.SPATIAL_KINDS`: ``"involution"``
            (default, the official RedNet), ``"dynamic"`` (per-channel generated kernels), ``"static_shared"``
            (one learned kernel per group), ``"depthwise"`` (depthwise convolution) or ``"attention"`` (local
            self-attention, G heads). The stem keeps its involution whatever this says.
        coord_channels: the bottlenecks' kernel generators also see each pixel's normalised (y, x) coordinates
            (``spatial`` ``"involution"`` or ``"dynamic"`` only; the stem's involution does not get them).
        zero_init_residual: zero the last BN of every block (official: True).
        drop_rate: dropout before the classifier.
        grad_checkpointing: recompute block activations in backward (official ``with_cp``).
        features_only, out_indices: return the maps of these stages (0..3) instead of logits.
        norm_layer: normalisation factory (default ``nn.BatchNorm2d``), or its name: ``"bn"``, ``"syncbn"``.
        global_pool: ``"avg"`` (global average pooling) or ``""`` (none: ``forward`` returns the last map
            ``(N, num_features, h, w)``; needs ``num_classes=0``), as timm's argument of that name.

    Shapes: ``(N, in_chans, H, W) -> (N, num_classes)``; any H, W (odd included) of at least 1 pixel per stage.
    """

    first_conv = "stem.0.conv"
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)  # official mmcls files

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        stem_kernel_size: int = 3,
        small_input: bool = False,
        stem_stride: int | None = None,
        kernel_size: int = 7,
        group_channels: int = 16,
        reduction_ratio: int = 4,
        avg_down: bool = False,
        recompute_kernel: bool = True,
        recompute_stem: bool = True,
        spatial: str = "involution",
        coord_channels: bool = False,
        zero_init_residual: bool = True,
        drop_rate: float = 0.0,
        grad_checkpointing: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        norm_layer: LayerFactory | str = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        norm_layer = resolve_norm(norm_layer)  # a name from --model-kwargs, or a factory
        layers, stem_channels, stem_stride = self._configure(
            layers, width, in_chans, small_input, stem_stride, zero_init_residual,
            avg_down=avg_down, recompute_kernel=recompute_kernel, recompute_stem=recompute_stem,
            coord_channels=coord_channels,
        )
        self.recompute_stem = recompute_stem
        half = max(1, stem_channels // 2)
        # what the stem's involution and the blocks' share
        involution_args: _InvolutionArgs = {"group_channels": group_channels, "reduction_ratio": reduction_ratio,
                                            "norm_layer": norm_layer, "recompute_kernel": recompute_kernel}
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, half, 3, stride=stem_stride, padding=1, norm_layer=norm_layer),
            Involution2d(half, kernel_size=stem_kernel_size, **involution_args),
            norm_layer(half),
            nn.ReLU(inplace=True),
            ConvNormAct(half, stem_channels, 3, padding=1, norm_layer=norm_layer),
        )
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)

        block = partial(
            RedNetBottleneck, kernel_size=kernel_size, spatial=spatial, coord_channels=coord_channels, **involution_args
        )
        reduction = stem_stride * (1 if small_input else 2)
        channels, reductions = add_stages(
            self, block, RedNetBottleneck.expansion, layers, stem_channels, width, reduction, norm_layer, avg_down
        )
        self._finish(
            channels, reductions, num_classes, drop_rate, features_only, out_indices, grad_checkpointing, global_pool
        )

    def _zero_init_residual(self) -> None:
        for m in self.modules():
            if isinstance(m, RedNetBottleneck):
                nn.init.zeros_(cast(Tensor, m.bn3.weight))  # (the norm's affine weight)

    def forward_stem(self, x: Tensor) -> Tensor:
        # in eager mode only: TorchScript cannot compile the recomputation, and a torch.fx Proxy's requires_grad
        # is not known
        if not torch.jit.is_scripting():
            if isinstance(x, Tensor) and self.recompute_stem and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.stem.parameters())
            ):
                return self.maxpool(recompute(self.stem, x))
        return self.maxpool(self.stem(x))


# --- registered variants --------------------------------------------------------------------------------------

# Official model zoo (README of d-li14/involution; ImageNet 224x224 single crop): params (M), GFLOPs, top-1, top-5.
# Its checkpoints were on a OneDrive that no longer serves them (the repository's issues #54, #62).
_CARDS = {
    26: (9.23, 1.73, 75.96, 93.19),
    38: (12.39, 2.22, 77.48, 93.57),
    50: (15.54, 2.71, 78.35, 94.13),
    101: (25.65, 4.74, 78.92, 94.35),
    152: (33.99, 6.79, 79.12, 94.38),
}
# PaddleClas's converted ImageNet weights, the copies still online, and their top-1 / top-5 (PaddleClas's model
# zoo docs). Nothing here downloads them; create_model(name, checkpoint=PATH) loads the file.
_PADDLECLAS = {26: (75.95, 93.19), 38: (77.47, 93.56), 50: (78.33, 94.17), 101: (78.94, 94.36), 152: (79.17, 94.40)}
PADDLECLAS_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/RedNet{depth}_pretrained.pdparams"


def _rednet_cfg(depth: int, small: bool) -> dict:
    params, gflops, top1, top5 = _CARDS[depth]
    card = {
        "first_conv": "stem.0.conv",
        "classifier": "fc",
        "paper": "https://arxiv.org/abs/2103.06255",
        "paper_ids": "arXiv:2103.06255",
        "paper_name": "Involution: Inverting the Inherence of Convolution for Visual Recognition",
        "origin": "official mmcls RedNet (d-li14/involution), style='pytorch'",
        "origin_url": "https://github.com/d-li14/involution",
    }
    if small:
        return small_cfg(**card)
    paddle_top1, paddle_top5 = _PADDLECLAS[depth]
    return default_cfg(
        **card, paper_params_m=params, paper_gflops=gflops, paper_top1=top1, paper_top5=top5,
        weights_url=PADDLECLAS_URL.format(depth=depth), paddleclas_top1=paddle_top1, paddleclas_top5=paddle_top5,
    )


def _create(depth: int, small: bool, kwargs: dict) -> RedNet:
    name = f"rednet{depth}" + ("_small" if small else "")
    args = {"layers": STAGE_DEPTHS[depth]}
    if small:
        kwargs = {"small_input": True, **kwargs}
    return build_model(RedNet, name, args, kwargs, _rednet_cfg(depth, small), channels_last=True)


@register_model
def rednet26(**kwargs) -> RedNet:
    """RedNet-26: stages (1, 2, 4, 1). 9,233,166 parameters (9.23 M) with the 1000-class head, 1.73 GFLOPs at 224.

    Official ImageNet results: top-1 75.96 %, top-5 93.19 % (vs ResNet-26: 32.8 % fewer parameters).
    ImageNet weights: PaddleClas's ``RedNet26_pretrained.pdparams`` (top-1 75.95 %, top-5 93.19 %; URL in
    ``pretrained_cfg['weights_url']``), loaded by ``create_model("rednet26", checkpoint=PATH)``.
    """
    return _create(26, False, kwargs)


@register_model
def rednet38(**kwargs) -> RedNet:
    """RedNet-38: stages (2, 3, 5, 2). 12,386,986 parameters (12.39 M), 2.22 GFLOPs at 224.

    Official ImageNet results: top-1 77.48 % (77.47 in the paper), top-5 93.57 %.
    ImageNet weights: PaddleClas's ``RedNet38_pretrained.pdparams`` (top-1 77.47 %, top-5 93.56 %; URL in
    ``pretrained_cfg['weights_url']``), loaded by ``create_model("rednet38", checkpoint=PATH)``.
    """
    return _create(38, False, kwargs)


@register_model
def rednet50(**kwargs) -> RedNet:
    """RedNet-50: stages (3, 4, 6, 3). 15,540,806 parameters (15.54 M), 2.71 GFLOPs at 224.

    Official ImageNet results: top-1 78.35 %, top-5 94.13 %. The official detection/segmentation backbone is this
    model with ``stem_kernel_size=7``.
    ImageNet weights: PaddleClas's ``RedNet50_pretrained.pdparams`` (top-1 78.33 %, top-5 94.17 %; URL in
    ``pretrained_cfg['weights_url']``), loaded by ``create_model("rednet50", checkpoint=PATH)``.
    """
    return _create(50, False, kwargs)


@register_model
def rednet101(**kwargs) -> RedNet:
    """RedNet-101: stages (3, 4, 23, 3). 25,652,950 parameters (25.65 M), 4.74 GFLOPs at 224.

    Official ImageNet results: top-1 78.92 %, top-5 94.35 %.
    ImageNet weights: PaddleClas's ``RedNet101_pretrained.pdparams`` (top-1 78.94 %, top-5 94.36 %; URL in
    ``pretrained_cfg['weights_url']``), loaded by ``create_model("rednet101", checkpoint=PATH)``.
    """
    return _create(101, False, kwargs)


@register_model
def rednet152(**kwargs) -> RedNet:
    """RedNet-152: stages (3, 8, 36, 3). 33,984,582 parameters (the README rounds to 33.99 M), 6.79 GFLOPs at 224.

    Official ImageNet results: top-1 79.12 %, top-5 94.38 %.
    ImageNet weights: PaddleClas's ``RedNet152_pretrained.pdparams`` (top-1 79.17 %, top-5 94.40 %; URL in
    ``pretrained_cfg['weights_url']``), loaded by ``create_model("rednet152", checkpoint=PATH)``.
    """
    return _create(152, False, kwargs)


@register_model
def rednet26_small(**kwargs) -> RedNet:
    """RedNet-26 for 8x8-32x32 images (CIFAR-like): stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(26, True, kwargs)


@register_model
def rednet38_small(**kwargs) -> RedNet:
    """RedNet-38 for 8x8-32x32 images: stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(38, True, kwargs)


@register_model
def rednet50_small(**kwargs) -> RedNet:
    """RedNet-50 for 8x8-32x32 images: stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(50, True, kwargs)


@register_model
def rednet101_small(**kwargs) -> RedNet:
    """RedNet-101 for 8x8-32x32 images: stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(101, True, kwargs)


@register_model
def rednet152_small(**kwargs) -> RedNet:
    """RedNet-152 for 8x8-32x32 images: stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(152, True, kwargs)
