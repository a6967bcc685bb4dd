"""ResNet baselines with bottleneck blocks (torchvision's ``Bottleneck``, ``style='pytorch'``: stride on the 3x3).

Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv2``, ``layer1.0.downsample.0``, ``fc`` ...), so
torchvision ResNet-50/101/152 state dicts load as they are. ResNet-26/38 use the RedNet-26/38 stage depths, giving
the convolution baselines that the paper compares against.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from ..layers.conv_norm_act import LayerFactory, resolve_norm
from ._base import ResidualNet
from ._stages import STAGE_DEPTHS, add_stages
from .rednet_convert import checkpoint_filter_fn
from .registry import build_model, default_cfg, register_model, small_cfg


class ResNet(ResidualNet):
    """Bottleneck ResNet classifier / backbone.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: classifier outputs; 0 keeps no classifier.
        in_chans: input channels.
        width: multiplier of every width (stem 64, stages 64/128/256/512 x4).
        small_input: for 8x8 to 32x32 images: a 3x3 stride-1 first conv and no max-pool (reductions 1/2/4/8).
        stem_stride: stride of the first conv (default 1 with ``small_input``, else 2), as for :class:`RedNet`.
        zero_init_residual: zero the last BN of every block (default True, as for RedNet, so both start alike).
        drop_rate, grad_checkpointing, features_only, out_indices, norm_layer, global_pool: as for :class:`RedNet`.

    Shapes: ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    first_conv = "conv1"
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)  # mmcls files name the parts as RedNet's do

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        small_input: bool = False,
        stem_stride: int | None = None,
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
            layers, width, in_chans, small_input, stem_stride, zero_init_residual
        )
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, stem_channels, 3, stride=stem_stride, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_channels, 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = norm_layer(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)

        reduction = stem_stride * (1 if small_input else 2)
        block = partial(Bottleneck, norm_layer=norm_layer)
        channels, reductions = add_stages(
            self, block, Bottleneck.expansion, layers, stem_channels, width, reduction, norm_layer
        )
        self._finish(
            channels, reductions, num_classes, drop_rate, features_only, out_indices, grad_checkpointing, global_pool
        )

    def _zero_init_residual(self) -> None:
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem's convolution and BatchNorm (the blocks name their own pairs)."""
        return [("conv1", "bn1")]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


# --- registered variants --------------------------------------------------------------------------------------

# torchvision's published ImageNet numbers (IMAGENET1K_V1 weights): GFLOPs, top-1, top-5.
_TORCHVISION = {50: (4.09, 76.13, 92.862), 101: (7.8, 77.374, 93.546), 152: (11.51, 78.312, 94.046)}


def _create(depth: int, small: bool, kwargs: dict) -> ResNet:
    name = f"resnet{depth}" + ("_small" if small else "")
    card = {"first_conv": "conv1", "classifier": "fc", "origin": "torchvision ResNet (Bottleneck)"}
    if small:
        cfg = small_cfg(**card)
        kwargs = {"small_input": True, **kwargs}
    elif depth in _TORCHVISION:
        gflops, top1, top5 = _TORCHVISION[depth]
        cfg = default_cfg(**card, torchvision_gflops=gflops, torchvision_top1=top1, torchvision_top5=top5)
    else:
        cfg = default_cfg(**card)
    return build_model(ResNet, name, {"layers": STAGE_DEPTHS[depth]}, kwargs, cfg)


@register_model
def resnet26(**kwargs) -> ResNet:
    """ResNet-26 (bottleneck, stages (1, 2, 4, 1)): 13,696,552 parameters; the convolution twin of RedNet-26."""
    return _create(26, False, kwargs)


@register_model
def resnet38(**kwargs) -> ResNet:
    """ResNet-38 (bottleneck, stages (2, 3, 5, 2)): 19,626,792 parameters; the convolution twin of RedNet-38."""
    return _create(38, False, kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (torchvision's): 25,557,032 parameters, 4.09 GFLOPs; torchvision weights load as they are."""
    return _create(50, False, kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (torchvision's): 44,549,160 parameters, 7.8 GFLOPs."""
    return _create(101, False, kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    """ResNet-152 (torchvision's): 60,192,808 parameters, 11.51 GFLOPs."""
    return _create(152, False, kwargs)


@register_model
def resnet26_small(**kwargs) -> ResNet:
    """ResNet-26 for 8x8-32x32 images: 3x3 stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(26, True, kwargs)


@register_model
def resnet38_small(**kwargs) -> ResNet:
    """ResNet-38 for 8x8-32x32 images: 3x3 stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(38, True, kwargs)


@register_model
def resnet50_small(**kwargs) -> ResNet:
    """ResNet-50 for 8x8-32x32 images: 3x3 stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(50, True, kwargs)


@register_model
def resnet101_small(**kwargs) -> ResNet:
    """ResNet-101 for 8x8-32x32 images: 3x3 stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(101, True, kwargs)


@register_model
def resnet152_small(**kwargs) -> ResNet:
    """ResNet-152 for 8x8-32x32 images: 3x3 stride-1 stem, no max-pool; ``width`` scales every width."""
    return _create(152, True, kwargs)
