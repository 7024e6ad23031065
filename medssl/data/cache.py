"""MONAI's disk cache, made to survive what shared and full disks do to it.

``PersistentDataset`` stores each preprocessed case once and never rewrites it. Two things it does not
handle become a traceback on every later run: a cut or empty cache entry (a job killed while the file
system lagged, a full disk) fails ``torch.load`` each time, and a cache folder that cannot be written (a
read-only mount, a full disk) fails the first write. Here a cache entry that does not load is deleted and
recomputed (logged), and a cache that cannot be written is used read-only: the case is computed in
memory and training goes on (logged once).
"""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path

import torch
from monai.data import PersistentDataset

from medssl.errors import find_user_error

logger = logging.getLogger(__name__)


class SafePersistentDataset(PersistentDataset):
    """``monai.data.PersistentDataset`` that recomputes unreadable entries and works on an unwritable cache."""

    _warned_unwritable = False

    def __init__(self, data, transform, cache_dir, **kwargs):
        cache_dir = Path(cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            writable = True
        except OSError as e:
            logger.warning("cache folder %s cannot be created (%s); preprocessing in memory without a cache",
                           cache_dir, e.strerror or e)
            writable = False
        super().__init__(data, transform, cache_dir=cache_dir if writable else None, **kwargs)

    def _entry(self, item_transformed) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"

    def _cachecheck(self, item_transformed):
        try:
            return super()._cachecheck(item_transformed)
        except OSError as e:
            if find_user_error(e) is not None:
                raise
            if not SafePersistentDataset._warned_unwritable:
                SafePersistentDataset._warned_unwritable = True
                logger.warning("cannot write the cache under %s (%s); going on without caching new cases",
                               self.cache_dir, e.strerror or e)
            return self._pre_transform(deepcopy(item_transformed))
        except Exception as error:
            entry = self._entry(item_transformed)
            if entry is not None and entry.is_file() and not _loads(entry):
                logger.warning("cache entry %s is unreadable (cut or empty); recomputing it", entry)
                entry.unlink(missing_ok=True)
                return super()._cachecheck(item_transformed)
            if find_user_error(error) is not None:
                raise  # the data's own problem (a transform refused the case): its one-line error
            # the write failed (a full disk: torch.save raises a RuntimeError, not an OSError): if the case itself
            # preprocesses, train on without caching it; if not, that error is the one to report
            result = self._pre_transform(deepcopy(item_transformed))
            if not SafePersistentDataset._warned_unwritable:
                SafePersistentDataset._warned_unwritable = True
                logger.warning("cannot write the cache under %s (%s); going on without caching new cases",
                               self.cache_dir, " ".join(str(error).split())[:120])
            return result


def _loads(path: Path) -> bool:
    """Whether a cache entry reads back."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False
