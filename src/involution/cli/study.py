"""``involution study``: argument parsing over :mod:`involution.tasks.studies`."""

from __future__ import annotations

import argparse

from .options import positive_int, seed_int


def _cmd_study(args: argparse.Namespace) -> int:
    """Run (or continue) studies and write their reports."""
    from ..tasks.studies import STUDIES, StudyOptions, run_study
    from ..tasks.studies.definitions import KEY_SEEDS, SEEDS

    names = list(STUDIES) if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in STUDIES:
        raise ValueError(f"unknown study {args.name!r}; choose one of {', '.join(STUDIES)} or all")
    out = args.out or ("runs/studies-quick" if args.quick else "runs/studies")
    options = StudyOptions(data_dir=args.data_dir, quick=args.quick, seeds=tuple(args.seeds),
                           key_seeds=tuple(args.key_seeds), threads=args.threads)
    if not args.quick and not args.report_only and args.data_dir is None:
        raise ValueError("the full studies train on Fashion-MNIST: pass --data-dir (e.g. ../shared/data), "
                         "or --quick for the digits smoke test")
    for name in names:
        command = f"involution study {name}" + (" --quick" if args.quick else "")  # what reproduces it
        command += f" --data-dir {args.data_dir}" if args.data_dir else ""
        command += f" --seeds {' '.join(map(str, args.seeds))}" if tuple(args.seeds) != SEEDS else ""
        command += f" --key-seeds {' '.join(map(str, args.key_seeds))}" if tuple(args.key_seeds) != KEY_SEEDS else ""
        result = run_study(name, out, options, report_dir=args.report_dir, command=command,
                           progress=not args.no_progress, train_missing=not args.report_only)
        done = len({r["key"] for r in result["rows"]})
        print(f"{name}: {done}/{result['cells']} cells finished")
        for kind, path in result["paths"].items():
            if kind in ("md", "png"):
                print(f"  wrote {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
