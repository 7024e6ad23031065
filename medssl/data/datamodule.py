"""LightningDataModules: pretraining (every case, labels unused) and finetuning (labelled cases of fold k).

``__init__`` only stores the options (no I/O, as Lightning's style asks); ``setup`` discovers the
cases, builds the folds and the datasets. The deterministic preprocessing is cached on disk by
MONAI's PersistentDataset under ``cache_dir/<settings key>/``, so changing a preprocessing
setting never reuses a stale cache, and every rank of a DDP run shares one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
import torch
from lightning.pytorch import LightningDataModule
from monai.data import DataLoader as MonaiDataLoader
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from medssl.data.layouts import MODALITIES, Case, discover
from medssl.data.preprocess import Preprocessing, preprocessing_for, read_image
from medssl.data.splits import load_or_make_folds
from medssl.data.transforms import Augmentation, deterministic_transforms, random_transforms
from medssl.errors import ConfigError, DataError, find_user_error, one_line

logger = logging.getLogger(__name__)


def _triple(value, name: str, kind=float) -> tuple | None:
    if value is None:
        return None
    value = list(value) if isinstance(value, list | tuple) else [value] * 3
    if len(value) != 3 or any(kind(v) <= 0 for v in value):
        raise ConfigError(f"{name} must be three positive numbers along [D, H, W], got {value}")
    return tuple(kind(v) for v in value)


class MRIDataModule(LightningDataModule):
    """Shared options of both data modules.

    Args:
        layout: ``picai``, ``brats`` or ``datalist``.
        root: PI-CAI: the folder holding ``images/`` (or ``images/`` itself); BraTS: the folder
            of case folders; datalist: the JSON/CSV file.
        labels_root: PI-CAI's ``picai_labels`` folder; looked for beside ``images/`` when unset.
        label_source: PI-CAI labels: ``human_expert``, ``AI`` or ``human_expert+AI``.
        modalities: channel order; the layout's modalities by default.
        task: ``detection`` (binary lesion mask) or ``segmentation`` (BraTS TC, WT, ET).
        spacing: target spacing in mm along ``[D, H, W]``; ``null`` keeps the reference's.
        spatial_size: target size ``[D, H, W]`` (crop/pad around the centre); ``null`` keeps the extent.
        patch_size: random training crop ``[D, H, W]`` inside ``spatial_size``; ``null`` = whole volume.
        batch_size: training batch size (validation uses 1 when ``spatial_size`` is unset).
        num_workers: DataLoader workers.
        cache_dir: where preprocessed cases are cached; ``null`` disables the cache.
        augmentation: training augmentation; ``null`` disables it.
        fold: validation fold of finetuning.
        n_folds: number of folds.
        split_file: JSON split file; made (and then reused) under ``cache_dir`` when unset.
        split_seed: seed of the folds.
        on_bad_case: a case that cannot be read (corrupt file, NaN voxels, bad label): ``stop`` with
            one line naming it, or ``skip`` it with a warning (counted in ``skipped_cases``).
        cache_per_node: with several nodes, fill the cache once per node (true: local disks) or once
            in all (false: ``cache_dir`` on a file system every node shares).
    """

    def __init__(
        self,
        layout: Literal["picai", "brats", "datalist"] = "picai",
        root: str = "",
        labels_root: str | None = None,
        label_source: Literal["human_expert", "AI", "human_expert+AI"] = "human_expert",
        modalities: list[str] | None = None,
        task: Literal["detection", "segmentation"] = "detection",
        spacing: list[float] | None = None,
        spatial_size: list[int] | None = None,
        patch_size: list[int] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        cache_dir: str | None = ".medssl_cache",
        augmentation: Augmentation | None = Augmentation(),  # noqa: B008 (read-only default)
        fold: int = 0,
        n_folds: int = 5,
        split_file: str | None = None,
        split_seed: int = 0,
        on_bad_case: Literal["stop", "skip"] = "stop",
        cache_per_node: bool = True,
    ):
        super().__init__()
        self.prepare_data_per_node = cache_per_node  # Lightning's switch for where prepare_data runs
        if not root:
            raise ConfigError("data.root is not set: give the dataset folder (or the datalist file)")
        if not 0 <= fold < n_folds:
            raise ConfigError(f"data.fold {fold} is outside 0..{n_folds - 1}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.layout, self.root, self.labels_root, self.label_source = layout, root, labels_root, label_source
        self.modalities = list(modalities or MODALITIES.get(layout, ()))
        if not self.modalities and layout == "datalist":
            self.modalities = []  # read from the datalist in setup
        self.task = task
        self.spacing = _triple(spacing, "data.spacing")
        self.spatial_size = _triple(spatial_size, "data.spatial_size", int)
        self.patch_size = _triple(patch_size, "data.patch_size", int)
        if self.patch_size and self.spatial_size and any(p > s for p, s in zip(self.patch_size, self.spatial_size)):
            raise ConfigError(f"data.patch_size {list(self.patch_size)} exceeds data.spatial_size "
                              f"{list(self.spatial_size)}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = cache_dir
        self.augmentation = augmentation
        self.fold, self.n_folds, self.split_file, self.split_seed = fold, n_folds, split_file, split_seed
        self.on_bad_case = on_bad_case
        self.skipped_cases: dict[str, str] = {}
        self.cases: list[Case] = []
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self.folds: list[list[str]] = []

    # -- helpers ---------------------------------------------------------------------------------
    def discover(self) -> list[Case]:
        cases = discover(self.layout, self.root, self.labels_root, self.label_source,
                         self.modalities if self.modalities else None)
        if not self.modalities:
            self.modalities = list(cases[0].images)
        return cases

    def preprocessing(self, with_labels: bool) -> Preprocessing:
        return preprocessing_for(self.layout, self.modalities, with_labels, self.task, self.spacing,
                                 self.spatial_size)

    def dataset_key(self) -> str:
        """Identifies the data source (not the preprocessing) for default split and cache files."""
        blob = json.dumps([self.layout, str(Path(self.root).resolve()),
                           str(Path(self.labels_root).resolve()) if self.labels_root else None, self.label_source])
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def make_dataset(self, cases: list[Case], with_labels: bool, train: bool):
        prep = self.preprocessing(with_labels)
        # One flat list: MONAI's cache stores everything before the first random transform, and a nested
        # Compose would count as random, so nothing would be cached.
        transform = Compose([
            *deterministic_transforms(prep).transforms,
            *random_transforms(self.augmentation if train else None, self.patch_size if train else None,
                               with_labels).transforms,
        ])
        items = [c.to_item() for c in cases]
        if self.cache_dir is None:
            return Dataset(items, transform)
        cache = Path(self.cache_dir) / prep.key()
        return PersistentDataset(items, transform, cache_dir=cache)

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        # MONAI's DataLoader seeds the random transforms from torch's seed (per worker), so the same
        # --seed_everything gives the same augmentations and the same weights.
        return MonaiDataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    # -- unusable cases ----------------------------------------------------------------------------
    with_labels = False

    def used_cases(self, cases: list[Case]) -> list[Case]:
        return cases

    def screen(self, cases: list[Case]) -> dict[str, str]:
        """Preprocess every case once (filling the disk cache); returns case id -> problem for unusable ones."""
        dataset = _Screen(self.make_dataset(cases, self.with_labels, train=False))
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=lambda x: x)
        return {case_id: error for case_id, error in loader if error}

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup: the cache is filled once, not per rank.
        if self.cache_dir is not None:
            self.screen(self.used_cases(self.discover()))

    def drop_bad_cases(self, cases: list[Case]) -> list[Case]:
        """Stop at the first unusable case, or leave the unusable ones out (``data.on_bad_case``)."""
        if self.cache_dir is None and self.on_bad_case == "stop":
            return cases  # no pre-pass without a cache: a bad case stops training when it is read
        bad = self.screen(cases)
        if bad and self.on_bad_case == "stop":
            first = next(iter(bad.values()))
            raise DataError(f"{first} ({len(bad)} unusable case(s); fix them or set data.on_bad_case skip)")
        for problem in bad.values():
            logger.warning("skipping unusable case: %s", problem)
        self.skipped_cases = bad
        return [c for c in cases if c.case_id not in bad]

    def label_positive(self, cases: list[Case]) -> dict[str, bool]:
        """Whether each labelled case has a lesion voxel; remembered under ``cache_dir``."""
        store = Path(self.cache_dir) / f"positives_{self.dataset_key()}.json" if self.cache_dir else None
        known = json.loads(store.read_text()) if store and store.is_file() else {}
        out = {}
        for case in cases:
            key = f"{case.label}|{case.to_item()['fingerprint']}"
            if key not in known:
                array = sitk.GetArrayFromImage(read_image(case.label, case.case_id))
                known[key] = bool((array >= 1).any())
            out[case.case_id] = known[key]
        if store:
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_name(f".{store.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, store)
        return out


class _Screen(TorchDataset):
    """Each item: (case id, problem or ""); reading it fills the preprocessing cache."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[str, str]:
        case_id = self.dataset.data[i]["case_id"]
        try:
            self.dataset[i]
        except Exception as e:  # MONAI wraps a transform's error; keep ours, re-raise anything else
            user_error = find_user_error(e)
            if user_error is None:
                raise
            return case_id, one_line(user_error)
        return case_id, ""


class PretrainDataModule(MRIDataModule):
    """Every case, labelled or not; ``val_cases`` of them held out for reconstruction images.

    Args:
        val_cases: number of cases (the last ones) held out for validation; 0 = none.
        **kwargs: see ``MRIDataModule``.
    """

    def __init__(self, val_cases: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_val_cases = val_cases

    def setup(self, stage: str | None = None) -> None:
        if self.cases:
            return
        self.cases = self.drop_bad_cases(self.discover())
        n_val = min(self.n_val_cases, len(self.cases) - 1)
        self.train_cases = self.cases[: len(self.cases) - n_val]
        self.val_cases = self.cases[len(self.cases) - n_val:] if n_val > 0 else []

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.train_cases, False, True), True, self.batch_size)

    def val_dataloader(self):
        if not self.val_cases:
            return []
        return self._loader(self.make_dataset(self.val_cases, False, False), False, 1)


class FinetuneDataModule(MRIDataModule):
    """The labelled cases: fold ``fold`` validates, the other folds train. Unlabelled cases are never used."""

    with_labels = True

    def used_cases(self, cases: list[Case]) -> list[Case]:
        return [c for c in cases if c.label is not None]

    def setup(self, stage: str | None = None) -> None:
        if self.cases:
            return
        self.cases = self.discover()
        labelled = self.used_cases(self.cases)
        if not labelled:
            raise ConfigError(f"no labelled case under {self.root}: set data.labels_root (or data.label_source)")
        labelled = self.drop_bad_cases(labelled)
        positive = self.label_positive(labelled)
        split_file = self.split_file or str(Path(self.cache_dir or ".") / f"splits_{self.dataset_key()}.json")
        self.folds = load_or_make_folds(
            split_file, [c.case_id for c in labelled], [c.patient_id for c in labelled],
            [positive[c.case_id] for c in labelled], self.n_folds, self.split_seed)
        val_ids = set(self.folds[self.fold])
        self.val_cases = [c for c in labelled if c.case_id in val_ids]
        self.train_cases = [c for c in labelled if c.case_id not in val_ids]
        self.positive = positive

    def negative_fraction(self) -> float:
        """Fraction of training cases without a lesion (the PI-CAI baseline's focal-loss alpha)."""
        return float(np.mean([not self.positive[c.case_id] for c in self.train_cases]))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.train_cases, True, True), True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.val_cases, True, False), False,
                            self.batch_size if self.spatial_size else 1)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
