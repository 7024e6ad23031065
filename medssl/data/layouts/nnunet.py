"""nnU-Net v2 raw folders: ``dataset.json``, ``imagesTr/<case>_<kkkk>.nii.gz``, ``labelsTr/``, ``imagesTs/``."""

from __future__ import annotations

import re
from pathlib import Path

from medssl.data.layouts.base import (
    Case,
    Layout,
    channel_modalities,
    check_id,
    existing_dir,
    logger,
    read_json_file,
    strip_image_suffix,
    visible_entries,
    warn_without_patient,
)
from medssl.errors import DataError


def discover_nnunet(root: str | Path, modalities: list[str] | None = None) -> list[Case]:
    """Cases of an nnU-Net v2 raw folder: ``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

    Images are ``images{Tr,Ts}/<case>_<kkkk><file_ending>`` (channel ``k``), labels
    ``labelsTr/<case><file_ending>``; ``imagesTs`` cases are unlabelled. A case without one
    channel's file lacks that modality (normal data). nnU-Net has no patient ids: each case is its
    own patient (warned about).

    Args:
        root: the ``Dataset<NNN>_<name>`` folder.
        modalities: names of the channels in order; ``None``: ``channel_names`` lower-cased
            (``{"0": "T2", "1": "ADC"}`` -> ``t2``, ``adc``).

    Example:
        >>> cases = discover_nnunet("/data/nnUNet_raw/Dataset001_Prostate", ["t2w", "adc", "hbv"])  # doctest: +SKIP
    """
    root = existing_dir(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError("no dataset.json (an nnU-Net raw folder holds dataset.json, imagesTr/ and labelsTr/)",
                        path=str(root))
    meta = read_json_file(meta_path)
    if not isinstance(meta, dict):
        raise DataError("should hold a JSON object", path=str(meta_path))
    key = "channel_names" if "channel_names" in meta else "modality"  # v1 called it modality
    names = channel_modalities(meta.get(key), modalities, meta_path, key)
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"file_ending should be a suffix like '.nii.gz', got {ending!r}", path=str(meta_path))
    files: dict[str, dict[str, str]] = {}
    split_of: dict[str, str] = {}
    pattern = re.compile(rf"(?P<case>.+)_(?P<k>\d{{4}}){re.escape(ending)}")
    for split in ("imagesTr", "imagesTs"):
        if not (root / split).is_dir():
            continue
        for f in visible_entries(root / split, dirs=False):
            match = pattern.fullmatch(f.name)
            if match is None:
                if f.name.endswith(ending) or strip_image_suffix(f.name) is not None:
                    raise DataError(f"expected <case>_<4-digit channel>{ending} (file_ending of dataset.json)",
                                    path=str(f))
                continue
            case_id = check_id(match["case"], "case id", f)
            if int(match["k"]) >= len(names):
                raise DataError(f"channel {int(match['k'])} is not in dataset.json's {key} ({len(names)} channels)",
                                case_id, str(f))
            if split_of.setdefault(case_id, split) != split:
                raise DataError("in both imagesTr and imagesTs", case_id, str(f))
            files.setdefault(case_id, {})[names[int(match["k"])]] = str(f)
    labels = {}
    if (root / "labelsTr").is_dir():
        for f in visible_entries(root / "labelsTr", dirs=False):
            if f.name.endswith(ending):
                case_id = f.name[: -len(ending)]
                if split_of.get(case_id) != "imagesTr":
                    raise DataError("label without images in imagesTr", case_id, str(f))
                labels[case_id] = str(f)
    if not files:
        raise DataError(f"no nnU-Net cases found (expected imagesTr/<case>_0000{ending})", path=str(root))
    unlabelled = sorted(c for c, s in split_of.items() if s == "imagesTr" and c not in labels)
    if unlabelled:
        logger.warning("%s: %d imagesTr cases have no labelsTr file and are read as unlabelled (%s)", root,
                       len(unlabelled), ", ".join(unlabelled[:5]))
    warn_without_patient(len(files), len(files), root)
    return [Case(c, c, {m: images.get(m) for m in names}, labels.get(c), {"split": split_of[c]})
            for c, images in sorted(files.items())]


LAYOUT = Layout("nnunet", discover_nnunet, options=frozenset({"modalities"}))
