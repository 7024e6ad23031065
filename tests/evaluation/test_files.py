"""Atomic writes: the finished file has the usual permissions and nothing temporary is left."""

from __future__ import annotations

import json
import os
import stat

import pytest

from medssl.evaluation.files import atomic_target, write_json


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_target(tmp_path / "map.nii.gz") as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
