"""Patient-grouped k-fold finetuning: maps in each case's original geometry and the PI-CAI report.

For each fold: fit (resuming from ``last.ckpt`` when a fold was interrupted), take the reported
checkpoint (``selection``: the final one, as nnU-Net does, or the best on the fold's own
validation score, which the report marks as optimistic), predict every validation case with the
system's own ``predict_case``, write its map on the case's own reference grid, and mark the fold
done. The report re-scores every fold with picai_eval from exactly the written maps. ``twin`` also
runs the same recipe from scratch (``init_from`` unset) and sets both side by side.

Where everything lives is ``medssl.folders.CvOutput``'s to say; the workers are ``medssl.pool.FoldPool``;
the folds come from ``medssl.data.splits.prepare_cv_split``; the report from ``medssl.evaluation.report``.
A fold folder records what made it (``.medssl_fold.json``: the fingerprint of the resolved config,
the init checkpoint's hash, the split and the data): a finished fold is reused only when they all
match; anything else is refused in one line (or redone with ``overwrite``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.checkpoint import load_checkpoint, state_dict_of
from medssl.data.geometry import write_like
from medssl.data.splits import prepare_cv_split
from medssl.errors import ConfigError, DataError, MedsslError
from medssl.evaluation.evaluate import labels_of_cases
from medssl.evaluation.report import (
    CONTROLS,
    fraction_row,
    report_stem,
    score_folds,
    study_positive_control,
    write_cv_report,
    write_label_efficiency,
    write_seeds_report,
)
from medssl.evaluation.seg_cv import score_segmentation_folds, write_segmentation_cv_report
from medssl.folders import CvOutput, FoldJob, Run
from medssl.io import read_json, refuse_output_over_inputs, safe_child, write_json, write_text
from medssl.pool import FoldPool, worker_command
from medssl.progress import eta
from medssl.records import Stamp, device_name, file_sha256, fingerprint, versions
from medssl.runs import build, computation_config, merge
from medssl.systems.finetune import DenseSystem
from medssl.weights import check_finite

logger = logging.getLogger(__name__)
SELECTIONS = ("last", "best")
CONFIG_FILE = ".medssl_cv_config.json"  # the resolved config the workers build their folds from


def fold_overrides(job: FoldJob, split_file: Path, quiet: bool = True) -> dict[str, Any]:
    """What makes the recipe one fold of this cv run (in resolved form, laid over the config)."""
    # train_fraction and init_from always given, so no override can train a fold other than the identity says
    out: dict[str, Any] = {
        "data": {"init_args": {"fold": job.fold, "split_file": str(split_file), "train_fraction": job.fraction}},
        "trainer": {"default_root_dir": str(job.fold_dir)},
        "model": {"init_args": {"init_from": job.init_from}},
    }
    if quiet:  # one model summary per fold is noise; --verbose brings it back
        out["trainer"]["enable_model_summary"] = False
    if job.seed is not None:
        out["seed_everything"] = job.seed
    return out


def _checkpoint_callback(trainer, job: FoldJob):
    """The fold's best-by-score checkpoint callback, saving under the fold's ``checkpoints/``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor), None)
    if best is None:
        best = ModelCheckpoint(monitor="val/score", mode="max", save_last=True, enable_version_counter=False)
        trainer.callbacks.append(best)
    for cb in callbacks or [best]:
        cb.dirpath = str(job.checkpoints)
    best.save_last = True
    return best


def predict_fold(system: DenseSystem, dm, out_dir: Path) -> dict[str, str]:
    """The map of every validation case on its original reference grid. Returns case -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    system.eval()
    dataset = dm.make_dataset(dm.val_cases, with_labels=True, train=False)  # shares the validation cache
    paths = {}
    for i, case in enumerate(dm.val_cases):
        item = dataset[i]
        path = safe_child(out_dir, f"{case.case_id}.nii.gz")
        write_like(system.predict_case(item, item["reference"]), item["reference"], path)
        paths[case.case_id] = str(path)
    return paths


def run_fold(config: Mapping[str, Any], job: FoldJob, split_file: Path, selection: str = "last",
             identity: dict[str, Any] | None = None, verbose: bool = False) -> dict:
    """Finetune and predict one fold; returns (and saves) its result record."""
    built = build(config, fold_overrides(job, split_file, quiet=not verbose))
    system, dm, trainer = built.system, built.datamodule, built.trainer
    if not isinstance(system, DenseSystem):
        raise ConfigError("medssl cv needs a finetuning system: set model.class_path to "
                          "medssl.systems.finetune.DetectionSystem or SegmentationSystem")
    best = _checkpoint_callback(trainer, job)
    trainer.callbacks.append(FoldStatus(job))
    last = Run(job.fold_dir).last
    if last.is_file():
        load_checkpoint(last)  # a planted or foreign last.ckpt is refused here, before Lightning opens it
        logger.info("%s fold %d: resuming from %s", job.run, job.fold, last)
    trainer.fit(system, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    if selection == "best":
        if not (best.best_model_path and Path(best.best_model_path).is_file()):
            raise ConfigError(f"{job.run} fold {job.fold}: --selection best needs a validation score during "
                              "training, and none was logged (trainer.limit_val_batches 0 or no validation epoch?); "
                              "use --selection last")
        chosen = Path(best.best_model_path)
    else:
        chosen = last
    if not chosen.is_file():
        raise MedsslError(f"{job.run} fold {job.fold}: no checkpoint was written under {job.checkpoints}")
    system.load_state_dict(state_dict_of(load_checkpoint(chosen)))
    check_finite(system.net, f"{job.run} fold {job.fold} ({chosen})")
    dm.setup("fit")
    # Lightning moves the module back to the CPU when fit ends: predict on the training device, with
    # the training precision (bf16 autocast under bf16-mixed).
    system.to(trainer.strategy.root_device)
    with trainer.precision_plugin.forward_context():
        paths = predict_fold(system, dm, job.predictions)
    init_from = system.hparams.init_from
    record = {
        "run": job.run,
        "fold": job.fold,
        "task": system.task,
        "cases": sorted(paths),
        # relative to the fold's folder, with their hashes: a copied cv output reads (and checks) its own maps
        "predictions": {case: str(Path(path).relative_to(job.fold_dir)) for case, path in paths.items()},
        "prediction_sha256": {case: file_sha256(path) for case, path in paths.items()},
        "labels": {c.case_id: c.label for c in dm.val_cases},
        "label_sources": {c.case_id: getattr(c, "label_source", None) for c in dm.val_cases},
        "checkpoint": str(chosen),
        "selection": selection,
        "init_from": init_from,
        "init_from_sha256": file_sha256(init_from) if init_from and Path(init_from).is_file() else None,
        "leaked_cases": list(system.leaked_cases),
        "skipped_cases": dict(dm.skipped_cases),
        "train_cases": len(dm.train_cases),
        "train_case_ids": [c.case_id for c in dm.train_cases],
        "train_fraction": job.fraction,
        "seed": job.seed,
        # the optimiser steps actually taken: with data.train_batches_per_epoch, the same at every fraction
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_batches_per_epoch": dm.train_batches_per_epoch,
        # what init_from moved into the net: tensor counts by kind (loaded, skipped, missing, ...) and the names
        # left at their initialisation (decoder, raw-input skips, head: trained from scratch in every arm)
        "init_report": dict(system.init_report),
        "not_transferred": list(getattr(system, "not_transferred", [])),
        "identity": identity,
        "provenance": {"label_source": dm.label_source, "split_file": str(split_file), "selection": selection,
                       "init_from": init_from, "versions": versions(), "device": device_name()},
    }
    write_json(job.record, record)  # written last: a fold with this file is finished
    write_json(job.fold_dir / "status.json", {"state": "finished", "epoch": record["epochs"], "steps": record["steps"]})
    return record


class FoldStatus:
    """Writes ``fold_<k>/status.json`` after every epoch and logs a line (epoch, training loss, last validation
    score, the time left: the mean epoch so far times the epochs to go) after the first and the last epoch and
    otherwise at most every ``log_every_s`` seconds, so a study of many short folds keeps a short log."""

    def __new__(cls, job: FoldJob, log_every_s: float = 30.0):
        from lightning.pytorch.callbacks import Callback

        class _FoldStatus(Callback):
            def on_train_start(self, trainer, pl_module) -> None:
                self.start, self.first_epoch = time.monotonic(), trainer.current_epoch
                self.logged = None

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or not trainer.is_global_zero:
                    return
                metrics = trainer.callback_metrics
                score = metrics.get("val/score", metrics.get("val/dice_mean"))  # detection, segmentation
                loss = metrics.get("train/loss")
                done = trainer.current_epoch + 1
                per_epoch = (time.monotonic() - self.start) / max(done - self.first_epoch, 1)
                left = per_epoch * max((trainer.max_epochs or done) - done, 0)
                status = {"state": "running", "epoch": done, "max_epochs": trainer.max_epochs,
                          "train_loss": None if loss is None else round(float(loss), 4),
                          "val_score": None if score is None else round(float(score), 4), "eta_seconds": round(left)}
                write_json(job.fold_dir / "status.json", status)
                now = time.monotonic()
                if self.logged is not None and done < (trainer.max_epochs or done) and now - self.logged < log_every_s:
                    return
                self.logged = now
                logger.info("%s fold %d%s: epoch %d/%s, train loss %s, val score %s, %s left", job.run, job.fold,
                            "" if job.seed is None else f" seed {job.seed}", done, status["max_epochs"],
                            status["train_loss"], status["val_score"], eta(left))

        return _FoldStatus()


# --------------------------------------------------------------------------- the cv run


def _fractions(train_fractions: Sequence[float] | None) -> list[float]:
    if train_fractions is None:
        return [1.0]
    fractions = sorted({float(f) for f in train_fractions})
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ConfigError(f"--train-fractions {list(train_fractions)}: give fractions in (0, 1], e.g. 0.1,0.25,0.5,1.0")
    return fractions


def _claim(jobs: list[FoldJob], identities: dict[FoldJob, dict], overwrite: bool) -> list[FoldJob]:
    """Claim each fold's folder for its identity; the jobs still to run (a finished fold of the same identity is
    reused, one of another identity or of unknown origin refused, or redone with ``overwrite``)."""
    pending = []
    for job in jobs:
        stamp = Stamp(job.fold_dir, CvOutput.STAMP)
        theirs = stamp.read() if job.fold_dir.is_dir() else None
        if theirs is None and job.fold_dir.is_dir() and any(job.fold_dir.iterdir()) and not overwrite:
            raise ConfigError(f"{job.fold_dir} holds a fold of unknown origin (no {CvOutput.STAMP}); give a new "
                              "--output or pass --overwrite to redo it")
        if theirs is not None and theirs != identities[job] and overwrite:
            logger.info("%s fold %d: made with other settings; redoing it (--overwrite)", job.run, job.fold)
            shutil.rmtree(job.fold_dir)
        elif theirs is None and overwrite and job.fold_dir.is_dir():
            shutil.rmtree(job.fold_dir)
        stamp.claim(identities[job], f"{job.run} fold {job.fold}")
        if job.finished:
            logger.info("%s fold %d: finished before with these settings, not run again", job.run, job.fold)
        else:
            pending.append(job)
    return pending


def run_cv(config: Mapping[str, Any], folds: list[int] | None, output: str | Path, twin: bool = False,
           workers: int | None = None, selection: str = "last", overwrite: bool = False, verbose: bool = False,
           train_fractions: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
           controls: Sequence[str] = (), metrics: str | None = None) -> dict[str, Any]:
    """Run the folds (reusing finished ones made by the same settings) and write the report. Returns it.

    Args:
        config: the resolved finetuning config (``medssl.runs.resolve``).
        folds: the folds to run (default: all ``data.n_folds``).
        output: the cv folder (``medssl.folders.CvOutput``).
        twin: also run the from-scratch twin of a pretrained run.
        workers: folds trained at once, one per GPU (default: one per visible GPU).
        selection: ``last`` or ``best``.
        overwrite: redo folds other settings made.
        verbose: Lightning's model summaries.
        train_fractions: a label-efficiency study: every fold trained once per fraction of its training patients
            (nested, stratified subsets; the validation folds never change); the report adds ``fractions`` and
            ``label_efficiency.png``.
        seeds: training seeds: every (fraction, arm, fold) is trained once per seed, each seed in ``seed_<s>/``,
            and the comparison resamples seeds and cases (``medssl.evaluation.compare.compare_seeds``).
        controls: control arms, each compared with scratch like the pretrained run: ``supervised`` (the same net
            trained with supervision on the labelled cases of the pretraining archive; ``supervised=CKPT``: any
            checkpoint) must beat scratch, ``shuffled`` (the pretrained weights, each tensor's entries permuted)
            tests that a gain is more than a weight scale.
        metrics: a segmentation run's convention (``medssl.evaluation.segmentation.METRICS``; default
            ``brats2023``, the lesion-wise metrics); detection is scored by picai_eval.
    """
    import torch

    if selection not in SELECTIONS:
        raise ConfigError(f"--selection {selection!r}: choose last (the final checkpoint) or best")
    if folds is not None and len(set(folds)) != len(folds):
        raise ConfigError(f"--folds {folds}: each fold once")
    fractions = _fractions(train_fractions)  # checked before anything is read or written
    seed_list = _seeds(seeds)
    control_names = _controls(controls)
    out = CvOutput(Path(output).resolve(), study=train_fractions is not None, seeds=seeds is not None)
    if out.root.exists() and not out.root.is_dir():
        raise ConfigError(f"--output {out.root} is a file; give a folder")
    probe = build(config)
    if probe.trainer.world_size > 1:
        raise ConfigError("medssl cv trains each fold on one device and runs folds side by side (--workers); "
                          "for one fold on several GPUs use `medssl fit --data.fold K` with --trainer.devices")
    if not isinstance(probe.system, DenseSystem):
        raise ConfigError("medssl cv needs a finetuning system: set model.class_path to "
                          "medssl.systems.finetune.DetectionSystem or SegmentationSystem")
    task = probe.system.task
    metrics = _metrics(task, metrics, train_fractions, seeds, controls)
    dm = probe.datamodule
    if dm.train_fraction != 1.0:
        raise ConfigError("medssl cv sets each fold's data.train_fraction itself; give --train-fractions "
                          f"{dm.train_fraction:g},1.0 instead of --data.train_fraction")
    n_folds = dm.n_folds
    init_from = getattr(probe.system.hparams, "init_from", None)
    folds = list(range(n_folds)) if folds is None else folds
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise ConfigError(f"--folds {bad} outside 0..{n_folds - 1} (data.n_folds is {n_folds})")
    refuse_output_over_inputs(out.root, [*dm.input_paths(dm.discover()), init_from,
                                          *(v for v in control_names.values() if v)])
    out.root.mkdir(parents=True, exist_ok=True)
    _, split_info = prepare_cv_split(dm, out.splits, overwrite)
    labelled = [c for c in dm.cases if c.label is not None]
    data_fp = fingerprint(sorted((c.case_id, c.to_item()["fingerprint"], c.label) for c in labelled))
    computed = computation_config(probe.config)
    control_weights = prepare_controls(control_names, init_from, out, probe.config, overwrite, verbose)

    if twin and not init_from:
        logger.warning("--twin without model.init_args.init_from: there is only the from-scratch run")
    main_run = "pretrained" if init_from else "scratch"
    arms = {main_run: init_from}
    if (twin or control_weights) and init_from:
        arms["scratch"] = None
    if control_weights and not init_from:
        arms.setdefault("scratch", None)
    arms.update(control_weights)
    jobs, identities = [], {}
    for fraction in fractions:
        for seed in seed_list:
            for name, weights in arms.items():
                run_config = json.loads(json.dumps(computed))
                if name != main_run:
                    run_config["model"]["init_args"]["init_from"] = \
                        None if weights is None else f"sha256:{file_sha256(weights)}"
                run_config["data"].setdefault("init_args", {})["train_fraction"] = fraction
                for k in folds:
                    job = out.job(name, main_run, k, weights, fraction, seed)
                    identities[job] = {"run": name, "fold": k, "fraction": fraction,
                                       "config": fingerprint(run_config), "data": data_fp,
                                       "split": split_info["sha256_used"], "selection": selection,
                                       "init_from": run_config["model"]["init_args"].get("init_from"),
                                       **({"seed": seed} if seed is not None else {})}
                    jobs.append(job)
    pending = _claim(jobs, identities, overwrite)
    gpus = torch.cuda.device_count() if probe.trainer.strategy.root_device.type == "cuda" else 0
    if workers is None:  # one fold per visible GPU when the folds train on GPUs
        workers = max(gpus, 1)
    workers = min(workers, len(pending)) or 1
    if workers > 1:
        # The parent filled the disk cache and wrote the split file (above), so the workers neither
        # repeat the preprocessing nor race to write the same files; they build from the same config.
        config_file = out.root / CONFIG_FILE
        write_json(config_file, probe.config)
        FoldPool(lambda job: worker_command(config_file, out.root, job, selection, verbose), workers, gpus).run(pending)
    else:
        for job in pending:
            logger.info("%s fold %d%s%s: training", job.run, job.fold,
                        f" (fraction {job.fraction:g})" if train_fractions is not None else "",
                        f" seed {job.seed}" if job.seed is not None else "")
            run_fold(probe.config, job, out.splits, selection, identities[job], verbose)
    compared = len([a for a in arms if a != "scratch"]) if "scratch" in arms else 0
    partial = None if sorted(folds) == list(range(n_folds)) else {"folds": sorted(folds), "of": n_folds}
    context = ReportContext(dm, split_info, selection, init_from, computed, identities,
                            family=max(1, compared * len(fractions)),
                            controls={k: v for k, v in control_weights.items()}, partial=partial, task=task,
                            metrics=metrics)
    if task == "segmentation":
        return write_segmentation_report(out.root, jobs, context)
    return write_reports(out, jobs, context, fractions, seed_list, train_fractions is not None)


def _metrics(task: str, metrics: str | None, train_fractions, seeds, controls) -> str | None:
    """The scoring convention of a ``task`` run, and what a segmentation cv does not take."""
    from medssl.evaluation.segmentation import METRICS

    if task == "detection":
        if metrics is not None:
            raise ConfigError(f"--metrics {metrics} is a BraTS segmentation convention; a detection cv is scored by "
                              "picai_eval (drop --metrics)")
        return None
    given = [name for name, value in (("--train-fractions", train_fractions), ("--seeds", seeds),
                                       ("--control", controls)) if value]
    if given:
        raise ConfigError(f"{', '.join(given)}: the label-efficiency study is built for detection; a segmentation cv "
                          "takes --folds, --twin and --selection")
    metrics = metrics or "brats2023"
    if metrics not in METRICS:
        raise ConfigError(f"--metrics {metrics}: choose {' or '.join(METRICS)}")
    return metrics


def write_segmentation_report(root: Path, jobs: list[FoldJob], context: ReportContext) -> dict[str, Any]:
    """The segmentation cv report: every fold's written label maps scored per region under ``context.metrics``."""
    scored = score_segmentation_folds(_records(jobs, context.identities), context.metrics,
                                      getattr(context.dm, "brats_labels", None))
    return write_segmentation_cv_report(root, scored, context.metrics, _provenance_extra(context, {None: scored}))


def _seeds(seeds: Sequence[int] | None) -> list[int | None]:
    if seeds is None:
        return [None]
    found = list(dict.fromkeys(int(s) for s in seeds))
    if not found or len(found) != len(list(seeds)) or any(s < 0 for s in found):
        raise ConfigError(f"--seeds {list(seeds)}: give distinct non-negative integers, e.g. 0,1,2")
    return found


def _controls(controls: Sequence[str]) -> dict[str, str | None]:
    """``--control`` values: ``supervised``, ``supervised=CKPT``, ``shuffled`` -> name: given checkpoint or None."""
    out: dict[str, str | None] = {}
    for control in controls:
        name, _, given = str(control).partition("=")
        if name not in CONTROLS or (given and name != "supervised"):
            raise ConfigError(f"--control {control}: choose supervised, supervised=CHECKPOINT or shuffled")
        if name in out:
            raise ConfigError(f"--control {name} given twice")
        if given and not Path(given).is_file():
            raise ConfigError(f"--control {control}: checkpoint not found")
        out[name] = given or None
    return out


def prepare_controls(controls: Mapping[str, str | None], init_from: str | None, out: CvOutput,
                     config: Mapping[str, Any], overwrite: bool, verbose: bool) -> dict[str, str]:
    """The initial weights of each control arm, made once under ``OUTPUT/controls/`` (resumable, stamped)."""
    from medssl.weights import shuffled_checkpoint

    made: dict[str, str] = {}
    if "shuffled" in controls:
        if not init_from:
            raise ConfigError("--control shuffled permutes the pretrained weights: set model.init_args.init_from")
        target = out.controls / "shuffled.ckpt"
        identity = {"source_sha256": file_sha256(init_from), "seed": 0}
        stamp = Stamp(out.controls, ".medssl_shuffled.json")
        if stamp.read() != identity or not target.is_file() or overwrite:
            shuffled_checkpoint(init_from, target, seed=0)
            stamp.claim(identity, "the shuffled control", overwrite=True)
        made["shuffled"] = str(target)
    if "supervised" in controls:
        made["supervised"] = controls["supervised"] or train_supervised_control(init_from, out, config, overwrite,
                                                                               verbose)
    return made


def train_supervised_control(init_from: str | None, out: CvOutput, config: Mapping[str, Any], overwrite: bool,
                             verbose: bool) -> str:
    """The positive control's weights: the cv's own net and recipe trained for detection on the labelled cases
    of the archive ``init_from`` was pretrained on (its run's ``data.root``), folds 1-4 of a five-fold split of
    the archive (fold 0 unused). Stamped and resumable in ``OUTPUT/controls/supervised/``."""
    from medssl.weights import read_weights

    if not init_from:
        raise ConfigError("--control supervised trains on the pretraining archive's labels, which init_from names: "
                          "set model.init_args.init_from (or give --control supervised=CHECKPOINT)")
    pretrain = read_weights(init_from).meta.config_dict() or {}
    archive = ((pretrain.get("data") or {}).get("init_args") or {})
    if not archive.get("root"):
        raise ConfigError(f"{init_from} does not record the data it was pretrained on; give --control "
                          "supervised=CHECKPOINT")
    folder = out.controls / "supervised"
    job = FoldJob("supervised-control", 0, folder, None)
    data = {"root": archive["root"], "layout": archive.get("layout") or "picai",
            "labels_root": archive.get("labels_root"), "fold": 0, "n_folds": 5, "train_fraction": 1.0,
            "split_file": str(out.controls / "supervised_splits.json")}
    overrides = {"data": {"init_args": data}, "model": {"init_args": {"init_from": None}},
                 "trainer": {"default_root_dir": str(folder), "limit_val_batches": 0,
                             **({} if verbose else {"enable_model_summary": False})}}
    identity = {"config": fingerprint(computation_config(merge(config, overrides))), "archive": str(archive["root"])}
    stamp = Stamp(folder, CvOutput.STAMP)
    if overwrite and stamp.read() not in (None, identity):
        shutil.rmtree(folder)
    stamp.claim(identity, "the supervised control")
    last = Run(folder).last
    if (folder / CvOutput.DONE).is_file() and last.is_file():
        return str(last)
    built = build(config, overrides)
    if not built.datamodule.used_cases(built.datamodule.discover()):
        raise ConfigError(f"--control supervised: the pretraining archive {archive['root']} has no labelled case; "
                          "label some or give --control supervised=CHECKPOINT")
    _checkpoint_callback(built.trainer, job)
    logger.info("supervised control: training on the labelled cases of %s", archive["root"])
    built.trainer.fit(built.system, datamodule=built.datamodule, ckpt_path=str(last) if last.is_file() else None)
    write_json(folder / CvOutput.DONE, {"checkpoint": str(last), "steps": int(built.trainer.global_step),
                                        "train_cases": len(built.datamodule.train_cases)})
    return str(last)


@dataclass
class ReportContext:
    """What every report of one cv run shares: the data, the split, the selection rule, the init checkpoint,
    the config (without volatile keys) and the folds' identities."""

    dm: Any
    split_info: dict[str, Any]
    selection: str
    init_from: str | None
    config: dict[str, Any]
    identities: dict[FoldJob, dict[str, Any]]
    family: int = 1  # comparisons the study makes (arms compared with scratch x fractions)
    controls: dict[str, str] = field(default_factory=dict)  # control arm -> its initial weights
    partial: dict[str, Any] | None = None  # {"folds": [...], "of": n} when --folds ran some folds only
    task: str = "detection"
    metrics: str | None = None  # a segmentation run's convention


def _records(jobs: Sequence[FoldJob], identities: Mapping[FoldJob, dict]) -> dict[str, list[dict[str, Any]]]:
    """Each finished fold's record, its maps' paths resolved in the fold's own folder and their hashes checked."""
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in dict.fromkeys(j.run for j in jobs)}
    for job in jobs:
        record = read_json(job.record, "fold record")
        if not isinstance(record, dict) or not isinstance(record.get("predictions"), dict):
            raise ConfigError(f"{job.record} is not a fold record (no predictions); pass --overwrite to redo the fold")
        if record.get("identity") not in (None, identities[job]):
            raise ConfigError(f"{job.record} was made with other settings; give a new --output or pass --overwrite")
        record.pop("identity", None)
        record["predictions"] = {case: str(_fold_map(job, path, (record.get("prediction_sha256") or {}).get(case)))
                                 for case, path in record["predictions"].items()}
        records[job.run].append(record)
    return records


def _fold_map(job: FoldJob, path: str, sha256: str | None) -> Path:
    """A fold's map in the fold's own folder (records of older versions hold absolute paths: the map of the same
    name here is taken), checked against the hash recorded when it was written."""
    given = Path(path)
    local = job.fold_dir / given if not given.is_absolute() else job.predictions / given.name
    if not local.is_file():
        raise DataError(f"the fold's map is missing; pass --overwrite to redo {job.run} fold {job.fold}",
                        path=str(local))
    if sha256 is not None and file_sha256(local) != sha256:
        raise DataError(f"the fold's map is not the one written (edited or truncated since; its sha256 differs from "
                        f"{job.record.name}'s); pass --overwrite to redo {job.run} fold {job.fold}", path=str(local))
    return local


def write_reports(out: CvOutput, jobs: list[FoldJob], context: ReportContext, fractions: list[float],
                  seeds: list[int | None], study: bool) -> dict[str, Any]:
    """Every report of the run: one per seed (a cv output of its own), one over seeds, one per fraction and the
    study's (``fractions``, ``label_efficiency.png``); returns the top-level one."""
    rows, report = [], None
    for fraction in fractions:
        chosen = [j for j in jobs if j.fraction == fraction]
        base = out.fraction_dir(fraction)
        if seeds == [None]:
            report = write_report(base, chosen, context)
            records = _records(chosen, context.identities)
        else:
            per_seed, records = {}, {}
            for seed in seeds:
                mine = [j for j in chosen if j.seed == seed]
                results = score_folds(_records(mine, context.identities), _label_reference(context.dm))
                write_report(out.seed_dir(fraction, seed), mine, context, results=results)
                per_seed[seed] = results
                for arm, recs in _records(mine, context.identities).items():
                    records.setdefault(arm, []).extend(recs)
            report = write_seeds_report(base, per_seed, _provenance_extra(context, per_seed), context.family)
        if study:
            rows.append(fraction_row(fraction, report, records))
    if not study:
        return report  # the one fraction's report is the output's (``base`` is the output folder)
    # the study's report: the largest fraction's, with every fraction's row; the positive control read per fraction
    main = {**report, "fractions": rows}
    positive = study_positive_control(rows)
    if positive:
        main["positive_control"] = positive
    stem = report_stem(out.root, main)
    write_json(out.root / f"{stem}.json", main)
    name = f"fraction_{fractions[-1]:g}"
    largest = out.fraction_dir(fractions[-1]) / f"{report_stem(out.fraction_dir(fractions[-1]), main)}.md"
    head = (f"# Label-efficiency study: fractions {', '.join(f'{f:g}' for f in fractions)}\n\n"
            f"Down to *Label efficiency*, this is the largest fraction's report (`{name}/`), its verdicts that "
            "fraction's only; every fraction's rows and the study's reading follow under *Label efficiency*.\n\n")
    write_text(out.root / f"{stem}.md", head + (largest.read_text() if largest.is_file() else ""))
    write_label_efficiency(out.root, main, stem)
    return main


def _label_reference(dm) -> dict[str, str]:
    """Labels stored on another grid than the maps (Prostate158: the ADC grid) are scored on the T2W grid."""
    if "t2w" not in dm.modalities:
        return {}
    return labels_of_cases([c for c in dm.cases if c.label is not None], "t2w")[1]


def write_report(output: Path, jobs: list[FoldJob], context: ReportContext,
                 extra: dict[str, Any] | None = None, results: dict[str, list[dict]] | None = None) -> dict[str, Any]:
    """Score every fold's written maps with picai_eval (unless ``results`` holds them scored) and write
    ``cv_report.{json,md}`` with provenance."""
    if results is None:
        results = score_folds(_records(jobs, context.identities), _label_reference(context.dm))
    return write_cv_report(output, results, {**_provenance_extra(context, {None: results}), **(extra or {})})


def _provenance_extra(context: ReportContext, per_seed: Mapping[Any, Mapping[str, list[dict]]]) -> dict[str, Any]:
    """The report's ``leakage`` and ``provenance``: which labels, split, selection rule, seeds, weights and software
    made its numbers."""
    dm = context.dm
    leaked = sorted({c for results in per_seed.values() for recs in results.values() for r in recs
                     for c in r.get("leaked_cases", [])})
    labelled = [c for c in dm.cases if c.label is not None]
    sources = Counter(getattr(c, "label_source", None) or "unknown" for c in labelled)
    init_from = context.init_from
    steps = sorted({r.get("steps") for results in per_seed.values() for recs in results.values() for r in recs
                    if r.get("steps") is not None})
    provenance = {
        "label_source": getattr(dm, "label_source", None),
        "label_sources": dict(sources),
        "split_source": context.split_info,
        "selection": context.selection,
        "selection_note": ("the final checkpoint of each fold (selected without looking at the fold)"
                           if context.selection == "last" else
                           "optimistic: each fold's checkpoint was selected on the same fold it reports"),
        "init_from": {"path": init_from, "sha256": file_sha256(init_from)
                      if init_from and Path(init_from).is_file() else None,
                      "pretext": _pretext(init_from)},
        "controls": {arm: {"path": path, "sha256": file_sha256(path)} for arm, path in context.controls.items()},
        "seeds": [s for s in per_seed if s is not None] or None,
        "optimiser_steps_per_fold": steps,
        "train_batches_per_epoch": getattr(dm, "train_batches_per_epoch", None),
        "leakage_check": "validation cases seen in pretraining: " + (", ".join(leaked[:5]) if leaked else "none"),
        "config_sha256": fingerprint(context.config),
        "versions": versions(),
        "device": device_name(),
    }
    return {"leakage": {"validated_cases_seen_in_pretraining": leaked,
                        "note": "validation cases that the init_from checkpoint was pretrained on" if leaked
                        else "no validation case was in the pretraining data (or the checkpoint does not say)"},
            "provenance": provenance, **({"partial": context.partial} if context.partial else {})}


def _pretext(init_from: str | None) -> dict[str, Any] | None:
    """The pretext metrics saved beside the pretraining checkpoint (``pretext.json``), when there are some."""
    if not init_from:
        return None
    path = Path(init_from).parent / "pretext.json"
    return read_json(path, "pretext metrics") if path.is_file() else None


def run_worker(config_file: str | Path, output: str | Path, fold: int, fold_dir: str | Path, run: str,
               init_from: str | None, fraction: float, seed: int | None, selection: str,
               verbose: bool) -> dict[str, Any]:
    """One fold in a ``--workers`` process; the parent claimed its folder (its stamp), wrote the split and the
    resolved config the fold is built from."""
    config = read_json(config_file, "cv config")
    job = FoldJob(run, fold, Path(fold_dir), init_from, fraction, seed)
    identity = Stamp(job.fold_dir, CvOutput.STAMP).read()
    return run_fold(config, job, CvOutput(Path(output)).splits, selection, identity, verbose)
