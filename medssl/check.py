"""``medssl check``: read every case without training and summarise the data set."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from medssl.data.layouts import discover
from medssl.data.preprocess import load_case, preprocessing_for
from medssl.errors import DataError


def check_dataset(
    root: str, layout: str, labels_root: str | None = None, label_source: str = "human_expert",
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """Read every case (images, labels, geometry) and count what is there.

    Returns:
        ``cases``, ``patients``, ``labelled``, ``positive`` (labelled with a lesion voxel),
        ``modalities`` ({modality: cases that have it}), ``geometry`` (reference spacing and size
        ranges, x/y/z) and ``errors`` (one line per unusable case).
    """
    cases = discover(layout, root, labels_root, label_source, modalities)
    modalities = list(modalities or cases[0].images)
    prep = preprocessing_for(layout, modalities, with_labels=True)
    errors: list[str] = []
    positive = 0
    spacings, sizes = [], []
    for case in cases:
        try:
            out = load_case(case.to_item(), prep)
        except DataError as e:
            errors.append(str(e))
            continue
        grid = out["grid"]
        spacings.append(grid[3:6])
        sizes.append(grid[15:18])
        if "label" in out and out["label"].any():
            positive += 1
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
        lines.append(f"  reference spacing (x, y, z) mm {g['spacing_min_xyz']} .. {g['spacing_max_xyz']}")
        lines.append(f"  reference size (x, y, z) {g['size_min_xyz']} .. {g['size_max_xyz']}")
    lines.append(f"  unusable cases {len(s['errors'])}" if s["errors"] else "  all cases readable")
    return "\n".join(lines)

