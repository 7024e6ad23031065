"""Output folders as values: a training run (``Run``) and a cross-validation output (``CvOutput``).

Each is the one owner of its layout: no other module spells ``checkpoints/``, ``lightning_logs/``,
``fold_<k>/``, ``scratch/``, ``fraction_<f>/``, ``fold_result.json`` or ``splits.json``.

A cross-validation output (``medssl cv --output DIR``)::

    DIR/splits.json                      the folds every run validates
    DIR/cv_report.{json,md}, *.png       the report (a study's: the largest fraction's, plus ``fractions``)
    DIR/[fraction_<f>/][seed_<s>/][<run>/]fold_<k>/
        .medssl_fold.json                what made the fold (its stamp)
        fold_result.json                 written last: the fold is finished
        checkpoints/last.ckpt            the fold's weights
        predictions/<case_id>.nii.gz     its validation maps in each case's own geometry
    DIR/controls/{shuffled,supervised}.ckpt, supervised/   the control arms' initial weights (``--control``)

``fraction_<f>/`` exists in a label-efficiency study (``--train-fractions``), ``seed_<s>/`` when several
training seeds run (``--seeds``; each seed folder is a cv output of its own, with its report, and the
folder above holds the report over seeds). The main run (pretrained, or from scratch without ``init_from``)
is at the top; every other arm in a folder of its name: ``scratch/`` (the twin), ``supervised/`` and
``shuffled/`` (the positive and negative controls).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.errors import ConfigError
from medssl.io import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A run folder (``trainer.default_root_dir``): ``checkpoints/`` and ``lightning_logs/version_*/config.yaml``."""

    root: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> Run:
        path = Path(checkpoint).resolve()
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def logged_configs(self) -> list[Path]:
        found = [self.root / "config.yaml"] if (self.root / "config.yaml").is_file() else []
        return found + sorted(self.root.glob("lightning_logs/version_*/config.yaml"),
                              key=lambda p: int(p.parent.name.rsplit("_", 1)[-1]))

    def config_for(self, checkpoint: str | os.PathLike) -> Path:
        """The logged config of the fit that wrote ``checkpoint`` (for checkpoints that do not carry one).

        The rule, logged: the newest config written before the checkpoint (a fit writes its config when
        it starts, its checkpoints later; a later ``validate`` run writes a newer version).
        """
        found = self.logged_configs()
        if not found:
            raise ConfigError(f"no config.yaml found under {self.root} for {checkpoint}; give the run's config "
                              "with --config")
        if len(found) == 1:
            return found[0]
        written = Path(checkpoint).stat().st_mtime
        before = [p for p in found if p.stat().st_mtime <= written]
        chosen = max(before or found, key=lambda p: p.stat().st_mtime)
        logger.info("%s: %d configs in %s; using %s, the newest written before the checkpoint", checkpoint,
                    len(found), self.root, chosen)
        return chosen


@dataclass(frozen=True)
class FoldJob:
    """One fold of one arm of a cross-validation: where it lives and how it trains."""

    run: str  # the arm: "pretrained", "scratch", "supervised" or "shuffled"
    fold: int
    fold_dir: Path
    init_from: str | None  # the weights the fold starts from (None: from scratch)
    fraction: float = 1.0  # of the fold's training patients (a label-efficiency study)
    seed: int | None = None  # the training seed (None: the config's seed_everything)

    @property
    def scratch(self) -> bool:
        return self.init_from is None

    @property
    def record(self) -> Path:
        return self.fold_dir / CvOutput.DONE

    @property
    def stamp(self) -> Path:
        return self.fold_dir / CvOutput.STAMP

    @property
    def checkpoints(self) -> Path:
        return self.fold_dir / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.fold_dir / "predictions"

    @property
    def finished(self) -> bool:
        return self.record.is_file()


@dataclass(frozen=True)
class CvOutput:
    """A ``medssl cv`` output folder (see the module docstring for its layout).

    Args:
        root: the ``--output`` folder.
        study: a label-efficiency study (``--train-fractions``): each fraction in ``fraction_<f>/``.
        seeds: several training seeds (``--seeds``): each in ``seed_<s>/``.
    """

    root: Path
    study: bool = False
    seeds: bool = False

    DONE = "fold_result.json"
    STAMP = ".medssl_fold.json"
    REPORT = "cv_report.json"
    SPLITS = "splits.json"

    @property
    def splits(self) -> Path:
        return self.root / self.SPLITS

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def controls(self) -> Path:
        return self.root / "controls"

    def fraction_dir(self, fraction: float) -> Path:
        return self.root / f"fraction_{fraction:g}" if self.study else self.root

    def seed_dir(self, fraction: float = 1.0, seed: int | None = None) -> Path:
        base = self.fraction_dir(fraction)
        return base / f"seed_{seed}" if self.seeds else base

    def run_dir(self, run: str, main_run: str, fraction: float = 1.0, seed: int | None = None) -> Path:
        """The folder of ``run``: the main run at the top (of its fraction and seed), any other arm in its own."""
        base = self.seed_dir(fraction, seed)
        return base if run == main_run else base / run

    def job(self, run: str, main_run: str, fold: int, init_from: str | None, fraction: float = 1.0,
            seed: int | None = None) -> FoldJob:
        folder = self.run_dir(run, main_run, fraction, seed) / f"fold_{fold}"
        return FoldJob(run, fold, folder, init_from, fraction=fraction, seed=seed)

    # -- reading a finished output -----------------------------------------------------------------------
    def read_report(self, fraction: float | None = None, seed: int | None = None) -> tuple[dict[str, Any], Path]:
        """The report of the whole output, of one fraction of a study, or of one seed; with the folder it describes."""
        report, folder = self._fraction_report(fraction)
        seeds = report.get("seeds")
        if seeds is None:
            if seed is not None:
                raise ConfigError(f"--seed {seed}: {folder} was trained with one seed (no --seeds); leave --seed out")
            return report, folder
        if seed is None:
            raise ConfigError(f"--cv {folder} holds runs of seeds {', '.join(map(str, seeds))}; choose one with --seed")
        if seed not in seeds:
            raise ConfigError(f"--seed {seed}: {folder} has seeds {', '.join(map(str, seeds))}")
        sub = folder / f"seed_{seed}" / self.REPORT
        if not sub.is_file():
            raise ConfigError(f"--seed {seed}: {sub} is missing (the run did not finish)")
        return read_json(sub, "cv report"), sub.parent

    def _fraction_report(self, fraction: float | None) -> tuple[dict[str, Any], Path]:
        if not self.report.is_file():
            raise ConfigError(f"--cv {self.root}: no {self.REPORT} (the cv has not finished, or this is not a cv "
                              "output)")
        report = read_json(self.report, "cv report")
        if not isinstance(report, dict) or not isinstance(report.get("runs"), dict):
            raise ConfigError(f"{self.report}: not a medssl cv report (no runs)")
        fractions = [row.get("fraction") for row in report.get("fractions") or [] if isinstance(row, dict)]
        if fraction is None:
            if fractions:
                raise ConfigError(f"--cv {self.root} is a label-efficiency study with fractions "
                                  f"{', '.join(f'{f:g}' for f in fractions)}; choose one with --fraction")
            return report, self.root
        if not fractions:
            raise ConfigError(f"--fraction {fraction:g}: {self.root} is not a label-efficiency study (no "
                              "--train-fractions); leave --fraction out")
        if not any(abs(float(f) - fraction) < 1e-9 for f in fractions):
            raise ConfigError(f"--fraction {fraction:g}: {self.root} has fractions "
                              f"{', '.join(f'{f:g}' for f in fractions)}")
        study = CvOutput(self.root, study=True)
        folder = study.fraction_dir(fraction)
        sub = folder / self.REPORT
        if not sub.is_file():
            raise ConfigError(f"--fraction {fraction:g}: {sub} is missing (the study did not finish)")
        return read_json(sub, "cv report"), folder

    def checkpoints(self, run: str | None = None, fraction: float | None = None, seed: int | None = None) -> list[Path]:
        """The reported checkpoint of every fold of ``run`` (default: the report's main run).

        Only the folds the report lists are taken (folds another config left in the folder are not), each
        checkpoint from its fold's own folder, so a moved or copied output uses its own weights.

        Args:
            run: ``pretrained`` or ``scratch``.
            fraction: the fraction of a label-efficiency study (required there, refused elsewhere).
            seed: the training seed of a ``--seeds`` run (required there, refused elsewhere).
        """
        report, folder = self.read_report(fraction, seed)
        partial = report.get("partial")
        if isinstance(partial, dict):
            logger.warning("--cv %s: its report covers folds %s of %s only (a --folds run): the ensemble is those "
                           "folds'", self.root, ", ".join(map(str, partial.get("folds") or [])), partial.get("of"))
        main = report.get("main_run", "pretrained")
        run = run or main
        summary = report["runs"].get(run)
        if not isinstance(summary, dict):
            raise ConfigError(f"--cv {self.root}: its report has no {run} run (runs: {sorted(report['runs'])})")
        base = folder if run == main else folder / run
        out = []
        folds = summary.get("folds") or []
        valid = isinstance(folds, list) and all(isinstance(f, dict) and isinstance(f.get("fold"), int) for f in folds)
        if not valid:
            raise ConfigError(f"{folder / self.REPORT}: its {run} run lists no valid folds (a fold entry needs a "
                              "\"fold\" number): not a report medssl cv wrote, or an edited one")
        for fold in folds:
            record_path = base / f"fold_{fold['fold']}" / self.DONE
            record = read_json(record_path, "fold record")
            if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str):
                raise ConfigError(f"{record_path}: not a fold record (no checkpoint)")
            if record.get("run", run) != run:
                raise ConfigError(f"{record_path} is a {record.get('run')} fold, not {run}")
            checkpoint = record_path.parent / "checkpoints" / Path(record["checkpoint"]).name
            if not checkpoint.is_file():
                raise ConfigError(f"{record_path}: its checkpoint {checkpoint} is missing")
            out.append(checkpoint)
        if not out:
            raise ConfigError(f"--cv {self.root}: its report lists no {run} folds")
        logger.info("--cv %s: the %s run's %d fold checkpoints%s", self.root, run, len(out),
                    "" if fraction is None else f" (fraction {fraction:g})")
        return out
