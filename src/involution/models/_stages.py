"""The four bottleneck stages RedNet and ResNet share, and the stage depths of their registered variants."""

from __future__ import annotations

# Blocks per stage of each registered depth (RedNet-26/38 and their ResNet twins, and the ResNet depths).
STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
