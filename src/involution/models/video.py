"""Small 3-D residual networks for clips ``(N, C, T, H, W)``: :class:`VideoNet`, whose spatio-temporal layers are
:class:`~involution.layers.Involution3d` (``video_rednet_tiny``) or ``nn.Conv3d`` (``video_resnet_tiny``, its twin).

The design is RedNet's bottleneck (Li et al., CVPR 2021: 1x1 reduce, K x K involution, 1x1 expand, residual) lifted to
three dimensions as the 3-D ResNets of Hara et al. ("Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and
ImageNet?", CVPR 2018) and Tran et al.'s R3D ("A Closer Look at Spatiotemporal Convolutions for Action Recognition",
CVPR 2018) lift ResNet's: every 3 x 3 becomes 3 x 3 x 3, strides cover time where the clip is long enough. The two
variants differ only in the middle layer of each block (an ``Involution3d`` and its BN, or a ``Conv3d`` and its BN):
same stem, widths, depths, strides, shortcuts and head, so a comparison at equal budget isolates that layer.

>>> from involution.models import create_model
>>> net = create_model("video_rednet_tiny", num_classes=8, in_chans=1)
>>> net(torch.randn(2, 1, 8, 32, 32)).shape
torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor, nn

from .._checks import check_int
from ..layers import ConvNormAct, Involution3d
from ..layers.pool import CeilAvgPool
from .registry import build_model, register_model

SPATIO_TEMPORAL = ("involution", "conv")
Stride = tuple[int, int, int]


def _middle_layer(kind: str, channels: int, stride: Stride, group_channels: int, reduction_ratio: int,
                  recompute_kernel: bool) -> nn.Module:
    """The 3 x 3 x 3 layer of a block: an involution or a convolution, ``channels`` in and out."""
    if kind == "involution":
        return Involution3d(channels, 3, stride, group_channels=group_channels, reduction_ratio=reduction_ratio,
                            recompute_kernel=recompute_kernel)
    if kind == "conv":
        return nn.Conv3d(channels, channels, 3, stride, 1, bias=False)
    raise ValueError(f"spatial must be one of {', '.join(SPATIO_TEMPORAL)}, got {kind!r}")


class VideoBottleneck(nn.Module):
    """``relu(bn3(conv3(relu(bn2(middle(relu(bn1(conv1(x)))))))) + shortcut(x))``: 1x1x1 reduce to ``mid``, the
    3x3x3 ``middle`` layer (with ``stride``), 1x1x1 expand to ``out_channels``. The shortcut is the identity, or
    (when the shape changes) a ceil-mode average pool by the stride and a 1x1x1 convolution with BN.

    Shapes: ``(N, in_channels, T, H, W) -> (N, out_channels, ceil(T/st), ceil(H/sh), ceil(W/sw))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Stride, spatial: str, expansion: int = 4,
                 group_channels: int = 8, reduction_ratio: int = 4, recompute_kernel: bool = False) -> None:
        super().__init__()
        mid = max(1, out_channels // expansion)
        self.conv1 = ConvNormAct(in_channels, mid, 1, norm_layer=nn.BatchNorm3d, dims=3)
        self.middle = _middle_layer(spatial, mid, stride, group_channels, reduction_ratio, recompute_kernel)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = ConvNormAct(mid, out_channels, 1, norm_layer=nn.BatchNorm3d, act_layer=None, dims=3)
        assert isinstance(self.conv3.bn, nn.BatchNorm3d)
        nn.init.zeros_(self.conv3.bn.weight)  # each block starts as its shortcut (as RedNet's zero_init_residual)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or max(stride) > 1:
            # the library's ceil-mode pooling: nn.AvgPool3d(ceil_mode=True) gets a wrong gradient under Inductor
            pool = CeilAvgPool(stride) if max(stride) > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, ConvNormAct(in_channels, out_channels, 1, norm_layer=nn.BatchNorm3d,
                                                            act_layer=None, dims=3))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn2(self.middle(self.conv1(x))))
        return self.relu(self.conv3(out) + self.shortcut(x))


class VideoNet(nn.Module):
    """A 3-D residual classifier of clips: stem (3x3x3 conv, stride ``(1, 2, 2)``), stages of
    :class:`VideoBottleneck`, global average pool, linear classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels (1 for grey clips).
        spatial: the blocks' 3x3x3 layer, ``"involution"`` (Involution3d) or ``"conv"`` (Conv3d).
        widths: output channels of each stage (each block's middle layer has a quarter of them).
        depths: blocks per stage.
        strides: ``(st, sh, sw)`` of each stage's first block.
        stem_width: channels of the stem.
        group_channels, reduction_ratio: of each Involution3d (ignored by the convolution twin).
        recompute_kernel: Involution3d's (default False: the kernels are small here, keeping them is faster).
        drop_rate: dropout before the classifier.

    Shapes: ``(N, in_chans, T, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 8,
        in_chans: int = 1,
        spatial: str = "involution",
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (1, 1, 1),
        strides: Sequence[Stride] = ((1, 2, 2), (2, 2, 2), (2, 2, 2)),
        stem_width: int = 16,
        group_channels: int = 8,
        reduction_ratio: int = 4,
        recompute_kernel: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(strides):
            raise ValueError(f"widths, depths and strides need one entry per stage, got {widths}, {depths}, {strides}")
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.spatial = spatial
        self.first_conv = "stem.conv"
        stem_stride: Any = (1, 2, 2)  # ConvNormAct passes it on to nn.Conv3d
        self.stem = ConvNormAct(in_chans, stem_width, 3, stride=stem_stride, norm_layer=nn.BatchNorm3d, dims=3)
        stages, channels = [], stem_width
        for width, depth, stride in zip(widths, depths, strides):
            blocks = []
            for i in range(check_int("depth", depth, low=1)):
                first = cast(Stride, tuple(stride))  # (three ints: the layers check)
                blocks.append(VideoBottleneck(channels, width, first if i == 0 else (1, 1, 1), spatial,
                                              group_channels=group_channels, reduction_ratio=reduction_ratio,
                                              recompute_kernel=recompute_kernel))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map ``(N, num_features, T', H', W')``."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects clips (N, C, T, H, W), got {tuple(x.shape)}")
        return self.fc(self.drop(self.forward_features(x).mean(dim=(2, 3, 4))))


def _cfg(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"input_size": (1, 8, 32, 32), "mean": (0.0,), "std": (1.0,), "num_classes": 8,
                           "first_conv": "stem.conv", "classifier": "fc"}
    cfg.update(overrides)
    return cfg


def _create(name: str, spatial: str, kwargs: dict[str, Any]) -> VideoNet:
    return build_model(VideoNet, name, {"spatial": spatial}, kwargs, _cfg())


@register_model
def video_rednet_tiny(**kwargs: Any) -> VideoNet:
    """A 3-D RedNet for small clips (e.g. 1 x 8 x 32 x 32): stem 16 (stride 1x2x2), stages 32/64/128 (strides 1x2x2,
    2x2x2, 2x2x2) of one bottleneck each whose
    middle layer is an Involution3d (3x3x3, 8 channels per group); the twin of ``video_resnet_tiny``."""
    return _create("video_rednet_tiny", "involution", kwargs)


@register_model
def video_resnet_tiny(**kwargs: Any) -> VideoNet:
    """A 3-D ResNet for small clips: ``video_rednet_tiny`` with an nn.Conv3d (3x3x3) as each block's middle layer
    and everything else the same."""
    return _create("video_resnet_tiny", "conv", kwargs)
