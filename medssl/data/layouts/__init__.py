"""Case discovery for the layouts users keep on disk, one module per layout, and the registry of them.

``LAYOUTS`` maps each ``data.layout`` name to its ``Layout`` record (how to find the cases, the
layout's modalities, reference grid, label values and options); every other module asks the
registry, so a new layout is one module plus one entry::

    from medssl.data.layouts import LAYOUTS, Layout
    LAYOUTS["mine"] = Layout("mine", discover_mine, modalities=("t2w", "adc"), reference_order=("t2w",))

Layouts: ``picai`` (PI-CAI ``.mha`` + ``picai_labels``), ``brats`` (2021 and 2023/2024 namings),
``prostate158``, ``nnunet`` (v2 raw folders) and ``datalist`` (JSON, MONAI/MSD decathlon JSON, CSV).
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.layouts import brats, datalist, nnunet, picai, prostate158
from medssl.data.layouts.base import IMAGE_SUFFIXES, Case, Layout, check_id
from medssl.errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "Case", "Layout", "check_id", "discover", "get_layout"]

LAYOUTS: dict[str, Layout] = {m.LAYOUT.name: m.LAYOUT for m in (picai, brats, prostate158, nnunet, datalist)}


def get_layout(name: str) -> Layout:
    """The registered layout ``name``, or a one-line ``ConfigError`` listing the choices."""
    if name not in LAYOUTS:
        raise ConfigError(f"data.layout {name!r}: choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def discover(
    layout: str,
    root: str | Path,
    labels_root: str | Path | None = None,
    label_source: str = "human_expert+AI",
    modalities: list[str] | None = None,
    brats_labels: str | int | None = None,
) -> list[Case]:
    """Cases of ``root`` in ``layout``.

    Args:
        layout: a name in ``LAYOUTS`` (``picai``, ``brats``, ``prostate158``, ``nnunet``, ``datalist``, ...).
        root: the data folder (PI-CAI: holding ``images/``; nnU-Net: holding ``dataset.json``), or
            the datalist file.
        labels_root: PI-CAI's ``picai_labels`` folder (or a plain folder of ``<case_id>.nii.gz``).
        label_source: PI-CAI labels: ``human_expert+AI`` (default), ``human_expert`` or ``AI``.
        modalities: the modalities to keep, in order (a layout with fixed modalities: a subset of them);
            nnU-Net: the channels' names in order; datalist: the keys to read.
        brats_labels: BraTS label convention ``"2021"`` / ``"2023"``; ``None`` tells it from the names.

    Example:
        >>> cases = discover("brats", "/data/BraTS2021", modalities=["t1", "flair"])  # doctest: +SKIP
    """
    entry = get_layout(layout)
    if brats_labels is not None and "brats_labels" not in entry.options:
        raise ConfigError(f"data.brats_labels applies to layout brats, not {layout}; leave it unset")
    given = {"labels_root": labels_root, "label_source": label_source, "modalities": modalities,
             "brats_labels": brats_labels}
    cases = entry.discover(root, **{k: v for k, v in given.items() if k in entry.options})
    if modalities is not None and entry.modalities:
        unknown = [m for m in modalities if m not in entry.modalities]
        if unknown:
            raise ConfigError(
                f"data.modalities {unknown} are not {layout} modalities; choose from {list(entry.modalities)}"
            )
        for case in cases:
            case.images = {m: case.images[m] for m in modalities}
    return cases
