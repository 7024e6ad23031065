"""Progress bars for long command steps (tqdm, which Lightning already uses), on stderr.

On a terminal the bar refreshes every second; in a log file (no TTY) it first shows after 10 s and then
every 10 s, so a short step writes nothing, a long step never stays silent for longer than that, and
stdout stays clean for ``--json``.
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
                    dynamic_ncols=tty, leave=tty, delay=0.0 if tty else 10.0)


def quiet_lightning(verbose: bool) -> None:
    """Lightning's tips, device banners, "Seed set" lines and model summaries are off unless ``--verbose``."""
    import logging

    if not verbose:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                     "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
            logging.getLogger(name).setLevel(logging.WARNING)


def eta(seconds: float) -> str:
    """A duration as ``1h02m``, ``3m05s`` or ``12s``.

    Example:
        >>> eta(3725), eta(185), eta(12.4)
        ('1h02m', '3m05s', '12s')
    """
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
