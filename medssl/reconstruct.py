"""``medssl reconstruct``: fill in the sequences a case lacks with a pretrained BM-MAE.

For every case and every modality it lacks, the BM-MAE decoder predicts the missing sequence from
the present ones (all present tokens visible, all missing tokens masked; see
``BMMAE.reconstruct``), and the prediction is written as ``OUT/<case_id>_<modality>.nii.gz`` in
the case's own geometry: the grid (size, spacing, origin, direction) of its reference modality
file, the grid every present modality of a BraTS case shares::

    medssl reconstruct --checkpoint runs/pre/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data.layout brats --data.root /data/BraTS2021 --output recon/

Steps, each the one the rest of the project uses:

1. Weights: our Lightning pretraining checkpoint or the official ``bmmae.pth``, read by
   ``medssl.checkpoint.load_checkpoint`` (tensors only; a pickle that would run code is refused).
   The model sizes the weights determine are read from their shapes (``infer_sizes``); the head
   counts are not in any shape, so they come from the run's ``config.yaml`` (saved by Lightning
   beside ``checkpoints/``), from ``--config``, or, for the official file, from the reference.
2. Preprocessing: the data layer's own (``MRIDataModule.preprocessing`` + ``deterministic_transforms``),
   at the spacing saved with the weights and with ``img_size`` as the crop, so the model sees what it
   saw in pretraining: resampled, centre-cropped, z-scored over non-zero voxels.
3. Back to the case: the prediction lives on the preprocessing grid; one linear physical resampling
   (``to_grid``) puts it on the reference grid. Voxels outside the model's field of view are 0.
4. Intensities: the model predicts z-scores, and the missing sequence's own mean and standard
   deviation are unknowable. We undo the z-score of the case's reference modality instead,
   ``out = z * std_ref + mean_ref`` with the mean and std over its non-zero voxels as the model saw
   them (resampled onto the preprocessing grid), so values share the units and range of the case's
   other images, and an input passed straight through would come back unchanged. The result is
   clipped at 0 (MR magnitudes are non-negative) and set to 0 outside the union of the present
   modalities' non-zero voxels (the brain mask), as the background of BraTS images is.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import yaml

from medssl.checkpoint import load_checkpoint, state_dict_of, strip_prefixes
from medssl.data.datamodule import MRIDataModule
from medssl.data.layouts import Case
from medssl.data.preprocess import Preprocessing, grid_of, read_image, reference_modality, resample_to_grid, same_grid
from medssl.data.transforms import deterministic_transforms
from medssl.errors import CheckpointError, ConfigError, MedsslError
from medssl.evaluation.detection import grid_of_file, to_grid, write_image_like
from medssl.models.bmmae import BMMAE, load_encoder_weights

__all__ = ["build_model", "infer_sizes", "reconstruct_case", "to_case_intensities"]

_logger = logging.getLogger(__name__)

# Wrappers around BMMAE keys: the systems' attribute (``net.``), DDP, torch.compile, downstream nets (``encoder.``).
_WRAPPER_PREFIXES = ("net.", "module.", "_orig_mod.", "encoder.")
# The official bmmae.pth: its sizes, and the head counts no tensor shape reveals.
_REFERENCE_SIZES = {"embed_dim": 768, "depth": 12, "patch_size": 16, "decoder_embed_dim": 384, "decoder_depth": 3}
_REFERENCE_HEADS = {"num_heads": 12, "decoder_num_heads": 12}
_REFERENCE_SPACING = (1.0, 1.0, 1.0)
_HEADS_HINT = (
    "pass --config with the pretraining config (e.g. configs/pretrain/bmmae_tiny.yaml), or keep the run's "
    "config.yaml beside its checkpoints/ folder"
)


# --------------------------------------------------------------------------- model from weights


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {strip_prefixes(key, _WRAPPER_PREFIXES): value for key, value in state.items()}


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct indices ``i`` in keys matching ``pattern`` (a regex with one group)."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The :class:`BMMAE` arguments that tensor shapes determine (everything but the head counts and img_size).

    Args:
        state: BMMAE state dict, wrapper prefixes stripped.

    Returns:
        ``modalities`` (tokenizer order), ``patch_size``, ``embed_dim``, ``depth``, ``mlp_ratio``,
        ``decoder_embed_dim``, ``decoder_depth``, ``decoder_mlp_dim`` and ``num_patches`` (tokens per modality).

    Example:
        >>> infer_sizes(BMMAE(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4).state_dict())["depth"]
        2
    """
    suffix = ".patch_embedding.patch_embeddings.weight"
    modalities = [k.removeprefix("tokenizers.").removesuffix(suffix) for k in state
                  if k.startswith("tokenizers.") and k.endswith(suffix)]
    if "cls_token" not in state or not modalities:
        raise CheckpointError(f"not BM-MAE weights: no cls_token / tokenizers.* keys (first keys: {list(state)[:4]})")
    if "decoder.decoder_pred.weight" not in state:
        raise CheckpointError(
            "the weights have no BM-MAE decoder (decoder.* keys), which reconstruction needs: give a BM-MAE "
            "pretraining checkpoint (medssl fit --config configs/pretrain/bmmae_*.yaml) or the official bmmae.pth"
        )
    weight = state[f"tokenizers.{modalities[0]}{suffix}"]  # [D, 1, p, p, p]
    embed_dim, patch_size = int(state["cls_token"].shape[-1]), int(weight.shape[-1])
    sizes: dict[str, Any] = {
        "modalities": modalities,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": _count(state, r"blocks\.(\d+)\."),
        "mlp_ratio": state["blocks.0.mlp.linear1.weight"].shape[0] / embed_dim,
        "decoder_embed_dim": int(state["decoder.decoder_embed.weight"].shape[0]),
        "decoder_depth": _count(state, r"decoder\.decoder_blocks\.(\d+)\."),
    }
    if "decoder.decoder_blocks.0.mlp.linear1.weight" in state:
        sizes["decoder_mlp_dim"] = int(state["decoder.decoder_blocks.0.mlp.linear1.weight"].shape[0])
    pos = state.get(f"tokenizers.{modalities[0]}.patch_embedding.position_embeddings")
    sizes["num_patches"] = int(pos.shape[1]) if pos is not None else None  # [1, N, D]
    return sizes


def find_config(checkpoint: Path, config: str | None) -> tuple[Path | None, dict]:
    """The run's config: ``--config`` when given, else Lightning's ``config.yaml`` beside ``checkpoints/``."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"--config {config}: file not found")
    else:
        # medssl runs keep checkpoints in <run>/checkpoints and configs in <run>/lightning_logs/version_*/
        logged = sorted((checkpoint.parent.parent / "lightning_logs").glob("version_*/config.yaml"),
                        key=lambda p: p.stat().st_mtime)
        candidates = (checkpoint.parent / "config.yaml", checkpoint.parent.parent / "config.yaml", *logged[::-1])
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None, {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {' '.join(str(e).split())[:160]}") from None
    return path, data if isinstance(data, dict) else {}


def _section(cfg: Mapping, *keys: str) -> dict:
    for key in keys:
        cfg = cfg.get(key) if isinstance(cfg, Mapping) else None
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _net_arguments(cfg: Mapping, path: Path | None) -> dict[str, Any]:
    """``model.init_args.net`` of a BM-MAE config, with BMMAE's defaults for what a pretraining config leaves out."""
    if path is None:
        return {}
    net = _section(cfg, "model", "init_args", "net")
    name = str(net.get("class_path", "")).rsplit(".", 1)[-1]
    if not name.startswith("BMMAE"):
        raise ConfigError(f"{path}: model.init_args.net is {net.get('class_path')!r}, not a BM-MAE net; pass "
                          "--config with the BM-MAE pretraining config of the checkpoint")
    args = _section(net, "init_args")
    if name == "BMMAE":  # a downstream net's config leaves the decoder out: no defaults for it
        defaults = {k: p.default for k, p in inspect.signature(BMMAE).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        args = {**defaults, **args}
    return args


def build_model(path: str | Path, config: str | None = None) -> tuple[BMMAE, dict[str, Any]]:
    """A :class:`BMMAE` with its decoder, loaded strictly from ``path``, and the preprocessing to use.

    Sizes come from the tensor shapes; head counts from the config (or the reference, for the
    official file); ``img_size`` from the config, the checkpoint metadata or a cubic token grid.

    Args:
        path: our Lightning pretraining checkpoint or the official ``bmmae.pth``.
        config: the pretraining config; by default the run's ``config.yaml`` beside ``checkpoints/``.

    Returns:
        ``(model, settings)`` with settings ``spacing`` (``[D, H, W]`` mm) and ``config`` (the file used or None).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.get("medssl") if isinstance(checkpoint.get("medssl"), Mapping) else {}
    if metadata.get("architecture") not in (None, "bmmae"):
        raise CheckpointError(f"{path}: a {metadata['architecture']} checkpoint; reconstruction needs BM-MAE weights")
    state = _strip_wrappers(state_dict_of(checkpoint))
    try:
        sizes = infer_sizes(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    cfg_path, cfg = find_config(path, config)
    given = _net_arguments(cfg, cfg_path)
    num_patches = sizes.pop("num_patches")
    for key, value in sizes.items():
        if key in given and key != "modalities" and not math.isclose(float(given[key]), float(value)):
            raise ConfigError(f"{cfg_path}: model.init_args.net.init_args.{key} is {given[key]} but {path} has "
                              f"{value}; pass the config the checkpoint was trained with (--config)")
    modalities = given.get("modalities") or metadata.get("modalities") or sizes["modalities"]
    if sorted(modalities) != sorted(sizes["modalities"]):
        raise CheckpointError(f"{path}: has tokenizers for {sizes['modalities']} but the config/metadata name "
                              f"{list(modalities)}")

    heads = {k: given[k] for k in _REFERENCE_HEADS if k in given}
    if len(heads) < len(_REFERENCE_HEADS):
        if cfg_path is None and all(sizes[k] == v for k, v in _REFERENCE_SIZES.items()):
            heads = dict(_REFERENCE_HEADS)  # the official bmmae.pth
        else:
            lacking = [k for k in _REFERENCE_HEADS if k not in heads]
            where = f"{cfg_path} does not give them" if cfg_path else "no config found"
            raise ConfigError(f"{path}: {' and '.join(lacking)} cannot be read from the weights ({where}); "
                              + _HEADS_HINT)

    img_size = given.get("img_size") or metadata.get("spatial_size")
    if img_size is None and num_patches and round(num_patches ** (1 / 3)) ** 3 == num_patches:
        img_size = round(num_patches ** (1 / 3)) * sizes["patch_size"]  # cubic token grid (the reference's)
    if img_size is None:
        raise ConfigError(f"{path}: cannot tell the model's img_size; " + _HEADS_HINT)
    img = [int(img_size)] * 3 if isinstance(img_size, int | float) else [int(s) for s in img_size]
    if num_patches and math.prod(s // sizes["patch_size"] for s in img) != num_patches:
        raise ConfigError(f"{path}: img_size {img} with patch_size {sizes['patch_size']} does not give the "
                          f"{num_patches} tokens per modality of the weights; " + _HEADS_HINT)

    kwargs = {k: v for k, v in given.items() if k in ("decoder_dropout", "mask_ratio", "dirichlet_alpha",
                                                      "norm_pix_loss")}
    kwargs.update(sizes, **heads, modalities=list(modalities), img_size=img, with_decoder=True)
    try:
        model = BMMAE(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{path}: cannot build BMMAE from its sizes: {e}") from None
    try:
        load_encoder_weights(model, state, strict=True)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {' '.join(str(e).split())}") from None

    spacing = metadata.get("spacing") or _section(cfg, "data", "init_args").get("spacing")
    if spacing is None:
        spacing = _REFERENCE_SPACING  # BM-MAE's reference preprocessing (the official file has no metadata)
        _logger.info("no spacing saved with %s: using the reference 1 mm", path)
    spacing = [float(spacing)] * 3 if isinstance(spacing, int | float) else [float(s) for s in spacing]
    return model, {"spacing": spacing, "config": cfg_path}


# --------------------------------------------------------------------------- one case


def to_case_intensities(z: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Map z-scores onto the reference modality's intensities: ``z * std + mean`` over its non-zero voxels.

    Args:
        z: [D, H, W] predicted z-scores on the reference grid.
        reference: the case's reference modality as the model saw it (on the preprocessing grid, not z-scored),
            whose non-zero voxels give the mean and std, as they gave them to its z-score.
        brain: [D, H, W] bool, where the output may be non-zero (brain mask and model field of view).

    Returns:
        float32 [D, H, W], clipped at 0, 0 outside ``brain``.

    Example:
        >>> to_case_intensities(np.zeros((2, 2, 2)), np.full((2, 2, 2), 5.0), np.ones((2, 2, 2), bool)).max()
        5.0
    """
    values = reference[reference != 0].astype(np.float64)
    mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
    out = np.clip(z * std + mean, 0.0, None)
    return np.where(brain, out, 0.0).astype(np.float32)


def _brain_mask(case: Case, present: list[str], reference: sitk.Image) -> np.ndarray:
    """Union of the present modalities' non-zero voxels, on the reference grid. Returns bool [D, H, W]."""
    mask = np.zeros(sitk.GetArrayViewFromImage(reference).shape, bool)
    for m in present:
        image = read_image(case.images[m], case.case_id)
        if same_grid(image, reference):
            mask |= sitk.GetArrayViewFromImage(image) != 0
        else:
            mask |= resample_to_grid(image, grid_of(reference)) != 0
    return mask


def _preprocess(transform, case: Case) -> dict[str, Any]:
    """The training preprocessing of one case; a data error inside MONAI's wrapper comes out as itself."""
    try:
        return transform(case.to_item())
    except RuntimeError as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, MedsslError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def reconstruct_case(
    model: BMMAE, case: Case, prep: Preprocessing, transform, device: torch.device
) -> tuple[str, dict[str, np.ndarray]]:
    """Predict every modality ``case`` lacks, on the grid of its reference modality file.

    Args:
        model: BMMAE with decoder, in eval mode on ``device``.
        case: a case lacking at least one of ``model.modalities``.
        prep: the preprocessing (``MRIDataModule.preprocessing(with_labels=False)``).
        transform: ``deterministic_transforms(prep)``.
        device: where the model runs.

    Returns:
        ``(reference path, {modality: float32 [D, H, W] in the reference file's geometry})``.
    """
    item = _preprocess(transform, case)
    present = [m for m in model.modalities if case.images.get(m)]
    missing = [m for m in model.modalities if not case.images.get(m)]
    image = torch.as_tensor(item["image"], dtype=torch.float32)  # [C, D, H, W], z-scored
    volumes = {m: image[i][None, None].to(device) for i, m in enumerate(prep.modalities) if m in present}
    recon = model.reconstruct(volumes, missing)  # name -> [1, 1, D, H, W] on the preprocessing grid

    ref_path = case.images[reference_modality(case.to_item(), prep)]
    reference = read_image(ref_path, case.case_id)
    target = grid_of_file(ref_path, case.case_id)
    grid = np.asarray(item["grid"], dtype=np.float64)
    field = to_grid(np.ones(image.shape[1:], np.uint8), grid, target, nearest=True) > 0  # model's field of view
    brain = _brain_mask(case, present, reference) & field
    ref_seen = resample_to_grid(reference, grid)  # [D, H, W] the reference before its z-score
    out = {}
    for m, volume in recon.items():
        z = to_grid(volume[0, 0].float().cpu().numpy(), grid, target)  # [D, H, W] on the reference grid
        out[m] = to_case_intensities(z, ref_seen, brain)
    return ref_path, out


# --------------------------------------------------------------------------- command


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medssl reconstruct",
        description="Synthesise the sequences each case lacks with a pretrained BM-MAE, in the case's own geometry.")
    parser.add_argument("--checkpoint", required=True,
                        help="BM-MAE pretraining checkpoint (.ckpt) or the official bmmae.pth")
    parser.add_argument("--data.layout", dest="data_layout", choices=["brats", "picai", "datalist"], default="brats")
    parser.add_argument("--data.root", dest="data_root", required=True, help="data folder (datalist: the file)")
    parser.add_argument("--data.labels_root", dest="data_labels_root", default=None,
                        help="PI-CAI picai_labels folder (labels are not used, only discovery)")
    parser.add_argument("--output", required=True, help="folder for <case_id>_<modality>.nii.gz")
    parser.add_argument("--config", default=None,
                        help="pretraining config (default: the run's config.yaml beside checkpoints/)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)

    model, settings = build_model(args.checkpoint, args.config)
    device = _device(args.device)
    model.to(device).eval()
    data = MRIDataModule(layout=args.data_layout, root=args.data_root, labels_root=args.data_labels_root,
                         modalities=list(model.modalities), spacing=settings["spacing"],
                         spatial_size=list(model.img_size), cache_dir=None, augmentation=None)
    cases = data.discover()
    prep = data.preprocessing(with_labels=False)
    transform = deterministic_transforms(prep)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output {out_dir} is a file; give a folder")

    written, done, skipped = 0, 0, 0
    for case in cases:
        missing = [m for m in model.modalities if not case.images.get(m)]
        if not missing:
            print(f"{case.case_id}: has every modality, skipped")
            skipped += 1
            continue
        ref_path, volumes = reconstruct_case(model, case, prep, transform, device)
        present = ", ".join(m for m in model.modalities if case.images.get(m))
        for m, array in volumes.items():
            target = out_dir / f"{case.case_id}_{m}.nii.gz"
            write_image_like(array, ref_path, target)
            print(f"wrote {target} ({case.case_id}: {m} from {present})")
            written += 1
        done += 1
    print(f"reconstructed {written} sequences in {done} cases to {out_dir}; "
          f"{skipped} of {len(cases)} cases had every modality (skipped)")
    return 0
