"""BraTS: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (2021) or ``<case>-{t1n,t1c,t2w,t2f,seg}`` (2023/2024).

One table, ``CONVENTIONS``, says what each release's names and label values mean; discovery, the
label checks, region encoding, evaluation and the written label maps all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medssl.data.layouts.base import (
    Case,
    Layout,
    check_id,
    existing_dir,
    logger,
    strip_image_suffix,
    visible_entries,
)
from medssl.errors import ConfigError, DataError

MODALITIES = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class Convention:
    """A BraTS release's file naming and label values.

    Args:
        name: recorded on each case as ``label_convention`` (``brats2021``, ``brats2023``, ``brats2024gli``).
        option: the value of ``data.brats_labels`` / ``--brats-labels`` that selects it.
        separator: between the case id and the file tail (``_`` or ``-``).
        tails: file-name tail -> medssl modality (``seg``: the label).
        ncr, ed, et: the label values of necrotic core, oedema and enhancing tumour.
        rc: the resection cavity's value (BraTS 2024 GLI, post-treatment), outside every region; None: none.
    """

    name: str
    option: str
    separator: str
    tails: dict[str, str] = field(default_factory=dict)
    ncr: int = 1
    ed: int = 2
    et: int = 4
    rc: int | None = None

    @property
    def values(self) -> tuple[int, ...]:
        """Every value a label map of this convention may hold (0 is background)."""
        return (0, self.ncr, self.ed, self.et) + ((self.rc,) if self.rc is not None else ())

    def file_name(self, case_id: str, modality: str) -> str:
        """The file name of ``modality`` of ``case_id`` in this release's naming (``BraTS-GLI-..-t1c.nii.gz``)."""
        tail = next((t for t, m in self.tails.items() if m == modality), modality)
        return f"{case_id}{self.separator}{tail}.nii.gz"

    @property
    def labels(self) -> dict[str, int]:
        return {"ncr": self.ncr, "ed": self.ed, "et": self.et}

    def label_map(self, regions):
        """``[3, D, H, W]`` bool TC, WT, ET -> ``[D, H, W]`` uint8 label map in this convention's values (nested:
        ET inside TC inside WT; TC outside ET is the necrotic core, WT outside TC the oedema).

        Example:
            >>> import numpy as np
            >>> get_convention("2023").label_map(np.array([[[[0, 1, 1]]], [[[1, 1, 1]]], [[[0, 0, 1]]]], bool))
            array([[[2, 1, 3]]], dtype=uint8)
        """
        import numpy as np

        tc, wt, et = np.asarray(regions, bool)
        labels = np.zeros(tc.shape, np.uint8)
        labels[wt] = self.ed
        labels[tc | et] = self.ncr
        labels[et] = self.et
        return labels


CONVENTIONS = {
    "brats2021": Convention("brats2021", "2021", "_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair",
                                                       "seg": "seg"}, et=4),
    "brats2023": Convention("brats2023", "2023", "-", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair",
                                                       "seg": "seg"}, et=3),
    # BraTS 2024 GLI (post-treatment gliomas): the 2023 naming, and label 4 the resection cavity, in no region
    "brats2024gli": Convention("brats2024gli", "2024-gli", "-", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2",
                                                                 "t2f": "flair", "seg": "seg"}, et=3, rc=4),
}
OPTIONS = tuple(c.option for c in CONVENTIONS.values())
# the file namings, told apart by their names (2024 GLI's labels use the 2023 naming: data.brats_labels 2024-gli)
NAMINGS = {name: CONVENTIONS[name] for name in ("brats2021", "brats2023")}
_BRATS_LIKE = re.compile(r"[_-](t1|t1ce|t1c|t1n|t1gd|t2|t2w|t2f|flair|seg)$", re.IGNORECASE)


def get_convention(value: str | int | None, default: str = "brats2021") -> Convention:
    """The convention a case records (``brats2023``) or an option names (``2023``); ``None``: ``default``.

    Example:
        >>> get_convention("2023").et, get_convention("brats2021").et, get_convention(None).option
        (3, 4, '2021')
    """
    if value is None:
        return CONVENTIONS[default]
    for c in CONVENTIONS.values():
        if str(value) in (c.name, c.option):
            return c
    raise ConfigError(f"BraTS labels {value!r}: choose {' or '.join(OPTIONS)}")


def _brats_folder(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The naming of one case folder and its files, ``{t1, t1ce, t2, flair, seg: path}``."""
    namings: dict[str, Path] = {}
    files: dict[str, Path] = {}
    for f in visible_entries(folder, dirs=False):
        stem = strip_image_suffix(f.name)
        if stem is None:
            continue
        key = None
        for naming, c in NAMINGS.items():
            prefix = f"{folder.name}{c.separator}"
            if stem.startswith(prefix) and stem[len(prefix):] in c.tails:
                key = c.tails[stem[len(prefix):]]
                namings.setdefault(naming, f)
                break
        if key is None:
            if _BRATS_LIKE.search(stem):
                raise DataError(f"{f.name} looks like a BraTS image but matches neither <case>_{{t1,t1ce,t2,flair,"
                                f"seg}} (2021) nor <case>-{{t1n,t1c,t2w,t2f,seg}} (2023) for the folder name "
                                f"{folder.name}", path=str(f))
            continue
        if key in files:
            raise DataError(f"two files for one image, {files[key].name} and {f.name}: keep one",
                            folder.name, str(folder))
        files[key] = f
    if len(namings) > 1:
        a, b = namings["brats2021"], namings["brats2023"]
        raise DataError(f"mixes BraTS 2021 names ({a.name}) and 2023 names ({b.name}): keep one release",
                        path=str(folder))
    return next(iter(namings), None), {k: str(p) for k, p in files.items()}


def discover_brats(root: str | Path, brats_labels: str | int | None = None) -> list[Case]:
    """Cases of a BraTS folder, in the 2021 or the 2023/2024 naming.

    2021: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, enhancing tumour = label 4.
    2023/2024: ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` read as t1, t1ce, t2, flair,
    enhancing tumour = label 3; a case ``BraTS-GLI-<id>-<timepoint>`` belongs to patient
    ``BraTS-GLI-<id>``. A missing sequence is normal data; a folder (or data set) mixing the two
    namings, or a BraTS-looking file matching neither, is an error.

    Args:
        root: the folder of case folders.
        brats_labels: ``"2021"``, ``"2023"`` or ``"2024-gli"`` to say which label convention the
            segmentations follow; ``None`` (default) tells 2021 from 2023 by the file names (2024 GLI has
            2023's names: give ``2024-gli``). Recorded on every case as ``label_convention``
            (``brats2021`` / ``brats2023`` / ``brats2024gli``).

    Example:
        >>> cases = discover_brats("/data/BraTS2023-GLI")  # doctest: +SKIP
    """
    if brats_labels is not None and str(brats_labels) not in OPTIONS:
        raise ConfigError(f"data.brats_labels {brats_labels!r}: choose "
                          + ", ".join(f"{c.option} (enhancing tumour = {c.et})" for c in CONVENTIONS.values())
                          + " or null to tell from the file names")
    root = existing_dir(root)
    found: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    for folder in visible_entries(root, dirs=True):
        naming, files = _brats_folder(folder)
        if naming is None:
            continue
        check_id(folder.name, "case id", folder)
        if not any(m in files for m in MODALITIES):
            raise DataError("has a segmentation but no image (t1, t1ce, t2 or flair)",
                            case_id=folder.name, path=str(folder))
        found.setdefault(naming, []).append((folder, files))
    if not found:
        raise DataError("no BraTS cases found (expected <case>/<case>_t1.nii.gz or <case>/<case>-t1n.nii.gz)",
                        path=str(root))
    if len(found) > 1:
        raise DataError(f"mixes BraTS 2021 names (case {found['brats2021'][0][0].name}) and 2023 names "
                        f"(case {found['brats2023'][0][0].name}): keep one release per data root", path=str(root))
    naming, folders = next(iter(found.items()))
    convention = get_convention(brats_labels).name if brats_labels is not None else naming
    if CONVENTIONS[convention].separator != CONVENTIONS[naming].separator:  # 2024 GLI shares 2023's names
        logger.warning("%s: file names follow %s but data.brats_labels reads the labels as %s "
                       "(enhancing tumour = %d)", root, naming, convention, CONVENTIONS[convention].et)
    cases = []
    for folder, files in folders:
        patient = folder.name
        if naming == "brats2023" and (m := re.fullmatch(r"(.+)-\d{3}", folder.name)):
            patient = m[1]  # BraTS-GLI-<id>-<timepoint>: one patient's time points share a fold
        images = {m: files.get(m) for m in MODALITIES}
        cases.append(Case(folder.name, patient, images, files.get("seg"), label_convention=convention))
    return cases


# 0-4 as a set: each case's own convention (ET = 4 in 2021, 3 in 2023+) is checked when its label is read.
LAYOUT = Layout("brats", discover_brats, MODALITIES, reference_order=MODALITIES, label_values=(0, 1, 2, 3, 4),
                label_kind="brats", options=frozenset({"brats_labels"}))
