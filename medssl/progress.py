"""Progress bars for long command steps (tqdm, which Lightning already uses), on stderr.

On a terminal the bar refreshes every second; in a log file (no TTY) every 10 s, so a long step
never stays silent for longer than that and stdout stays clean for ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "case") -> Iterator[T]:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=1.0 if tty else 10.0,
                    dynamic_ncols=tty, leave=tty)


def quiet_lightning(verbose: bool) -> None:
    """Lightning's tips, device banners and model summaries are off unless ``--verbose``."""
    import logging

    if not verbose:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                     "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
