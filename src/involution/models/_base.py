"""What the residual families (RedNet, ResNet) share: the head, feature maps, grad checkpointing, ``feature_info``.

A model is ``stem -> layer1..layer4 -> global pool -> dropout -> fc``. With ``features_only=True`` it has no head,
keeps only the stages up to the last one asked for, and returns the maps of the stages in ``out_indices``.

The models trace with ``torch.fx`` (the involution op and the ceil-mode pooling as single nodes) and compile with
``torch.jit.script``; traced or scripted, no shape is checked and nothing is recomputed in the backward
(``grad_checkpointing``, ``recompute_stem`` and the layers' ``recompute_kernel`` only save memory in eager mode).
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the traced graph's code,
# and TorchScript cannot read them back as strings.
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, List, Literal, Union, overload

import torch
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..layers.fuse import fuse_conv_bn_
from ..layers.recompute import recompute
from ._args import check_flags, check_global_pool, check_stage_args, scaled_channels, stem_stride_for
from ._features import FeatureInfo, check_out_indices, take_indices
from .checkpoint import LoadReport, load_checkpoint

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class ResidualNet(nn.Module):
    """Base class: subclasses build ``self.stem_modules`` (forwarded by ``forward_stem``) and ``layer1..4``.

    Subclasses call :meth:`_finish` at the end of their ``__init__``.

    Attributes:
        num_features: channels of the last stage (the classifier's input); ``head_hidden_size`` the same (timm's
            name for the pooled features' width: there is no pre-logits layer).
        stage_channels: channels of each of the four stages.
        feature_info: a :class:`FeatureInfo` with one entry per stage (only the picked ones when features_only).
        pretrained_cfg: timm-style dict (input size, normalisation, crop, classifier name ...), set by the registry.
        pruned_prefixes: state-dict key prefixes that the full model has and this one dropped (features_only,
            prune_intermediate_layers); checkpoint loading ignores them.
    """

    classifier_name = "fc"
    first_conv = "conv1"
    if TYPE_CHECKING:  # the stages subclasses add (_stages.add_stages); features_only and pruning delete some
        layer1: nn.Sequential
        layer2: nn.Sequential
        layer3: nn.Sequential
        layer4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False
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
        **flags: bool,
    ) -> tuple[tuple[int, ...], int, int]:
        """Check and record the arguments every family shares (and check the family's own ``flags``); returns the
        stage depths, the stem's width and its first stride. Subclasses call it first in their ``__init__``."""
        self.layers = check_stage_args(layers, width, in_chans)
        self.in_chans = int(in_chans)
        check_flags(small_input=small_input, zero_init_residual=zero_init_residual, **flags)
        self.zero_init_residual, self.small_input = zero_init_residual, small_input
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
        global_pool: str = "avg",
    ) -> None:
        check_int("num_classes (0: no classifier)", num_classes, low=0)
        check_number("drop_rate", drop_rate, low=0.0, high=1.0, high_open=True)
        check_flags(features_only=features_only, grad_checkpointing=grad_checkpointing)
        full_info = [
            {"num_chs": int(c), "reduction": int(r), "module": name, "stage": i}
            for i, (c, r, name) in enumerate(zip(stage_channels, stage_reductions, STAGE_NAMES))
        ]
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.num_features = self.head_hidden_size = self.stage_channels[-1]  # no pre-logits layer: the same
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
            self._set_pool(check_global_pool(global_pool, self.num_classes))
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

    def _set_pool(self, global_pool: str) -> None:
        """The head's pooling (a checked :data:`POOL_TYPES` value): a module without state, so no device."""
        self.global_pool_type = global_pool
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
        self.global_pool.train(self.training)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none; pooled features out).

        ``global_pool``: timm's argument: ``None`` keeps the current pooling (a classifier on a model without
        pooling brings average pooling back, as it takes pooled features), ``"avg"`` average-pools, ``""`` pools
        nothing (``forward`` then returns the last map ``(N, num_features, h, w)``; ``num_classes`` 0 only).
        The new classifier is created on the device and in the dtype of the model's parameters (``meta``
        included), in the model's training mode.
        """
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier to reset")
        num_classes = check_int("num_classes (0: no classifier)", num_classes, low=0)
        if global_pool is None:
            global_pool = "avg" if num_classes > 0 else self.global_pool_type
        pool = check_global_pool(global_pool, num_classes)
        ref = next(self.parameters())  # the body's first: the model's device and dtype, whatever the head was
        self.num_classes = num_classes
        if num_classes > 0:
            fc: nn.Module = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            fc = nn.Identity()
        setattr(self, self.classifier_name, fc.train(self.training))
        if pool != self.global_pool_type:
            self._set_pool(pool)
        self.init_classifier()
        head = f"{self.classifier_name}."
        if num_classes > 0 and head in self.pruned_prefixes:  # a head pruned before is back: load it again
            self.pruned_prefixes = tuple(p for p in self.pruned_prefixes if p != head)
        if self.pretrained_cfg:
            self.pretrained_cfg["num_classes"] = self.num_classes

    def load_pretrained(self, path: str | os.PathLike) -> LoadReport:
        """Load a checkpoint file with this library's readers (:func:`~involution.models.load_checkpoint`).

        timm calls it for ``pretrained=True`` with ``custom_load`` set (see :mod:`involution.models.timm_registry`),
        so foreign layouts are mapped and nothing but tensors is ever unpickled.
        """
        return load_checkpoint(self, path)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter grouping (layer-wise lr decay): the stem, then each block (or each stage if
        ``coarse``) in depth order; the classifier matches neither, so timm puts it last."""
        stem = []
        for name, _ in self.named_children():  # everything before the first stage is the stem
            if name in STAGE_NAMES:
                break
            stem.append(re.escape(name))
        blocks = r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\."
        return {"stem": rf"^(?:{'|'.join(stem)})\.", "blocks": blocks}

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the stage maps ``indices`` do not need (timm's ``FeatureGetterNet`` calls this).

        The stages after the last one picked go (their state-dict keys join ``pruned_prefixes``, so checkpoints
        still load); with ``prune_head``, or when stages went, the classifier goes too (``num_classes`` 0).
        ``prune_norm`` is accepted for timm's interface: there is no norm after the last stage here. Returns the
        picked stage indices, absolute and sorted.
        """
        picked = take_indices(indices, tuple(range(len(STAGE_NAMES))))
        last = max(picked)
        present = len(self._present_stages())
        if last >= present:
            raise ValueError(f"stage {last} ({STAGE_NAMES[last]}) was dropped from this model already")
        gone = [f"{name}." for name in STAGE_NAMES[last + 1 : present]]
        for name in STAGE_NAMES[last + 1 : present]:
            delattr(self, name)
        self.num_features = self.head_hidden_size = self.stage_channels[last]
        if not self.features_only and (prune_head or gone):
            self.reset_classifier(0)
            gone.append(f"{self.classifier_name}.")
        self.pruned_prefixes = tuple(dict.fromkeys((*self.pruned_prefixes, *gone)))
        return list(picked)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _present_stages(self) -> list[nn.Sequential]:
        """The stages this model still has, in order (features_only and pruning drop them from the end)."""
        stages = []
        for name in STAGE_NAMES:
            stage = getattr(self, name, None)
            if stage is None:
                break
            stages.append(stage)
        return stages

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        # (never compiled by TorchScript, see _forward_scripted; under torch.fx x is a Proxy: no recompute)
        if self.grad_checkpointing and torch.is_grad_enabled() and isinstance(x, Tensor):
            for block in stage:
                x = recompute(block, x)
            return x
        return stage(x)

    @overload
    def forward_intermediates(
        self, x: Tensor, indices: int | Sequence[int] | None = ..., norm: bool = ..., stop_early: bool = ...,
        output_fmt: str = ..., *, intermediates_only: Literal[True]
    ) -> list[Tensor]: ...

    @overload
    def forward_intermediates(
        self, x: Tensor, indices: int | Sequence[int] | None = ..., norm: bool = ..., stop_early: bool = ...,
        output_fmt: str = ..., intermediates_only: bool = ...
    ) -> tuple[Tensor, list[Tensor]] | list[Tensor]: ...

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """The stage maps, with timm's (>= 1.0) contract.

        Args:
            x: ``(N, in_chans, H, W)``.
            indices: ``None``: this model's ``out_indices`` (all 4 stages unless features_only); an int ``n``: the
                last ``n`` stages; a sequence: those stages (0..3, negative ones from the end).
            norm: accepted for timm's interface (no norm follows the last stage here).
            stop_early: run no stage after the last one picked (the final map is then that stage's).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return the list of maps alone.

        Returns:
            ``(final, maps)``: ``final`` the last stage's map ``(N, num_features, H/32, W/32)`` (at the default
            strides), ``maps`` the picked stages' ``(N, C_i, H/r_i, W/r_i)`` in stage order; or ``maps`` alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: only 'NCHW' is available, got {output_fmt!r}")
        picked = take_indices(indices, self.out_indices, len(STAGE_NAMES))
        stages = self._present_stages()
        if max(picked) >= len(stages):
            raise ValueError(f"stage {max(picked)} ({STAGE_NAMES[max(picked)]}) was dropped from this model")
        if stop_early or intermediates_only:  # nothing after the last picked stage is looked at
            stages = stages[: max(picked) + 1]
        x = self.forward_stem(x)
        maps = []
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in picked:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)`` (the last stage's map, before pooling)."""
        if self.features_only and max(self.out_indices) < len(STAGE_NAMES) - 1:
            raise RuntimeError("this features_only model stops before the last stage; use forward()")
        x = self.forward_stem(x)
        for stage in self._present_stages():  # all four, unless prune_intermediate_layers dropped some
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``(N, num_features, h, w) -> (N, num_classes)`` (or the pooled ``(N, num_features)`` if pre_logits;
        with ``global_pool=""`` the map itself, ``(N, num_features, h, w)``)."""
        x = self.global_pool(x)
        if self.global_pool_type != "":  # "" keeps the map (N, num_features, h, w)
            x = x.flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """Logits ``(N, num_classes)``; with features_only, the list of the picked stages' maps."""
        if torch.jit.is_scripting():
            return self._forward_scripted(x)
        else:
            if isinstance(x, Tensor) and x.dim() != 4:  # (a torch.fx Proxy's dimensions are not known)
                raise ValueError(f"{type(self).__name__} expects input (N, C, H, W), got shape {tuple(x.shape)}")
            if self.features_only:
                return self.forward_intermediates(x, intermediates_only=True)
            return self.forward_head(self.forward_features(x))

    def _forward_scripted(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """:meth:`forward` in the form TorchScript compiles: the stages called by name (a stage that features_only
        or pruning dropped is a missing attribute, which ``hasattr`` tells TorchScript), no recomputation."""
        x = self.forward_stem(x)
        maps: List[Tensor] = []
        if hasattr(self, "layer1"):
            x = self.layer1(x)
            maps.append(x)
        if hasattr(self, "layer2"):
            x = self.layer2(x)
            maps.append(x)
        if hasattr(self, "layer3"):
            x = self.layer3(x)
            maps.append(x)
        if hasattr(self, "layer4"):
            x = self.layer4(x)
            maps.append(x)
        if not hasattr(self, "global_pool"):  # features_only (so the head is not compiled either)
            return [maps[i] for i in self.out_indices]
        return self.forward_head(x)
