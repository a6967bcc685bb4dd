"""Folding each BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with rescaled
weights and a bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`); the BatchNorm then becomes an
``nn.Identity``. Which BatchNorm follows which convolution is not visible from the module tree alone, so the
pairs come from the modules that know their own ``forward``:

* a module with a ``conv_bn_pairs()`` method names its pairs (:class:`~involution.layers.ConvNormAct`, the
  bottlenecks, the ResNet stem);
* an ``nn.Sequential`` pairs every ``Conv2d`` directly followed by a BatchNorm;
* torchvision's ``Bottleneck`` and ``BasicBlock`` pair ``convK`` with ``bnK``.

A BatchNorm that follows an involution (``bn2`` of a RedNet bottleneck) is left alone: its per-channel scale
cannot move into a kernel that the group's channels share.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["conv_bn_pairs", "fuse_conv_bn_"]

BATCH_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _is_pair(conv: nn.Module, bn: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and isinstance(bn, BATCH_NORMS) and bn.weight.shape[0] == conv.out_channels


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of ``module``'s children ``(conv, bn)`` where ``forward`` applies ``bn`` directly to ``conv``'s output."""
    declared = getattr(module, "conv_bn_pairs", None)
    if callable(declared):
        names = list(declared())
    elif isinstance(module, nn.Sequential):
        keys = list(module._modules)
        names = list(zip(keys, keys[1:]))
    elif isinstance(module, (Bottleneck, BasicBlock)):
        names = [(f"conv{k}", f"bn{k}") for k in (1, 2, 3)]
    else:
        return []
    children = dict(module.named_children())
    return [(c, b) for c, b in names if c in children and b in children and _is_pair(children[c], children[b])]


def fuse_conv_bn_(model: nn.Module) -> int:
    """Fold every BatchNorm of ``model`` into the convolution before it, in place; returns how many were folded.

    Exact to float32 rounding in eval mode. The folded model is for inference: its BatchNorms are gone, so
    training it afterwards would train something else.

    Raises:
        RuntimeError: ``model`` or one of its modules is in training mode; call ``model.eval()`` first.
    """
    training = [name or "the model itself" for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(
            f"folding BatchNorm is for inference, but {len(training)} modules are in training mode (first: "
            f"{training[0]!r}); call model.eval() first"
        )
    folded = 0
    for parent in list(model.modules()):
        for conv_name, bn_name in conv_bn_pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded
