"""``involution models|summary|convert``: argument parsing over :mod:`involution.models`."""

from __future__ import annotations

import argparse

from .options import parse_model_kwargs, positive_int


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models import list_models

    for name in list_models(args.filter or ""):
        print(name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """Parameters and multiply-adds (the involution op included) per stage, of a model name or of the model a
    checkpoint records (at the image size its run trained at)."""
    from ..models import summary

    kwargs = parse_model_kwargs(args.model_kwargs or [])
    if args.model and args.model_option and args.model != args.model_option:
        raise ValueError(f"summary names two models ({args.model} and --model {args.model_option}); give one")
    name, size = args.model or args.model_option, None if args.input_size is None else tuple(args.input_size)
    if args.checkpoint is not None:
        from ..tasks.engine.recorded import read_recorded

        found = read_recorded(args.checkpoint, name, model_kwargs=kwargs)
        name, kwargs, size = found.require_model(), found.model_kwargs, size or found.input_size()
    elif name is None:
        raise ValueError("summary needs a MODEL name or --checkpoint (a run directory or this library's file)")
    print(summary(name, input_size=size, depth=args.depth, **kwargs))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Official mmcls (.pth) or PaddleClas (.pdparams) RedNet checkpoint -> this package's safetensors format; a
    run directory (or a file that records its model, last.pt included) -> its weights as one safetensors file."""
    from ..models import convert_checkpoint
    from ..tasks.engine.recorded import read_recorded, write_weights

    found = read_recorded(args.src, args.model)
    out = write_weights(found, args.dst) if found.recorded else convert_checkpoint(found.path, args.dst, name=args.model)
    print(f"wrote {out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``models``, ``summary`` and ``convert``."""
    models = sub.add_parser("models", help="list the registered model names")
    models.add_argument("filter", nargs="?", help="a glob such as 'rednet*'")
    models.set_defaults(func=_cmd_models)

    summ = sub.add_parser("summary", help="parameters and multiply-adds of a model, per stage")
    summ.add_argument("model", nargs="?", help="registry name, e.g. rednet50 (not needed with a --checkpoint that "
                      "records its model)")
    summ.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as MODEL")
    summ.add_argument("--checkpoint", help="the model a run directory or this library's file records, at its run's "
                      "image size")
    summ.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="model arguments, e.g. width=0.25")
    summ.add_argument("--input-size", type=positive_int, nargs="+", metavar="N",
                      help="H W or C H W (default: a run's image size, else the model's)")
    summ.add_argument("--depth", type=positive_int, default=1, help="1: stages, 2: blocks too")
    summ.set_defaults(func=_cmd_summary)

    convert = sub.add_parser(
        "convert", help="convert an official mmcls or PaddleClas RedNet checkpoint (or a run's) to safetensors"
    )
    convert.add_argument(
        "src", help="e.g. rednet50-1c7a7d5d.pth (official), RedNet50_pretrained.pdparams (PaddleClas), or a run "
        "directory (its best weights) or last.pt"
    )
    convert.add_argument("dst", help="output .safetensors path")
    convert.add_argument("--model", help="registry name; recorded in a run's checkpoint, inferred from an official "
                         "file's keys when omitted")
    convert.set_defaults(func=_cmd_convert)
