"""``medssl infer``: a finetuned model on new cases, maps written in each case's own geometry.

::

    medssl infer --checkpoint runs/cv/fold_0/checkpoints/best.ckpt --data.root /data/new_cases --output preds/

- The model and its preprocessing come from the run's saved ``config.yaml`` (found beside the
  checkpoint's folder: ``<run>/lightning_logs/version_*/config.yaml``) or from ``--config``; the
  weights from the checkpoint, read with ``weights_only=True``. Any ``--data.*`` / ``--model.*``
  option overrides the saved config (typically ``--data.root`` and ``--data.layout``).
- Every case found under ``data.root`` is predicted, labelled or not. Detection (PI-CAI) writes the
  PI-CAI detection map ``OUT/<case_id>.nii.gz`` on the case's T2W grid; segmentation (BraTS) writes
  a label map on the reference grid with BraTS values (1 necrotic core = TC minus ET, 2 oedema = WT
  minus TC, 4 enhancing tumour). Both are resampled physically from the preprocessing grid.
- ``OUT/predictions.json`` lists each case with its output and, for detection, its case-level score
  (the detection map's maximum, as PI-CAI scores a case). Files are written under a temporary name
  and renamed when complete, so a rerun skips the cases already done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import yaml

from medssl.checkpoint import load_checkpoint, state_dict_of
from medssl.errors import CheckpointError, ConfigError, DataError, find_user_error, one_line
from medssl.evaluation.files import write_json

logger = logging.getLogger(__name__)

# Keys a saved fit config holds that only mean something to ``fit`` (or to the run that made it).
_FIT_ONLY = ("ckpt_path", "weights_only", "optimizer", "lr_scheduler")
BRATS_LABELS = {"ncr": 1, "ed": 2, "et": 4}


def find_run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` Lightning saved for the run that wrote ``checkpoint``: ``<run>/config.yaml``
    (a run without a logger) or its first ``<run>/lightning_logs/version_*/config.yaml`` (the fit;
    later versions may be validate runs with other settings)."""
    run_dir = checkpoint.resolve().parent.parent
    found = [run_dir / "config.yaml"] if (run_dir / "config.yaml").is_file() else sorted(
        run_dir.glob("lightning_logs/version_*/config.yaml"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not found:
        raise ConfigError(f"no config.yaml found under {run_dir}/lightning_logs for {checkpoint}; "
                          "give the run's config with --config")
    return found[0]


def _inference_config(path: Path, folder: Path) -> Path:
    """A copy of a saved config without the keys only ``fit`` accepts, and without ``init_from``
    (the checkpoint carries every weight; the pretraining file need not exist here)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config ({one_line(e)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a config file (expected a mapping of options)")
    for key in _FIT_ONLY:
        config.pop(key, None)
    init_args = (config.get("model") or {}).get("init_args") if isinstance(config.get("model"), dict) else None
    if isinstance(init_args, dict) and "init_from" in init_args:
        init_args["init_from"] = None
    out = folder / f"{len(list(folder.iterdir()))}_{path.name}"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out



def brats_label_map(regions: np.ndarray) -> np.ndarray:
    """``[3, D, H, W]`` bool TC, WT, ET -> ``[D, H, W]`` uint8 BraTS labels (nested: ET in TC in WT)."""
    tc, wt, et = regions
    labels = np.zeros(tc.shape, np.uint8)
    labels[wt] = BRATS_LABELS["ed"]
    labels[tc | et] = BRATS_LABELS["ncr"]
    labels[et] = BRATS_LABELS["et"]
    return labels


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _claim_output(output: Path, checkpoint: Path, settings: dict[str, Any]) -> None:
    """Record which checkpoint and settings write ``output``; refuse a folder another one wrote."""
    stamp = output / ".medssl_infer.json"
    mine = {"checkpoint_sha256": _file_digest(checkpoint), "settings": settings}
    if stamp.is_file():
        theirs = json.loads(stamp.read_text())
        if theirs != mine:
            raise ConfigError(f"{output} holds predictions of another checkpoint or other settings "
                              f"({stamp}); give a new --output or empty this one")
        return
    write_json(stamp, mine)


def _check_against_checkpoint(metadata: dict[str, Any], dm, checkpoint: Path) -> None:
    """The data settings must be the ones the weights were trained with (saved in the checkpoint)."""
    ours = {"modalities": dm.modalities, "spacing": dm.spacing, "spatial_size": dm.spatial_size}
    for key, value in ours.items():
        saved = metadata.get(key)
        if saved is None or value is None:
            continue
        if not np.array_equal(np.asarray(saved, dtype=object if key == "modalities" else float),
                              np.asarray(list(value), dtype=object if key == "modalities" else float)):
            raise ConfigError(f"data.{key} is {list(value)} but {checkpoint} was trained with {saved}; "
                              f"set --data.{key} to match")


def predict_case(system, item: dict[str, Any], reference_path: str, case_id: str) -> np.ndarray:
    """One preprocessed case through a finetuned system, back on its reference image's grid.

    Detection: the PI-CAI detection map; segmentation: BraTS labels (``brats_label_map``). Runs on
    the system's device under the caller's precision context; the modality mask stays on the host.
    """
    from medssl.evaluation.detection import detection_map, grid_of_file, probability_to_original, to_grid

    image = item["image"][None].to(system.device)
    mask = torch.as_tensor(item["modality_mask"])[None]  # stays on the host (see MedsslModule)
    grid = item["grid"].numpy()
    with torch.no_grad():
        if hasattr(system, "lesion_probability"):
            prob = system.lesion_probability(image, mask)[0]
            return detection_map(probability_to_original(prob, grid, reference_path))
        prob = system.predict_probability(image, mask)[0].float().cpu().numpy()  # [regions, D, H, W]
    target = grid_of_file(reference_path, case_id)
    return brats_label_map(np.stack([to_grid(p.astype(np.float32), grid, target) > 0.5 for p in prob]))


def run_infer(checkpoint: str | Path, output: str | Path, configs: list[str] | None = None,
              overrides: list[str] | None = None) -> dict[str, Any]:
    """Predict every case under ``data.root``; returns the ``predictions.json`` record."""
    from medssl.evaluation.detection import write_image_like
    from medssl.lightning_cli import MedsslCLI
    from medssl.systems.common import check_in_channels

    checkpoint, output = Path(checkpoint), Path(output)
    saved = load_checkpoint(checkpoint)  # refuses unsafe pickles in one line
    weights = state_dict_of(saved)
    metadata = saved.get("medssl") if isinstance(saved.get("medssl"), dict) else {}
    sources = [Path(c) for c in configs] if configs else [find_run_config(checkpoint)]
    with tempfile.TemporaryDirectory(prefix="medssl_infer_") as tmp:
        args = [a for c in sources for a in ("--config", str(_inference_config(c, Path(tmp))))]
        # The checkpoint carries every weight; one device, whichever this machine has (a run trained
        # on a GPU cluster is often applied on a workstation); labels are never read; nothing is
        # cached or logged unless asked. bf16 autocast pays only on a GPU.
        args += ["--data.cache_dir", "null", "--data.labels_root", "null",
                 "--trainer.accelerator", "auto", "--trainer.devices", "1", "--trainer.num_nodes", "1",
                 "--trainer.strategy", "auto", "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(output),
                 *([] if torch.cuda.is_available() else ["--trainer.precision", "32-true"]), *(overrides or [])]
        cli = MedsslCLI(args=args, run=False)
    system, dm, trainer = cli.model, cli.datamodule, cli.trainer
    if not hasattr(system, "predict_probability"):
        raise ConfigError("medssl infer needs a finetuning run (DetectionSystem or SegmentationSystem); "
                          f"{type(system).__name__} is a pretraining system")
    try:
        system.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: does not fit the model of the config "
                              f"({one_line(e).split(':', 1)[-1].strip()[:300]})") from None
    detection = hasattr(system, "lesion_probability")
    cases = dm.discover()
    check_in_channels(system.net, dm.modalities)
    _check_against_checkpoint(metadata, dm, checkpoint)
    if not system.hparams.roi_size and dm.patch_size:
        # the windows training validated with (the system reads them from the trainer's data module
        # in fit and cv; here it has none)
        system.hparams.roi_size = list(dm.patch_size)
    device = trainer.strategy.root_device
    system.to(device).eval()
    settings = {"root": str(dm.root), "layout": dm.layout, "modalities": list(dm.modalities),
                "spacing": dm.spacing and list(dm.spacing),
                "spatial_size": dm.spatial_size and list(dm.spatial_size), "roi_size": system.hparams.roi_size,
                "tta_flip": system.hparams.tta_flip}
    output.mkdir(parents=True, exist_ok=True)
    _claim_output(output, checkpoint, settings)

    dataset = dm.make_dataset(cases, with_labels=False, train=False)
    reference = dm.preprocessing(False).reference_order
    record: dict[str, Any] = {"checkpoint": str(checkpoint), "task": "detection" if detection else "segmentation",
                              **settings, "cases": {}, "skipped": {}}
    for i, case in enumerate(cases):
        out_path = output / f"{case.case_id}.nii.gz"
        ref_path = next((case.images[m] for m in reference if case.images.get(m)), None)
        entry: dict[str, Any] = {"path": str(out_path), "reference": str(ref_path)}
        if out_path.is_file():
            logger.info("%s: written before, not predicted again", case.case_id)
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(out_path)))
        else:
            try:
                item = dataset[i]
                if ref_path is None:
                    raise DataError(f"none of the reference modalities {list(reference)}", case.case_id)
            except Exception as e:  # MONAI wraps the reader's error; keep ours, re-raise anything else
                user_error = find_user_error(e)
                if user_error is None:
                    raise
                if dm.on_bad_case == "stop":
                    raise DataError(f"{one_line(user_error)} (set data.on_bad_case skip to leave it out)") from None
                logger.warning("skipping unusable case: %s", one_line(user_error))
                record["skipped"][case.case_id] = one_line(user_error)
                continue
            with trainer.precision_plugin.forward_context():
                written = predict_case(system, item, ref_path, case.case_id)
            write_image_like(written, ref_path, out_path)
            logger.info("%s: wrote %s", case.case_id, out_path)
        if detection:
            entry["case_score"] = float(written.max())
        else:
            entry["voxels"] = {name: int((written == value).sum()) for name, value in BRATS_LABELS.items()}
        record["cases"][case.case_id] = entry
    write_json(output / "predictions.json", record)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medssl infer", description="Predict new cases with a finetuned checkpoint. Other options "
        "(e.g. --data.root DIR, --data.layout brats) override the run's saved config.")
    parser.add_argument("--checkpoint", required=True, help="a finetuning checkpoint (e.g. fold_0/checkpoints/*.ckpt)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--config", action="append", default=None,
                        help="the run's config (default: <run>/lightning_logs/version_*/config.yaml beside it)")
    args, overrides = parser.parse_known_args(argv)
    record = run_infer(args.checkpoint, args.output, args.config, overrides)
    print(f"wrote {len(record['cases'])} case(s) to {args.output} ({len(record['skipped'])} skipped); "
          f"summary: {Path(args.output) / 'predictions.json'}")
    return 0
