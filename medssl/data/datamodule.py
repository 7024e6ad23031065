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
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
import torch
from lightning.pytorch import LightningDataModule
from monai.data import DataLoader as MonaiDataLoader
from monai.data import Dataset
from monai.transforms import Compose
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data import Dataset as TorchDataset

from medssl.data.cache import SafePersistentDataset
from medssl.data.layouts import Case, discover, get_layout
from medssl.data.layouts.brats import OPTIONS as BRATS_OPTIONS
from medssl.data.preprocess import NORMALIZE, Preprocessing, preprocessing_for, read_image
from medssl.data.splits import default_split_file, load_or_make_folds, training_subset
from medssl.data.transforms import Augmentation, deterministic_transforms, random_transforms
from medssl.errors import ConfigError, DataError, MedsslError, find_user_error, one_line
from medssl.io import write_json
from medssl.progress import progress

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
        layout: a layout of ``medssl.data.layouts.LAYOUTS``: ``picai``, ``brats``, ``prostate158``, ``nnunet``,
            ``datalist`` (or one a user registered).
        root: PI-CAI: the folder holding ``images/`` (or ``images/`` itself); BraTS: the folder
            of case folders; datalist: the JSON/CSV file.
        labels_root: PI-CAI's ``picai_labels`` folder; looked for beside ``images/`` when unset.
        label_source: PI-CAI labels: ``human_expert+AI`` (default, as the PI-CAI baseline: the expert
            delineation where one exists, else the AI-derived one), ``human_expert`` or ``AI``.
        brats_labels: BraTS label convention, ``2021`` (enhancing tumour 4), ``2023`` (3) or ``2024-gli`` (3,
            and 4 the resection cavity, in no region); by default read from the file naming.
        modalities: channel order; the layout's modalities by default.
        task: ``detection`` (binary lesion mask) or ``segmentation`` (BraTS TC, WT, ET).
        spacing: target spacing in mm along ``[D, H, W]``; ``null`` keeps the reference's.
        spatial_size: target size ``[D, H, W]`` (crop/pad around the centre); ``null`` keeps the extent.
        crop_size: random training crop ``[D, H, W]`` inside ``spatial_size``; ``null`` = whole volume.
        patch_size: deprecated name of ``crop_size`` (kept for one release, with a warning).
        batch_size: training batch size (validation uses 1 when ``spatial_size`` is unset).
        num_workers: DataLoader workers.
        cache_dir: where preprocessed cases are cached; ``null`` disables the cache.
        augmentation: training augmentation; ``null`` disables it.
        fold: validation fold of finetuning.
        n_folds: number of folds.
        split_file: the folds: a JSON split file (ours, a list of case-id lists, picai_baseline's or nnU-Net's
            ``splits_final.json``), a folder of picai_baseline ``ds-config-valid-fold-<k>.json`` files (or a
            list of them), or ``picai_public`` / ``picai_public_nnunet`` (picai_baseline's public five folds;
            ``_nnunet``: only the expert-labelled cases). Unset: made with ``split_seed`` and reused as
            ``cache_dir/splits_<data>_seed<k>.json``.
        split_seed: seed of the folds made when ``split_file`` is unset.
        split_missing: cases the split names that the data lacks: ``error`` (refused, naming them) or
            ``drop`` them from the folds (logged).
        on_bad_case: a case that cannot be read (corrupt file, NaN voxels, bad label): ``stop`` with
            one line naming it, or ``skip`` it with a warning (counted in ``skipped_cases``).
        cache_per_node: with several nodes, fill the cache once per node (true: local disks) or once
            in all (false: ``cache_dir`` on a file system every node shares).
        clip_percentiles: clip each modality to ``[lower, upper]`` percentiles before the z-score
            (the PI-CAI baseline's ``[0.5, 99.5]``); ``null`` = no clipping.
        voxel_aligned: start the centre crop on a whole voxel, as MONAI's ``CenterSpatialCrop`` (the
            official BM-MAE pipeline); ``false`` centres it exactly (medssl's own runs).
        normalize: the z-score's voxels, per modality: ``nonzero`` (zeros stay 0; BM-MAE's reference pipeline)
            or ``all`` (the whole volume, background included, after the clip: the PI-CAI baseline's
            ``z_score_norm``; the PI-CAI recipes).
        train_fraction: finetuning only: train on this fraction of the fold's training patients (stratified
            by lesion presence, nested across fractions: ``medssl cv --train-fractions``); validation is unchanged.
        train_batches_per_epoch: a fixed step budget: every training epoch draws this many batches, cases drawn
            with replacement, however many training cases there are (the PI-CAI baseline: 100 batches of 8), so
            runs on fewer labels take as many optimiser steps as runs on all of them; ``null`` = one pass over
            the training cases per epoch.
    """

    def __init__(
        self,
        layout: str = "picai",
        root: str = "",
        labels_root: str | None = None,
        label_source: Literal["human_expert", "AI", "human_expert+AI"] = "human_expert+AI",
        modalities: list[str] | None = None,
        task: Literal["detection", "segmentation"] = "detection",
        spacing: list[float] | None = None,
        spatial_size: list[int] | None = None,
        crop_size: list[int] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        cache_dir: str | None = ".medssl_cache",
        augmentation: Augmentation | None = Augmentation(),  # noqa: B008 (read-only default)
        fold: int = 0,
        n_folds: int = 5,
        split_file: str | list[str] | None = None,
        split_seed: int = 0,
        split_missing: Literal["error", "drop"] = "error",
        on_bad_case: Literal["stop", "skip"] = "stop",
        cache_per_node: bool = True,
        brats_labels: str | None = None,
        clip_percentiles: list[float] | None = None,
        voxel_aligned: bool = False,
        normalize: Literal["nonzero", "all"] = "nonzero",
        train_fraction: float = 1.0,
        train_batches_per_epoch: int | None = None,
        patch_size: list[int] | None = None,
    ):
        super().__init__()
        self.prepare_data_per_node = cache_per_node  # Lightning's switch for where prepare_data runs
        if not root:
            raise ConfigError("data.root is not set: give the dataset folder (or the datalist file)")
        if n_folds < 2:
            raise ConfigError(f"data.n_folds must be 2 or more, got {n_folds}")
        if not 0 <= fold < n_folds:
            raise ConfigError(f"data.fold {fold} is outside 0..{n_folds - 1}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.layout, self.root, self.labels_root, self.label_source = layout, root, labels_root, label_source
        # a layout without fixed modality names (nnunet, datalist) reads them from the data in setup
        self.modalities = list(modalities or get_layout(layout).modalities)
        repeated = sorted({m for m in self.modalities if self.modalities.count(m) > 1})
        if repeated:
            raise ConfigError(f"data.modalities {self.modalities} lists {', '.join(repeated)} more than once; give "
                              "each modality once")
        self.task = task
        self.spacing = _triple(spacing, "data.spacing")
        self.spatial_size = _triple(spatial_size, "data.spatial_size", int)
        if patch_size is not None:
            if crop_size is not None:
                raise ConfigError("give data.crop_size only (data.patch_size is its deprecated name)")
            warnings.warn("data.patch_size is deprecated: it is now data.crop_size (the training crop; "
                          "patch_size is the ViT token edge in BM-MAE)", FutureWarning, stacklevel=2)
            crop_size = patch_size
        self.crop_size = _triple(crop_size, "data.crop_size", int)
        if self.crop_size and self.spatial_size and any(p > s for p, s in zip(self.crop_size, self.spatial_size)):
            raise ConfigError(f"data.crop_size {list(self.crop_size)} exceeds data.spatial_size "
                              f"{list(self.spatial_size)}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = cache_dir
        self.augmentation = augmentation
        self.fold, self.n_folds, self.split_file, self.split_seed = fold, n_folds, split_file, split_seed
        self.split_missing = split_missing
        self.on_bad_case = on_bad_case
        if brats_labels is not None and str(brats_labels) not in BRATS_OPTIONS:
            raise ConfigError(f"data.brats_labels {brats_labels!r}: choose {' or '.join(BRATS_OPTIONS)}, or null to "
                              "tell from the file names")
        self.brats_labels = None if brats_labels is None else str(brats_labels)
        if clip_percentiles is not None and (len(clip_percentiles) != 2
                                             or not 0 <= clip_percentiles[0] < clip_percentiles[1] <= 100):
            raise ConfigError(f"data.clip_percentiles must be [lower, upper] with 0 <= lower < upper <= 100, "
                              f"got {clip_percentiles}")
        self.clip_percentiles = tuple(clip_percentiles) if clip_percentiles else None
        self.voxel_aligned = voxel_aligned
        if normalize not in NORMALIZE:
            raise ConfigError(f"data.normalize {normalize!r}: choose {' or '.join(NORMALIZE)}")
        self.normalize = str(normalize)
        if not 0 < train_fraction <= 1:
            raise ConfigError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = float(train_fraction)
        if train_batches_per_epoch is not None and train_batches_per_epoch < 1:
            raise ConfigError(f"data.train_batches_per_epoch must be 1 or more (or null), got "
                              f"{train_batches_per_epoch}")
        self.train_batches_per_epoch = train_batches_per_epoch
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.skipped_cases: dict[str, str] = {}
        self.cases: list[Case] = []
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self.folds: list[list[str]] = []
        self.predict_cases: list[Case] = []

    # -- helpers ---------------------------------------------------------------------------------
    def discover(self) -> list[Case]:
        cases = discover(self.layout, self.root, self.labels_root, self.label_source,
                         self.modalities if self.modalities else None, brats_labels=self.brats_labels)
        if not self.modalities:
            self.modalities = list(cases[0].images)
        return cases

    def input_paths(self, cases: list[Case] | None = None) -> list[Path]:
        """Every folder this data module reads: the layout's roots and the folder of every case's files (an output
        may not be, lie inside or contain any of them: ``medssl.io.refuse_output_over_inputs``)."""
        paths = get_layout(self.layout).input_roots(self.root, self.labels_root)
        for case in cases if cases is not None else []:
            paths += [Path(p).parent for p in (*case.images.values(), case.label) if p]
        return list(dict.fromkeys(paths))

    def preprocessing(self, with_labels: bool) -> Preprocessing:
        return preprocessing_for(self.layout, self.modalities, with_labels, self.task, self.spacing,
                                 self.spatial_size, self.clip_percentiles, self.voxel_aligned, self.normalize)

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
            *random_transforms(self.augmentation if train else None, self.crop_size if train else None,
                               with_labels).transforms,
        ])
        items = [c.to_item() for c in cases]
        if self.cache_dir is None:
            return Dataset(items, transform)
        cache = Path(self.cache_dir) / prep.key()
        return SafePersistentDataset(items, transform, cache_dir=cache)

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

    def _train_loader(self, dataset) -> DataLoader:
        """Shuffled passes over the training cases, or, with ``train_batches_per_epoch``, that many batches of cases
        drawn with replacement (as picai_baseline's epochs of 100 batches), whatever the number of cases."""
        if self.train_batches_per_epoch is None:
            return self._loader(dataset, True, self.batch_size)
        sampler = RandomSampler(dataset, replacement=True,
                                num_samples=self.train_batches_per_epoch * self.batch_size)
        return MonaiDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                               pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
                               drop_last=False)

    # -- unusable cases ----------------------------------------------------------------------------
    with_labels = False

    def used_cases(self, cases: list[Case]) -> list[Case]:
        return cases

    def screen(self, cases: list[Case]) -> dict[str, str]:
        """Preprocess every case once (filling the disk cache); returns case id -> problem for unusable ones."""
        dataset = _Screen(self.make_dataset(cases, self.with_labels, train=False))
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=lambda x: x)
        return {case_id: error for case_id, error in progress(loader, "reading cases", total=len(dataset)) if error}

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
        known = _read_store(store)
        before = dict(known)
        out = {}
        for case in cases:
            key = f"{case.label}|{case.to_item()['fingerprint']}"
            if key not in known:
                array = sitk.GetArrayFromImage(read_image(case.label, case.case_id))
                known[key] = bool((array >= 1).any())
            out[case.case_id] = known[key]
        if store and known != before:  # nothing rewrites a store that did not change
            try:
                write_json(store, known)
            except MedsslError as e:  # a read-only or full cache disk: the answer is known, only not kept
                logger.warning("cannot keep the lesion-presence store: %s", one_line(e))
        return out


def _read_store(store: Path | None) -> dict:
    """The lesion-presence store; a truncated or foreign one is recomputed, not a traceback on every run."""
    if store is None or not store.is_file():
        return {}
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        logger.warning("%s is unreadable (truncated?); recomputing it", store)
        return {}
    return known if isinstance(known, dict) else {}


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
        return self._train_loader(self.make_dataset(self.train_cases, False, True))

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
        if stage == "predict":  # every case under data.root, labelled or not (medssl predict)
            if not self.predict_cases:
                self.predict_cases = self.discover()
            return
        if self.cases:
            return
        self.cases = self.discover()
        labelled = self.used_cases(self.cases)
        if not labelled:
            raise ConfigError(f"no labelled case under {self.root}: set data.labels_root (or data.label_source)")
        labelled = self.drop_bad_cases(labelled)
        positive = self.label_positive(labelled)
        split_file = self.split_file or default_split_file(self.cache_dir, self.dataset_key(), self.split_seed)
        self.folds = load_or_make_folds(
            split_file, [c.case_id for c in labelled], [c.patient_id for c in labelled],
            [positive[c.case_id] for c in labelled], self.n_folds, self.split_seed,
            missing=self.split_missing, default_file=not self.split_file)
        val_ids = set(self.folds[self.fold])
        self.val_cases = [c for c in labelled if c.case_id in val_ids]
        self.train_cases = [c for c in labelled if c.case_id not in val_ids]
        self.positive = positive
        if self.train_fraction < 1:  # a label-efficiency study: fewer labelled training cases, same validation
            keep = set(training_subset([c.case_id for c in self.train_cases], [c.patient_id for c in self.train_cases],
                                       [positive[c.case_id] for c in self.train_cases], self.train_fraction,
                                       self.split_seed + self.fold))
            logger.info("data.train_fraction %s: %d of %d training cases of fold %d", self.train_fraction, len(keep),
                        len(self.train_cases), self.fold)
            self.train_cases = [c for c in self.train_cases if c.case_id in keep]

    def negative_fraction(self) -> float:
        """Fraction of training cases without a lesion (the PI-CAI baseline's focal-loss alpha)."""
        return float(np.mean([not self.positive[c.case_id] for c in self.train_cases]))

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.make_dataset(self.train_cases, True, True))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.val_cases, True, False), False,
                            self.batch_size if self.spatial_size else 1)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.make_dataset(self.predict_cases, False, False), False, 1)
