"""Pretraining systems: BM-MAE (multimodal masked autoencoding) and CSwin UNet (multi-task SSL)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from medssl.errors import ConfigError
from medssl.models.bmmae import BMMAE
from medssl.models.ssl_heads import (
    NUM_ROTATIONS,
    AutomaticWeightedLoss,
    CSwinSSLModel,
    contrastive_top1,
    inpainting_errors,
    ssl_step,
)
from medssl.systems.common import (
    MedsslModule,
    adamw_warmup_cosine,
    check_in_channels,
    log_image_grid,
    mid_slice,
    param_groups,
    write_pretext,
)

VALIDATION_SEED = 1000  # held-out views and masks are drawn from this seed (+ the batch index): every epoch the same


def check_data_matches(module: LightningModule, modalities, img_size=None) -> None:
    """Refuse a data module whose channels or crop the model cannot take, naming the key to change."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is None:
        return
    if list(modalities) != list(dm.modalities):
        raise ConfigError(f"the model expects modalities {list(modalities)} but data.modalities is "
                          f"{list(dm.modalities)}; make them equal")
    if img_size is not None:
        crop = dm.crop_size or dm.spatial_size
        if crop is None or tuple(crop) != tuple(img_size):
            raise ConfigError(f"the model takes volumes of {list(img_size)}; set data.spatial_size (or "
                              f"data.crop_size) to {list(img_size)}, got {list(crop) if crop else None}")


class BMMAEPretrainSystem(MedsslModule):
    """BM-MAE pretraining: the reference masking and loss, AdamW with warm-up cosine.

    Cases lacking modalities train too: the model draws the visible budget and the loss over the
    modalities each case has (see ``BMMAE.forward``).

    Args:
        net: the ``BMMAE`` model (with its decoder).
        lr: peak learning rate (reference 1e-4).
        weight_decay: AdamW weight decay (reference 0.05).
        warmup_epochs: linear warm-up length (reference 50).
        cosine_cycles: cosine periods over training; the reference's 1500-epoch period over 1000
            epochs is 1000 / 1500 / 2 = 0.333.
        image_every_n_epochs: reconstruction images every this many epochs (0 = never).
        compile: compile the net (``true`` or ``torch.compile`` options); see ``MedsslModule``.
        channels_last: channels-last 3-D layout for conv weights and inputs; see ``MedsslModule``.
    """

    def __init__(self, net: BMMAE, lr: float = 1e-4, weight_decay: float = 0.05, warmup_epochs: float = 50,
                 cosine_cycles: float = 1 / 3, image_every_n_epochs: int = 10,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def setup(self, stage: str) -> None:
        check_data_matches(self, self.net.modalities, self.net.input_size)

    def _volumes(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        image = self.channels_last_input(batch["image"])  # [B, M, D, H, W]
        return {m: image[:, i: i + 1] for i, m in enumerate(self.net.modalities)}, batch["modality_mask"]

    def training_step(self, batch, batch_idx):
        volumes, mask = self._volumes(batch)
        out = self.net(volumes, mask)
        bs = mask.shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        # Per-modality losses exist only for the modalities in this rank's batch, so they are logged
        # without a cross-rank reduction (ranks would wait on each other for a missing modality).
        for m, value in out["loss_per_modality"].items():
            self.log(f"train/loss_{m}", value, batch_size=bs)
        every = self.hparams.image_every_n_epochs
        if every and batch_idx == 0 and self.current_epoch % every == 0:
            self._log_reconstruction(volumes, mask, out)
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self._pretext: dict[str, list[float]] = {}

    def validation_step(self, batch, batch_idx):
        volumes, mask = self._volumes(batch)
        # the same masking every epoch (and the training stream untouched), so the metrics compare across epochs
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VALIDATION_SEED + batch_idx)
            out = self.net(volumes, mask)
        self.log("val/loss", out["loss"], batch_size=mask.shape[0], sync_dist=True)
        self._pretext_errors(volumes, out)

    @torch.no_grad()
    def _pretext_errors(self, volumes, out) -> None:
        """Per modality: squared error of the reconstruction over the masked patches, and of the mean-fill baseline
        (each masked patch predicted as the mean of the sample's visible voxels of that modality)."""
        net, n = self.net, self.net.num_patches
        for j, m in enumerate(out["modalities"]):
            tokens = slice(j * n, (j + 1) * n)
            target = net.patchify(volumes[m]).float()  # [B, N, p^3]
            masked = out["mask"][:, tokens].float()[..., None]  # [B, N, 1], 1 = masked and scored
            visible = (1 - masked) * out["present"][:, j, None, None].float()
            fill = (target * visible).sum(dim=(1, 2), keepdim=True) / (visible.sum(dim=(1, 2), keepdim=True)
                                                                       * target.shape[-1]).clamp_min(1)
            sums = self._pretext.setdefault(m, [0.0, 0.0, 0.0])
            sums[0] += float((((out["pred"][:, tokens].float() - target) ** 2) * masked).sum())
            sums[1] += float((((fill - target) ** 2) * masked).sum())
            sums[2] += float(masked.sum()) * target.shape[-1]

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, Any] = {}
        for m, (model, baseline, count) in getattr(self, "_pretext", {}).items():
            if count:
                metrics[f"reconstruction_mse_{m}"] = model / count
                metrics[f"mean_fill_mse_{m}"] = baseline / count
                metrics[f"reconstruction_ratio_{m}"] = model / baseline if baseline else None
        if metrics:
            write_pretext(self, {**metrics, "note": "masked-patch MSE of the reconstruction vs predicting each masked "
                                 "patch as the mean of the sample's visible voxels (ratio < 1: better than that)"})

    @torch.no_grad()
    def _log_reconstruction(self, volumes, modality_mask, out) -> None:
        """Per modality of the first sample: input, visible patches, reconstruction (mid slice)."""
        net, n = self.net, self.net.num_patches
        rows = {}
        for j, m in enumerate(out["modalities"]):
            if not bool(modality_mask[0, net.modalities.index(m)]):
                continue
            tokens = slice(j * n, (j + 1) * n)
            hidden = out["mask"][:1, tokens, None].expand(-1, -1, net.patch_size**3)  # [1, N, p^3], 1 = masked
            visible = net.unpatchify(net.patchify(volumes[m][:1]) * (1 - hidden))
            recon = net.unpatchify(out["pred"][:1, tokens].float())
            rows[m] = [mid_slice(volumes[m][0, 0]), mid_slice(visible[0, 0]), mid_slice(recon[0, 0])]
        if rows:
            log_image_grid(self, "reconstruction", rows, ["input", "visible", "reconstruction"])

    def configure_optimizers(self):
        h = self.hparams
        groups = param_groups(self.net, h.weight_decay, self.net.no_weight_decay())
        return adamw_warmup_cosine(self, groups, h.lr, h.weight_decay, h.warmup_epochs, h.cosine_cycles)


class CSwinPretrainSystem(MedsslModule):
    """CSwin UNet multi-task pretraining: rotation, contrastive and inpainting, automatically weighted.

    ``L = sum_i 0.5 / s_i^2 * L_i + log(1 + s_i^2)`` with learned ``s_i``; each loss and each weight is
    logged, and inpainting images (masked view, target, reconstruction) are saved every N epochs.

    Args:
        net: the ``CSwinSSLModel`` (its ``encoder`` transfers to ``CSwinUNet``).
        lr: peak learning rate (reference 4e-4).
        weight_decay: AdamW weight decay (reference 0.1).
        warmup_epochs: linear warm-up length.
        temperature: NT-Xent temperature (0.5).
        image_every_n_epochs: inpainting images every this many epochs (0 = never).
        compile: compile the net (``true`` or ``torch.compile`` options); see ``MedsslModule``.
        channels_last: channels-last 3-D layout for conv weights and inputs; see ``MedsslModule``.
    """

    TASKS = ("rot", "contrastive", "inpaint")

    def __init__(self, net: CSwinSSLModel, lr: float = 4e-4, weight_decay: float = 0.1, warmup_epochs: float = 5,
                 temperature: float = 0.5, image_every_n_epochs: int = 10,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.loss_weights = AutomaticWeightedLoss(len(self.TASKS))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            check_in_channels(self.net, dm.modalities)
        crop = (dm.crop_size or dm.spatial_size) if dm is not None else None
        if crop is not None and crop[1] != crop[2]:
            raise ConfigError(f"axial rotation needs a square in-plane crop; set data.crop_size (or "
                              f"data.spatial_size) to [{crop[0]}, {crop[1]}, {crop[1]}]")

    def _step(self, batch, stage: str, generator: torch.Generator | None = None):
        out = ssl_step(self.net, self.channels_last_input(batch["image"]), generator=generator,
                       temperature=self.hparams.temperature)
        losses = [out[f"loss_{t}"] for t in self.TASKS]
        loss = self.loss_weights(*losses)
        bs = batch["image"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for task, value, weight in zip(self.TASKS, losses, self.loss_weights.weights()):
            self.log(f"{stage}/loss_{task}", value, batch_size=bs, sync_dist=True)
            if stage == "train":
                self.log(f"weight/{task}", weight, batch_size=bs)
        return loss, out

    def training_step(self, batch, batch_idx):
        loss, out = self._step(batch, "train")
        every = self.hparams.image_every_n_epochs
        if every and batch_idx == 0 and self.current_epoch % every == 0:
            rows = {f"channel {c}": [mid_slice(out[k][0, c]) for k in ("views", "targets", "reconstructions")]
                    for c in range(out["views"].shape[1])}
            log_image_grid(self, "inpainting", rows, ["masked view", "target", "reconstruction"])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._pretext = {"correct": 0, "rotations": 0, "z1": [], "z2": [], "model": 0.0, "fill": 0.0, "voxels": 0}

    def validation_step(self, batch, batch_idx):
        # the same held-out views, rotations and masks every epoch, so the metrics compare across epochs
        _, out = self._step(batch, "val", generator=torch.Generator().manual_seed(VALIDATION_SEED + batch_idx))
        p, b = self._pretext, batch["image"].shape[0]
        p["correct"] += int((out["rot_logits"].argmax(dim=1) == out["rotations"]).sum())
        p["rotations"] += len(out["rotations"])
        p["z1"].append(out["embeddings"][:b].float().cpu())
        p["z2"].append(out["embeddings"][b:].float().cpu())
        model, fill, voxels = inpainting_errors(out["reconstructions"], out["targets"], out["views"], out["masks"])
        p["model"], p["fill"], p["voxels"] = p["model"] + model, p["fill"] + fill, p["voxels"] + voxels

    def on_validation_epoch_end(self) -> None:
        p = getattr(self, "_pretext", None)
        if not p or not p["rotations"]:
            return
        held_out = sum(len(z) for z in p["z1"])
        metrics: dict[str, Any] = {
            "held_out_cases": held_out,
            "rotation_accuracy": p["correct"] / p["rotations"], "rotation_chance": 1 / NUM_ROTATIONS,
            "inpainting_l1": p["model"] / max(p["voxels"], 1),
            "inpainting_l1_mean_fill": p["fill"] / max(p["voxels"], 1),
        }
        metrics["inpainting_ratio"] = metrics["inpainting_l1"] / metrics["inpainting_l1_mean_fill"] \
            if metrics["inpainting_l1_mean_fill"] else None
        if held_out > 1:  # a positive needs another case to be told apart from
            metrics["contrastive_top1"] = contrastive_top1(torch.cat(p["z1"]), torch.cat(p["z2"]))
            metrics["contrastive_chance"] = 1 / (2 * held_out - 1)
        write_pretext(self, metrics)

    def configure_optimizers(self):
        h = self.hparams
        groups = param_groups(self.net, h.weight_decay, self.net.no_weight_decay())
        groups.append({"params": list(self.loss_weights.parameters()), "weight_decay": 0.0})
        return adamw_warmup_cosine(self, groups, h.lr, h.weight_decay, h.warmup_epochs)
