"""A convolution followed by optional normalisation and activation, with the child names ``conv``/``bn``/``act``.

The names match mmcv's ``ConvModule``, so official checkpoints load key for key.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

LayerFactory = Callable[..., nn.Module]
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# norm_layer given by name (so that model_kwargs stay JSON-serialisable and --model-kwargs can name one)
NORM_LAYERS: dict[str, LayerFactory] = {"bn": nn.BatchNorm2d, "syncbn": nn.SyncBatchNorm}
BATCH_NORM = "batch_norm"  # the BatchNorm of the layer's dimension (the involution generator's default)


def resolve_norm(norm_layer: str | LayerFactory, dims: int = 2) -> LayerFactory:
    """The normalisation factory ``norm_layer`` names: ``"bn"`` or ``"batch_norm"`` (the BatchNorm of ``dims``
    dimensions), ``"syncbn"``; a callable is returned as it is. Errors name ``norm_layer`` and what it accepts."""
    names = {**NORM_LAYERS, "bn": BATCH_NORMS[dims], BATCH_NORM: BATCH_NORMS[dims]}
    accepted = f"one of {sorted(names)} or a callable building a norm layer from a channel count"
    if isinstance(norm_layer, str):
        if norm_layer not in names:
            raise ValueError(f"norm_layer must be {accepted}, got {norm_layer!r}")
        return names[norm_layer]
    if not callable(norm_layer):
        raise TypeError(f"norm_layer must be {accepted}, got {norm_layer!r}")
    return norm_layer


class ConvNormAct(nn.Module):
    """``act(bn(conv(x)))``; ``norm_layer=None`` / ``act_layer=None`` leave that step out.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, groups: as for ``nn.Conv2d``.
        dims: spatial dimensions, 1, 2 (default) or 3: ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``.
        bias: defaults to True only when there is no normalisation.
        norm_layer: called as ``norm_layer(out_channels)``, or its name (:func:`resolve_norm`); default
            ``nn.BatchNorm2d``.
        act_layer: called as ``act_layer()``; default ``nn.ReLU`` (in place).
    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, Ho, Wo)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool | None = None,
        norm_layer: LayerFactory | str | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        if bias is None:
            bias = norm_layer is None
        if norm_layer is not None:
            norm_layer = resolve_norm(norm_layer, dims)
        conv = CONVS[dims]
        self.conv = conv(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.bn = norm_layer(out_channels) if norm_layer is not None else nn.Identity()
        self.act: nn.Module
        if act_layer is None:
            self.act = nn.Identity()
        else:
            self.act = act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU) else act_layer()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``bn`` follows ``conv`` (see :func:`involution.layers.fuse.fuse_conv_bn_`)."""
        return [("conv", "bn")]
