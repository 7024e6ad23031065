"""Prostate158 as published: ``{train,valid,test}/<ID>/{t2,adc,dwi}.nii.gz`` with its CSVs."""

from __future__ import annotations

from pathlib import Path

from medssl.data.layouts.base import Case, Layout, check_id, existing_dir, find_file, logger, read_csv, visible_entries
from medssl.errors import DataError

MODALITIES = ("t2w", "adc", "hbv")
# Prostate158 file (and CSV column) of each medssl modality; its DWI is the high-b image.
FILES = {"t2w": "t2", "adc": "adc", "hbv": "dwi"}
LABEL = "adc_tumor_reader1"  # lesion mask on the ADC grid; t2_anatomy_* are zones
EMPTY = "empty"  # the all-zero tumour mask its CSVs give a case without a lesion
SPLITS = ("train", "valid", "test")


def _prostate158_case(folder: Path, case_id: str) -> tuple[dict[str, str | None], str | None]:
    images = {m: find_file(folder, name, case_id) for m, name in FILES.items()}
    tumour = find_file(folder, LABEL, case_id)
    empty = find_file(folder, EMPTY, case_id)
    if tumour and empty:
        raise DataError(f"both {Path(tumour).name} and {Path(empty).name}: is there a lesion or not?",
                        case_id, str(folder))
    return images, tumour or empty


def discover_prostate158(root: str | Path) -> list[Case]:
    """Cases of Prostate158 as published: ``<root>/{train,valid,test}/<ID>/{t2,adc,dwi}.nii.gz``.

    ``train.csv``/``valid.csv``/``test.csv`` (when present) say which cases exist: their ``ID``
    column, and their ``t2``, ``adc``, ``dwi`` and ``adc_tumor_reader1`` columns give the files
    (relative to ``root``); a case folder no CSV lists is left out with a warning. Their other
    columns (e.g. ``t2_anatomy_reader1``) are kept as ``clinical``, with ``split`` (the CSV's name).
    Without CSVs, the case folders under ``train/``, ``valid/`` and ``test/`` are the cases.

    Modalities: ``t2`` -> ``t2w``, ``adc`` -> ``adc``, ``dwi`` -> ``hbv`` (Prostate158's DWI is
    the high-b image). The label is the tumour mask ``adc_tumor_reader1`` (or the all-zero
    ``empty.nii.gz`` of a case without a lesion), delineated on the ADC grid: ``label_grid`` is
    ``adc``, so it is resampled (nearest) onto the T2W grid and binarised >= 1. The zone masks
    ``t2_anatomy_reader*`` are never the label.

    Example:
        >>> cases = discover_prostate158("/data/prostate158_train")  # doctest: +SKIP
    """
    root = existing_dir(root)
    csvs = [root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").is_file()]
    cases: dict[str, Case] = {}
    listed_in: dict[str, Path] = {}
    if csvs:
        for csv_path in csvs:
            for i, row in enumerate(read_csv(csv_path)):
                if "ID" not in row:
                    raise DataError("has no ID column", path=str(csv_path))
                case_id = check_id((row["ID"] or "").strip(), f"row {i + 2}: ID", csv_path)
                if case_id in listed_in:
                    raise DataError(f"listed in {listed_in[case_id].name} and {csv_path.name}", case_id)
                listed_in[case_id] = csv_path
                cases[case_id] = _prostate158_listed(root, csv_path, case_id, row)
        on_disk = {f.resolve() for s in SPLITS if (root / s).is_dir()
                   for f in visible_entries(root / s, dirs=True)}
        used = {Path(p).parent.resolve() for c in cases.values() for p in c.images.values() if p}
        unlisted = sorted(f.name for f in on_disk - used)
        if unlisted:
            logger.warning("%s: %d case folders no CSV lists are left out (%s)", root, len(unlisted),
                           ", ".join(unlisted[:5]))
    else:
        for split in SPLITS:
            if not (root / split).is_dir():
                continue
            for folder in visible_entries(root / split, dirs=True):
                images, label = _prostate158_case(folder, folder.name)
                if not any(images.values()):
                    continue
                case_id = check_id(folder.name, "case id", folder)
                if case_id in cases:
                    raise DataError(f"two folders for one case, {cases[case_id].clinical['split']}/{case_id} and "
                                    f"{split}/{case_id}", case_id, str(root))
                cases[case_id] = Case(case_id, case_id, images, label, {"split": split},
                                      label_grid="adc" if label else None)
    if not cases:
        raise DataError("no Prostate158 cases found (expected train/<ID>/t2.nii.gz and train.csv)", path=str(root))
    return list(cases.values())


def _prostate158_listed(root: Path, csv_path: Path, case_id: str, row: dict[str, str]) -> Case:
    """One case of a Prostate158 CSV: the files its columns name, else those of its folder."""

    def listed(column: str) -> str | None:
        value = (row.get(column) or "").strip()
        if not value:
            return None
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.is_file():
            raise DataError(f"{csv_path.name} lists {value} but the file is missing", case_id, str(path))
        return str(path)

    split = csv_path.stem
    images = {m: listed(name) for m, name in FILES.items()}
    label = listed(LABEL)
    columns = {*FILES.values(), LABEL}
    if not columns <= set(row):  # an ID-only CSV: the files are in the case folder
        folders = [root / s / case_id for s in SPLITS if (root / s / case_id).is_dir()]
        if len(folders) != 1:
            raise DataError(f"listed in {csv_path.name}: expected one folder {{train,valid,test}}/{case_id}, "
                            f"found {len(folders)}", case_id, str(root))
        found, found_label = _prostate158_case(folders[0], case_id)
        images = {m: images[m] if FILES[m] in row else found[m] for m in images}
        label = label if LABEL in row else found_label
    clinical = {k: v for k, v in row.items() if k != "ID" and k not in columns}
    return Case(case_id, case_id, images, label, {**clinical, "split": split}, label_grid="adc" if label else None)


# Tumour masks: 0/1, 2 where a second lesion is numbered; delineated on the ADC grid and resampled onto T2W.
LAYOUT = Layout("prostate158", discover_prostate158, MODALITIES, reference_order=("t2w",), reference_required=True,
                label_values=(0, 1, 2))
