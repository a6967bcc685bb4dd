"""What the residual families (RedNet, ResNet) share: the head, feature maps, grad checkpointing, ``feature_info``.

A model is ``stem -> layer1..layer4 -> global pool -> dropout -> fc``. With ``features_only=True`` it has no head,
keeps only the stages up to the last one asked for, and returns the maps of the stages in ``out_indices``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_flag, check_int, check_number
from ..layers.fuse import fuse_conv_bn_
from ..layers.recompute import recompute

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class FeatureInfo:
    """One dict per feature level: ``num_chs`` (channels), ``reduction`` (stride w.r.t. the input), ``module``.

    Behaves like a list of those dicts (``len``, indexing, iteration); ``channels()``, ``reduction()`` and
    ``module_name()`` give one field for every level (or for level ``idx``), as in timm.
    """

    def __init__(self, info: Sequence[dict[str, Any]]) -> None:
        self.info = [dict(d) for d in info]

    def _field(self, key: str, idx: int | Sequence[int] | None) -> Any:
        if idx is None:
            return [d[key] for d in self.info]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._field("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.info]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


def scaled_channels(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, round(channels * width))


# The widest multiplier accepted: 16 already gives a RedNet-50 of about 4 billion parameters; a typo such as
# width=1e6 must not make the process allocate until the machine runs out of memory.
MAX_WIDTH = 16.0


def check_stage_args(layers: Sequence[int], width: float, in_chans: int) -> tuple[int, ...]:
    """Validate the arguments every residual net here shares; returns the four stage depths as ints."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 4:
        raise TypeError(f"layers must give 4 stage depths >= 1, got {layers!r}")
    layers = tuple(check_int("layers (each stage depth)", n, low=1) for n in layers)
    check_number("width", width, low=0.0, high=MAX_WIDTH, low_open=True)
    check_int("in_chans", in_chans, low=1)
    return layers


def check_flags(**flags: Any) -> None:
    """Each keyword must be True or False (a string such as ``'no'`` from ``--model-kwargs`` would be true)."""
    for name, value in flags.items():
        check_flag(name, value)


def stem_stride_for(stem_stride: int | None, small_input: bool) -> int:
    """The stride of a net's first convolution: by default 1 for small inputs, 2 otherwise."""
    if stem_stride is None:
        return 1 if small_input else 2
    if isinstance(stem_stride, bool) or stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    return int(stem_stride)


def check_out_indices(out_indices: Sequence[int], num_stages: int = 4) -> tuple[int, ...]:
    """Validate stage indices (negative ones count from the end); returns them sorted, without repeats."""
    try:
        raw = [int(i) for i in out_indices]
    except TypeError:
        raise TypeError(f"out_indices must be a sequence of ints, got {out_indices!r}") from None
    if not raw:
        raise ValueError("out_indices must name at least one stage")
    picked = []
    for i in raw:
        if not -num_stages <= i < num_stages:
            raise ValueError(f"out_indices must lie in [0, {num_stages}), got {tuple(raw)}")
        picked.append(i % num_stages)
    return tuple(sorted(set(picked)))


class ResidualNet(nn.Module):
    """Base class: subclasses build ``self.stem_modules`` (forwarded by ``forward_stem``) and ``layer1..4``.

    Subclasses call :meth:`_finish` at the end of their ``__init__``.

    Attributes:
        num_features: channels of the last stage (the classifier's input).
        feature_info: a :class:`FeatureInfo` with one entry per stage (only the picked ones when features_only).
        pretrained_cfg: timm-style dict (input size, normalisation, crop, classifier name ...), set by the registry.
        pruned_prefixes: state-dict key prefixes that the full model has and this one dropped (features_only);
            checkpoint loading ignores them.
    """

    classifier_name = "fc"
    first_conv = "conv1"

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.channels_last = False
        self.pretrained_cfg: dict[str, Any] = {}
        self.model_name: str | None = None
        self.model_kwargs: dict[str, Any] = {}
        self.pruned_prefixes: tuple[str, ...] = ()

    # -- construction helpers -------------------------------------------------------------------------------
    def _configure(
        self,
        layers: Sequence[int],
        width: float,
        in_chans: int,
        small_input: bool,
        stem_stride: int | None,
        zero_init_residual: bool,
        channels_last: bool,
        **flags: bool,
    ) -> tuple[tuple[int, ...], int, int]:
        """Check and record the arguments every family shares (and check the family's own ``flags``); returns the
        stage depths, the stem's width and its first stride. Subclasses call it first in their ``__init__``."""
        self.layers = check_stage_args(layers, width, in_chans)
        check_flags(small_input=small_input, zero_init_residual=zero_init_residual, channels_last=channels_last, **flags)
        self.channels_last, self.zero_init_residual, self.small_input = channels_last, zero_init_residual, small_input
        return self.layers, scaled_channels(64, width), stem_stride_for(stem_stride, small_input)

    def _finish(
        self,
        stage_channels: Sequence[int],
        stage_reductions: Sequence[int],
        num_classes: int,
        drop_rate: float,
        features_only: bool,
        out_indices: Sequence[int],
        grad_checkpointing: bool,
    ) -> None:
        check_int("num_classes (0: no classifier)", num_classes, low=0)
        check_number("drop_rate", drop_rate, low=0.0, high=1.0, high_open=True)
        check_flags(features_only=features_only, grad_checkpointing=grad_checkpointing)
        full_info = [
            {"num_chs": int(c), "reduction": int(r), "module": name, "stage": i}
            for i, (c, r, name) in enumerate(zip(stage_channels, stage_reductions, STAGE_NAMES))
        ]
        self.num_features = int(stage_channels[-1])
        self.features_only = bool(features_only)
        self.drop_rate = float(drop_rate)
        if self.features_only:
            self.out_indices = check_out_indices(out_indices, len(STAGE_NAMES))
            self.num_classes = 0
            last = max(self.out_indices)
            pruned = [f"{name}." for name in STAGE_NAMES[last + 1 :]]
            for name in STAGE_NAMES[last + 1 :]:
                delattr(self, name)
            self.pruned_prefixes = (*pruned, f"{self.classifier_name}.")
            self.feature_info = FeatureInfo([full_info[i] for i in self.out_indices])
        else:
            self.out_indices = tuple(range(len(STAGE_NAMES)))
            self.num_classes = int(num_classes)
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            self.feature_info = FeatureInfo(full_info)
        self.init_weights()
        self.set_grad_checkpointing(grad_checkpointing)

    def _init_body(self) -> None:
        """Kaiming-normal (fan_out, relu) convs with zero bias, BN weight 1 / bias 0 (mmcv/torchvision init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _zero_init_residual(self) -> None:
        """Subclasses zero the last BN of each residual branch here (so each block starts as the identity)."""

    def init_classifier(self) -> None:
        """Re-initialise the classifier: normal(0, 0.01) weights, zero bias (mmcls ``LinearClsHead``)."""
        fc = getattr(self, self.classifier_name, None)
        if isinstance(fc, nn.Linear):
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)

    def init_weights(self) -> None:
        """The whole initialisation: body, residual zero-init (if enabled), classifier."""
        self._init_body()
        if getattr(self, "zero_init_residual", False):
            self._zero_init_residual()
        self.init_classifier()

    # -- timm-style helpers ---------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block's activations in the backward pass (saves memory, costs ~1 forward).

        Like the official ``with_cp``: only the blocks are checkpointed, and only when grads are being taken.
        BatchNorm running statistics are updated once per step, as without it (:mod:`involution.layers.recompute`).
        """
        self.grad_checkpointing = bool(enable)

    def fuse(self) -> "ResidualNet":
        """Fold every BatchNorm that follows a convolution into it (generators' included), in place; for inference.

        Outputs stay the same to float32 rounding and the BatchNorms become ``nn.Identity`` (RedNet-50: 55 of 72
        folded; the 17 after an involution stay). Returns ``self``. Raises RuntimeError in training mode.
        """
        fuse_conv_bn_(self)
        return self

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name, nn.Identity())

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none; pooled features out)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier to reset")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        old = self.get_classifier()
        ref = next(iter(old.parameters()), None) if isinstance(old, nn.Linear) else None
        self.num_classes = int(num_classes)
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if ref is not None:
            fc = fc.to(device=ref.device, dtype=ref.dtype)
        setattr(self, self.classifier_name, fc)
        self.init_classifier()
        if self.pretrained_cfg:
            self.pretrained_cfg["num_classes"] = self.num_classes

    # -- forward ---------------------------------------------------------------------------------------------
    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _in_network_layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory layout the network runs in: NHWC when ``channels_last`` is set (one copy of the
        input; every layer's output then stays NHWC), else as given."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in stage:
                x = recompute(block, x)
            return x
        return stage(x)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
        """The stage maps ``[layer_i(x) for i in indices]`` (default: this model's ``out_indices``)."""
        picked = self.out_indices if indices is None else check_out_indices(indices, len(STAGE_NAMES))
        x = self.forward_stem(x)
        outs = []
        for i, name in enumerate(STAGE_NAMES[: max(picked) + 1]):
            stage = getattr(self, name, None)
            if stage is None:
                raise ValueError(f"stage {i} ({name}) was dropped from this features_only model")
            x = self._run_stage(stage, x)
            if i in picked:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)`` (the last stage's map, before pooling)."""
        if self.features_only and max(self.out_indices) < len(STAGE_NAMES) - 1:
            raise RuntimeError("this features_only model stops before the last stage; use forward()")
        x = self.forward_stem(x)
        for name in STAGE_NAMES:
            x = self._run_stage(getattr(self, name), x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``(N, num_features, h, w) -> (N, num_classes)`` (or the pooled ``(N, num_features)`` if pre_logits)."""
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits ``(N, num_classes)``; with features_only, the list of the picked stages' maps."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects input (N, C, H, W), got shape {tuple(x.shape)}")
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))
