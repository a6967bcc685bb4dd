"""Command line: ``python -m involution COMMAND`` or ``involution COMMAND``.

Thin argument parsing over the library; each command's work lives in the package, not here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

from ._checks import accepted_int, accepted_number, check_int, check_number

# -- option types: every value checked when the command line is parsed, so a bad one fails at once with a message
# naming the option and what it accepts ("argument --eval-every: must be an integer >= 1, got '0'"), not after an
# epoch of training


def int_option(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            return check_int("value", int(text), low, high)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {accepted_int(low, high)}, got {text!r}") from None

    return parse


def float_option(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within the bounds (``*_open``: the bound itself excluded)."""

    def parse(text: str) -> float:
        try:
            return check_number("value", float(text), low, high, low_open, high_open)
        except (TypeError, ValueError):
            accepted = accepted_number(low, high, low_open, high_open)
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None

    return parse


positive_int = int_option(low=1)
non_negative_int = int_option(low=0)
seed_int = int_option(low=0, high=2**32 - 1)  # NumPy's seeds are 32-bit
positive_float = float_option(low=0.0, low_open=True)
non_negative_float = float_option(low=0.0)
fraction_below_1 = float_option(low=0.0, high=1.0, high_open=True)  # [0, 1)
fraction_above_0 = float_option(low=0.0, high=1.0, low_open=True)  # (0, 1]
fraction_in_0_1 = float_option(low=0.0, high=1.0)  # [0, 1]


def _cmd_info(args: argparse.Namespace) -> int:
    """Show the version and backends, check the fastest backend against the fallback, and time one layer."""
    import time

    import torch

    from . import __version__, ops
    from .layers import Involution2d

    print(f"involution {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    status = ops.backend_status()
    for name, state in status.items():
        print(f"  backend {name:7s} {state if len(state) < 200 else state[:200] + '...'}")
    if importlib.util.find_spec("onnxruntime") is not None:
        from .ops import onnxruntime_library

        print(f"  onnxruntime custom-op library: {onnxruntime_library.status()}")
    fast = [b for b in ("cpu",) if status.get(b) == "available"]

    torch.manual_seed(0)
    n, c, size = args.batch, args.channels, args.size
    layer = Involution2d(c, kernel_size=7).eval()
    x = torch.randn(n, c, size, size)
    with torch.inference_mode():
        kernel = layer.generate_kernel(x)
        with ops.use_backend("torch"):
            expected = ops.involution2d(x, kernel, padding=3)
        for name in fast:
            with ops.use_backend(name):
                got = ops.involution2d(x, kernel, padding=3)
            err = (got - expected).abs().max().item()
            print(f"  check   {name:7s} max |{name} - torch| = {err:.2e}")
            if not err < 1e-3:
                print("  MISMATCH: the compiled backend disagrees with the fallback", file=sys.stderr)
                return 1

        def median_ms(fn) -> float:
            fn()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2] * 1e3

        x_cl = x.contiguous(memory_format=torch.channels_last)
        layer_cl = layer.to(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c, bias=False).to(memory_format=torch.channels_last)
        print(f"  timing  Involution2d({c}, 7) on ({n}, {c}, {size}, {size}) channels_last, median of {args.repeats}:")
        print(f"          depthwise Conv2d({c}, {c}, 7): {median_ms(lambda: conv(x_cl)):8.2f} ms")
        print(f"          Involution2d layer:        {median_ms(lambda: layer_cl(x_cl)):8.2f} ms (default backend)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    for name in list_models(args.filter or ""):
        print(name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """Parameters and multiply-adds (the involution op included) per stage."""
    from .models import summary

    size = None if args.input_size is None else tuple(args.input_size)
    print(summary(args.model, input_size=size, depth=args.depth))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Official mmcls checkpoint (.pth) -> this package's safetensors format."""
    from .models import convert_official

    out = convert_official(args.src, args.dst, name=args.model)
    print(f"wrote {out}")
    return 0


# -- classification (the main job) --------------------------------------------------------------------------------


def _parse_kwargs(items: Sequence[str]) -> dict[str, object]:
    """``["width=0.25", "drop_rate=0.1"]`` -> ``{"width": 0.25, "drop_rate": 0.1}`` (values as Python literals)."""
    import ast

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs expects KEY=VALUE items, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def train_options(args: argparse.Namespace) -> tuple[dict[str, object], str | None, bool, bool]:
    """What a ``train`` command typed (options given only: SUPPRESS defaults), less the run options: (config
    values with ``--model-kwargs`` parsed, ``--out``, ``--resume``, progress bars or not)."""
    given = vars(args).copy()
    for key in ("command", "action", "func"):
        given.pop(key, None)
    out = given.pop("out", None)
    resume = given.pop("resume", False)
    progress = not given.pop("no_progress", False)
    if "model_kwargs" in given:
        given["model_kwargs"] = _parse_kwargs(given["model_kwargs"])
    return given, out, resume, progress


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a classifier; only the options given on the command line override the recipe (or the resumed run)."""
    from .tasks.classification import TrainConfig, resume_config, train

    given, out, resume, progress = train_options(args)
    if "no_augment" in given:
        given["augment"] = not given.pop("no_augment")
    config = resume_config(out, given) if resume and out is not None else TrainConfig.from_dict(given)
    result = train(config, out=out, resume=resume, progress=progress)
    return 130 if result.status == "interrupted" else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .tasks.classification import run_eval

    report = run_eval(
        args.checkpoint, args.data, args.data_dir, model=args.model, batch_size=args.batch_size, out=args.out,
        device=args.device, amp=args.amp, channels_last=args.channels_last, workers=args.workers,
        progress=not args.no_progress,
    )
    r = report.result
    print(f"{args.data} test split, {r.count} images: top-1 {100 * r.acc:.2f}%  top-5 {100 * r.top5:.2f}%  "
          f"loss {r.loss:.4f}")
    print(f"wrote {report.json_path} and {report.confusion_path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .tasks.classification import predict

    for path, top in predict(args.checkpoint, args.images, topk=args.topk, model=args.model):
        print(path)
        for name, prob in top:
            print(f"  {prob:7.2%}  {name}")
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    """Per-group heat maps of the kernels an involution layer generates for an image, as in the paper's figure."""
    from .tasks.classification.visualize import describe_layers, visualize

    if args.layer == "list":
        for info in describe_layers(args.checkpoint, model=args.model):
            print(info.describe())
        return 0
    if args.image is None:
        raise ValueError("visualize needs an IMAGE file (or --layer list)")
    fig = visualize(args.checkpoint, args.image, layer=args.layer, pixel=args.pixel, reduce=args.reduce,
                    out=args.out, model=args.model)
    print(f"{fig.layer.describe()}: kernels at pixel (y={fig.pixel[0]}, x={fig.pixel[1]}) "
          f"= cell {fig.grid_pixel} of the layer's output")
    print(f"wrote {fig.path}")
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .tasks.classification import DATASETS, RECIPES

    # SUPPRESS: only options the user typed reach the config, so recipes and resumed runs fill in the rest
    p = sub.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a classifier (default: a small RedNet on scikit-learn's digits, a few minutes on 2 CPU cores)",
        description="Train an image classifier. With no options: a small RedNet on scikit-learn's digits. "
        "Options not given come from the data set's recipe (see --recipe); under torchrun the same command runs "
        "DistributedDataParallel.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, help="data set (default digits)")
    g.add_argument("--data-dir", help="folder of the data set files (fashion-mnist, cifar10, imagefolder)")
    g.add_argument("--image-size", type=positive_int, help="train/test image size (default: the recipe's)")
    g.add_argument("--val-fraction", type=fraction_below_1, help="share of the training split held out for validation")
    g.add_argument("--train-fraction", type=fraction_above_0,
                   help="train on this share of the training split (stratified, fixed per --seed)")
    g.add_argument("--no-augment", action="store_true", help="no random crops/flips")
    g.add_argument("--workers", type=non_negative_int, help="data-loader worker processes (default 0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="registry name (see `involution models`), e.g. rednet26_small, resnet26_small")
    g.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="model arguments, e.g. width=0.25")
    g.add_argument("--checkpoint", help="initial weights (fine-tuning): any file create_model(checkpoint=) reads")
    g = p.add_argument_group("optimisation")
    g.add_argument("--recipe", choices=sorted(RECIPES), help="defaults to take (default: the data set's)")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--batch-size", type=positive_int, help="global batch (split across torchrun processes)")
    g.add_argument("--lr", type=positive_float, help="peak learning rate (default: base lr scaled by batch size)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"))
    g.add_argument("--momentum", type=fraction_below_1)
    g.add_argument("--weight-decay", type=non_negative_float)
    g.add_argument("--warmup-epochs", type=non_negative_float)
    g.add_argument("--schedule", choices=("cosine", "constant"))
    g.add_argument("--label-smoothing", type=fraction_below_1)
    g.add_argument("--clip-grad", type=positive_float, metavar="NORM", help="clip the gradient norm to NORM")
    g.add_argument("--seed", type=seed_int)
    g = p.add_argument_group("speed")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast precision (bf16 on the CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (the recipe decides by default)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun (GPUs)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--threads", type=positive_int, help="CPU threads per process")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default: a new folder under runs/)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--eval-every", type=positive_int, metavar="EPOCHS")
    g.add_argument("--log-every", type=positive_int, metavar="STEPS", help="TensorBoard step-loss interval")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a data set's test split, with a confusion matrix")
    e.add_argument("--checkpoint", required=True, help="run directory, best.safetensors, last.pt or another checkpoint")
    e.add_argument("--data", required=True, choices=DATASETS)
    e.add_argument("--data-dir")
    e.add_argument("--model", help="architecture, for checkpoints that do not record it (official files)")
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--out", help="where to write eval-DATA.json and confusion-DATA.png (default: the run directory)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--workers", type=non_negative_int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("predict", help="top-k classes of image files")
    r.add_argument("--checkpoint", required=True, help="run directory, best.safetensors, last.pt or another checkpoint")
    r.add_argument("images", nargs="+", metavar="IMAGE")
    r.add_argument("--topk", type=positive_int, default=5)
    r.add_argument("--model", help="architecture, for checkpoints that do not record it (official files)")
    r.set_defaults(func=_cmd_predict)

    v = sub.add_parser("visualize", help="draw the kernels an involution layer generates for an image (paper figure)")
    v.add_argument("--checkpoint", required=True, help="run directory, best.safetensors, last.pt or another checkpoint")
    v.add_argument("image", nargs="?", metavar="IMAGE", help="image file (not needed with --layer list)")
    v.add_argument("--layer", help="involution layer name, or 'list' to print them "
                   "(default: the last involution of the first stage)")
    v.add_argument("--pixel", type=int_option(), nargs=2, metavar=("Y", "X"),
                   help="where to show the K x K kernels, in the preprocessed input (default: its centre; the "
                   "range, which depends on the model's input size, is checked once the checkpoint is read)")
    v.add_argument("--reduce", choices=("sum", "norm"), default="sum",
                   help="per-pixel reduction of each kernel for the heat maps (default sum, as in the paper)")
    v.add_argument("--out", help="PNG to write (default: kernels-IMAGE-LAYER.png in the run directory)")
    v.add_argument("--model", help="architecture, for checkpoints that do not record it (official files)")
    v.set_defaults(func=_cmd_visualize)


# -- export (deployment) ------------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    """A model (optionally with a checkpoint) -> ONNX or a torch.export program, checked against eager PyTorch."""
    from .tasks.deploy import export_model

    try:
        out = export_model(
            args.model,
            args.out,
            format=args.format,
            checkpoint=args.checkpoint,
            input_size=args.input_size,
            batch_size=args.batch,
            dynamic=not args.static,
            num_classes=args.num_classes,
            verify=not args.no_verify,
            opset=args.opset,
            onnx_ops=args.onnx_ops,
            fuse=not args.no_fuse,
            log=print,
        )
    except ImportError as exc:  # a missing optional package: the message names the pip install
        print(f"involution export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


# -- studies --------------------------------------------------------------------------------------------------------


def _cmd_study(args: argparse.Namespace) -> int:
    """Run (or continue) studies and write their reports."""
    from .tasks.studies import STUDIES, StudyOptions, run_study
    from .tasks.studies.definitions import KEY_SEEDS, SEEDS

    names = list(STUDIES) if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in STUDIES:
        raise ValueError(f"unknown study {args.name!r}; choose one of {', '.join(STUDIES)} or all")
    out = args.out or ("runs/studies-quick" if args.quick else "runs/studies")
    options = StudyOptions(data_dir=args.data_dir, quick=args.quick, seeds=tuple(args.seeds),
                           key_seeds=tuple(args.key_seeds), threads=args.threads)
    for name in names:
        command = f"involution study {name}" + (" --quick" if args.quick else "")
        command += f" --data-dir {args.data_dir}" if args.data_dir else ""
        command += f" --seeds {' '.join(map(str, args.seeds))}" if tuple(args.seeds) != SEEDS else ""
        command += f" --key-seeds {' '.join(map(str, args.key_seeds))}" if tuple(args.key_seeds) != KEY_SEEDS else ""
        if not args.quick and not args.report_only and args.data_dir is None:
            raise ValueError("the full studies train on Fashion-MNIST: pass --data-dir (e.g. ../shared/data), "
                             "or --quick for the digits smoke test")
        result = run_study(name, out, options, report_dir=args.report_dir, command=command,
                           progress=not args.no_progress, train_missing=not args.report_only)
        done = len({r["key"] for r in result["rows"]})
        print(f"{name}: {done}/{result['cells']} cells finished")
        for kind, path in result["paths"].items():
            if kind in ("md", "png"):
                print(f"  wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="involution", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    _add_train_parser(sub)

    info = sub.add_parser("info", help="versions, backends, a correctness check and a quick timing")
    info.add_argument("--batch", type=positive_int, default=8)
    info.add_argument("--channels", type=positive_int, default=64)
    info.add_argument("--size", type=positive_int, default=56)
    info.add_argument("--repeats", type=positive_int, default=10)
    info.set_defaults(func=_cmd_info)

    models = sub.add_parser("models", help="list the registered model names")
    models.add_argument("filter", nargs="?", help="a glob such as 'rednet*'")
    models.set_defaults(func=_cmd_models)

    summ = sub.add_parser("summary", help="parameters and multiply-adds of a model, per stage")
    summ.add_argument("model", help="registry name, e.g. rednet50")
    summ.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                      help="C H W or H W (default: the model's)")
    summ.add_argument("--depth", type=positive_int, default=1, help="1: stages, 2: blocks too")
    summ.set_defaults(func=_cmd_summary)

    convert = sub.add_parser("convert", help="convert an official mmcls RedNet checkpoint to safetensors")
    convert.add_argument("src", help="official checkpoint, e.g. rednet50-1c7a7d5d.pth")
    convert.add_argument("dst", help="output .safetensors path")
    convert.add_argument("--model", help="registry name; inferred from the checkpoint's keys when omitted")
    convert.set_defaults(func=_cmd_convert)
    # export (deployment)
    export = sub.add_parser("export", help="export a model to ONNX or a torch.export program (.pt2), checked")
    export.add_argument("--model", required=True, help="registry name, e.g. rednet50")
    export.add_argument("--checkpoint", help="weights: an official mmcls .pth or this library's safetensors")
    export.add_argument("--format", choices=("onnx", "exported-program"), default="onnx")
    export.add_argument("--out", required=True, help="output file, e.g. rednet50.onnx or rednet50.pt2")
    export.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                        help="example input C H W or H W (default: the model's pretrained_cfg input_size)")
    export.add_argument("--batch", type=positive_int, default=2,
                        help="example batch (default 2; the batch stays dynamic)")
    export.add_argument("--num-classes", type=non_negative_int, help="classifier outputs (default: the model's 1000)")
    export.add_argument("--static", action="store_true", help="fix batch, height and width to the example's")
    export.add_argument("--opset", type=int_option(low=18), help="ONNX opset, 18 or later (default: the exporter's)")
    export.add_argument("--onnx-ops", choices=("standard", "custom"), default="standard",
                        help="involution as standard ONNX operators (any runtime; default) or as one custom node "
                             "per layer for onnxruntime with this package's C++ library (2.4x faster for RedNet-50)")
    export.add_argument("--no-fuse", action="store_true",
                        help="keep the BatchNorms (default: fold each one that follows a convolution into it)")
    export.add_argument("--no-verify", action="store_true", help="skip the comparison with eager PyTorch")
    export.set_defaults(func=_cmd_export)

    study = sub.add_parser("study", help="run a study of a claim about involution (resumable) and write its report")
    study.add_argument("name", help="data_regime, width, components, ablations, position, or all")
    study.add_argument("--data-dir", help="Fashion-MNIST root, e.g. ../shared/data (the full studies need it)")
    study.add_argument("--quick", action="store_true", help="a seconds-long smoke test on digits (numbers mean nothing)")
    study.add_argument("--out", help="where the cells' runs and results.jsonl live (default runs/studies[-quick])")
    study.add_argument("--report-dir", help="where the report goes (default OUT/reports), e.g. docs/studies")
    study.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2], help="seeds of every arm")
    study.add_argument("--key-seeds", type=seed_int, nargs="+", default=[0, 1, 2, 3, 4],
                       help="seeds of the arms a study's conclusions hang on")
    study.add_argument("--report-only", action="store_true", help="train nothing; report the finished cells")
    study.add_argument("--threads", type=positive_int, help="CPU threads per run (1 lets two studies share 2 cores)")
    study.add_argument("--no-progress", action="store_true")
    study.set_defaults(func=_cmd_study)

    from .cli_dense import add_dense_parsers

    add_dense_parsers(sub)  # detect / segment train|eval|predict
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"involution {args.command}: aborted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        if os.environ.get("INVOLUTION_DEBUG"):
            raise
        # User errors (missing file, bad checkpoint, bad shape) already say what to fix; no traceback needed.
        print(f"involution {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker process (whose message carries the
    worker's traceback), the worker's own last line, e.g. ``ValueError: DIR/cat.jpg: the image file is truncated``."""
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return f"{lines[-1]} (in a data-loader worker)"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
