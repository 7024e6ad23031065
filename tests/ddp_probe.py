"""A callback for the DDP test: each rank writes the case ids it trained on (importable by spawned ranks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RecordCases(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(batch["case_id"])

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.out_dir) / f"rank_{trainer.global_rank}_of_{trainer.world_size}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "cases": self.seen}))
