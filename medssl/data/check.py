"""``medssl check``: read every case without training and summarise the data set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from medssl.data.geometry import Grid
from medssl.data.layouts import discover, get_layout
from medssl.data.preprocess import load_case, preprocessing_for
from medssl.errors import DataError


def check_dataset(
    root: str, layout: str, labels_root: str | None = None, label_source: str | None = None,
    modalities: list[str] | None = None, brats_labels: str | None = None,
    progress: Callable[[list], Iterable] | None = None,
) -> dict[str, Any]:
    """Read every case (images, labels, geometry) and count what is there.

    Returns:
        ``cases``, ``patients``, ``labelled``, ``positive`` (labelled with a lesion voxel),
        ``modalities`` ({modality: cases that have it}), ``geometry`` (reference spacing and size
        ranges, x/y/z), ``label_sources`` (PI-CAI: labelled cases per source), ``regions`` (BraTS
        segmentation: labelled cases in which TC, WT, ET have at least one voxel) and ``errors``
        (one line per unusable case).
    """
    kwargs = {"brats_labels": brats_labels} if brats_labels else {}
    if label_source is not None:
        kwargs["label_source"] = label_source
    cases = discover(layout, root, labels_root, modalities=modalities, **kwargs)
    modalities = list(modalities or cases[0].images)
    brats = get_layout(layout).label_kind == "brats"  # tumour regions, not lesion masks
    prep = preprocessing_for(layout, modalities, with_labels=True, task="segmentation" if brats else "detection")
    errors: list[str] = []
    positive = 0
    regions = Counter()
    spacings, sizes = [], []
    for case in progress(cases) if progress else cases:
        try:
            out = load_case(case.to_item(), prep)
        except DataError as e:
            errors.append(str(e))
            continue
        grid = Grid.from_array(out["grid"])
        spacings.append(grid.spacing)
        sizes.append(grid.size)
        if "label" in out and out["label"].any():
            positive += 1
            if brats:  # [TC, WT, ET]
                regions.update(name for name, channel in zip(("TC", "WT", "ET"), out["label"]) if channel.any())
    presence = Counter(m for c in cases for m in c.present)
    geometry = {}
    if spacings:
        sp, sz = np.array(spacings), np.array(sizes)
        geometry = {
            "spacing_min_xyz": sp.min(0).round(4).tolist(), "spacing_max_xyz": sp.max(0).round(4).tolist(),
            "size_min_xyz": sz.min(0).astype(int).tolist(), "size_max_xyz": sz.max(0).astype(int).tolist(),
        }
    return {
        "layout": layout,
        "root": str(root),
        "cases": len(cases),
        "patients": len({c.patient_id for c in cases}),
        "labelled": sum(c.label is not None for c in cases),
        "positive": positive,
        "modalities": {m: presence.get(m, 0) for m in modalities},
        "geometry": geometry,
        **({"label_sources": dict(Counter(c.label_source for c in cases if c.label is not None
                                          and getattr(c, "label_source", None)))} if not brats else {}),
        **({"regions": {r: regions.get(r, 0) for r in ("TC", "WT", "ET")},
            "label_convention": sorted({c.label_convention for c in cases if getattr(c, "label_convention", None)})}
           if brats else {}),
        "errors": errors,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['layout']} data at {s['root']}",
        f"  cases     {s['cases']}",
        f"  patients  {s['patients']}",
        f"  labelled  {s['labelled']}",
        f"  positive  {s['positive']} (labelled with at least one lesion voxel)",
        "  modalities " + ", ".join(f"{m} {n}" for m, n in s["modalities"].items()),
    ]
    g = s["geometry"]
    if g:
        # in the order configs take them (data.spacing, data.spatial_size are [D, H, W] = [z, y, x])
        lines.append(f"  reference spacing [D, H, W] = [z, y, x] mm {g['spacing_min_xyz'][::-1]} .. "
                     f"{g['spacing_max_xyz'][::-1]}  (as data.spacing takes it)")
        lines.append(f"  reference size [D, H, W] = [z, y, x] {g['size_min_xyz'][::-1]} .. {g['size_max_xyz'][::-1]}")
    lines.append(f"  unusable cases {len(s['errors'])}" if s["errors"] else "  all cases readable")
    return "\n".join(lines)

