"""What made an output: content hashes, settings fingerprints, folder stamps, per-output records, versions.

Every command that writes results records what made them, so a rerun that does not match refuses
instead of reusing, and a number can be traced to its weights, settings and software:

- ``file_sha256`` / ``fingerprint``: the hash of a file's bytes / of a JSON-able value;
- ``Stamp``: the record of what made an output folder (``claim`` refuses a folder other settings made);
- ``output_is_recorded`` / ``record_output``: one output file's record (its hash, its inputs, its owner),
  so a rerun skips exactly the outputs that are still what was written;
- ``versions`` / ``device_name``: the software and the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from medssl.errors import ConfigError
from medssl.io import read_json, write_json

logger = logging.getLogger(__name__)

# The packages whose versions decide a number medssl reports.
PACKAGES = ("medssl", "torch", "monai", "lightning", "picai_eval", "report_guided_annotation", "SimpleITK")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_version(name: str) -> str | None:
    """The installed version of ``name``; None for a source checkout on the path or a missing package."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    return {name: package_version(name) for name in packages}


def device_name() -> str:
    import torch

    return (f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
            else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")


@dataclass(frozen=True)
class Stamp:
    """A record of what made an output folder, kept in ``<folder>/<name>``.

    ``claim`` writes it the first time; later runs must carry the same ``identity`` or they are refused
    in one line (``overwrite`` replaces the record, for a caller that then recomputes everything).
    """

    folder: Path
    name: str = ".medssl_stamp.json"

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def read(self) -> dict[str, Any] | None:
        return read_json(self.path, "record of what made this folder") if self.path.is_file() else None

    def claim(self, identity: Mapping[str, Any], what: str, overwrite: bool = False) -> None:
        identity = json.loads(json.dumps(identity, default=str))
        theirs = self.read()
        if theirs is not None and theirs != identity and not overwrite:
            differing = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
            raise ConfigError(f"{self.folder} holds {what} made with other settings (differs in "
                              f"{', '.join(differing[:5])}; see {self.path}); give a new output folder or "
                              "pass --overwrite to redo it")
        if theirs != identity:
            write_json(self.path, identity)


def output_is_recorded(out_path: Path, record_path: Path, inputs: str, owner: str) -> bool:
    """A rerun skips an output only when it is the file its record names (sha256), written by the same models and
    settings (``owner``: a fingerprint of the folder's stamp) from the same inputs (their fingerprint)."""
    if not (out_path.is_file() and record_path.is_file()):
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("owner") != owner:
        return False  # written by other models or settings (an --overwrite run): computed again
    if record.get("inputs") != inputs:
        logger.info("%s: its input images changed since it was written; computing it again", out_path.name)
        return False
    if record.get("sha256") != file_sha256(out_path):
        logger.warning("%s: the file on disk is not the one written (truncated or edited); computing it again",
                       out_path)
        return False
    return True


def record_output(out_path: Path, record_path: Path, inputs: str, owner: str) -> None:
    """The record ``output_is_recorded`` checks, written after ``out_path`` is complete."""
    write_json(record_path, {"inputs": inputs, "sha256": file_sha256(out_path), "owner": owner})
