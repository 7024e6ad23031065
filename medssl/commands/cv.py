"""``medssl cv --config CFG --output DIR``: patient-grouped k-fold finetuning with the PI-CAI report."""

from __future__ import annotations

import argparse
from pathlib import Path

from medssl.errors import ConfigError


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(f"--folds {text!r}: give fold numbers like 0,1,2") from None


def main(argv: list[str]) -> int:
    from medssl.progress import quiet_lightning

    parser = argparse.ArgumentParser(
        prog="medssl cv", description="Patient-grouped k-fold finetuning with PI-CAI evaluation. Any other "
        "option (e.g. --trainer.max_epochs 2, --data.root DIR, --data.split_file S.json) is passed to each fold's fit.")
    parser.add_argument("--config", action="append", default=None, help="finetuning config (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--twin", action="store_true",
                        help="also run the from-scratch twin (model.init_from unset) and compare")
    parser.add_argument("--selection", choices=["last", "best"], default="last",
                        help="the checkpoint each fold reports: last (default, as nnU-Net) or best on the fold's own "
                             "validation score (optimistic; the report says so)")
    parser.add_argument("--workers", type=int, default=None,
                        help="folds trained at once, each on its own GPU (default: the number of visible GPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo folds that an earlier run made with other settings (default: refuse)")
    parser.add_argument("--train-fractions", default=None,
                        help="a label-efficiency study: train every fold on these fractions of its training patients "
                             "(nested, stratified; validation unchanged), e.g. 0.1,0.25,0.5,1.0")
    parser.add_argument("--seeds", default=None,
                        help="training seeds, e.g. 0,1,2: every fold of every arm trained once per seed (seed_<s>/), "
                             "the comparison resampling seeds and cases")
    parser.add_argument("--control", action="append", default=[], metavar="ARM",
                        help="a control arm compared with scratch like the pretrained run: supervised (trained on the "
                             "pretraining archive's labels; supervised=CKPT: any checkpoint, a positive control that "
                             "must win) or shuffled (the pretrained weights with each tensor permuted); repeatable")
    parser.add_argument("--metrics", choices=["monai", "legacy", "brats2023"], default=None,
                        help="segmentation (BraTS): the report's convention, brats2023 (lesion-wise, default), legacy "
                             "or monai (see medssl evaluate); detection is scored by picai_eval")
    parser.add_argument("--verbose", action="store_true", help="Lightning's model summaries and tips")
    # a worker process started by --workers: one fold, no report
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-fold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-run", default="pretrained", help=argparse.SUPPRESS)
    parser.add_argument("--worker-init-from", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.cv import run_cv, run_worker
    from medssl.runs import resolve

    quiet_lightning(args.verbose)
    if args.worker_fold is not None:
        run_worker(args.worker_config, args.output, args.worker_fold, args.worker_dir, args.worker_run,
                   args.worker_init_from, args.worker_fraction, args.worker_seed, args.selection, args.verbose)
        return 0
    if not args.config:
        raise ConfigError("give the finetuning recipe with --config (e.g. configs/finetune/cswin_picai_tiny.yaml)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more")
    fractions = None
    if args.train_fractions:
        try:
            fractions = [float(f) for f in args.train_fractions.split(",")]
        except ValueError:
            raise ConfigError(f"--train-fractions {args.train_fractions!r}: give fractions like 0.25,0.5,1.0") from None
    folds = _folds(args.folds)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: give seeds like 0,1,2") from None
    config = resolve(args.config, overrides)  # the recipe and the options, parsed once; the folds build from it
    report = run_cv(config, folds, args.output, args.twin, args.workers, args.selection, args.overwrite,
                    args.verbose, fractions, seeds, args.control, args.metrics)
    for row in report.get("fractions", []):
        diff = (row.get("difference") or {}).get("score") or {}
        print(f"fraction {row['fraction']:g}: " + ", ".join(
            f"{name} score {(run['pooled'] or {}).get('score')}" for name, run in row["runs"].items())
            + (f"; pretrained - scratch {diff.get('pooled_difference')} (95% CI {diff.get('pooled_ci')}, "
               f"p {diff.get('p_value')})" if diff else ""))
    if report.get("task") == "segmentation":
        pooled = report["pooled"]
        dice = ", ".join(f"{r} {pooled['dice'][r]:.3f}" for r in pooled["dice"] if pooled["dice"][r] is not None)
        words = {r: row["verdict"] for r, row in (report.get("comparison") or {}).get("dice", {}).items()}
        print(f"wrote {Path(args.output) / 'cv_report.json'}: pooled Dice ({report['metrics']}) {dice}"
              + (f"; pretrained - scratch: {', '.join(f'{r} {v}' for r, v in words.items())}" if words else ""))
        return 0
    main_run = report.get("mean", {})
    print(f"wrote {Path(args.output) / 'cv_report.json'}: mean AUROC {main_run.get('auroc')}, "
          f"AP {main_run.get('ap')}, score {main_run.get('score')} ({report.get('provenance', {}).get('selection')} "
          "checkpoint of each fold)")
    return 0
