"""Deployment: export a model to ONNX or to a ``torch.export`` program, and check the result against eager.

>>> from involution.tasks.deploy import export_model
>>> export_model("rednet26", "rednet26.onnx")                       # dynamic batch and image size
>>> export_model("rednet50", "rednet50.pt2", checkpoint="rednet50.pth")  # .pt2: format="exported-program"
>>> export_model("rednet50", "rednet50.xml")                              # OpenVINO IR, + rednet50.bin
>>> compiled = openvino_model("rednet50.xml", precision="bf16", threads=2)

* ``format="onnx"``: ``torch.export.export`` with dynamic batch/height/width, then ``torch.onnx.export`` (the
  torch.export-based exporter) with the involution op lowered to standard ONNX operators
  (:mod:`involution.ops.onnx`), a light graph clean-up (constant folding, dead nodes), ``onnx.checker``, and,
  when onnxruntime is installed, a run compared with eager PyTorch at a batch and size other than the example's.
  The file runs in any ONNX runtime; nothing of this package is needed there. With ``onnx_ops="custom"`` each
  involution is instead one ``involution::Involution2d`` node, which onnxruntime runs with this package's
  custom-op library (:mod:`involution.ops.onnxruntime_library`, a C++ kernel): faster, onnxruntime only.
* ``format="exported-program"``: ``torch.export.export`` + ``torch.export.save`` (a ``.pt2`` archive). The
  program calls ``torch.ops.involution.involution2d``, so load it with ``torch.export.load`` in a process that has
  imported ``involution`` (which registers the op). It is checked by loading it back and comparing with eager.
* ``format="openvino"``: an OpenVINO IR (``NAME.xml`` + ``NAME.bin``, float32 weights; dynamic batch and image
  size) whose involutions are the op of this package's C++ OpenVINO extension
  (:mod:`involution.ops.openvino_library`), checked in OpenVINO (f32) against eager. :func:`openvino_model` compiles
  it (or an ONNX file) for the CPU with the extension loaded, in ``precision="f32"`` or ``"bf16"``.

Models are exported in eval mode and traced under ``torch.no_grad()`` (batch norm uses its running statistics;
``recompute_kernel`` only matters for gradients, so it plays no part), with every BatchNorm that follows a
convolution folded into it (:func:`involution.layers.fuse.fuse_conv_bn_`; ``fuse=False`` keeps them).
"""

from .destination import FORMATS, check_destination, export_format
from .export import export_model
from .loading import load_export_model
from .openvino_file import check_openvino, openvino_model
from .verify import ExportCheck, check_exported_program, check_onnx, onnx_session

__all__ = ["FORMATS", "ExportCheck", "check_destination", "check_exported_program", "check_onnx", "check_openvino",
           "export_format", "export_model", "load_export_model", "onnx_session", "openvino_model"]
