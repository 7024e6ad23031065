"""``medssl quickstart``: the whole workflow on built-in synthetic data, minutes on a 2-core CPU.

1. synthesise a labelled PI-CAI-layout set and a separate unlabelled "archive";
2. pretrain a tiny CSwin UNet on the archive (multi-task SSL);
3. five-fold finetuning from that encoder and from scratch (the twin), PI-CAI metrics;
4. write ``cv/cv_report.{json,md}`` with both runs side by side.

Pretraining on a separate archive keeps the validation folds out of pretraining (no leakage).
Every step reuses what an earlier, interrupted quickstart finished.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import medssl
from medssl.errors import ConfigError

logger = logging.getLogger(__name__)


def configs_dir() -> Path:
    """The repository's ``configs/`` (editable install), or ``$MEDSSL_CONFIGS``."""
    path = Path(os.environ.get("MEDSSL_CONFIGS", Path(medssl.__file__).resolve().parent.parent / "configs"))
    if not (path / "pretrain" / "cswin_tiny.yaml").is_file():
        raise ConfigError(f"configs not found at {path}: install medssl from its repository with `pip install -e .` "
                          "or set MEDSSL_CONFIGS to the configs folder")
    return path


def run_quickstart(output: str | Path, cases: int = 30, archive_cases: int = 24, pretrain_epochs: int = 3,
                   finetune_epochs: int = 3, seed: int = 0, folds: list[int] | None = None) -> dict:
    from lightning.pytorch import seed_everything

    from medssl.cv import run_cv
    from medssl.data.synth import synth_picai
    from medssl.lightning_cli import MedsslCLI

    start = time.time()
    output = Path(output)
    configs = configs_dir()
    data, archive, cache = output / "data", output / "archive", output / "cache"
    for folder, n, s, first in ((data, cases, seed, 10000), (archive, archive_cases, seed + 1000, 20000)):
        if not (folder / "picai_labels" / "clinical_information" / "marksheet.csv").is_file():
            logger.info("quickstart: writing %d synthetic cases to %s", n, folder)
            synth_picai(folder, cases=n, seed=s, first_patient=first)
    pretrain_dir = output / "pretrain"
    ckpt = pretrain_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        logger.info("quickstart: pretraining CSwin UNet on the archive (%d epochs)", pretrain_epochs)
        seed_everything(seed)
        cli = MedsslCLI(args=["--config", str(configs / "pretrain" / "cswin_tiny.yaml"),
                              "--data.root", str(archive), "--data.cache_dir", str(cache),
                              "--trainer.max_epochs", str(pretrain_epochs),
                              "--trainer.default_root_dir", str(pretrain_dir),
                              "--trainer.enable_progress_bar", "false"], run=False)
        for cb in cli.trainer.checkpoint_callbacks:
            cb.dirpath = str(pretrain_dir / "checkpoints")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logger.info("quickstart: five-fold finetuning, pretrained and from scratch (%d epochs each)", finetune_epochs)
    report = run_cv([str(configs / "finetune" / "cswin_picai_tiny.yaml")],
                    ["--data.root", str(data), "--data.cache_dir", str(cache),
                     "--model.init_args.init_from", str(ckpt), "--trainer.max_epochs", str(finetune_epochs),
                     "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed)],
                    folds, output / "cv", twin=True)
    report["quickstart_seconds"] = round(time.time() - start, 1)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medssl quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--cases", type=int, default=30, help="labelled synthetic cases")
    parser.add_argument("--archive-cases", type=int, default=24, help="unlabelled synthetic cases for pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--folds", default=None, help="comma-separated folds to run (default: all five)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
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
                            args.finetune_epochs, args.seed, folds)
    comparison = report.get("comparison", {})
    print(f"quickstart finished in {report['quickstart_seconds']:.0f} s; report: "
          f"{Path(args.output) / 'cv' / 'cv_report.md'}")
    for metric in ("auroc", "ap", "score"):
        row = comparison.get(metric, {})
        print(f"  {metric:<6} pretrained {row.get('pretrained')}  scratch {row.get('scratch')}")
    return 0
