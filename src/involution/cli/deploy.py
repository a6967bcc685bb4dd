"""``involution export`` (argument parsing over :func:`involution.tasks.deploy.export_model`), ``involution
onnxruntime fetch-headers|build|path`` (the custom-op library of :mod:`involution.ops.onnxruntime_library`) and
``involution openvino build|path`` (the extension of :mod:`involution.ops.openvino_library`)."""

from __future__ import annotations

import argparse
import sys

from .options import int_option, non_negative_int, positive_int


def _cmd_export(args: argparse.Namespace) -> int:
    """A model (optionally with a checkpoint) -> ONNX or a torch.export program, checked against eager PyTorch."""
    from ..tasks.deploy import export_model

    try:
        out = export_model(
            args.model, args.out, format=args.format, checkpoint=args.checkpoint, input_size=args.input_size,
            batch_size=args.batch, dynamic=not args.static, num_classes=args.num_classes, verify=not args.no_verify,
            opset=args.opset, onnx_ops=args.onnx_ops, fuse=not args.no_fuse, log=print,
        )
    except ImportError as exc:  # a missing optional package: the message names the pip install
        print(f"involution export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _cmd_onnxruntime(args: argparse.Namespace) -> int:
    from ..ops.onnxruntime_library import fetch_headers, library_path

    try:
        if args.action == "fetch-headers":
            print(f"onnxruntime headers in {fetch_headers(args.dest)}")
        else:
            path = library_path()
            print(path if args.action == "path" else f"built {path}")
    except RuntimeError as exc:  # no headers, no compiler, a failed build or download: exit 1, as scripts expect
        print(f"involution onnxruntime: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_openvino(args: argparse.Namespace) -> int:
    from ..ops.openvino_library import library_path

    try:
        path = library_path()
    except RuntimeError as exc:  # no openvino, no compiler, a failed build: exit 1, as for the onnxruntime library
        print(f"involution openvino: error: {exc}", file=sys.stderr)
        return 1
    print(path if args.action == "path" else f"built {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a model to ONNX or a torch.export program (.pt2), checked")
    export.add_argument("--model", help="registry name, e.g. rednet50 (not needed with a checkpoint that records its "
                        "model: a run directory or this library's file)")
    export.add_argument("--checkpoint", help="weights: a run directory (its best weights), this library's safetensors "
                        "or last.pt, an official mmcls .pth")
    export.add_argument("--format", choices=("onnx", "exported-program", "openvino"),
                        help="default: the one --out's extension names (.onnx: onnx, .pt2: exported-program, "
                             ".xml: openvino, an OpenVINO IR with this package's C++ extension op, its weights in "
                             "the .bin beside it)")
    export.add_argument("--out", required=True,
                        help="output file, e.g. rednet50.onnx, rednet50.pt2 or rednet50.xml; an existing file is "
                             "replaced only if it is an export in the same format (never a checkpoint)")
    export.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                        help="example input C H W or H W, a video model's C T H W or T H W (default: a run's "
                        "own image size, else the model's pretrained_cfg input_size)")
    export.add_argument("--batch", type=positive_int, default=2,
                        help="example batch (default 2; the batch stays dynamic)")
    export.add_argument("--num-classes", type=non_negative_int,
                        help="classifier outputs (default: the checkpoint's, else the model's 1000)")
    export.add_argument("--static", action="store_true", help="fix batch, height and width to the example's")
    export.add_argument("--opset", type=int_option(low=18), help="ONNX opset, 18 or later (default: the exporter's)")
    export.add_argument("--onnx-ops", choices=("standard", "custom"), default="standard",
                        help="involution as standard ONNX operators (any runtime; default) or as one custom node "
                             "per layer for onnxruntime with this package's C++ library (2.4x faster for RedNet-50)")
    export.add_argument("--no-fuse", action="store_true",
                        help="keep the BatchNorms (default: fold each one that follows a convolution into it)")
    export.add_argument("--no-verify", action="store_true", help="skip the comparison with eager PyTorch")
    export.set_defaults(func=_cmd_export)

    what = "onnxruntime's involution custom-op library: fetch the headers, build, or say where it is"
    ort = sub.add_parser("onnxruntime", help=what, description=what)
    ort.add_argument("action", choices=("fetch-headers", "build", "path"))
    ort.add_argument("--dest", help="fetch-headers: the include folder to fill (default: the cache)")
    ort.set_defaults(func=_cmd_onnxruntime)

    what = "OpenVINO's involution extension: build it, or say where it is"
    ov = sub.add_parser("openvino", help=what, description=what)
    ov.add_argument("action", choices=("build", "path"))
    ov.set_defaults(func=_cmd_openvino)
