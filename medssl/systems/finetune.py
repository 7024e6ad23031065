"""Finetuning systems: PI-CAI lesion detection and BraTS region segmentation, any backbone.

The backbone (``net``) comes from the config: ``CSwinUNet``, ``BMMAEUNETR`` or a MONAI comparator
(``SwinUNETR``, ``DynUNet``, ``AttentionUnet``, ``UNet``). ``init_from`` loads a pretrained encoder
through the architecture's checkpoint filter. Validation runs sliding-window inference with flip
test-time augmentation; detection turns the smoothed lesion likelihood into a detection map with
``report_guided_annotation`` and scores it with ``picai_eval`` (AUROC, AP, PI-CAI score), which
also selects the best checkpoint. Per-epoch scores use the preprocessing grid; ``medssl cv``
scores the maps written in each case's original T2W geometry.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, FocalLoss
from torch import nn

from medssl.errors import ConfigError
from medssl.models.transfer import transfer_weights
from medssl.systems.common import MedsslModule, check_in_channels, data_metadata

logger = logging.getLogger(__name__)


def takes_modality_mask(net: nn.Module) -> bool:
    return "modality_mask" in inspect.signature(net.forward).parameters


class DenseSystem(MedsslModule):
    """What detection and segmentation share: the backbone call, sliding windows, weights and metadata.

    Args:
        net: the backbone; its ``in_channels`` must equal the number of data modalities.
        lr: learning rate.
        weight_decay: weight decay.
        optimizer: ``adam_amsgrad`` (PI-CAI baseline) or ``adamw``.
        roi_size: sliding-window size ``[D, H, W]``; defaults to ``data.patch_size`` (or the whole volume).
        sw_batch_size: windows per forward pass.
        sw_overlap: window overlap.
        tta_flip: average with the left-right flipped prediction at validation/prediction.
        init_from: a pretraining checkpoint of ours or official BM-MAE weights for the encoder.
        refuse_leakage: refuse to validate on cases the ``init_from`` checkpoint was pretrained on.
        compile: compile the net (``true`` or ``torch.compile`` options); see ``MedsslModule``.
        channels_last: channels-last 3-D layout for conv weights and inputs; see ``MedsslModule``.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: Literal["adam_amsgrad", "adamw"] = "adam_amsgrad", roi_size: list[int] | None = None,
                 sw_batch_size: int = 2, sw_overlap: float = 0.25, tta_flip: bool = True,
                 init_from: str | None = None, refuse_leakage: bool = False,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])  # collects the subclass's arguments too (init chain)
        self.net = net
        self.uses_mask = takes_modality_mask(net)
        self.leaked_cases: list[str] = []
        self.init_report: dict = {}

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            check_in_channels(self.net, dm.modalities)
        if self.hparams.init_from and stage == "fit" and not self.init_report:
            report, metadata = transfer_weights(self.net, self.hparams.init_from)
            self.init_report = {k: len(v) for k, v in report.items()}
            if dm is not None:
                saved = metadata.get("modalities")
                if saved and list(saved) != list(dm.modalities):
                    raise ConfigError(f"{self.hparams.init_from} was pretrained on modalities {saved} but "
                                      f"data.modalities is {list(dm.modalities)}; make them equal")
                seen = set(metadata.get("train_case_ids") or [])
                self.leaked_cases = sorted(seen & {c.case_id for c in dm.val_cases})
                if self.leaked_cases:
                    message = (f"{len(self.leaked_cases)} validation cases of fold {dm.fold} were in the "
                               f"pretraining data of {self.hparams.init_from} (e.g. {self.leaked_cases[:3]})")
                    if self.hparams.refuse_leakage:
                        raise ConfigError(message + "; pretrain on the training folds only or unset "
                                          "model.init_args.refuse_leakage")
                    logger.warning("leakage: %s", message)

    def call_net(self, x: torch.Tensor, modality_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.channels_last_input(x)
        if self.uses_mask:
            return self.net(x, modality_mask)
        return self.net(x)

    def roi(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.hparams.roi_size:
            return tuple(self.hparams.roi_size)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return tuple(dm.patch_size) if dm is not None and dm.patch_size else tuple(spatial)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict_probability(self, image: torch.Tensor, modality_mask: torch.Tensor | None) -> torch.Tensor:
        """Sliding-window probabilities ``[B, K, D, H, W]``, averaged with the left-right flip when enabled."""
        out = []
        for b in range(image.shape[0]):  # one case at a time keeps each window with its own modality mask
            x = image[b: b + 1]
            mask = None if modality_mask is None else modality_mask[b: b + 1]

            def predictor(window, mask=mask):
                m = None if mask is None else mask.expand(window.shape[0], -1)
                return self.activation(self.call_net(window, m))

            roi = self.roi(x.shape[2:])
            prob = sliding_window_inference(x, roi, self.hparams.sw_batch_size, predictor,
                                            overlap=self.hparams.sw_overlap, mode="gaussian")
            if self.hparams.tta_flip:
                flipped = sliding_window_inference(x.flip(-1), roi, self.hparams.sw_batch_size, predictor,
                                                   overlap=self.hparams.sw_overlap, mode="gaussian")
                prob = (prob + flipped.flip(-1)) / 2
            out.append(prob)
        return torch.cat(out)

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer == "adam_amsgrad":
            return torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay, amsgrad=True)
        return torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)

    def on_save_checkpoint(self, checkpoint) -> None:
        checkpoint["medssl"] = {"architecture": type(self.net).__name__, **data_metadata(self),
                                "init_from": self.hparams.init_from, "leaked_cases": self.leaked_cases}


class DetectionSystem(DenseSystem):
    """csPCa detection (PI-CAI recipe): 2-class logits, focal loss, picai_eval every validation epoch.

    Args:
        net: backbone with ``out_channels=2``.
        loss: ``focal`` (PI-CAI baseline), ``focal_ce``, ``ce`` or ``dice_ce``.
        focal_gamma: focal loss gamma (baseline 1).
        focal_alpha: weight of the lesion class; ``null`` = the training fold's fraction of negative cases.
        smooth_sigma: Gaussian smoothing (voxels) of the lesion likelihood before candidate extraction.
        **kwargs: see ``DenseSystem``.
    """

    def __init__(self, net: nn.Module, loss: Literal["focal", "focal_ce", "ce", "dice_ce"] = "focal",
                 focal_gamma: float = 1.0, focal_alpha: float | None = None, smooth_sigma: float = 1.5, **kwargs):
        super().__init__(net, **kwargs)
        self.loss_fn: nn.Module | None = None
        self._val: list[tuple[str, np.ndarray, np.ndarray]] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        h = self.hparams
        alpha = h.focal_alpha
        dm = getattr(self.trainer, "datamodule", None)
        if alpha is None and h.loss in ("focal", "focal_ce"):
            alpha = dm.negative_fraction() if dm is not None and hasattr(dm, "negative_fraction") else 0.75
        self.focal_alpha_used = alpha
        focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=h.focal_gamma, alpha=alpha)
        if h.loss == "focal":
            self.loss_fn = focal
        elif h.loss == "dice_ce":
            self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        else:
            ce = nn.CrossEntropyLoss()

            def ce_loss(logits, target):
                return ce(logits, target[:, 0].long())

            self.loss_fn = ce_loss if h.loss == "ce" else (lambda lo, t: focal(lo, t) + ce_loss(lo, t))

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=1)[:, 1:2]  # lesion likelihood [B, 1, D, H, W]

    def training_step(self, batch, batch_idx):
        logits = self.call_net(batch["image"], batch["modality_mask"])
        loss = self.loss_fn(logits.float(), batch["label"].long())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def lesion_probability(self, image, modality_mask) -> np.ndarray:
        """Smoothed lesion likelihood ``[B, D, H, W]`` on the preprocessing grid."""
        from medssl.evaluation.detection import smooth

        prob = self.predict_probability(image, modality_mask)[:, 0].cpu().numpy()
        return np.stack([smooth(p, self.hparams.smooth_sigma) for p in prob])

    def validation_step(self, batch, batch_idx):
        from medssl.evaluation.detection import detection_map

        prob = self.lesion_probability(batch["image"], batch["modality_mask"])
        for case_id, p, label in zip(batch["case_id"], prob, batch["label"][:, 0].cpu().numpy()):
            self._val.append((case_id, detection_map(p), label))

    def on_validation_epoch_end(self) -> None:
        from picai_eval import evaluate

        outputs = self._val
        self._val = []
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            # DistributedSampler repeats cases to even out the ranks: score each case once
            outputs = list({o[0]: o for part in gathered for o in part}.values())
        if not outputs or self.trainer.sanity_checking:
            return
        metrics = evaluate(y_det=[o[1] for o in outputs], y_true=[o[2] for o in outputs],
                           subject_list=[o[0] for o in outputs], num_parallel_calls=1)
        targets = [o[2].any() for o in outputs]
        auroc = float(metrics.auroc) if 0 < sum(targets) < len(targets) else float("nan")
        ap = float(metrics.AP)
        score = (auroc + ap) / 2 if np.isfinite(auroc) else ap
        for name, value in (("auroc", auroc), ("ap", ap), ("score", score)):
            # the same value on every rank (all cases gathered): syncing averages equal numbers
            self.log(f"val/{name}", value, prog_bar=name == "score", sync_dist=True)


class SegmentationSystem(DenseSystem):
    """BraTS region segmentation (TC, WT, ET): sigmoid logits, Dice+CE loss, Dice and HD95 per region.

    Args:
        net: backbone with ``out_channels=3``.
        eval_modalities: validate with only these modalities (the others zeroed and masked out);
            ``null`` = every modality the case has.
        **kwargs: see ``DenseSystem``.
    """

    REGIONS = ("TC", "WT", "ET")

    def __init__(self, net: nn.Module, eval_modalities: list[str] | None = None, **kwargs):
        super().__init__(net, **kwargs)
        self.loss_fn = DiceCELoss(sigmoid=True)
        self._val_rows: dict[str, list[float]] = {}  # case id -> Dice per region, then HD95 per region

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def _subset(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = batch["image"], batch["modality_mask"].clone()
        wanted = self.hparams.eval_modalities
        if wanted:
            dm = self.trainer.datamodule
            unknown = [m for m in wanted if m not in dm.modalities]
            if unknown:
                raise ConfigError(f"model.init_args.eval_modalities {unknown} are not in data.modalities "
                                  f"{list(dm.modalities)}")
            keep = torch.tensor([m in wanted for m in dm.modalities], device=mask.device)
            mask = mask & keep
            image = image * mask[:, :, None, None, None].to(image.device, image.dtype)
        return image, mask

    def training_step(self, batch, batch_idx):
        logits = self.call_net(batch["image"], batch["modality_mask"])
        loss = self.loss_fn(logits.float(), batch["label"].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        from medssl.evaluation.segmentation import region_metrics

        image, mask = self._subset(batch)
        pred = (self.predict_probability(image, mask) > 0.5).float()
        result = region_metrics(pred, batch["label"].float())
        for i, case_id in enumerate(batch["case_id"]):
            self._val_rows[case_id] = ([float(result["dice"][r][i]) for r in self.REGIONS]
                                       + [float(result["hd95"][r][i]) for r in self.REGIONS])

    def on_validation_epoch_end(self) -> None:
        rows, self._val_rows = self._val_rows, {}
        if self.trainer.world_size > 1:  # every rank joins, even one without validation batches
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = {case_id: row for part in gathered for case_id, row in part.items()}  # each case once
        if not rows:
            return
        table = torch.tensor(list(rows.values()), dtype=torch.float32)  # [cases, 2 * regions]
        n = len(self.REGIONS)
        dice, hd95 = table[:, :n], table[:, n:]
        # the same values on every rank (all cases gathered): syncing averages equal numbers
        for i, region in enumerate(self.REGIONS):
            self.log(f"val/dice_{region.lower()}", torch.nanmean(dice[:, i]), sync_dist=True)
            self.log(f"val/hd95_{region.lower()}", torch.nanmean(hd95[:, i]), sync_dist=True)
        self.log("val/dice_mean", torch.nanmean(dice), prog_bar=True, sync_dist=True)
