"""Atomic file writes: a killed job never leaves half a report or half a detection map."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _suffix(name: str) -> str:
    # writers pick the format from the extension, so the temporary name keeps it (".nii.gz" is two)
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path in ``path``'s folder to write to; renamed onto ``path`` when the block succeeds.

    Args:
        path: the final file; its folder is created.

    Example:
        >>> with atomic_target("out/report.json") as tmp:
        ...     Path(tmp).write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path.name), dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; the result gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: object) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    with atomic_target(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1))
