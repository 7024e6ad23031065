"""The per-fold status of ``medssl cv``: status.json after every epoch, log lines rate-limited."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from medssl import cv


def _trainer(epoch: int, max_epochs: int) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=epoch, max_epochs=max_epochs,
                           callback_metrics={})


def test_status_every_epoch_log_lines_first_last_and_every_interval(tmp_path, monkeypatch, caplog):
    """20 epochs of 2 s each with a 10 s interval: status.json follows every epoch; the log has the first epoch,
    one line per 10 s after it and the last epoch, not 20 lines."""
    clock = {"now": 0.0}
    monkeypatch.setattr(cv.time, "monotonic", lambda: clock["now"])
    job = SimpleNamespace(fold_dir=tmp_path, run="scratch", fold=0, seed=1)
    status = cv.FoldStatus(job, log_every_s=10.0)
    status.on_train_start(_trainer(0, 20), None)
    logged = []
    with caplog.at_level(logging.INFO, logger=cv.logger.name):
        for epoch in range(20):
            caplog.clear()
            clock["now"] = 2.0 * (epoch + 1)
            status.on_train_epoch_end(_trainer(epoch, 20), None)
            assert json.loads((tmp_path / "status.json").read_text())["epoch"] == epoch + 1
            logged += [epoch + 1 for r in caplog.records if "scratch fold 0 seed 1: epoch" in r.getMessage()]
    assert logged == [1, 6, 11, 16, 20]
