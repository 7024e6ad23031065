"""Patient-grouped k-fold finetuning: detection maps in original geometry and the PI-CAI report.

For each fold: fit (resuming from ``last.ckpt`` when a fold was interrupted), take the reported
checkpoint (``selection``: the final one, as nnU-Net does, or the best on the fold's own
validation score, which the report marks as optimistic), predict every validation case, write its
detection map on the case's own T2W grid, and mark the fold done. The report re-scores every fold
with picai_eval from exactly the written maps. ``twin`` also runs the same recipe from scratch
(``init_from`` unset) under ``OUTPUT/scratch/`` and sets both side by side.

A fold folder records what made it (``.medssl_fold.json``: the fingerprint of the resolved config,
the init checkpoint's hash, the split and the data): a finished fold is reused only when they all
match; anything else is refused in one line (or redone with ``overwrite``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from medssl.errors import ConfigError, MedsslError
from medssl.io import read_json, write_json

logger = logging.getLogger(__name__)
DONE = "fold_result.json"
STAMP = ".medssl_fold.json"
SELECTIONS = ("last", "best")


class FoldJob(NamedTuple):
    run: str  # "pretrained" or "scratch"
    fold: int
    fold_dir: Path
    scratch: bool  # run it with init_from unset
    fraction: float = 1.0  # of the fold's training patients (a label-efficiency study)


def fraction_dir(output: Path, fraction: float) -> Path:
    return output / f"fraction_{fraction:g}"


def fold_args(job: FoldJob, split_file: Path, quiet: bool = True) -> list[str]:
    """The overrides that make the recipe one fold of this cv run."""
    args = ["--data.fold", str(job.fold), "--data.split_file", str(split_file),
            "--trainer.default_root_dir", str(job.fold_dir)]
    # always given, so a --data.train_fraction among the overrides cannot train a fold the identity calls whole
    args += ["--data.train_fraction", repr(job.fraction)]
    if quiet:  # one model summary per fold is noise; --verbose brings it back
        args += ["--trainer.enable_model_summary", "false"]
    if job.scratch:
        args += ["--model.init_args.init_from", "null"]
    return args


def _checkpoint_callback(trainer, fold_dir: Path):
    """The fold's best-by-score checkpoint callback, saving under ``fold_dir/checkpoints``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

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
    from medssl.data.geometry import write_like
    from medssl.inference import predict_case
    from medssl.io import safe_child

    out_dir.mkdir(parents=True, exist_ok=True)
    system.eval()
    dataset = dm.make_dataset(dm.val_cases, with_labels=True, train=False)  # shares the validation cache
    paths = {}
    for i, case in enumerate(dm.val_cases):
        item = dataset[i]
        path = safe_child(out_dir, f"{case.case_id}.nii.gz")
        write_like(predict_case(system, item, item["reference"], case.case_id), item["reference"], path)
        paths[case.case_id] = str(path)
    return paths


def run_fold(configs: Sequence[str], overrides: Sequence[str], job: FoldJob, split_file: Path,
             selection: str = "last", identity: dict[str, Any] | None = None, verbose: bool = False) -> dict:
    """Finetune and predict one fold; returns (and saves) its result record."""
    from medssl.checkpoint import load_checkpoint, state_dict_of
    from medssl.runs import Run, build_cli, file_sha256
    from medssl.systems.finetune import DetectionSystem

    cli = build_cli(configs, [*overrides, *fold_args(job, split_file, quiet=not verbose)])
    system, dm, trainer = cli.model, cli.datamodule, cli.trainer
    if not isinstance(system, DetectionSystem):
        raise ConfigError("medssl cv needs a detection system: set model.class_path to "
                          "medssl.systems.finetune.DetectionSystem")
    best = _checkpoint_callback(trainer, job.fold_dir)
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
        raise MedsslError(f"{job.run} fold {job.fold}: no checkpoint was written under {job.fold_dir / 'checkpoints'}")
    system.load_state_dict(state_dict_of(load_checkpoint(chosen)))
    dm.setup("fit")
    # Lightning moves the module back to the CPU when fit ends: predict on the training device, with
    # the training precision (bf16 autocast under bf16-mixed).
    system.to(trainer.strategy.root_device)
    with trainer.precision_plugin.forward_context():
        paths = predict_fold(system, dm, job.fold_dir / "predictions")
    init_from = system.hparams.init_from
    record = {
        "run": job.run,
        "fold": job.fold,
        "cases": sorted(paths),
        "predictions": paths,
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
        "identity": identity,
        "provenance": {"label_source": dm.label_source, "split_file": str(split_file), "selection": selection,
                       "init_from": init_from, "versions": _versions(), "device": _device_name()},
    }
    write_json(job.fold_dir / DONE, record)  # written last: a fold with this file is finished
    return record


class FoldStatus:
    """Writes ``fold_<k>/status.json`` (epoch, last validation score) and logs one line per validation."""

    def __new__(cls, job: FoldJob):
        from lightning.pytorch.callbacks import Callback

        class _FoldStatus(Callback):
            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or not trainer.is_global_zero:
                    return
                score = trainer.callback_metrics.get("val/score")
                status = {"state": "running", "epoch": trainer.current_epoch + 1, "max_epochs": trainer.max_epochs,
                          "val_score": None if score is None else round(float(score), 4)}
                write_json(job.fold_dir / "status.json", status)
                logger.info("%s fold %d: epoch %d/%s, val score %s", job.run, job.fold, status["epoch"],
                            status["max_epochs"], status["val_score"])

        return _FoldStatus()


# --------------------------------------------------------------------------- workers


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM when the parent dies, even by SIGKILL (which runs no cleanup)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker_command(configs: Sequence[str], overrides: Sequence[str], job: FoldJob, output: Path,
                    selection: str, verbose: bool) -> list[str]:
    return [sys.executable, "-m", "medssl", "cv", *[a for c in configs for a in ("--config", c)],
            "--output", str(output), "--worker-fold", str(job.fold), "--worker-dir", str(job.fold_dir),
            "--worker-run", job.run, "--worker-fraction", repr(job.fraction), "--selection", selection,
            *(["--verbose"] if verbose else []),
            *(["--worker-scratch"] if job.scratch else []), *overrides]


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def run_parallel(configs: Sequence[str], overrides: Sequence[str], jobs: list[FoldJob], output: Path,
                 workers: int, gpus: int, selection: str = "last", verbose: bool = False) -> None:
    """Run the fold jobs as ``workers`` concurrent processes, each pinned to one GPU when there are GPUs.

    Each fold is its own ``medssl cv`` process (a fresh CUDA context and Lightning trainer), writing
    its output to ``fold_<k>/worker.log``; the parent prints one status line per fold as it changes.
    A failed fold does not stop the others; the first failure is reported once all have ended.
    ``gpus``: GPUs to pin the workers to, round robin (0: CPU folds, which share the cores through
    ``OMP_NUM_THREADS``). If this process is interrupted or terminated it stops its workers; if it is
    killed, the workers get SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
    """
    pending, running, failures = list(jobs), {}, []
    free_slots = list(range(workers))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        _run_pool(configs, overrides, output, workers, gpus, pending, running, free_slots, failures, selection,
                  verbose)
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


def _status_line(job: FoldJob) -> str | None:
    path = job.fold_dir / "status.json"
    try:
        status = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not status:
        return None
    return f"epoch {status.get('epoch')}/{status.get('max_epochs')}, val score {status.get('val_score')}"


def _run_pool(configs, overrides, output, workers, gpus, pending, running, free_slots, failures, selection,
              verbose) -> None:
    shown: dict[FoldJob, str | None] = {}
    while pending or running:
        while pending and free_slots:
            job, slot = pending.pop(0), free_slots.pop(0)
            job.fold_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(_visible_gpu(slot % gpus))
            elif "OMP_NUM_THREADS" not in env:  # CPU folds side by side: share the cores, do not oversubscribe
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
            try:
                log = (job.fold_dir / "worker.log").open("w")
            except OSError as e:
                raise MedsslError(f"{job.fold_dir / 'worker.log'}: cannot write the fold's log ({e.strerror or e})") \
                    from None
            logger.info("%s fold %d: running in worker %d%s (log: %s)", job.run, job.fold, slot,
                        f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "", job.fold_dir / "worker.log")
            proc = subprocess.Popen(_worker_command(configs, overrides, job, output, selection, verbose), env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent if platform.system() == "Linux" else None)
            running[proc] = (job, slot, log)
        time.sleep(0.5)
        for job, _, _ in running.values():
            line = _status_line(job)
            if line and line != shown.get(job):
                shown[job] = line
                logger.info("%s fold %d: running, %s", job.run, job.fold, line)
        for proc in [p for p in running if p.poll() is not None]:
            job, slot, log = running.pop(proc)
            log.close()
            free_slots.append(slot)
            if proc.returncode != 0:
                failures.append(f"{job.run} fold {job.fold} failed: {_last_line(job.fold_dir / 'worker.log')} "
                                f"(full log: {job.fold_dir / 'worker.log'})")
                logger.error("%s", failures[-1])
            else:
                logger.info("%s fold %d: finished", job.run, job.fold)


def _visible_gpu(index: int) -> str:
    """The ``index``-th GPU as the parent sees it (respecting its own CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")[index].strip()
    return str(index)


# --------------------------------------------------------------------------- the cv run


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("medssl", "torch", "monai", "lightning", "picai_eval", "report_guided_annotation", "SimpleITK"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _device_name() -> str:
    import torch

    return (f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
            else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")


def _prepare_split(dm, output: Path, overwrite: bool) -> tuple[Path, list[list[str]], dict[str, Any]]:
    """The folds this cv validates, kept in ``OUTPUT/splits.json``.

    A user's ``data.split_file`` (a file, a folder of picai_baseline ds-configs, nnU-Net's splits, or a
    name such as ``picai_public``) is used as given: copied to ``OUTPUT/splits.json`` with its provenance,
    never replaced. Otherwise folds are made with ``data.split_seed`` and kept there; a rerun with another
    seed into the same output is refused.
    """
    from medssl.data.splits import folds_sha256, read_split_file, split_source

    split_file = output / "splits.json"
    user = dm.split_file
    user_is_output = isinstance(user, str) and Path(user).resolve() == split_file.resolve()
    kept = read_json(split_file, "split file") if split_file.is_file() else None
    if user and not user_is_output:
        source = split_source(user)
        folds = read_split_file(user)
        if kept is not None and read_split_file(split_file) != folds and not overwrite:
            raise ConfigError(f"{split_file} holds other folds than data.split_file {user}; give a new --output "
                              "or pass --overwrite")
        if kept is None or read_split_file(split_file) != folds:
            write_json(split_file, {"n_folds": len(folds), "source": source, "folds": folds})
            kept = read_json(split_file, "split file")
    else:
        if overwrite and kept is not None and not (isinstance(kept, dict) and isinstance(kept.get("source"), dict)):
            split_file.unlink()  # folds made from the seed: remade from the data (the same folds for the same data)
            kept = None
        recorded = kept.get("source") if isinstance(kept, dict) else None
        source = recorded if isinstance(recorded, dict) else None
        seed = kept.get("seed") if isinstance(kept, dict) else None
        if source is None and seed is not None and seed != dm.split_seed and not overwrite:
            raise ConfigError(f"{split_file} holds folds made with data.split_seed {seed}, not {dm.split_seed}; "
                              "give a new --output or pass --overwrite")
        if source is None and seed is not None and seed != dm.split_seed:
            split_file.unlink()
    dm.split_file = str(split_file)
    dm.setup("fit")  # makes (or checks) the folds in OUTPUT/splits.json against the data
    if source is None:
        source = split_source(str(split_file))
    source = {**source, "sha256_used": folds_sha256(dm.folds)}
    return split_file, dm.folds, source


def run_cv(configs: Sequence[str], overrides: Sequence[str], folds: list[int] | None, output: str | Path,
           twin: bool = False, workers: int | None = None, selection: str = "last", overwrite: bool = False,
           verbose: bool = False, train_fractions: Sequence[float] | None = None) -> dict[str, Any]:
    """Run the folds (reusing finished ones made by the same settings) and write the report. Returns it.

    ``workers`` > 1 trains that many folds at once, one per GPU (default: one per visible GPU).
    ``train_fractions`` (a label-efficiency study): every fold is trained once per fraction of its training
    patients (nested, stratified subsets; the validation folds never change), each (fraction, run, fold) in
    ``OUTPUT/fraction_<f>/[scratch/]fold_<k>``; the report adds ``fractions`` and ``label_efficiency.png``.
    """
    import torch

    from medssl.runs import Stamp, build_cli, computation_config, fingerprint, resolved_config
    from medssl.systems.finetune import DetectionSystem

    if selection not in SELECTIONS:
        raise ConfigError(f"--selection {selection!r}: choose last (the final checkpoint) or best")
    if folds is not None and len(set(folds)) != len(folds):
        raise ConfigError(f"--folds {folds}: each fold once")
    fractions = _fractions(train_fractions)  # checked before anything is read or written
    output = Path(output).resolve()  # the records hold absolute paths, whatever the working folder
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder")
    output.mkdir(parents=True, exist_ok=True)
    probe = build_cli(configs, overrides)
    if probe.trainer.world_size > 1:
        raise ConfigError("medssl cv trains each fold on one device and runs folds side by side (--workers); "
                          "for one fold on several GPUs use `medssl fit --data.fold K` with --trainer.devices")
    if not isinstance(probe.model, DetectionSystem):
        raise ConfigError("medssl cv needs a detection system: set model.class_path to "
                          "medssl.systems.finetune.DetectionSystem")
    dm = probe.datamodule
    if dm.train_fraction != 1.0:
        raise ConfigError("medssl cv sets each fold's data.train_fraction itself; give --train-fractions "
                          f"{dm.train_fraction:g},1.0 instead of --data.train_fraction")
    n_folds = dm.n_folds
    init_from = getattr(probe.model.hparams, "init_from", None)
    folds = list(range(n_folds)) if folds is None else folds
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise ConfigError(f"--folds {bad} outside 0..{n_folds - 1} (data.n_folds is {n_folds})")
    split_file, all_folds, split_info = _prepare_split(dm, output, overwrite)
    labelled = [c for c in dm.cases if c.label is not None]
    data_fp = fingerprint(sorted((c.case_id, c.to_item()["fingerprint"], c.label) for c in labelled))
    config = computation_config(resolved_config(probe))

    if twin and not init_from:
        logger.warning("--twin without model.init_args.init_from: there is only the from-scratch run")
    jobs, identities = [], {}
    for fraction in fractions:
        base = output if train_fractions is None else fraction_dir(output, fraction)
        runs = {"pretrained" if init_from else "scratch": (base, False)}
        if twin and init_from:
            runs["scratch"] = (base / "scratch", True)
        for name, (run_dir, scratch) in runs.items():
            run_config = json.loads(json.dumps(config))
            if scratch:
                run_config["model"]["init_args"]["init_from"] = None
            run_config["data"].setdefault("init_args", {})["train_fraction"] = fraction
            for k in folds:
                job = FoldJob(name, k, run_dir / f"fold_{k}", scratch, fraction)
                identities[job] = {"run": name, "fold": k, "fraction": fraction, "config": fingerprint(run_config),
                                   "data": data_fp, "split": split_info["sha256_used"], "selection": selection,
                                   "init_from": run_config["model"]["init_args"].get("init_from")}
                jobs.append(job)
    pending = []
    for job in jobs:
        stamp = Stamp(job.fold_dir, STAMP)
        theirs = stamp.read() if job.fold_dir.is_dir() else None
        if theirs is None and job.fold_dir.is_dir() and any(job.fold_dir.iterdir()) and not overwrite:
            raise ConfigError(f"{job.fold_dir} holds a fold of unknown origin (no {STAMP}); give a new --output "
                              "or pass --overwrite to redo it")
        if theirs is not None and theirs != identities[job] and overwrite:
            logger.info("%s fold %d: made with other settings; redoing it (--overwrite)", job.run, job.fold)
            shutil.rmtree(job.fold_dir)
        elif theirs is None and overwrite and job.fold_dir.is_dir():
            shutil.rmtree(job.fold_dir)
        stamp.claim(identities[job], f"{job.run} fold {job.fold}")
        if (job.fold_dir / DONE).is_file():
            logger.info("%s fold %d: finished before with these settings, not run again", job.run, job.fold)
        else:
            pending.append(job)
    gpus = torch.cuda.device_count() if probe.trainer.strategy.root_device.type == "cuda" else 0
    if workers is None:  # one fold per visible GPU when the folds train on GPUs
        workers = max(gpus, 1)
    workers = min(workers, len(pending)) or 1
    if workers > 1:
        # The parent filled the disk cache and wrote the split file (above), so the workers neither
        # repeat the preprocessing nor race to write the same files.
        run_parallel(configs, overrides, pending, output, workers, gpus, selection, verbose)
    else:
        for job in pending:
            logger.info("%s fold %d%s: training", job.run, job.fold,
                        f" (fraction {job.fraction:g})" if train_fractions is not None else "")
            run_fold(configs, overrides, job, split_file, selection, identities[job], verbose)
    if train_fractions is None:
        return write_report(output, jobs, identities, split_info, dm, selection, init_from, config)
    return write_fraction_report(output, jobs, identities, split_info, dm, selection, init_from, config, fractions)


def _fractions(train_fractions: Sequence[float] | None) -> list[float]:
    if train_fractions is None:
        return [1.0]
    fractions = sorted({float(f) for f in train_fractions})
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ConfigError(f"--train-fractions {list(train_fractions)}: give fractions in (0, 1], e.g. 0.1,0.25,0.5,1.0")
    return fractions


def write_fraction_report(output: Path, jobs: list[FoldJob], identities: dict, split_info: dict, dm, selection: str,
                          init_from: str | None, config: dict, fractions: list[float]) -> dict[str, Any]:
    """One report per fraction (in its folder) and the study's: ``cv_report.json`` with ``fractions``
    (pooled metrics per fraction and run, the paired difference pretrained - scratch with its CI and p-value
    on the same validation cases), the largest fraction's report as the main one, and ``label_efficiency.png``."""
    from medssl.evaluation.report import write_label_efficiency

    rows = []
    for fraction in fractions:
        chosen = [j for j in jobs if j.fraction == fraction]
        report = write_report(fraction_dir(output, fraction), chosen, identities, split_info, dm, selection,
                              init_from, config)
        runs = {}
        for name, summary in report["runs"].items():
            records = [read_json(j.fold_dir / DONE, "fold record") for j in chosen if j.run == name]
            runs[name] = {"pooled": summary["pooled"], "mean": summary["mean"], "std": summary["std"],
                          "train_cases": [r["train_cases"] for r in records],
                          "mean_train_cases": sum(r["train_cases"] for r in records) / max(len(records), 1)}
        rows.append({"fraction": fraction, "runs": runs, "difference": report.get("comparison"),
                     "validation_cases": report["pooled"].get("num_cases")})
    main = write_report(output, [j for j in jobs if j.fraction == fractions[-1]], identities, split_info, dm,
                        selection, init_from, config, extra={"fractions": rows})
    write_label_efficiency(output, main)
    return read_json(output / "cv_report.json", "cv report")


def write_report(output: Path, jobs: list[FoldJob], identities: dict, split_info: dict, dm,
                 selection: str, init_from: str | None, config: dict,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every fold's written maps with picai_eval and write ``cv_report.{json,md}`` with provenance."""
    from collections import Counter

    from medssl.evaluation.evaluate import labels_of_cases
    from medssl.evaluation.picai import evaluate_maps
    from medssl.evaluation.report import write_cv_report
    from medssl.runs import file_sha256, fingerprint

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in dict.fromkeys(j.run for j in jobs)}
    # labels stored on another grid than the maps (Prostate158: the ADC grid) are scored on the T2W grid
    _, label_reference = labels_of_cases([c for c in dm.cases if c.label is not None], "t2w") \
        if "t2w" in dm.modalities else ({}, {})
    for job in jobs:
        record = read_json(job.fold_dir / DONE, "fold record")
        if record.get("identity") not in (None, identities[job]):
            raise ConfigError(f"{job.fold_dir / DONE} was made with other settings; give a new --output or "
                              "pass --overwrite")
        record["metrics"] = evaluate_maps(record["predictions"], record["labels"],
                                          label_reference={c: r for c, r in label_reference.items()
                                                           if c in record["predictions"]})
        record.pop("identity", None)
        results[job.run].append(record)
    leaked = sorted({c for recs in results.values() for r in recs for c in r.get("leaked_cases", [])})
    labelled = [c for c in dm.cases if c.label is not None]
    sources = Counter(getattr(c, "label_source", None) or "unknown" for c in labelled)
    device = _device_name()
    provenance = {
        "label_source": getattr(dm, "label_source", None),
        "label_sources": dict(sources),
        "split_source": split_info,
        "selection": selection,
        "selection_note": ("the final checkpoint of each fold (selected without looking at the fold)"
                           if selection == "last" else
                           "optimistic: each fold's checkpoint was selected on the same fold it reports"),
        "init_from": {"path": init_from, "sha256": file_sha256(init_from)
                      if init_from and Path(init_from).is_file() else None},
        "leakage_check": "validation cases seen in pretraining: " + (", ".join(leaked[:5]) if leaked else "none"),
        "config_sha256": fingerprint(config),
        "versions": _versions(),
        "device": device,
    }
    extra = {"leakage": {"validated_cases_seen_in_pretraining": leaked,
                         "note": "validation cases that the init_from checkpoint was pretrained on" if leaked
                         else "no validation case was in the pretraining data (or the checkpoint does not say)"},
             "provenance": provenance, **(extra or {})}
    return write_cv_report(output, results, extra)


def run_worker(configs: Sequence[str], overrides: Sequence[str], output: str | Path, fold: int, fold_dir: str | Path,
               run: str, scratch: bool, fraction: float, selection: str, verbose: bool) -> dict[str, Any]:
    """One fold in a ``--workers`` process; the parent claimed its folder (its stamp) and wrote the split."""
    from medssl.runs import Stamp

    job = FoldJob(run, fold, Path(fold_dir), scratch, fraction)
    identity = Stamp(job.fold_dir, STAMP).read()
    return run_fold(configs, overrides, job, Path(output) / "splits.json", selection, identity, verbose)
