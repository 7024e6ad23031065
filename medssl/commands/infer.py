"""``medssl infer``: finetuned models on new cases, maps in each case's own geometry.

``--checkpoint A.ckpt [B.ckpt ...]`` (several: their mean, a fold ensemble) or ``--cv CV_DIR`` (the
reported checkpoint of every fold of a ``medssl cv`` output; ``--run scratch`` for its twin or ``--run
supervised|shuffled`` for a control arm; ``--fraction F`` for one fraction of a label-efficiency study;
``--seed S`` for one training seed of a ``--seeds`` run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medssl.errors import ConfigError


def main(argv: list[str]) -> int:
    from medssl.progress import progress, quiet_lightning

    parser = argparse.ArgumentParser(
        prog="medssl infer", description="Predict new cases with a finetuned checkpoint or a fold ensemble. Other "
        "options (e.g. --data.root DIR, --data.layout brats) override the runs' saved config.")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--checkpoint", nargs="+", help="finetuning checkpoint(s); several are averaged (ensemble)")
    models.add_argument("--cv", help="a medssl cv output: every fold's reported checkpoint, averaged")
    parser.add_argument("--run", choices=["pretrained", "scratch", "supervised", "shuffled"], default=None,
                        help="with --cv: the pretrained run, its from-scratch twin or a control arm (default: the "
                             "output's main run)")
    parser.add_argument("--seed", type=int, default=None,
                        help="with --cv on a run of several seeds (--seeds): the seed whose folds to use")
    parser.add_argument("--fraction", type=float, default=None,
                        help="with --cv on a label-efficiency study (--train-fractions): the fraction to use")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--config", action="append", default=None,
                        help="the runs' config (default: the config saved in each checkpoint, else its run's)")
    parser.add_argument("--overwrite", action="store_true", help="redo a folder other models or settings wrote")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: a GPU when there is one (with the run's precision), else the CPU in fp32")
    parser.add_argument("--verbose", action="store_true", help="Lightning's messages")
    args, overrides = parser.parse_known_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.folders import CvOutput
    from medssl.inference import run_infer
    from medssl.runs import parse_overrides

    quiet_lightning(args.verbose)
    for option in ("run", "fraction", "seed"):
        if getattr(args, option) is not None and not args.cv:
            raise ConfigError(f"--{option} chooses the folds of a --cv output; with --checkpoint leave it out")
    if args.cv and args.config:
        raise ConfigError("--cv takes each fold's config from its checkpoint; leave out --config")
    options = parse_overrides(overrides)
    checkpoints = CvOutput(Path(args.cv)).checkpoints(args.run, args.fraction, args.seed) if args.cv \
        else args.checkpoint
    record = run_infer(checkpoints, args.output, args.config, options, args.overwrite,
                       progress=lambda cases: progress(cases, "medssl infer"), device=args.device)
    print(f"wrote {len(record['cases'])} case(s) to {args.output} with {len(record['models'])} model(s) "
          f"({len(record['skipped'])} skipped); summary: {Path(args.output) / 'predictions.json'}")
    return 0
