"""Batches, the on-disk cache and augmentation of the data modules."""

from __future__ import annotations

import torch

from medssl.data.datamodule import FinetuneDataModule, PretrainDataModule


def test_pretrain_batches_and_cache(brats_root, tmp_path):
    dm = PretrainDataModule(layout="brats", root=str(brats_root), spatial_size=[16, 24, 24], batch_size=4,
                            cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["image"].shape[0] for b in batches) == len(dm.cases)
    b = batches[0]
    assert b["image"].shape[1:] == (4, 16, 24, 24) and b["modality_mask"].shape[1] == 4
    assert "label" not in b
    # absent modalities are exactly zero even after intensity augmentation
    for batch in batches:
        absent = ~batch["modality_mask"]
        assert (batch["image"][absent] == 0).all()
    assert not all(batch["modality_mask"].all() for batch in batches)
    cached = list((tmp_path / "cache").rglob("*.pt"))
    assert len(cached) == len(dm.cases)
    # the cache holds the preprocessed arrays, so later epochs do not re-read the images
    item = torch.load(cached[0], weights_only=True)
    assert tuple(item["image"].shape) == (4, 16, 24, 24)
    # a different preprocessing setting gets its own cache folder
    dm2 = PretrainDataModule(layout="brats", root=str(brats_root), spatial_size=[16, 16, 16], batch_size=4,
                             cache_dir=str(tmp_path / "cache"))
    dm2.setup("fit")
    next(iter(dm2.train_dataloader()))
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_finetune_batches_have_binary_labels(picai_root, tmp_path):
    dm = FinetuneDataModule(root=str(picai_root), spacing=[3.0, 0.5, 0.5], spatial_size=[12, 48, 48],
                            patch_size=[8, 32, 32], batch_size=2, cache_dir=str(tmp_path))
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train["image"].shape == (2, 3, 8, 32, 32) and train["label"].shape == (2, 1, 8, 32, 32)
    assert val["image"].shape[2:] == (12, 48, 48)
    assert set(torch.unique(train["label"]).tolist()) <= {0, 1}
    assert 0 < dm.negative_fraction() < 1


def test_segmentation_labels_are_regions(brats_root, tmp_path):
    dm = FinetuneDataModule(layout="brats", root=str(brats_root), task="segmentation", n_folds=2,
                            spatial_size=[16, 24, 24], cache_dir=str(tmp_path))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["label"].shape[1] == 3


def test_a_fixed_step_budget_draws_as_many_batches_whatever_the_training_set(picai_root, tmp_path):
    """data.train_batches_per_epoch: every fraction of the labels gets the same number of batches per epoch, cases
    drawn with replacement (the PI-CAI baseline's epochs of 100 batches)."""
    sizes = {}
    for fraction in (0.25, 1.0):
        dm = FinetuneDataModule(root=str(picai_root), spacing=[3.0, 1.0, 1.0], spatial_size=[8, 32, 32],
                                crop_size=[8, 24, 24], batch_size=3, cache_dir=str(tmp_path / "cache"),
                                split_file=str(tmp_path / "splits.json"), train_fraction=fraction,
                                train_batches_per_epoch=5, augmentation=None)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert len(batches) == 5 and all(b["image"].shape[0] == 3 for b in batches)
        drawn = [c for b in batches for c in b["case_id"]]
        assert set(drawn) <= {c.case_id for c in dm.train_cases}
        sizes[fraction] = len(dm.train_cases)
    assert sizes[0.25] < 15 < sizes[1.0]  # a quarter of the cases: drawn again and again to fill 15 places
    dm = FinetuneDataModule(root=str(picai_root), cache_dir=None, augmentation=None, batch_size=3,
                            split_file=str(tmp_path / "splits.json"), spatial_size=[8, 32, 32])
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == -(-len(dm.train_cases) // 3)  # unset: one pass over the cases
