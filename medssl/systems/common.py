"""What every system shares: the warm-up cosine schedule, checkpoint metadata and image logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from monai.optimizers import WarmupCosineSchedule

from medssl.errors import CheckpointError, ConfigError, one_line
from medssl.io import atomic_target
from medssl.records import package_version
from medssl.weights import CheckpointMeta, architecture_of
from medssl.weights.meta import KEY

# Batch entries that stay on the host when a batch moves to the GPU: presence flags the nets read without
# waiting for the device, and the case's grid, which only the host uses (to write maps back).
HOST_KEYS = ("modality_mask", "grid")


class MedsslModule(LightningModule):
    """The speed paths every system shares.

    - ``modality_mask`` (and the case ``grid``) stay on the host when a batch moves to the GPU: the nets
      read presence (which modalities a batch lacks, how many tokens stay visible) from it without
      waiting for the device, and copy it over themselves for arithmetic.
    - ``channels_last`` stores the net's 3-D conv weights (and the inputs) channels-last
      (``torch.channels_last_3d``), the layout cuDNN's fastest bf16 3-D convolutions use.
    - ``compile`` compiles the net in place (``nn.Module.compile``; state-dict keys unchanged, so
      checkpoints load into an uncompiled net): ``true`` for the default inductor backend, or a
      mapping of ``torch.compile`` options, e.g. ``{mode: max-autotune}``.

    Subclasses take ``compile`` and ``channels_last`` as init arguments (saved in the hyperparameters).
    """

    _speed_applied = False
    run_config: str | None = None  # the resolved YAML of the run (set by the CLI), saved with every checkpoint
    checkpoint_kind = "pretraining"  # what the weights are, in their CheckpointMeta

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a system adds to the checkpoint's ``medssl`` entry (``CheckpointMeta`` fields)."""
        encoder = getattr(self.net, "encoder", self.net)
        axis_order = getattr(self.net, "axis_order", getattr(encoder, "axis_order", None))
        return {"architecture": architecture_of(self.net), "net": type(self.net).__name__,
                "kind": self.checkpoint_kind, **({"axis_order": axis_order} if axis_order else {})}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint of another system or size is one line naming what does not fit (Lightning's resume,
        ``--ckpt_path``), not a traceback."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            detail = one_line(e).split(":", 1)[-1].strip()[:300]
            raise CheckpointError(f"the checkpoint does not fit {type(self).__name__} of the config ({detail})") \
                from None

    def on_save_checkpoint(self, checkpoint) -> None:
        meta = CheckpointMeta(**data_metadata(self), **self.checkpoint_metadata(), config=self.run_config,
                              medssl_version=package_version("medssl"))
        checkpoint[KEY] = meta.to_entry()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if not isinstance(batch, dict) or not any(k in batch for k in HOST_KEYS):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        rest = {k: v for k, v in batch.items() if k not in HOST_KEYS}
        return {**super().transfer_batch_to_device(rest, device, dataloader_idx),
                **{k: batch[k] for k in HOST_KEYS if k in batch}}

    def configure_model(self) -> None:
        if self._speed_applied:
            return
        self._speed_applied = True
        if self.hparams.get("channels_last"):
            self.net.to(memory_format=torch.channels_last_3d)
        options = self.hparams.get("compile")
        if options:
            self.net.compile(**(dict(options) if isinstance(options, dict) else {}))

    def channels_last_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.get("channels_last") and x.ndim == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x


def write_pretext(module: LightningModule, metrics: dict[str, Any]) -> Path | None:
    """Log the pretext metrics of a validation epoch and keep them in ``pretext.json`` beside the checkpoints
    (what ``medssl cv`` copies into its provenance): did the pretext tasks learn anything, against chance or a
    trivial baseline?"""
    from medssl.io import write_json

    if module._trainer is None or module.trainer.sanity_checking:
        return None
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if module.trainer.world_size > 1 and torch.distributed.is_initialized():
        # each rank scored its share (equal shares: DistributedSampler pads them), maybe not every metric (BM-MAE:
        # the modalities its cases hold): one gather of the dicts, then each metric's mean over the ranks with it
        gathered: list[Any] = [None] * module.trainer.world_size
        torch.distributed.all_gather_object(gathered, numbers)
        names = sorted({k for g in gathered for k in g})
        numbers = {k: float(np.mean([g[k] for g in gathered if k in g])) for k in names}
        metrics = {**metrics, **numbers}
    for name, value in numbers.items():
        module.log(f"pretext/{name}", value, sync_dist=True)  # equal on every rank by now: the mean keeps it
    if not module.trainer.is_global_zero:
        return None
    callback = module.trainer.checkpoint_callback
    folder = Path(getattr(callback, "dirpath", None) or Path(module.trainer.default_root_dir) / "checkpoints")
    path = folder / "pretext.json"
    write_json(path, {"epoch": module.current_epoch + 1, "step": int(module.trainer.global_step), **metrics})
    return path


def adamw_warmup_cosine(module: LightningModule, params, lr: float, weight_decay: float, warmup_epochs: float,
                        cycles: float = 0.5, end_lr_fraction: float = 0.0,
                        optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """AdamW (or ``optimizer``) with MONAI's linear warm-up then cosine, stepped per optimiser step.

    ``cycles`` 0.5 decays to ``end_lr_fraction`` at the end of training; BM-MAE's reference uses a
    cosine period longer than training (1500 of 1000 epochs), i.e. ``cycles = 1000 / 1500 / 2``.
    """
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    per_epoch = total / max(module.trainer.max_epochs or 1, 1)
    warmup = min(int(round(warmup_epochs * per_epoch)), total - 1)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total, cycles=cycles,
                                    end_lr=lr * end_lr_fraction)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: set[str] = frozenset()) -> list[dict]:
    """Weight decay on weights only: biases, norms and the names in ``no_decay`` get none."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or name in no_decay or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def data_metadata(module: LightningModule) -> dict[str, Any]:
    """Preprocessing settings and training case ids saved with the weights (checked when loaded)."""
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is None:
        return {}
    return {
        "layout": dm.layout,
        "modalities": list(dm.modalities),
        "spacing": list(dm.spacing) if dm.spacing else None,
        "spatial_size": list(dm.spatial_size) if dm.spatial_size else None,
        "normalisation": getattr(dm, "normalize", "nonzero"),
        "clip_percentiles": list(dm.clip_percentiles) if getattr(dm, "clip_percentiles", None) else None,
        "voxel_aligned": bool(getattr(dm, "voxel_aligned", False)),
        "train_case_ids": [c.case_id for c in dm.train_cases],
        "skipped_cases": dict(getattr(dm, "skipped_cases", {})),
    }


def gather_cases(module: LightningModule, rows: dict[str, Any]) -> dict[str, Any]:
    """Per-case results of every rank, each case once (DistributedSampler repeats cases to even out ranks).

    Every rank must call it, even one without batches: it is a collective under DDP.
    """
    if module._trainer is None or module.trainer.world_size <= 1:
        return dict(rows)
    gathered = [None] * module.trainer.world_size
    torch.distributed.all_gather_object(gathered, rows)
    return {case_id: row for part in gathered for case_id, row in part.items()}


def mid_slice(volume: torch.Tensor) -> np.ndarray:
    """The middle slice along the first axis of a [D, H, W] volume, as float32 numpy."""
    volume = volume.detach().float().cpu()
    return volume[volume.shape[0] // 2].numpy()


def log_image_grid(
    module: LightningModule, tag: str, rows: dict[str, list[np.ndarray]], columns: list[str]
) -> Path | None:
    """A grid of 2-D images (one row per modality/sample) to TensorBoard and as a PNG in the log folder."""
    if module._trainer is None or not module.trainer.is_global_zero:
        return None
    # matplotlib's object API on an Agg canvas: no pyplot, so no global backend is set or needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), len(columns)
    fig = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, cmap="gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    out = None
    # Not `trainer.log_dir`: under DDP it broadcasts, and only rank 0 gets here, so it would hang.
    log_dir = getattr(module.logger, "log_dir", None) or module.trainer.default_root_dir
    if log_dir:
        out = Path(log_dir) / "images" / f"{tag}_epoch{module.current_epoch:04d}.png"
        with atomic_target(out) as tmp:
            fig.savefig(tmp, dpi=80)
    experiment = getattr(module.logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_image"):
        experiment.add_image(tag, rgb, module.global_step, dataformats="HWC")
    return out


def check_in_channels(net: torch.nn.Module, modalities: list[str]) -> None:
    """The net must take one input channel per data modality (BM-MAE: the same modality names)."""
    encoder = getattr(net, "encoder", None)
    if isinstance(getattr(encoder, "modalities", None), tuple):  # BM-MAE: one tokenizer per modality
        if list(encoder.modalities) != list(modalities):
            raise ConfigError(f"the net's modalities are {list(encoder.modalities)}; set "
                              f"model.init_args.net.init_args.modalities to {list(modalities)} (data.modalities)")
        return
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv3d)), None)
    if first is not None and first.in_channels != len(modalities):
        raise ConfigError(f"the net takes {first.in_channels} input channels; set "
                          f"model.init_args.net.init_args.in_channels to {len(modalities)} for "
                          f"{', '.join(modalities)}")
