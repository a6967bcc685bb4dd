"""The detection backbone: a RedNet body, an FPN neck (convolution or involution), freezing and BN handling.

:class:`RedNetFPN` is what torchvision's detectors call ``backbone``: ``body`` (a ``features_only`` RedNet) and
``fpn`` (torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`); ``out_channels`` is the FPN width.
Its ``forward`` maps ``(N, 3, H, W)`` to an ordered dict of maps named ``"0"``, ``"1"`` ... (one per backbone
level, strides 4..32 or 8..32) plus the extra levels (``"pool"`` for the R-CNNs, ``"p6"``/``"p7"`` for RetinaNet).

Official mmdet settings reproduced here:

* ``frozen_stages=k``: the stem (k >= 0) and ``layer1..layer_k`` get ``requires_grad=False`` and stay in eval
  mode whatever ``train()`` says (mmdet ``_freeze_stages``).
* ``norm_eval=True``: every BatchNorm of the body (the stem's, the blocks', the involution kernel generators')
  becomes a :class:`torchvision.ops.FrozenBatchNorm2d` with the same statistics and affine values; nothing about
  them is learned or updated (mmdet keeps BN in eval mode and the official detectors train with batch 2/GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ...layers import Involution2d
from .._features import FeatureInfo
from ..registry import create_model

NECKS = ("convolution", "involution")
# Backbone keys whose shape depends on the stem involution's kernel size (the generator's last 1x1 conv has
# G*K*K outputs): an ImageNet RedNet (K=3) differs from the detection backbone (K=7) there and only there.
_RESERVED_BACKBONE_KWARGS = ("features_only", "out_indices", "num_classes", "checkpoint")


def check_choice(name: str, value: Any, allowed: Sequence[str], why: str = "") -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming the argument and the allowed values."""
    if value not in allowed:
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}{extra}, got {value!r}")
    return value


def build_rednet_body(
    out_indices: Sequence[int], in_chans: int = 3, backbone_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """``create_model("rednet50", stem_kernel_size=7, features_only=True, out_indices=...)`` plus ``backbone_kwargs``."""
    kwargs = dict(backbone_kwargs or {})
    reserved = sorted(set(kwargs) & set(_RESERVED_BACKBONE_KWARGS + ("in_chans",)))
    if reserved:
        raise ValueError(
            f"backbone_kwargs may not set {reserved}: the detector chooses the backbone's outputs "
            "(pass in_chans to the detector, and backbone_checkpoint= for weights)"
        )
    kwargs.setdefault("stem_kernel_size", 7)
    return create_model("rednet50", in_chans=in_chans, features_only=True, out_indices=tuple(out_indices), **kwargs)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with the same values (in place).

    Returns how many were replaced. Affine-less BNs get weight 1 / bias 0; untracked statistics mean 0 / var 1.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            ref = child.weight if child.weight is not None else child.running_mean
            if ref is not None:
                frozen = frozen.to(device=ref.device, dtype=ref.dtype)
            if child.weight is not None:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.running_mean is not None:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


class P6P7(ExtraFPNBlock):
    """RetinaNet's extra levels as in mmdet ``add_extra_convs='on_input'``: ``p6 = conv3x3/2(C5)``, ``p7 = conv3x3/2(p6)``.

    Unlike torchvision's ``LastLevelP6P7`` there is no ReLU between P6 and P7 by default, as in the official
    configs (mmdet ``relu_before_extra_convs=False``); ``relu_before_p7=True`` gives torchvision's variant.
    """

    def __init__(self, in_channels: int, out_channels: int, relu_before_p7: bool = False) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        self.relu_before_p7 = relu_before_p7
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            assert conv.bias is not None  # built with one
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(x[-1])
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [*results, p6, p7], [*names, "p6", "p7"]


class RedNetFPN(nn.Module):
    """``body`` (features_only RedNet) + ``fpn``: ``(N, C, H, W) -> OrderedDict[str, (N, out_channels, h, w)]``.

    Args:
        body: a features_only RedNet (``feature_info`` gives the channels of the levels fed to the FPN).
        fpn_channels: the FPN width (``out_channels``; official 256).
        extra: ``"pool"`` (max-pool P6, Faster/Mask R-CNN) or ``"p6p7"`` (RetinaNet).
        neck: ``"convolution"`` (torchvision FPN, 3x3 output convs) or ``"involution"`` (each output conv
            ``fpn.layer_blocks[i]`` is an ``Involution2d(fpn_channels, 7)``, the official ``FPN_involution``).
        frozen_stages: -1 (none), 0 (stem) .. 4 (stem and layer1..4): parameters frozen, modules kept in eval mode.
    """

    def __init__(
        self,
        body: nn.Module,
        fpn_channels: int = 256,
        extra: str = "pool",
        neck: str = "convolution",
        frozen_stages: int = 1,
    ) -> None:
        super().__init__()
        check_choice("neck", neck, NECKS)
        check_choice("extra", extra, ("pool", "p6p7"))
        if fpn_channels < 1:
            raise ValueError(f"fpn_channels must be >= 1, got {fpn_channels}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(
                f"frozen_stages must be in -1..4 (-1: none, 0: stem, k: stem + layer1..k), got {frozen_stages}"
            )
        self.body = body
        channels = list(cast(FeatureInfo, body.feature_info).channels())
        extra_block = LastLevelMaxPool() if extra == "pool" else P6P7(channels[-1], fpn_channels)
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra_block)
        if neck == "involution":
            for i in range(len(self.fpn.layer_blocks)):
                self.fpn.layer_blocks[i] = Involution2d(fpn_channels, kernel_size=7)
        self.out_channels = fpn_channels
        self.neck = neck
        self.frozen_stages = frozen_stages
        self._freeze_stages()

    def frozen_modules(self) -> list[nn.Module]:
        """The stem (with its max-pool) and the first ``frozen_stages`` stages."""
        if self.frozen_stages < 0:
            return []
        mods = [self.body.get_submodule("stem"), self.body.get_submodule("maxpool")]
        mods += [getattr(self.body, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def _freeze_stages(self) -> None:
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> RedNetFPN:
        super().train(mode)
        for m in self.frozen_modules():  # frozen stages never update their BN statistics (mmdet behaviour)
            m.eval()
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
