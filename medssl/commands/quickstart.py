"""``medssl quickstart``: the whole workflow on built-in synthetic data, minutes on a 2-core CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from medssl.errors import ConfigError


def main(argv: list[str]) -> int:
    from medssl.progress import quiet_lightning

    parser = argparse.ArgumentParser(prog="medssl quickstart", description="synthetic data -> pretraining -> "
                                     "five-fold finetuning, pretrained and from scratch -> PI-CAI report")
    parser.add_argument("--output", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--cases", type=int, default=30, help="labelled synthetic cases")
    parser.add_argument("--archive-cases", type=int, default=24, help="unlabelled synthetic cases for pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--folds", default=None, help="comma-separated folds to run (default: all five)")
    parser.add_argument("--difficulty", choices=["easy", "realistic"], default="realistic",
                        help="the synthetic task (default realistic: small, low-contrast lesions and look-alikes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="redo an output an earlier run made with other "
                        "options (default: refuse)")
    parser.add_argument("--verbose", action="store_true", help="Lightning's messages")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.quickstart import run_quickstart

    quiet_lightning(args.verbose)
    for name in ("cases", "archive_cases", "pretrain_epochs", "finetune_epochs"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    if args.cases < 10:
        raise ConfigError(f"--cases {args.cases}: five folds need at least 10 labelled cases")
    try:
        folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    except ValueError:
        raise ConfigError(f"--folds {args.folds!r}: give fold numbers like 0,1") from None
    report = run_quickstart(args.output, args.cases, args.archive_cases, args.pretrain_epochs,
                            args.finetune_epochs, args.seed, folds, args.difficulty, args.overwrite)
    comparison = report.get("comparison", {})
    print(f"quickstart finished in {report['quickstart_seconds']:.0f} s; report: "
          f"{Path(args.output) / 'cv' / 'cv_report.md'}")
    for metric in ("auroc", "ap", "score"):
        row = comparison.get(metric, {})
        print(f"  {metric:<6} pretrained {row.get('pretrained')}  scratch {row.get('scratch')}")
    line = report.get("twin_difference_line")
    if line:
        print(line)
    return 0
