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

from medssl.data.geometry import Grid, resample_array
from medssl.data.layouts.brats import get_convention
from medssl.errors import ConfigError, MedsslError
from medssl.evaluation.detection import detection_map, probability_to_original, smooth
from medssl.systems.common import MedsslModule, adamw_warmup_cosine, check_in_channels, gather_cases
from medssl.weights import init_from

logger = logging.getLogger(__name__)


def takes_modality_mask(net: nn.Module) -> bool:
    return "modality_mask" in inspect.signature(net.forward).parameters


class DenseSystem(MedsslModule):
    """What detection and segmentation share: the backbone call, sliding windows, weights, metadata and
    the prediction of one case (``case_probability`` then ``to_output``, which the subclasses define and
    ``medssl infer``, ``medssl predict`` and ``medssl cv`` all call).

    Args:
        net: the backbone; its ``in_channels`` must equal the number of data modalities.
        lr: learning rate.
        weight_decay: weight decay.
        optimizer: ``adam_amsgrad`` (PI-CAI baseline) or ``adamw``.
        lr_schedule: ``constant``; ``poly`` (``lr * (1 - epoch / max_epochs) ** poly_power``, the PI-CAI
            baseline's and nnU-Net's decay); ``warmup_cosine`` (linear warm-up over ``warmup_epochs``,
            then cosine to 0: BM-MAE's finetuning script).
        poly_power: exponent of the ``poly`` decay (baseline 0.95).
        warmup_epochs: warm-up length of ``warmup_cosine``.
        roi_size: sliding-window size ``[D, H, W]``; defaults to ``data.crop_size`` (or the whole volume).
        sw_batch_size: windows per forward pass.
        sw_overlap: window overlap.
        tta_flip: average with the left-right flipped prediction at validation/prediction.
        init_from: a pretraining checkpoint of ours or official BM-MAE weights for the encoder.
        init_parts: what ``init_from`` moves into the net: ``encoder`` (the architecture's transfer rule: CSwin UNet
            and BM-MAE move their encoder only; the decoder, the raw-input skip convolutions and the head start
            from their initialisation, as the SSL heads' decoders do not match them), or ``all`` (every tensor whose
            name and shape match: a whole finetuned UNet, e.g. a supervised positive control, decoder included).
        refuse_leakage: refuse to validate on cases the ``init_from`` checkpoint was pretrained on.
        compile: compile the net (``true`` or ``torch.compile`` options); see ``MedsslModule``.
        channels_last: channels-last 3-D layout for conv weights and inputs; see ``MedsslModule``.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: Literal["adam_amsgrad", "adamw"] = "adam_amsgrad",
                 lr_schedule: Literal["constant", "poly", "warmup_cosine"] = "constant", poly_power: float = 0.95,
                 warmup_epochs: float = 0.0, roi_size: list[int] | None = None,
                 sw_batch_size: int = 2, sw_overlap: float = 0.25, tta_flip: bool = True,
                 init_from: str | None = None, init_parts: Literal["encoder", "all"] = "encoder",
                 refuse_leakage: bool = False,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False):
        super().__init__()
        if not lr > 0:
            raise ConfigError(f"model.init_args.lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"model.init_args.weight_decay must be >= 0, got {weight_decay}")
        self.save_hyperparameters(ignore=["net", "loss"])  # collects the subclass's arguments too (init chain)
        self.use_net(net)
        self.leaked_cases: list[str] = []
        self.init_report: dict = {}
        self.not_transferred: list[str] = []  # the net's tensors init_from left at their initialisation

    checkpoint_kind = "finetuned"

    def use_net(self, net: nn.Module) -> None:
        """Make ``net`` the backbone (a net ``medssl.weights.load_model`` rebuilt from a checkpoint)."""
        self.net = net
        self.uses_mask = takes_modality_mask(net)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            check_in_channels(self.net, dm.modalities)
            if stage == "fit":
                self.check_crop(dm.crop_size or dm.spatial_size, len(dm.modalities))
        if self.hparams.init_from and stage == "fit" and not self.init_report:
            report, meta = init_from(self.net, self.hparams.init_from, parts=self.hparams.init_parts)
            self.init_report = {k: len(v) for k, v in report.items()}
            self.not_transferred = sorted(report["missing"])
            if dm is not None:
                saved = meta.modalities if meta.kind != "official" else None
                if saved and list(saved) != list(dm.modalities):
                    raise ConfigError(f"{self.hparams.init_from} was pretrained on modalities {saved} but "
                                      f"data.modalities is {list(dm.modalities)}; make them equal")
                if meta.normalisation is not None and meta.normalize != getattr(dm, "normalize", "nonzero"):
                    # legitimate (a transfer across preprocessings), but the encoder then sees other intensities
                    logger.warning("%s was pretrained on data.normalize %s, this run normalises with %s: the encoder "
                                   "sees intensities it was not pretrained on (pretrain again with --data.normalize "
                                   "%s to match)", self.hparams.init_from, meta.normalize,
                                   getattr(dm, "normalize", "nonzero"), getattr(dm, "normalize", "nonzero"))
                seen = set(meta.train_case_ids or [])
                self.leaked_cases = sorted(seen & {c.case_id for c in dm.val_cases})
                if self.leaked_cases:
                    message = (f"{len(self.leaked_cases)} validation cases of fold {dm.fold} were in the "
                               f"pretraining data of {self.hparams.init_from} (e.g. {self.leaked_cases[:3]})")
                    if self.hparams.refuse_leakage:
                        raise ConfigError(message + "; pretrain on the training folds only or unset "
                                          "model.init_args.refuse_leakage")
                    logger.warning("leakage: %s", message)

    def check_crop(self, crop: tuple[int, ...] | None, channels: int) -> None:
        """Run the net once on zeros of the training crop before training: a crop the net cannot take (smaller than
        its strides, not its img_size) is one line naming the option here, not a traceback after the data is read."""
        if not crop:
            return
        training = self.net.training
        try:
            with torch.no_grad():
                self.net.eval()
                x = torch.zeros(1, channels, *crop, device=next(self.net.parameters()).device)
                self.call_net(x, torch.ones(1, channels, dtype=torch.bool) if self.uses_mask else None)
        except (RuntimeError, ValueError) as e:
            detail = " ".join(str(e).split())[:160]
            raise ConfigError(f"the net cannot take the training crop {list(crop)} [D, H, W] ({detail}); set "
                              "data.crop_size (or data.spatial_size) to a size the net takes") from None
        finally:
            self.net.train(training)

    def call_net(self, x: torch.Tensor, modality_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.channels_last_input(x)
        if self.uses_mask:
            return self.net(x, modality_mask)
        return self.net(x)

    def roi(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.hparams.roi_size:
            return tuple(self.hparams.roi_size)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return tuple(dm.crop_size) if dm is not None and dm.crop_size else tuple(spatial)

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
            optimizer = torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay, amsgrad=True)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.lr_schedule == "constant":
            return optimizer
        if h.lr_schedule == "poly":  # per epoch, as the PI-CAI baseline: lr * (1 - epoch / max_epochs) ** power
            epochs = max(int(self.trainer.max_epochs or 1), 1)
            schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=h.poly_power)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
        return adamw_warmup_cosine(self, self.parameters(), h.lr, h.weight_decay, h.warmup_epochs, optimizer=optimizer)

    # -- steps every dense system shares -----------------------------------------------------------
    def target(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        logits = self.call_net(batch["image"], batch["modality_mask"])
        loss = self.loss_fn(logits.float(), self.target(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def log_epoch_metrics(self, stage: str) -> None:
        raise NotImplementedError

    # -- one case: the prediction every command writes ----------------------------------------------------------
    @torch.no_grad()
    def case_probability(self, item: dict[str, Any]) -> np.ndarray:
        """The probability map of one preprocessed case (``image`` ``[C, D, H, W]``, ``modality_mask``) on its
        preprocessing grid, on this system's device under the caller's precision context; the modality mask
        stays on the host (see ``MedsslModule``). An ensemble averages these before ``to_output``."""
        image = torch.as_tensor(item["image"])[None].to(self.device)
        mask = torch.as_tensor(item["modality_mask"])[None]
        prob = self.probability(image, mask)[0]
        if not np.isfinite(prob).all():
            raise MedsslError(f"case {item.get('case_id', '?')}: the model predicts NaN or Inf (a training run that "
                              "diverged, or weights that are not finite); no map is written: retrain with a lower "
                              "model.init_args.lr or check the checkpoint")
        return prob

    def probability(self, image: torch.Tensor, modality_mask: torch.Tensor | None) -> np.ndarray:
        raise NotImplementedError

    def to_output(self, prob: np.ndarray, grid: Grid, reference: str,
                  label_convention: str | None = None) -> np.ndarray:
        """A preprocessing-grid probability (``case_probability``, or an ensemble's mean of them) as the written map
        on the reference image's grid."""
        raise NotImplementedError

    def case_summary(self, written: np.ndarray, label_convention: str | None = None) -> dict[str, Any]:
        """What ``predictions.json`` says about one written map."""
        raise NotImplementedError

    def predict_case(self, item: dict[str, Any], reference: str) -> np.ndarray:
        """One preprocessed case through this system, back on its reference image's grid."""
        grid = Grid.from_array(np.asarray(item["grid"]))
        return self.to_output(self.case_probability(item), grid, reference, item.get("label_convention"))

    def predict_step(self, batch, batch_idx):
        """Per case of the batch: its id, reference image and the map ``medssl infer`` writes (original geometry)."""
        out = []
        conventions = batch.get("label_convention") or [None] * len(batch["case_id"])
        for i, case_id in enumerate(batch["case_id"]):
            item = {"image": batch["image"][i], "modality_mask": batch["modality_mask"][i], "grid": batch["grid"][i],
                    "label_convention": conventions[i] or None, "case_id": case_id}
            out.append({"case_id": case_id, "reference": batch["reference"][i], "label_convention": conventions[i],
                        "map": self.predict_case(item, batch["reference"][i])})
        return out

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "task": self.task, "init_from": self.hparams.init_from,
                "leaked_cases": self.leaked_cases}


class _Focal(nn.Module):
    """MONAI's focal loss, reachable as ``.focal`` so ``DetectionSystem.setup`` can set its alpha from the fold."""

    def __init__(self, focal: FocalLoss, with_ce: bool = False):
        super().__init__()
        self.focal, self.with_ce = focal, with_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.focal(logits, target)
        return loss + F.cross_entropy(logits, target[:, 0].long()) if self.with_ce else loss


class _CE(nn.Module):
    """Cross-entropy on a ``[B, 1, D, H, W]`` class-index target."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0].long())


def detection_loss(name: str, focal_gamma: float = 1.0, focal_alpha: float | None = None) -> nn.Module:
    """The named detection losses of the recipes (focal: the PI-CAI baseline's). A focal loss with
    ``focal_alpha`` unset has its alpha set from the training fold in ``DetectionSystem.setup``."""
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=focal_gamma, alpha=focal_alpha)
    if name in ("focal", "focal_ce"):
        return _Focal(focal, with_ce=name == "focal_ce")
    if name == "ce":
        return _CE()
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    raise ConfigError(f"model.init_args.loss {name!r}: choose focal, focal_ce, ce or dice_ce, or give a loss module")


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

    task = "detection"

    def __init__(self, net: nn.Module, loss: Literal["focal", "focal_ce", "ce", "dice_ce"] | nn.Module = "focal",
                 focal_gamma: float = 1.0, focal_alpha: float | None = None, smooth_sigma: float = 1.5, **kwargs):
        super().__init__(net, **kwargs)
        # a named loss (the shipped recipes) or any loss module given by class_path, e.g. monai.losses.DiceFocalLoss
        self.loss_fn: nn.Module = loss if isinstance(loss, nn.Module) else detection_loss(loss, focal_gamma,
                                                                                           focal_alpha)
        self._val: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        focal = getattr(self.loss_fn, "focal", None)
        if focal is not None and self.hparams.focal_alpha is None:
            # the PI-CAI baseline's alpha: the training fold's fraction of cases without a lesion
            alpha = dm.negative_fraction() if dm is not None and hasattr(dm, "negative_fraction") else 0.75
            focal.alpha = alpha
        self.focal_alpha_used = focal.alpha if focal is not None else None

    def target(self, batch) -> torch.Tensor:
        return batch["label"].long()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=1)[:, 1:2]  # lesion likelihood [B, 1, D, H, W]

    def probability(self, image, modality_mask) -> np.ndarray:
        """Smoothed lesion likelihood ``[B, D, H, W]`` on the preprocessing grid."""
        prob = self.predict_probability(image, modality_mask)[:, 0].cpu().numpy()
        return np.stack([smooth(p, self.hparams.smooth_sigma) for p in prob])

    def to_output(self, prob: np.ndarray, grid: Grid, reference: str,
                  label_convention: str | None = None) -> np.ndarray:
        """The PI-CAI detection map (lesion candidates, each at its peak likelihood) on the reference grid."""
        return detection_map(probability_to_original(prob, grid, reference))

    def case_summary(self, written: np.ndarray, label_convention: str | None = None) -> dict[str, Any]:
        return {"case_score": float(written.max())}

    def validation_step(self, batch, batch_idx):
        prob = self.probability(batch["image"], batch["modality_mask"])
        for case_id, p, label in zip(batch["case_id"], prob, batch["label"][:, 0].cpu().numpy()):
            self._val[case_id] = (detection_map(p), label)

    def log_epoch_metrics(self, stage: str) -> None:
        from picai_eval import evaluate

        from medssl.evaluation.picai import picai_score

        outputs, self._val = gather_cases(self, self._val), {}
        if not outputs or self.trainer.sanity_checking:
            return
        ids = sorted(outputs)
        metrics = evaluate(y_det=[outputs[c][0] for c in ids], y_true=[outputs[c][1] for c in ids], subject_list=ids,
                           num_parallel_calls=1)
        targets = [outputs[c][1].any() for c in ids]
        auroc = float(metrics.auroc) if 0 < sum(targets) < len(targets) else float("nan")
        ap = float(metrics.AP) if any(targets) else float("nan")
        score = picai_score(auroc, ap)
        for name, value in (("auroc", auroc), ("ap", ap), ("score", float("nan") if score is None else score)):
            # the same value on every rank (all cases gathered): syncing averages equal numbers
            self.log(f"{stage}/{name}", value, prog_bar=name == "score", sync_dist=True)


class SegmentationSystem(DenseSystem):
    """BraTS region segmentation (TC, WT, ET): sigmoid logits, Dice+CE loss, Dice and HD95 per region.

    Args:
        net: backbone with ``out_channels=3``.
        eval_modalities: validate with only these modalities (the others zeroed and masked out);
            ``null`` = every modality the case has.
        **kwargs: see ``DenseSystem``.
    """

    REGIONS = ("TC", "WT", "ET")
    task = "segmentation"

    def __init__(self, net: nn.Module, eval_modalities: list[str] | None = None, loss: nn.Module | None = None,
                 **kwargs):
        super().__init__(net, **kwargs)
        self.loss_fn: nn.Module = loss if loss is not None else DiceCELoss(sigmoid=True)
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

    def target(self, batch) -> torch.Tensor:
        return batch["label"].float()

    def probability(self, image, modality_mask) -> np.ndarray:
        """Region probabilities ``[B, 3, D, H, W]`` (TC, WT, ET) on the preprocessing grid."""
        return self.predict_probability(image, modality_mask).float().cpu().numpy()

    def to_output(self, prob: np.ndarray, grid: Grid, reference: str,
                  label_convention: str | None = None) -> np.ndarray:
        """A BraTS label map on the reference grid, in the input data set's label values (``label_convention``:
        enhancing tumour 4 for BraTS 2021, 3 for 2023+)."""
        target = Grid.from_file(reference)
        regions = np.stack([resample_array(p.astype(np.float32), grid, target) > 0.5 for p in prob])
        return get_convention(label_convention).label_map(regions)

    def case_summary(self, written: np.ndarray, label_convention: str | None = None) -> dict[str, Any]:
        values = get_convention(label_convention).labels
        return {"voxels": {name: int((written == value).sum()) for name, value in values.items()},
                "label_values": values}

    def validation_step(self, batch, batch_idx):
        from medssl.evaluation.segmentation import region_metrics

        image, mask = self._subset(batch)
        pred = (self.predict_probability(image, mask) > 0.5).float()
        result = region_metrics(pred, batch["label"].float())
        for i, case_id in enumerate(batch["case_id"]):
            self._val_rows[case_id] = ([float(result["dice"][r][i]) for r in self.REGIONS]
                                       + [float(result["hd95"][r][i]) for r in self.REGIONS])

    def log_epoch_metrics(self, stage: str) -> None:
        rows, self._val_rows = gather_cases(self, self._val_rows), {}
        if not rows:
            return
        table = torch.tensor(list(rows.values()), dtype=torch.float32)  # [cases, 2 * regions]
        n = len(self.REGIONS)
        dice, hd95 = table[:, :n], table[:, n:]
        # the same values on every rank (all cases gathered): syncing averages equal numbers
        for i, region in enumerate(self.REGIONS):
            self.log(f"{stage}/dice_{region.lower()}", torch.nanmean(dice[:, i]), sync_dist=True)
            self.log(f"{stage}/hd95_{region.lower()}", torch.nanmean(hd95[:, i]), sync_dist=True)
        self.log(f"{stage}/dice_mean", torch.nanmean(dice), prog_bar=True, sync_dist=True)
