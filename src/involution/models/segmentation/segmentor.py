"""``Segmentor``: backbone -> optional neck -> decode head (+ auxiliary head), mmseg's ``EncoderDecoder``.

Children are named as in mmseg (``backbone``, ``neck``, ``decode_head``, ``auxiliary_head``) and so are theirs, so
an official mmseg checkpoint (``{'meta', 'state_dict'}``) and this library's own state dicts share one key layout:
loading one is a matter of checking keys, never of renaming them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from torch import Tensor, nn

from ..checkpoint import LoadReport, apply_state_dict, read_checkpoint
from ._common import resize
from .heads import DecodeHead

MMSEG_PARTS = ("backbone.", "neck.", "decode_head.", "auxiliary_head.")


class Segmentor(nn.Module):
    """Semantic segmentation model: ``(N, C, H, W) -> {"out": (N, K, H, W)[, "aux": (N, K, H, W)]}``.

    Like torchvision's segmentation models: logits (before softmax) bilinearly resized to the input size;
    ``"aux"`` only in training mode and only with an auxiliary head. Any H, W (odd included) of at least 32
    pixels is fine; smaller ones work too as long as every stage keeps one pixel.

    Args:
        backbone: a ``features_only`` model returning the stage maps (strides 4/8/16/32).
        decode_head: maps the (neck's) feature list to logits at stride 4.
        neck: optional, maps the backbone's list to another list (Semantic FPN).
        auxiliary_head: optional, maps backbone level ``aux_in_index`` to logits (training only).
        aux_in_index: the backbone level the auxiliary head reads (official: 2, i.e. C4).
        align_corners: of the final resize (and, by convention, of the heads').

    Attributes:
        num_classes, aux_loss_weight (the official weight of the auxiliary loss, for the task layer),
        pretrained_cfg / model_name / model_kwargs (set by the registry).
    """

    first_conv = "backbone.stem.0.conv"
    classifier_name = "decode_head.conv_seg"

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        neck: nn.Module | None = None,
        auxiliary_head: DecodeHead | None = None,
        aux_in_index: int = 2,
        aux_loss_weight: float = 0.4,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.aux_in_index = int(aux_in_index)
        self.aux_loss_weight = float(aux_loss_weight) if auxiliary_head is not None else 0.0
        self.align_corners = bool(align_corners)
        self.num_classes = int(decode_head.num_classes)
        self.pretrained_cfg: dict = {}
        self.model_name: str | None = None
        self.model_kwargs: dict = {}
        self.pruned_prefixes: tuple[str, ...] = ()

    def init_classifier(self) -> None:
        """Re-initialise the ``conv_seg`` of every head (normal(0, 0.01), zero bias)."""
        self.decode_head.init_classifier()
        if self.has_aux:
            self.auxiliary_head.init_classifier()

    @property
    def has_aux(self) -> bool:
        return hasattr(self, "auxiliary_head")

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """The backbone's stage maps ``[(N, C_i, H/s_i, W/s_i)]``."""
        return list(self.backbone(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects images (N, C, H, W), got shape {tuple(images.shape)}")
        size = images.shape[-2:]
        feats = self.extract_features(images)
        dense = self.neck(feats) if hasattr(self, "neck") else feats
        result = {"out": resize(self.decode_head(dense), size, self.align_corners)}
        if self.training and self.has_aux:
            aux = self.auxiliary_head(feats[self.aux_in_index])
            result["aux"] = resize(aux, size, self.align_corners)
        return result

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def load_checkpoint(self, path: str | os.PathLike) -> LoadReport:
        """Load an official mmseg file or one of this library's (safetensors or plain state dict) into the model.

        Strict about the body (backbone, neck, head bodies: any missing, unexpected or mismatched key raises
        ``RuntimeError`` listing them); lenient about the classifiers: ``conv_seg`` of another class count is left
        freshly initialised with a warning, and an auxiliary head that this model lacks is ignored with a warning.
        :func:`involution.models.load_checkpoint` and ``create_model(name, checkpoint=...)`` come here.
        """
        path = Path(path)
        state_dict, metadata = read_checkpoint(path)
        report = self.apply_state_dict(state_dict, source=str(path))
        report.layout = metadata.get("format") or ("mmseg" if _looks_mmseg(state_dict) else "plain")
        return report

    def apply_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> LoadReport:
        """:meth:`load_checkpoint` on a state dict in memory (mmseg's key names, which are also ours)."""
        ckpt = dict(state_dict)
        dropped = [] if self.has_aux else [k for k in ckpt if k.startswith("auxiliary_head.")]
        if dropped:
            warnings.warn(
                f"{source}: this model has no auxiliary head; ignored {len(dropped)} auxiliary_head keys", stacklevel=3
            )
            ckpt = {k: v for k, v in ckpt.items() if k not in dropped}
        heads = ("decode_head.conv_seg.", "auxiliary_head.conv_seg.") if self.has_aux else ("decode_head.conv_seg.",)
        no_parts = not any(k.startswith(MMSEG_PARTS[1:]) for k in ckpt)
        hint = "no neck/head keys: for a classification checkpoint use backbone_checkpoint=" if no_parts else ""
        report = apply_state_dict(self, ckpt, source, heads=heads, reinit=self._reinit_heads, hint=hint)
        report.ignored = dropped
        return report

    def _reinit_heads(self, prefixes: list[str]) -> None:
        for prefix in prefixes:
            cast(DecodeHead, self.get_submodule(prefix.split(".")[0])).init_classifier()  # a head's prefix


def _looks_mmseg(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state_dict) and any(k.startswith("decode_head.") for k in state_dict)
