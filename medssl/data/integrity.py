"""Checks that a reader does not make: an incomplete file, an impossible geometry, a modality off the grid.

SimpleITK's NIfTI reader zero-fills what is missing and raises nothing: a ``.nii.gz`` cut in its gzip
stream, or a ``.nii`` shorter than its header says, reads as an image whose last slices are 0, passes
``medssl check`` and trains. ``check_complete`` compares what the header promises with what the file holds
before the image is read: the data bytes, or for a gzip stream the length its trailer records (a cut stream
has no trailer) and, where that disagrees, the stream decompressed to its end-of-stream marker. SimpleITK's
MetaImage and NRRD readers refuse a short file themselves, except a compressed MetaImage without
``CompressedDataSize``, which also reads as zeros.

``check_geometry`` refuses spacing, origin or direction that no scanner writes but a header can hold (a
MetaImage ``TransformMatrix`` with a scale or shear, a NIfTI sform with NaN), and ``check_overlap``
measures how much of a case's target grid a modality covers, so a modality placed elsewhere (a wrong
origin, an RAS/LPS mix-up) is refused instead of resampling to zeros marked present.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medssl.data.geometry import Grid
from medssl.errors import DataError

CHUNK = 1 << 20  # bytes read (and, compressed, decompressed) at a time

# MetaImage ElementType -> bytes per component (MetaIO's metaTypes.h; MET_LONG is 32-bit there)
MET_BYTES = {
    "MET_ASCII_CHAR": 1, "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
META_HEADER_MAX = 1 << 16  # a MetaImage header longer than this has lost its ElementDataFile line
# the least part of a case's target grid (inside the reference's field of view) a modality must cover:
# same-exam series cover nearly all of it (synthetic PI-CAI DWI 97-100 %, BraTS 100 %), a wrong origin ~0
MIN_OVERLAP = 0.5


def _n(count: int) -> str:
    return f"{count:,}"


def _incomplete(promised: int, found: int, what: str = "voxel bytes") -> str:
    return f"truncated or incomplete file: header promises {_n(promised)} {what}, found {_n(found)}"


def check_complete(path: str | os.PathLike, case_id: str | None = None, full: bool = False) -> None:
    """Refuse an image file that holds fewer data bytes than its header promises, without reading the image.

    ``.nii``/``.nii.gz``: the NIfTI-1/2 header (parsed by nibabel) gives the data offset and size. A gzip
    stream whose trailer records that size (mod 2**32) ended where it should; otherwise, or with ``full``,
    it is decompressed in chunks to its end-of-stream marker and CRC. ``.mha``/``.mhd``: the MetaImage header
    gives the data file, offset and size; compressed data must be ``CompressedDataSize`` bytes long, and
    without that field, or with ``full``, inflate completely to the size. Other formats pass unchecked
    (``.nrrd``: SimpleITK's reader refuses a short one itself).

    Args:
        path: the image file.
        case_id: named in the error.
        full: always decompress (and CRC-check) a compressed stream, not only when its trailer disagrees;
            a BraTS volume costs ~60 ms instead of ~0.2 ms. A cut stream is caught either way.

    Raises:
        DataError: one line naming the case, the file and what is missing.

    Example:
        >>> check_complete("BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000")  # a download cut short
        Traceback (most recent call last):
        medssl.errors.DataError: case BraTS-GLI-00000-000: BraTS-GLI-00000-000-t1n.nii.gz: truncated gzip ...
    """
    path = str(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise DataError("file not found or not readable", case_id, path) from None
    if size == 0:
        raise DataError("empty file (0 bytes)", case_id, path)
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, size, case_id, full)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, case_id, full)


def _nifti_promise(f, case_id: str | None, path: str) -> tuple[int, int] | None:
    """The header's length and the file length it promises (data offset + data bytes), from an open stream;
    ``None`` for a file that does not start like a NIfTI-1 or NIfTI-2 header."""
    import nibabel

    head = f.read(4)
    if len(head) < 4:
        raise DataError(_incomplete(348, len(head), "header bytes"), case_id, path)
    sizeof_hdr = {int.from_bytes(head, order) for order in ("little", "big")}
    klass = nibabel.Nifti1Header if 348 in sizeof_hdr else nibabel.Nifti2Header if 540 in sizeof_hdr else None
    if klass is None:
        return None  # not a NIfTI at all: SimpleITK's error says so
    block = head + f.read(klass.sizeof_hdr - 4)
    if len(block) < klass.sizeof_hdr:
        raise DataError(_incomplete(klass.sizeof_hdr, len(block), "header bytes"), case_id, path)
    try:
        header = klass(block, check=False)  # header only, unchecked: fixing pixdim and the like is SimpleITK's job
        data = int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
        return len(block), int(header.get_data_offset()) + data
    except Exception as e:  # nibabel's HeaderDataError and friends: an unusable header, not a bug here
        raise DataError(f"unreadable NIfTI header ({e})", case_id, path) from None


def _gzip_isize(path: str) -> int:
    """The uncompressed size mod 2**32 that a gzip file's trailer records (of its last member)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _check_nifti(path: str, size: int, case_id: str | None, full: bool) -> None:
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"  # by content: SimpleITK reads a .nii.gz that is not gzipped
    promised, found = None, 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            known = _nifti_promise(f, case_id, path)
            if known is None:
                return
            found, promised = known
            if not compressed:
                found = size
            elif not full and size >= 18 and _gzip_isize(path) == promised % 2**32:
                return  # the trailer is where the header says the stream ends; a cut stream ends in deflate data
            else:
                while data := f.read(CHUNK):  # raises EOFError at a cut stream, BadGzipFile at a bad CRC
                    found += len(data)
    except EOFError:
        where = "inside the NIfTI header" if promised is None else f"the header promises {_n(promised)} bytes"
        raise DataError(f"truncated gzip stream: it ends before its end-of-stream marker ({where})", case_id,
                        path) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"corrupt gzip stream ({e})", case_id, path) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", case_id, path) from None
    if found < promised:
        raise DataError(_incomplete(promised, found), case_id, path)


def _metaimage_header(path: str, case_id: str | None) -> tuple[dict[str, str] | None, int]:
    """The MetaImage header's ``key = value`` pairs (keys lower-case) and the byte offset after it; ``None`` for
    a file that does not start like a MetaImage."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        while f.tell() < META_HEADER_MAX:
            line = f.readline()
            if not line:
                break
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":  # always the last header line
                return fields, f.tell()
    if not {"objecttype", "ndims"} & fields.keys():
        return None, 0  # not a MetaImage at all: SimpleITK's error says so
    raise DataError("truncated or incomplete file: MetaImage header ends before its ElementDataFile line", case_id,
                    path)


def _check_metaimage(path: str, case_id: str | None, full: bool) -> None:
    fields, header_end = _metaimage_header(path, case_id)
    if fields is None:
        return
    element = fields.get("elementtype", "").upper().removesuffix("_ARRAY")
    data_file = fields["elementdatafile"]
    try:
        dims = [int(d) for d in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(fields.get("headersize", "0"))
        compressed_size = int(fields["compresseddatasize"]) if "compresseddatasize" in fields else None
    except ValueError:
        raise DataError("unreadable MetaImage header (DimSize, ElementNumberOfChannels, HeaderSize or "
                        "CompressedDataSize is not a whole number)", case_id, path) from None
    if (not dims or element not in MET_BYTES or fields.get("binarydata", "True").lower() == "false"
            or data_file.upper().startswith("LIST") or len(data_file.split()) > 1):
        return  # no size to check (ASCII data, an unknown type, a file per slice): SimpleITK decides
    promised = int(np.prod(dims, dtype=np.int64)) * channels * MET_BYTES[element]
    local = data_file.upper() == "LOCAL"
    data_path = path if local else str(Path(path).parent / data_file)
    try:
        data_size = os.path.getsize(data_path)
    except OSError:
        raise DataError(f"its data file {data_file} (ElementDataFile) is missing", case_id, path) from None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    start = header_size if header_size > 0 else header_end if local else 0
    if header_size == -1:  # the data are the file's last bytes (MetaIO allows it for raw data only)
        if compressed:
            return
        start = max(data_size - promised, header_end if local else 0)
    available = data_size - start
    if not compressed:
        if available < promised:
            raise DataError(_incomplete(promised, max(available, 0)), case_id, data_path)
        return
    if compressed_size is not None and available < compressed_size:
        raise DataError(_incomplete(compressed_size, max(available, 0), "compressed bytes"), case_id, data_path)
    if compressed_size is not None and not full:
        return
    found, stream = _inflate(data_path, start, compressed_size if compressed_size is not None else available,
                             case_id)
    if not stream.eof:
        raise DataError(f"truncated zlib stream: it ends before its end-of-stream marker (after {_n(found)} of "
                        f"{_n(promised)} voxel bytes)", case_id, data_path)
    if found < promised:
        raise DataError(_incomplete(promised, found), case_id, data_path)


def _inflate(path: str, start: int, length: int, case_id: str | None):
    """Decompress ``length`` bytes of ``path`` from ``start``; the decompressed count and the stream."""
    stream = zlib.decompressobj(wbits=47)  # 32 + 15: a zlib or a gzip header, as MetaIO accepts
    found = 0
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while length > 0 and not stream.eof:
                data = f.read(min(CHUNK, length))
                if not data:
                    break
                length -= len(data)
                while not stream.eof:  # bounded output (zeros inflate a thousandfold), drained until it falls short
                    out = stream.decompress(data, CHUNK)
                    found += len(out)
                    data = stream.unconsumed_tail
                    if not data and len(out) < CHUNK:
                        break
    except zlib.error as e:
        raise DataError(f"corrupt zlib stream ({e})", case_id, path) from None
    return found, stream


def check_finite_stored(path: str | os.PathLike, case_id: str | None = None) -> None:
    """Refuse a NIfTI file whose stored voxels hold NaN or Inf.

    SimpleITK's NIfTI reader turns NaN and Inf voxels into 0, so a check of the array it returns passes a
    corrupt file as data; nibabel reads the stored values as they are. Integer data cannot hold either, so
    only floating-point files are read here (once more: the price of a second read of float volumes).

    Raises:
        DataError: naming the case, the file and how many voxels.
    """
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as e:  # nibabel's header errors: the SimpleITK read that follows names the problem too
        raise DataError(f"cannot read the NIfTI header ({' '.join(str(e).split())[:120]})", case_id, str(path)) \
            from None
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return
    data = np.asanyarray(image.dataobj)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{bad} NaN or Inf voxels stored in the file (SimpleITK would read them as 0)", case_id,
                        str(path))


def check_geometry(image: sitk.Image, case_id: str | None = None, path: str | os.PathLike | None = None) -> None:
    """Refuse spacing that is not finite and positive, an origin that is not finite, or a direction matrix that
    is not orthonormal (a scale, a shear, NaN).

    What reaches here (SimpleITK 2.5): a MetaImage ``TransformMatrix`` with a scale or shear is read as is;
    a NIfTI sform with NaN gives a NaN direction. SimpleITK refuses itself a singular MetaImage matrix, a
    zero or non-finite MetaImage spacing and a non-orthonormal NIfTI sform, and makes a negative spacing
    positive (flipping the direction); NIfTI's zero or NaN pixdim is read as spacing 1.

    Args:
        image: an image as read.
        case_id, path: named in the error.

    Raises:
        DataError: one line naming the problem and the values.

    Example:
        >>> check_geometry(sitk.ReadImage("case_t2w.mha"), "10000_1000000", "case_t2w.mha")
    """
    path = None if path is None else str(path)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"spacing {tuple(spacing.tolist())} mm is not finite and positive", case_id, path)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    if not np.isfinite(origin).all():
        raise DataError(f"origin {tuple(origin.tolist())} is not finite", case_id, path)
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    values = tuple(round(v, 4) for v in direction.ravel().tolist())
    if not np.isfinite(direction).all():
        raise DataError(f"direction matrix {values} is not finite", case_id, path)
    det = float(np.linalg.det(direction))
    if abs(det) < 1e-3:
        raise DataError(f"direction matrix {values} is singular (determinant {det:.3g})", case_id, path)
    error = float(np.abs(direction @ direction.T - np.eye(dim)).max())
    if error > 1e-3:
        raise DataError(f"direction matrix {values} is not orthonormal (max |D D^T - I| = {error:.3g}; a scale "
                        "or shear belongs in the spacing, not the direction)", case_id, path)


def _box(grid: Grid, target: Grid) -> np.ndarray:
    """The axis-aligned box ``[[lo], [hi]]`` in ``target``'s continuous voxel index around ``grid``'s 8 corners."""
    size = np.asarray(grid.size, dtype=np.float64)
    corners = np.array([[(-0.5, s - 0.5)[bit] for bit, s in zip(bits, size)]
                        for bits in np.ndindex(2, 2, 2)])  # [8, 3] voxel edges, (x, y, z)
    world = np.asarray(grid.origin) + (corners * np.asarray(grid.spacing)) @ grid.matrix.T  # [8, 3] mm
    index = np.linalg.solve(target.matrix * np.asarray(target.spacing),
                            (world - np.asarray(target.origin)).T).T  # [8, 3] in target's voxels
    return np.stack([index.min(0), index.max(0)])


def _volume(box: np.ndarray) -> float:
    return float(np.prod(np.clip(box[1] - box[0], 0, None)))


def overlap_fraction(moving_grid: Grid, reference_grid: Grid, within: Grid | None = None) -> float:
    """The fraction of ``reference_grid``'s field of view (only its part inside ``within``'s, if given) that
    ``moving_grid``'s field of view covers, from the axis-aligned box of each grid's 8 corners in the
    reference's voxel index: exact for grids of one orientation, an over-estimate for oblique ones.
    """
    size = np.asarray(reference_grid.size, dtype=np.float64)
    region = np.stack([np.full(3, -0.5), size - 0.5])
    if within is not None:
        inside = _box(within, reference_grid)
        inside = np.stack([np.maximum(inside[0], region[0]), np.minimum(inside[1], region[1])])
        if _volume(inside) > 0:
            region = inside
    moving = _box(moving_grid, reference_grid)
    covered = np.stack([np.maximum(moving[0], region[0]), np.minimum(moving[1], region[1])])
    return _volume(covered) / _volume(region)


def check_overlap(
    moving_grid: Grid,
    reference_grid: Grid,
    min_fraction: float = MIN_OVERLAP,
    case_id: str | None = None,
    path: str | os.PathLike | None = None,
    within: Grid | None = None,
) -> float:
    """The fraction of a case's target grid that a modality's field of view covers; below ``min_fraction``
    a DataError, since resampling would give mostly zeros marked present.

    Args:
        moving_grid: the modality's own grid (``Grid.from_image(image)``).
        reference_grid: the case's target grid.
        min_fraction: the least fraction accepted; 0 never refuses.
        case_id, path: named in the error.
        within: count only the target grid's part inside this field of view (the reference image's grid),
            so a target that pads the reference does not count its padding against the modality.

    Returns:
        The covered fraction, 0 to 1 (see ``overlap_fraction``).

    Example:
        >>> eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        >>> target = Grid((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), eye)
        >>> adc = Grid((10, 10, 10), (1.0, 1.0, 1.0), (5.0, 0.0, 0.0), eye)  # shifted by half the field of view
        >>> check_overlap(adc, target, min_fraction=0.25)
        0.5
    """
    fraction = overlap_fraction(moving_grid, reference_grid, within)
    if fraction < min_fraction:
        raise DataError(f"its field of view covers {fraction:.1%} of the case's target grid (at least "
                        f"{min_fraction:.0%} needed): origin {tuple(round(o, 1) for o in moving_grid.origin)} mm, "
                        f"{moving_grid.describe()}; wrong origin or orientation in its header?", case_id,
                        None if path is None else str(path))
    return fraction
