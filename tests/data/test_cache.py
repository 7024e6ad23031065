"""The disk cache survives cut entries and full or read-only disks: recomputed or skipped, never a traceback."""

from __future__ import annotations

import errno
import logging

import pytest
import torch
from monai.transforms import Compose, Lambda

from medssl.data.cache import SafePersistentDataset
from medssl.errors import DataError

TRANSFORM = Compose([Lambda(lambda item: {"x": torch.ones(3) * item["x"]})])


def test_cut_or_empty_entries_are_recomputed_once(tmp_path, caplog, monkeypatch):
    fill = SafePersistentDataset([{"x": 1}, {"x": 2}], TRANSFORM, cache_dir=tmp_path)
    fill[0], fill[1]
    first, second = sorted(tmp_path.glob("*.pt"))
    first.write_bytes(b"")  # zero-byte entry
    second.write_bytes(second.read_bytes()[:100])  # cut entry
    monkeypatch.setattr(logging.getLogger("medssl"), "propagate", True)  # the CLI turns it off
    with caplog.at_level(logging.WARNING, logger="medssl"):
        dataset = SafePersistentDataset([{"x": 1}, {"x": 2}], TRANSFORM, cache_dir=tmp_path)
        assert [dataset[i]["x"].tolist() for i in range(2)] == [[1.0] * 3, [2.0] * 3]
    assert sum("unreadable" in r.message for r in caplog.records) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    assert all(p.stat().st_size > 100 for p in mtimes)
    dataset[0], dataset[1]  # now valid: read, never rewritten
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == mtimes


def test_a_full_disk_runs_without_caching(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    dataset = SafePersistentDataset([{"x": 4}], TRANSFORM, cache_dir=tmp_path / "cache")
    assert dataset[0]["x"].tolist() == [4.0] * 3
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_a_transform_error_is_not_taken_for_a_cache_problem(tmp_path):
    def bad(item):
        raise DataError("cannot read image", "c1", "/x.mha")

    dataset = SafePersistentDataset([{"x": 1}], Compose([Lambda(bad)]), cache_dir=tmp_path)
    with pytest.raises(Exception) as info:
        dataset[0]
    from medssl.errors import find_user_error

    assert "cannot read image" in str(find_user_error(info.value))
