"""A pool of fold processes: ``medssl cv --workers N`` trains N folds at once, each a process of its own.

Each fold is its own ``medssl cv`` worker process (a fresh CUDA context and Lightning trainer), pinned
to one GPU when the folds train on GPUs, writing its output to ``fold_<k>/worker.log``; the parent
prints one status line per fold as it changes. A failed fold does not stop the others; the first
failure is reported once all have ended. If the parent is interrupted or terminated it stops its
workers; if it is killed, the workers get SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from medssl.errors import MedsslError
from medssl.folders import FoldJob

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM when the parent dies, even by SIGKILL (which runs no cleanup)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _status_line(job: FoldJob) -> str | None:
    path = job.fold_dir / "status.json"
    try:
        status = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not status:
        return None
    if status.get("state") == "finished":
        return "finished"
    return f"epoch {status.get('epoch')}/{status.get('max_epochs')}, val score {status.get('val_score')}"


def visible_gpu(index: int) -> str:
    """The ``index``-th GPU as this process sees it (respecting its own CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")[index].strip()
    return str(index)


@dataclass
class FoldPool:
    """Runs fold jobs as ``workers`` concurrent processes.

    Args:
        command: the worker command of a job (``medssl cv --worker-config ... --worker-fold k ...``).
        workers: processes at once.
        gpus: GPUs to pin the workers to, round robin (0: CPU folds, which share the cores through
            ``OMP_NUM_THREADS``).
    """

    command: Callable[[FoldJob], list[str]]
    workers: int
    gpus: int = 0
    running: dict[subprocess.Popen, tuple[FoldJob, int, IO]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def run(self, jobs: Sequence[FoldJob]) -> None:
        """Run every job; raise one ``MedsslError`` naming the first failed fold (and how many more) at the end."""
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        try:
            self._loop(list(jobs))
        finally:  # interrupted or failed: no worker keeps training on its own
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            self._stop_all()
        if self.failures:
            more = len(self.failures) - 1
            raise MedsslError(self.failures[0] + (f"; {more} more fold(s) failed" if more else ""))

    def _start(self, job: FoldJob, slot: int) -> None:
        job.fold_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = visible_gpu(slot % self.gpus)
        elif "OMP_NUM_THREADS" not in env:  # CPU folds side by side: share the cores, do not oversubscribe
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        log_path = job.fold_dir / "worker.log"
        try:
            log = log_path.open("w")
        except OSError as e:
            raise MedsslError(f"{log_path}: cannot write the fold's log ({e.strerror or e})") from None
        logger.info("%s fold %d: running in worker %d%s (log: %s)", job.run, job.fold, slot,
                    f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else "", log_path)
        proc = subprocess.Popen(self.command(job), env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if platform.system() == "Linux" else None)
        self.running[proc] = (job, slot, log)

    def _loop(self, pending: list[FoldJob]) -> None:
        free = list(range(self.workers))
        shown: dict[FoldJob, str | None] = {}
        while pending or self.running:
            while pending and free:
                self._start(pending.pop(0), free.pop(0))
            time.sleep(0.5)
            for job, _, _ in self.running.values():
                line = _status_line(job)
                if line and line != shown.get(job):
                    shown[job] = line
                    logger.info("%s fold %d: running, %s", job.run, job.fold, line)
            for proc in [p for p in self.running if p.poll() is not None]:
                job, slot, log = self.running.pop(proc)
                log.close()
                free.append(slot)
                if proc.returncode != 0:
                    log_path = job.fold_dir / "worker.log"
                    self.failures.append(f"{job.run} fold {job.fold} failed: {_last_line(log_path)} "
                                         f"(full log: {log_path})")
                    logger.error("%s", self.failures[-1])
                else:
                    logger.info("%s fold %d: finished", job.run, job.fold)

    def _stop_all(self) -> None:
        for proc in self.running:
            proc.terminate()
        for proc, (_, _, log) in self.running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.running.clear()


def worker_command(config_file: Path, output: Path, job: FoldJob, selection: str, verbose: bool) -> list[str]:
    """The ``medssl cv`` command line of one fold's worker (the resolved config travels as a JSON file)."""
    return [sys.executable, "-m", "medssl", "cv", "--worker-config", str(config_file), "--output", str(output),
            "--worker-fold", str(job.fold), "--worker-dir", str(job.fold_dir), "--worker-run", job.run,
            "--worker-fraction", repr(job.fraction), "--selection", selection, *(["--verbose"] if verbose else []),
            *(["--worker-init-from", job.init_from] if job.init_from else []),
            *(["--worker-seed", str(job.seed)] if job.seed is not None else [])]
