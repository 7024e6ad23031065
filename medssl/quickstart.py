"""``medssl quickstart``: the whole workflow on built-in synthetic data, minutes on a 2-core CPU.

1. synthesise a labelled PI-CAI-layout set and a separate unlabelled "archive";
2. pretrain a tiny CSwin UNet on the archive (multi-task SSL);
3. five-fold finetuning from that encoder and from scratch (the twin), PI-CAI metrics;
4. write ``cv/cv_report.{json,md}`` with both runs side by side.

Pretraining on a separate archive keeps the validation folds out of pretraining (no leakage).
Every step reuses what an earlier, interrupted quickstart finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import medssl
from medssl.errors import ConfigError

logger = logging.getLogger(__name__)
STAMP = ".medssl_quickstart.json"
# everything a quickstart writes into its folder: --overwrite removes these and nothing else
OWNED = ("data", "archive", "cache", "pretrain", "cv", STAMP)


def configs_dir() -> Path:
    """The repository's ``configs/`` (editable install), or ``$MEDSSL_CONFIGS``."""
    path = Path(os.environ.get("MEDSSL_CONFIGS", Path(medssl.__file__).resolve().parent.parent / "configs"))
    if not (path / "pretrain" / "cswin_tiny.yaml").is_file():
        raise ConfigError(f"configs not found at {path}: install medssl from its repository with `pip install -e .` "
                          "or set MEDSSL_CONFIGS to the configs folder")
    return path


def run_quickstart(output: str | Path, cases: int = 30, archive_cases: int = 24, pretrain_epochs: int = 3,
                   finetune_epochs: int = 3, seed: int = 0, folds: list[int] | None = None,
                   difficulty: str = "realistic", overwrite: bool = False) -> dict:
    """Synthetic data, pretraining on the archive, the CV of both twins; returns the cv report.

    The output records its options (``.medssl_quickstart.json``): a rerun with other options is refused
    in one line (or redone from scratch with ``overwrite``), never answered with the old report.
    """
    from medssl.checkpoint import load_checkpoint
    from medssl.cv import run_cv
    from medssl.data.synth import synth_picai
    from medssl.records import Stamp
    from medssl.runs import build, merge, resolve

    start = time.time()
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder")
    options = {"cases": cases, "archive_cases": archive_cases, "pretrain_epochs": pretrain_epochs,
               "finetune_epochs": finetune_epochs, "seed": seed, "difficulty": difficulty,
               "folds": None if folds is None else sorted(folds)}
    stamp = Stamp(output, STAMP)
    theirs = stamp.read() if output.is_dir() else None
    ours = [output / name for name in OWNED if (output / name).exists()]
    if theirs is None and ours:
        # a folder quickstart did not make: nothing in it is deleted, and nothing found there is trained on
        raise ConfigError(f"--output {output} holds {', '.join(p.name for p in ours)} but was not made by medssl "
                          "quickstart (no .medssl_quickstart.json): give a new folder; --overwrite only redoes a "
                          "quickstart's own folder")
    if theirs is None and output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConfigError(f"--output {output} is not empty and was not made by medssl quickstart; give a new folder")
    if theirs is not None and theirs != options and overwrite:
        logger.info("quickstart: %s was made with other options; starting again (--overwrite)", output)
        for path in ours:  # only what a quickstart creates: anything else in the folder stays
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    stamp.claim(options, "a quickstart run")
    configs = configs_dir()
    data, archive, cache = output / "data", output / "archive", output / "cache"
    for folder, n, s, first in ((data, cases, seed, 10000), (archive, archive_cases, seed + 1000, 20000)):
        if not (folder / "picai_labels" / "clinical_information" / "marksheet.csv").is_file():
            if folder.exists():  # an interrupted write: start the set again
                shutil.rmtree(folder)
            logger.info("quickstart: writing %d synthetic cases (%s) to %s", n, difficulty, folder)
            synth_picai(folder, cases=n, seed=s, first_patient=first, difficulty=difficulty)
    pretrain_dir = output / "pretrain"
    ckpt = pretrain_dir / "checkpoints" / "last.ckpt"
    done_epochs = int(load_checkpoint(ckpt).get("epoch", -1)) + 1 if ckpt.is_file() else 0
    if done_epochs < pretrain_epochs:  # none yet, or an interrupted run: train (on from its last.ckpt)
        logger.info("quickstart: pretraining CSwin UNet on the archive (%d epochs)", pretrain_epochs)
        pre = build(resolve([configs / "pretrain" / "cswin_tiny.yaml"]), {
            "seed_everything": seed, "data": {"init_args": {"root": str(archive), "cache_dir": str(cache)}},
            "trainer": {"max_epochs": pretrain_epochs, "default_root_dir": str(pretrain_dir),
                        "enable_progress_bar": False, "enable_model_summary": False}})
        for cb in pre.trainer.checkpoint_callbacks:
            cb.dirpath = str(pretrain_dir / "checkpoints")
        pre.trainer.fit(pre.system, datamodule=pre.datamodule, ckpt_path=str(ckpt) if ckpt.is_file() else None)
    logger.info("quickstart: five-fold finetuning, pretrained and from scratch (%d epochs each)", finetune_epochs)
    config = merge(resolve([configs / "finetune" / "cswin_picai_tiny.yaml"]), {
        "seed_everything": seed,
        "data": {"init_args": {"root": str(data), "cache_dir": str(cache)}},
        "model": {"init_args": {"init_from": str(ckpt)}},
        "trainer": {"max_epochs": finetune_epochs, "enable_progress_bar": False}})
    report = run_cv(config, folds, output / "cv", twin=True)
    report["quickstart_seconds"] = round(time.time() - start, 1)
    report["twin_difference_line"] = twin_difference_line(report)
    return report


def twin_difference_line(report: dict) -> str | None:
    """One line on pretrained minus scratch (pooled PI-CAI score, its paired 95 % CI and p-value)."""
    row = (report.get("comparison") or {}).get("score") or {}
    diff, ci, p = row.get("pooled_difference"), row.get("pooled_ci"), row.get("p_value")
    if diff is None:
        return None
    ci_text = f", 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and None not in ci else ""
    p_text = f", p = {p:.3f}" if p is not None else ""
    verdict = ("no detectable difference" if ci and None not in ci and ci[0] <= 0 <= ci[1]
               else "pretraining helped" if diff > 0 else "pretraining hurt")
    return f"pretrained - scratch, pooled PI-CAI score: {diff:+.3f}{ci_text}{p_text} ({verdict})"
