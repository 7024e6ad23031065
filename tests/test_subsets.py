"""The missing-modality table: ``medssl evaluate --checkpoint C --modality-subsets all``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medssl.data.synth import synth_brats, synth_picai
from medssl.errors import ConfigError
from medssl.inference import present_channels, shown
from medssl.lightning_cli import MedsslCLI
from medssl.runs import load_finetuned
from medssl.subsets import subsets_of
from tests.conftest import REPO, run_medssl


def test_all_is_every_non_empty_subset_largest_first():
    brats = subsets_of(["t1", "t1ce", "t2", "flair"])
    assert len(brats) == 15 and len(set(brats)) == 15
    assert brats[0] == ("t1", "t1ce", "t2", "flair") and brats[-1] == ("flair",)
    assert [len(s) for s in brats] == sorted((len(s) for s in brats), reverse=True)
    assert len(subsets_of(["t2w", "adc", "hbv"])) == 7


def test_named_subsets_are_put_in_channel_order_and_checked():
    assert subsets_of(["t2w", "adc", "hbv"], "hbv+t2w,adc") == [("t2w", "hbv"), ("adc",)]
    for bad in ("t2w+dwi", "t2w+t2w", "+", ""):
        with pytest.raises(ConfigError, match="not a subset of the model's modalities"):
            subsets_of(["t2w", "adc", "hbv"], bad)


def test_a_case_shown_without_a_modality_is_a_case_that_lacks_it():
    item = {"image": torch.ones(3, 2, 2, 2), "modality_mask": torch.tensor([True, True, False]), "case_id": "a"}
    out = shown(item, present_channels(["t2w", "adc", "hbv"], ["adc"]))
    assert out["modality_mask"].tolist() == [False, True, False]
    assert float(out["image"][0].abs().sum()) == 0 and float(out["image"][1].sum()) == 8
    assert float(item["image"].sum()) == 24  # the cached item is left as it was
    assert shown(item, present_channels(["t2w", "adc", "hbv"], None)) is item
    with pytest.raises(ConfigError, match="non-empty subset"):
        present_channels(["t2w", "adc", "hbv"], [])


def _fit(config: str, root, run_dir, *extra) -> str:
    MedsslCLI(args=["fit", "--config", str(REPO / config), "--data.root", str(root),
                    "--data.cache_dir", str(run_dir / "cache"), "--data.n_folds", "2", "--trainer.max_epochs", "1",
                    "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(run_dir),
                    "--trainer.enable_progress_bar", "false", *extra])
    return str(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_brats_checkpoint_gives_fifteen_rows_a_table_and_a_heat_map(tmp_path):
    root = tmp_path / "brats"
    synth_brats(root, cases=6, seed=2, size=(32, 32, 24))  # some lack a sequence, as BraTS-like data does
    checkpoint = _fit("configs/finetune/bmmae_brats_tiny.yaml", root, tmp_path / "run")
    out = tmp_path / "subsets"
    done = run_medssl("evaluate", "--checkpoint", checkpoint, "--modality-subsets", "all", "--layout", "brats",
                      "--data.root", str(root), "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("  ") and "modalities" not in line]
    assert len(table) == 16 and table[-1].split()[0] == "mean"  # 15 subsets, then their mean
    report = json.loads((out / "modality_subsets.json").read_text())
    n = report["cases"]
    assert len(report["rows"]) == 15 and {r["cases"] for r in report["rows"]} == {n}
    assert n == len(report["case_ids"]) >= 1 and n + len(report["left_out"]) == 6
    assert all(reason.startswith("lacks ") for reason in report["left_out"].values())
    assert report["metrics"] == "monai" and "empty" in report["metrics_note"]
    et = [r["values"]["ET"] for r in report["rows"]]
    assert report["mean"]["ET"] == (pytest.approx(np.mean(et)) if None not in et else None)
    markdown = (out / "modality_subsets.md").read_text()
    assert markdown.count("\n| ") == 1 + 15 + 1 and "Dice ET" in markdown  # header, rows, mean
    assert (out / "modality_subsets.png").read_bytes()[:4] == b"\x89PNG"
    for row in report["rows"]:
        folder = out / "subsets" / "+".join(row["subset"])
        record = json.loads((folder / "predictions.json").read_text())
        assert record["present"] == row["subset"] and sorted(record["cases"]) == report["case_ids"]
    # what a row is shown changes what the model computes (a check of the mechanism, whatever the maps)
    loaded = load_finetuned(checkpoint, None, {"data": {"init_args": {"root": str(root)}}}, None, "cpu")
    complete = [c for c in loaded.cases if c.case_id == report["case_ids"][0]]
    item = loaded.datamodule.make_dataset(complete, with_labels=False, train=False)[0]
    full = loaded.system.case_probability(item)
    alone = loaded.system.case_probability(shown(item, present_channels(loaded.datamodule.modalities, ["flair"])))
    assert not np.allclose(full, alone)
    again = run_medssl("evaluate", "--checkpoint", checkpoint, "--modality-subsets", "t1+t2,flair", "--layout",
                       "brats", "--data.root", str(root), "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]  # the two subsets were written before: reused
    assert len(json.loads((out / "modality_subsets.json").read_text())["rows"]) == 2


@pytest.mark.slow
def test_picai_checkpoint_gives_seven_rows_with_cis_and_refuses_mistakes(tmp_path):
    root = tmp_path / "picai"
    synth_picai(root, cases=8, seed=5)
    checkpoint = _fit("configs/finetune/unet_picai_tiny.yaml", root, tmp_path / "run",
                      "--model.init_args.tta_flip", "false")
    out = tmp_path / "subsets"
    done = run_medssl("evaluate", "--checkpoint", checkpoint, "--modality-subsets", "all", "--layout", "picai",
                      "--data.root", str(root), "--output", str(out), "--bootstrap", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "modality_subsets.json").read_text())
    assert [tuple(r["subset"]) for r in report["rows"]] == subsets_of(["t2w", "adc", "hbv"])
    assert all(set(r["ci"]) == {"auroc", "ap", "score"} for r in report["rows"])
    assert report["models"][0]["sha256"] and report["task"] == "detection"
    for args, words in ((["--modality-subsets", "t2w+dwi"], "not a subset"),
                        (["--modality-subsets", "all", "--metrics", "legacy"], "BraTS segmentation convention"),
                        (["--modality-subsets", "all", "--output", str(root / "images")], "--output"),
                        ([], "--modality-subsets and --checkpoint go together")):
        bad = run_medssl("evaluate", "--checkpoint", checkpoint, "--layout", "picai", "--data.root", str(root),
                         *(["--output", str(tmp_path / "bad")] if "--output" not in args else []), *args,
                         cwd=tmp_path)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        assert bad.stderr.strip().splitlines()[-1].startswith("medssl: error:") and words in bad.stderr, bad.stderr
