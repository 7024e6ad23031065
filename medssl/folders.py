"""Output folders as values: a training run (``Run``) and a cross-validation output (``CvOutput``).

Each is the one owner of its layout: no other module spells ``checkpoints/``, ``lightning_logs/``,
``fold_<k>/``, ``scratch/``, ``fraction_<f>/``, ``fold_result.json`` or ``splits.json``.

A cross-validation output (``medssl cv --output DIR``)::

    DIR/splits.json                      the folds every run validates
    DIR/cv_report.{json,md}, *.png       the report (a study's: the largest fraction's, plus ``fractions``)
    DIR/[fraction_<f>/][scratch/]fold_<k>/
        .medssl_fold.json                what made the fold (its stamp)
        fold_result.json                 written last: the fold is finished
        checkpoints/last.ckpt            the fold's weights
        predictions/<case_id>.nii.gz     its validation maps in each case's own geometry

``fraction_<f>/`` exists in a label-efficiency study (``--train-fractions``); ``scratch/`` holds the
from-scratch twin of a pretrained run (a run without ``init_from`` is itself the main run, at the top).
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
    """One fold of one run of a cross-validation: where it lives and how it trains."""

    run: str  # "pretrained" or "scratch"
    fold: int
    fold_dir: Path
    scratch: bool  # trained with init_from unset
    fraction: float = 1.0  # of the fold's training patients (a label-efficiency study)

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
    """

    root: Path
    study: bool = False

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

    def fraction_dir(self, fraction: float) -> Path:
        return self.root / f"fraction_{fraction:g}" if self.study else self.root

    def run_dir(self, run: str, main_run: str, fraction: float = 1.0) -> Path:
        """The folder of ``run``: the main run at the top (of its fraction), a twin under ``scratch/``."""
        base = self.fraction_dir(fraction)
        return base if run == main_run else base / "scratch"

    def job(self, run: str, main_run: str, fold: int, fraction: float = 1.0) -> FoldJob:
        folder = self.run_dir(run, main_run, fraction) / f"fold_{fold}"
        return FoldJob(run, fold, folder, scratch=run == "scratch" and main_run != "scratch", fraction=fraction)

    # -- reading a finished output -----------------------------------------------------------------------
    def read_report(self, fraction: float | None = None) -> tuple[dict[str, Any], Path]:
        """The report of the whole output, or of one fraction of a study; with the folder it describes."""
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

    def checkpoints(self, run: str | None = None, fraction: float | None = None) -> list[Path]:
        """The reported checkpoint of every fold of ``run`` (default: the report's main run).

        Only the folds the report lists are taken (folds another config left in the folder are not), each
        checkpoint from its fold's own folder, so a moved or copied output uses its own weights.

        Args:
            run: ``pretrained`` or ``scratch``.
            fraction: the fraction of a label-efficiency study (required there, refused elsewhere).
        """
        report, folder = self.read_report(fraction)
        main = report.get("main_run", "pretrained")
        run = run or main
        summary = report["runs"].get(run)
        if not isinstance(summary, dict):
            raise ConfigError(f"--cv {self.root}: its report has no {run} run (runs: {sorted(report['runs'])})")
        base = folder if run == main else folder / "scratch"
        out = []
        for fold in summary.get("folds") or []:
            record_path = base / f"fold_{fold['fold']}" / self.DONE
            record = read_json(record_path, "fold record")
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
