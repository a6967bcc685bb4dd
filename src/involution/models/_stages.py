"""The four bottleneck stages RedNet and ResNet share, and the stage depths of their registered variants."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..layers.conv_norm_act import LayerFactory
from ._args import scaled_channels

# Blocks per stage of each registered depth (RedNet-26/38 and their ResNet twins, and the ResNet depths).
STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def add_stages(
    net: nn.Module,
    block: Callable[[int, int, int, nn.Module | None], nn.Module],
    expansion: int,
    layers: Sequence[int],
    in_channels: int,
    width: float,
    reduction: int,
    norm_layer: LayerFactory,
    avg_down: bool = False,
) -> tuple[list[int], list[int]]:
    """Add ``layer1..layer4`` to ``net``: ``layers[i]`` blocks of width ``64 * 2**i * width`` each, the first one of
    every stage but the first with stride 2 (and a downsample branch wherever the shape changes).

    ``block(in_channels, mid_channels, stride, downsample)`` builds one block, whose output has ``expansion *
    mid_channels`` channels; ``reduction`` is the stem's. ``avg_down``: downsample the identity with a 2x2 average
    pool before a stride-1 1x1 conv (mmcls option). Returns the channels and reductions of the four stages.
    """
    channels, reductions = [], []
    for i, depth in enumerate(layers):
        mid = scaled_channels(64 * 2**i, width)
        stride = 1 if i == 0 else 2
        reduction *= stride
        out = mid * expansion
        downsample = None
        if stride != 1 or in_channels != out:
            parts: list[nn.Module] = []
            if avg_down and stride != 1:
                parts.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            conv_stride = 1 if avg_down else stride
            parts += [nn.Conv2d(in_channels, out, 1, stride=conv_stride, bias=False), norm_layer(out)]
            downsample = nn.Sequential(*parts)
        blocks = [block(in_channels, mid, stride, downsample)]
        blocks += [block(out, mid, 1, None) for _ in range(depth - 1)]
        net.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        in_channels = out
        channels.append(out)
        reductions.append(reduction)
    return channels, reductions
