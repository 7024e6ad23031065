"""``medssl infer``: finetuned models on new cases, maps in each case's own geometry.

``--checkpoint A.ckpt [B.ckpt ...]`` (several: their mean, a fold ensemble) or ``--cv CV_DIR`` (the
reported checkpoint of every fold of a ``medssl cv`` output; ``--run scratch`` for its twin).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medssl.errors import ConfigError


def main(argv: list[str]) -> int:
    from medssl.inference import cv_checkpoints, run_infer
    from medssl.progress import progress, quiet_lightning

    parser = argparse.ArgumentParser(
        prog="medssl infer", description="Predict new cases with a finetuned checkpoint or a fold ensemble. Other "
        "options (e.g. --data.root DIR, --data.layout brats) override the runs' saved config.")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--checkpoint", nargs="+", help="finetuning checkpoint(s); several are averaged (ensemble)")
    models.add_argument("--cv", help="a medssl cv output: every fold's reported checkpoint, averaged")
    parser.add_argument("--run", choices=["pretrained", "scratch"], default=None,
                        help="with --cv: the pretrained run or its from-scratch twin (default: the output's main run)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--config", action="append", default=None,
                        help="the runs' config (default: the config saved in each checkpoint, else its run's)")
    parser.add_argument("--overwrite", action="store_true", help="redo a folder other models or settings wrote")
    parser.add_argument("--verbose", action="store_true", help="Lightning's messages")
    args, overrides = parser.parse_known_args(argv)
    quiet_lightning(args.verbose)
    if args.run and not args.cv:
        raise ConfigError("--run chooses a run of a --cv output; with --checkpoint leave it out")
    checkpoints = cv_checkpoints(args.cv, args.run) if args.cv else args.checkpoint
    if args.cv and args.config:
        raise ConfigError("--cv takes each fold's config from its checkpoint; leave out --config")
    record = run_infer(checkpoints, args.output, args.config, overrides, args.overwrite,
                       progress=lambda cases: progress(cases, "medssl infer"))
    print(f"wrote {len(record['cases'])} case(s) to {args.output} with {len(record['models'])} model(s) "
          f"({len(record['skipped'])} skipped); summary: {Path(args.output) / 'predictions.json'}")
    return 0
