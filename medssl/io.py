"""The one atomic writer: every file medssl writes goes through here.

A file appears under its final name only complete and checked: it is written to a temporary
name in the destination folder (``tempfile``, so the name is unpredictable and never follows a
planted symlink), read back and verified (a full disk makes ``sitk.WriteImage`` and friends fail
silently), then renamed with ``os.replace``. A failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medssl.errors import ConfigError, MedsslError


class WriteError(MedsslError, OSError):
    """A file could not be written completely (full or read-only disk, ...): names the file."""


def safe_child(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name`` for a name made from data (a case id): refused unless it stays inside ``folder``.

    Case ids are checked at discovery already; this is the last guard before a file is written, so a
    datalist id like ``../../x`` can never write outside the output or over an input.
    """
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".")
           or any(ord(c) < 32 for c in name))
    path = Path(folder) / name
    if bad or path.resolve().parent != Path(folder).resolve():
        raise MedsslError(f"refused to write {name!r} under {folder}: a case id must be a plain file name "
                          "(no path separator, no leading dot, no '..')")
    return path


def refuse_output_over_inputs(output: str | os.PathLike, inputs, option: str = "--output",
                              contain_ok: bool = False) -> Path:
    """The one output-safety rule of every command that writes: an output may not be an input (a data root, a
    labels root, a folder holding input files, an input file), lie inside one, or contain one. Paths are compared
    after resolving symlinks, so a link to the labels folder is the labels folder.

    Args:
        output: the folder the command writes into.
        inputs: the paths the command reads (files or folders; missing or None ones are skipped).
        option: the option that named ``output`` (for the message).
        contain_ok: allow an output that contains inputs (``fit``'s root, which Lightning defaults to the current
            folder); being or lying inside an input is still refused.

    Returns:
        ``output`` resolved.

    Raises:
        ConfigError: one line naming the output, the input and what to do.
    """
    out = Path(output).resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        path = Path(given).resolve()
        if not path.exists():
            continue
        if out == path:
            raise ConfigError(f"{option} {output} is an input ({path}); give a new folder for the outputs")
        if path.is_dir() and path in out.parents:
            raise ConfigError(f"{option} {output} lies inside the input folder {path} (data, labels or weights); "
                              "writing there could replace what it holds: give a folder outside it")
        if not contain_ok and out in path.parents:
            raise ConfigError(f"{option} {output} contains the input {path}; give a folder that holds no inputs")
    return out


def _suffix(name: str) -> str:
    # writers pick the format from the extension, so the temporary name keeps it (".nii.gz" is two)
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_target(path: str | os.PathLike, verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """A temporary path in ``path``'s folder to write to; checked, then renamed onto ``path``.

    Args:
        path: the final file; its folder is created.
        verify: called with the temporary path once the block has written it; raises when the file
            is not what was meant to be written. Its error (or any ``OSError`` of the block) becomes
            a one-line ``WriteError`` naming ``path``, and nothing is renamed.

    Example:
        >>> with atomic_target("out/report.json") as tmp:
        ...     Path(tmp).write_text("{}")
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path.name), dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise WriteError(f"{path}: cannot write here ({e.strerror or e})") from None
    try:
        try:
            yield tmp
        except OSError as e:  # the write itself failed (full or read-only disk, ...)
            raise WriteError(f"{path}: writing failed, nothing was written ({e.strerror or e})") from None
        try:
            if verify is None and os.path.getsize(tmp) == 0:  # a verify knows whether empty is right
                raise WriteError(f"{path}: the written file is empty (disk full?)")
            if verify is not None:
                verify(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; the result gets the usual mode
            os.replace(tmp, path)
        except WriteError:
            raise
        except (OSError, ValueError, RuntimeError, EOFError) as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise WriteError(f"{path}: the written file does not read back, nothing was written ({reason})") \
                from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8, line endings as given) at ``path``, written atomically and read back."""
    data = text.encode("utf-8")

    def verify(tmp: str) -> None:
        if Path(tmp).read_bytes() != data:
            raise WriteError(f"{path}: the written file differs from what was meant (disk full?)")

    with atomic_target(path, verify) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written atomically and read back."""
    write_text(path, json.dumps(obj, indent=1))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file, or a one-line ``MedsslError`` naming it (missing, truncated, not JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedsslError(f"{path}: cannot read the {what} ({' '.join(str(e).split())[:160]})") from None


def write_image(image, path: str | os.PathLike, compress: bool = True) -> None:
    """A SimpleITK image at ``path``, written atomically; read back and compared before the rename."""
    import numpy as np
    import SimpleITK as sitk

    def same_header(a, b) -> bool:  # the tolerances of data.geometry.Grid.same_as (headers store float32)
        return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-3, atol=1e-4)
                and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
                and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3))

    def verify(tmp: str) -> None:
        back = sitk.ReadImage(tmp)
        if not same_header(back, image):
            raise WriteError(f"{path}: the written image's header differs from the image (disk full?)")
        written, meant = sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)
        if not np.array_equal(written, meant, equal_nan=np.issubdtype(meant.dtype, np.floating)):
            raise WriteError(f"{path}: the written voxels differ from the image (disk full?)")

    with atomic_target(path, verify) as tmp:
        try:
            sitk.WriteImage(image, tmp, compress)
        except RuntimeError as e:
            raise WriteError(f"{path}: cannot write the image ({' '.join(str(e).split())[-160:]})") from None


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically; the file is re-read with ``weights_only=True`` before the rename."""
    import torch

    from medssl.checkpoint import load_checkpoint

    def verify(tmp: str) -> None:
        load_checkpoint(tmp)  # the safe loader every later read uses: what it cannot read is not kept

    with atomic_target(path, verify) as tmp:
        torch.save(obj, tmp)


def save_npy(array, path: str | os.PathLike) -> None:
    """A numpy array as ``.npy``, written atomically and read back."""
    import numpy as np

    def verify(tmp: str) -> None:
        if not np.array_equal(np.load(tmp, allow_pickle=False), array):
            raise WriteError(f"{path}: the written array differs (disk full?)")

    with atomic_target(path, verify) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
