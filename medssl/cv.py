"""``medssl cv``: patient-grouped k-fold finetuning, detection maps in original geometry, PI-CAI report.

For each fold: fit (resuming from ``last.ckpt`` when a fold was interrupted), reload the best
checkpoint by PI-CAI score, predict every validation case, write its detection map on the case's
own T2W grid, and mark the fold done. A finished fold is never run again. The report re-scores
every fold with picai_eval from exactly the written maps. ``--twin`` also runs the same recipe
from scratch (``init_from`` unset) under ``OUTPUT/scratch/`` and sets both side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medssl.checkpoint import load_checkpoint, state_dict_of
from medssl.errors import ConfigError, MedsslError
from medssl.evaluation.files import write_json

logger = logging.getLogger(__name__)
DONE = "fold_result.json"



def _checkpoint_callback(trainer, fold_dir: Path) -> ModelCheckpoint:
    """The fold's best-by-score checkpoint callback, saving under ``fold_dir/checkpoints``."""
    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor), None)
    if best is None:
        best = ModelCheckpoint(monitor="val/score", mode="max", save_last=True, enable_version_counter=False)
        trainer.callbacks.append(best)
    for cb in callbacks or [best]:
        cb.dirpath = str(fold_dir / "checkpoints")
    best.save_last = True
    return best


def predict_fold(system, dm, out_dir: Path) -> dict[str, str]:
    """Detection map of every validation case on its original reference (T2W) grid. Returns case -> path."""
    from medssl.evaluation.detection import write_image_like
    from medssl.infer import predict_case

    out_dir.mkdir(parents=True, exist_ok=True)
    system.eval()
    dataset = dm.make_dataset(dm.val_cases, with_labels=True, train=False)  # shares the validation cache
    reference = dm.preprocessing(False).reference_order
    paths = {}
    for i, case in enumerate(dm.val_cases):
        ref_path = next(case.images[m] for m in reference if case.images.get(m))
        path = out_dir / f"{case.case_id}.nii.gz"
        write_image_like(predict_case(system, dataset[i], ref_path, case.case_id), ref_path, path)
        paths[case.case_id] = str(path)
    return paths


def run_fold(configs: list[str], overrides: list[str], fold: int, fold_dir: Path, split_file: Path,
             scratch: bool) -> dict[str, Any]:
    """Finetune and predict one fold; returns (and saves) its result record."""
    from medssl.lightning_cli import MedsslCLI

    args = [a for c in configs for a in ("--config", c)] + list(overrides) + [
        "--data.fold", str(fold), "--data.split_file", str(split_file),
        "--trainer.default_root_dir", str(fold_dir)]
    if scratch:
        args += ["--model.init_args.init_from", "null"]
    cli = MedsslCLI(args=args, run=False)
    system, dm, trainer = cli.model, cli.datamodule, cli.trainer
    if not hasattr(system, "lesion_probability"):
        raise ConfigError("medssl cv needs a detection system: set model.class_path to "
                          "medssl.systems.finetune.DetectionSystem")
    best = _checkpoint_callback(trainer, fold_dir)
    last = fold_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        logger.info("fold %d: resuming from %s", fold, last)
    trainer.fit(system, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    chosen = best.best_model_path if best.best_model_path and Path(best.best_model_path).is_file() else str(last)
    if Path(chosen).is_file():
        system.load_state_dict(state_dict_of(load_checkpoint(chosen)))
    dm.setup("predict")
    # Lightning moves the module back to the CPU when fit ends: predict on the training device, with
    # the training precision (bf16 autocast under bf16-mixed).
    system.to(trainer.strategy.root_device)
    with trainer.precision_plugin.forward_context():
        paths = predict_fold(system, dm, fold_dir / "predictions")
    labelled = {c.case_id: c.label for c in dm.val_cases}
    record = {
        "fold": fold,
        "cases": sorted(paths),
        "predictions": paths,
        "labels": labelled,
        "checkpoint": chosen,
        "init_from": system.hparams.init_from,
        "leaked_cases": list(system.leaked_cases),
        "skipped_cases": dict(dm.skipped_cases),
        "train_cases": len(dm.train_cases),
    }
    write_json(fold_dir / DONE, record)  # written last: a fold with this file is finished
    return record


class FoldJob(NamedTuple):
    run: str  # "pretrained" or "scratch"
    fold: int
    fold_dir: Path
    scratch: bool  # run it with init_from unset


def _worker_command(configs: list[str], overrides: list[str], job: FoldJob, output: Path) -> list[str]:
    return [sys.executable, "-m", "medssl", "cv", *[a for c in configs for a in ("--config", c)],
            "--output", str(output), "--worker-fold", str(job.fold), "--worker-dir", str(job.fold_dir),
            *(["--worker-scratch"] if job.scratch else []), *overrides]


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def run_parallel(configs: list[str], overrides: list[str], jobs: list[FoldJob], output: Path,
                 workers: int, gpus: int) -> None:
    """Run the fold jobs as ``workers`` concurrent processes, each pinned to one GPU when there are GPUs.

    Each fold is its own ``medssl cv`` process (a fresh CUDA context and Lightning trainer), writing
    its output to ``fold_<k>/worker.log``. A failed fold does not stop the others; the first failure
    is reported once all have ended. ``gpus``: GPUs to pin the workers to, round robin (0: CPU folds,
    which share the cores through ``OMP_NUM_THREADS``). If this process is interrupted or terminated,
    it stops its workers before it exits.
    """
    pending, running, failures = list(jobs), {}, []
    free_slots = list(range(workers))
    # a scheduler's SIGTERM runs the cleanup below (signal handlers can only be set from the main thread)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        _run_pool(configs, overrides, output, workers, gpus, pending, running, free_slots, failures)
    finally:  # interrupted or failed: no worker keeps training on its own
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        for proc in running:
            proc.terminate()
        for proc, (_, _, log) in running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    if failures:
        raise MedsslError(failures[0] + (f"; {len(failures) - 1} more fold(s) failed" if len(failures) > 1 else ""))


def _run_pool(configs, overrides, output, workers, gpus, pending, running, free_slots, failures) -> None:
    while pending or running:
        while pending and free_slots:
            job, slot = pending.pop(0), free_slots.pop(0)
            job.fold_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(_visible_gpu(slot % gpus))
            elif "OMP_NUM_THREADS" not in env:  # CPU folds side by side: share the cores, do not oversubscribe
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
            log = (job.fold_dir / "worker.log").open("w")
            logger.info("%s fold %d: training in worker %d%s (log: %s)", job.run, job.fold, slot,
                        f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "", job.fold_dir / "worker.log")
            proc = subprocess.Popen(_worker_command(configs, overrides, job, output), env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            running[proc] = (job, slot, log)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            job, slot, log = running.pop(proc)
            log.close()
            free_slots.append(slot)
            if proc.returncode != 0:
                failures.append(f"{job.run} fold {job.fold} failed: {_last_line(job.fold_dir / 'worker.log')} "
                                f"(full log: {job.fold_dir / 'worker.log'})")
                logger.error("%s", failures[-1])


def _visible_gpu(index: int) -> str:
    """The ``index``-th GPU as the parent sees it (respecting its own CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")[index].strip()
    return str(index)


def run_cv(configs: list[str], overrides: list[str], folds: list[int] | None, output: str | Path,
           twin: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Run the folds (skipping finished ones) and write the report. Returns the report.

    ``workers`` > 1 trains that many folds at once, one per GPU (default: one per visible GPU).
    """
    from medssl.evaluation.picai import evaluate_maps
    from medssl.evaluation.report import write_cv_report
    from medssl.lightning_cli import MedsslCLI

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    probe = MedsslCLI(args=[*[a for c in configs for a in ("--config", c)], *overrides], run=False)
    if probe.trainer.world_size > 1:
        raise ConfigError("medssl cv trains each fold on one device and runs folds side by side (--workers); "
                          "for one fold on several GPUs use `medssl fit --data.fold K` with --trainer.devices")
    n_folds = probe.datamodule.n_folds
    pretrained = bool(getattr(probe.model.hparams, "init_from", None))
    folds = list(range(n_folds)) if folds is None else folds
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise ConfigError(f"--folds {bad} outside 0..{n_folds - 1} (data.n_folds is {n_folds})")
    split_file = output / "splits.json"
    runs = {"pretrained" if pretrained else "scratch": (output, False)}
    if twin and pretrained:
        runs["scratch"] = (output / "scratch", True)
    jobs = [FoldJob(name, k, run_dir / f"fold_{k}", scratch) for name, (run_dir, scratch) in runs.items()
            for k in folds]
    pending = [job for job in jobs if not (job.fold_dir / DONE).is_file()]
    for job in jobs:
        if job not in pending:
            logger.info("%s fold %d: finished before, not run again", job.run, job.fold)
    gpus = torch.cuda.device_count() if probe.trainer.strategy.root_device.type == "cuda" else 0
    if workers is None:  # one fold per visible GPU when the folds train on GPUs
        workers = max(gpus, 1)
    workers = min(workers, len(pending)) or 1
    if workers > 1:
        # The parent fills the disk cache and writes the split file once, so the workers neither
        # repeat the preprocessing nor race to write the same files.
        dm = probe.datamodule
        dm.split_file = str(split_file)
        dm.prepare_data()
        dm.setup("fit")
        run_parallel(configs, overrides, pending, output, workers, gpus)
    else:
        for job in pending:
            logger.info("%s fold %d: training", job.run, job.fold)
            run_fold(configs, overrides, job.fold, job.fold_dir, split_file, job.scratch)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for job in jobs:
        record = json.loads((job.fold_dir / DONE).read_text())
        record["metrics"] = evaluate_maps(record["predictions"], record["labels"])
        results[job.run].append(record)
    leaked = sorted({c for recs in results.values() for r in recs for c in r.get("leaked_cases", [])})
    extra = {"leakage": {"validated_cases_seen_in_pretraining": leaked,
                         "note": "validation cases that the init_from checkpoint was pretrained on" if leaked
                         else "no validation case was in the pretraining data (or the checkpoint does not say)"}}
    return write_cv_report(output, results, extra)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medssl cv", description="Patient-grouped k-fold finetuning with PI-CAI evaluation. Any other "
        "option (e.g. --trainer.max_epochs 2, --data.root DIR) is passed to each fold's fit.")
    parser.add_argument("--config", action="append", required=True, help="finetuning config (repeatable)")
    parser.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--twin", action="store_true",
                        help="also run the from-scratch twin (model.init_from unset) and compare")
    parser.add_argument("--workers", type=int, default=None,
                        help="folds trained at once, each on its own GPU (default: the number of visible GPUs)")
    # a worker process started by --workers: one fold, no report
    parser.add_argument("--worker-fold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-scratch", action="store_true", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.worker_fold is not None:
        run_fold(args.config, overrides, args.worker_fold, Path(args.worker_dir),
                 Path(args.output) / "splits.json", args.worker_scratch)
        return 0
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more")
    folds = None
    if args.folds:
        try:
            folds = [int(f) for f in args.folds.split(",")]
        except ValueError:
            raise ConfigError(f"--folds {args.folds!r}: give fold numbers like 0,1,2") from None
    report = run_cv(args.config, overrides, folds, args.output, args.twin, args.workers)
    main_run = report.get("mean", {})
    print(f"wrote {Path(args.output) / 'cv_report.json'}: mean AUROC {main_run.get('auroc')}, "
          f"AP {main_run.get('ap')}, score {main_run.get('score')}")
    return 0
