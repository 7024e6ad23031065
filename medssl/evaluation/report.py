"""Cross-validation report: per fold, mean +- std and pooled with bootstrap CIs, runs side by side.

A self-supervised gain is only a claim next to its from-scratch twin, so the report puts every
run (``pretrained``, ``scratch``, ...) side by side and writes their difference. Plots are drawn
with matplotlib's object API on the Agg canvas, so importing this module changes no global backend.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medssl.evaluation.files import atomic_target
from medssl.evaluation.picai import bootstrap_ci, metrics_summary, pool_metrics

METRICS = ("auroc", "ap", "score")
RESERVED = ("main_run", "folds", "mean", "std", "pooled", "runs", "comparison")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/Inf as None, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) over the folds where the metric is defined."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
    return float(np.mean(defined)), std


def run_summary(folds: Sequence[Mapping[str, Any]], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-fold summaries, mean and std over folds, and the pooled evaluation of one run.

    Args:
        folds: per-fold dicts ``{"fold": k, "cases": [...], "metrics": Metrics, **extra keys}``.
        n_bootstrap: resamples for each confidence interval.
        seed: bootstrap seed.

    Returns:
        ``{"folds": [...], "mean": {...}, "std": {...}, "pooled": {...}}``.
    """
    if not folds:
        raise ValueError("a run needs at least one fold")
    rows = []
    for k, fold in enumerate(folds):
        if "metrics" not in fold:
            raise ValueError(f"fold {fold.get('fold', k)} has no 'metrics' (a picai_eval Metrics object)")
        metrics = fold["metrics"]
        extra = {key: value for key, value in fold.items() if key not in ("fold", "cases", "metrics")}
        rows.append({
            "fold": fold.get("fold", k),
            "cases": list(fold.get("cases", metrics.subject_list)),
            **metrics_summary(metrics),
            "ci": bootstrap_ci(metrics, n=n_bootstrap, seed=seed),
            **extra,
        })
    pooled_metrics = pool_metrics([fold["metrics"] for fold in folds])
    pooled = metrics_summary(pooled_metrics)
    pooled["ci"] = bootstrap_ci(pooled_metrics, n=n_bootstrap, seed=seed)
    mean, std = {}, {}
    for name in METRICS:
        mean[name], std[name] = _mean_std([row[name] for row in rows])
    return {"folds": rows, "mean": mean, "std": std, "pooled": pooled}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _markdown(runs: Mapping[str, dict], main: str) -> str:
    names = list(runs)
    header = ["fold"] + [f"{run} {m.upper() if m != 'score' else 'score'}" for run in names for m in METRICS]
    lines = [
        "# Cross-validation report (PI-CAI protocol)",
        "",
        f"Main run: `{main}`. AUROC is case-level, AP lesion-level, score = (AUROC + AP) / 2; "
        "mean +- sample std over folds; pooled over all validation cases with a 95% bootstrap CI.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    fold_ids = list(dict.fromkeys(row["fold"] for run in runs.values() for row in run["folds"]))
    for fold_id in fold_ids:
        cells = [str(fold_id)]
        for run in names:
            row = next((r for r in runs[run]["folds"] if r["fold"] == fold_id), {})
            cells += [_fmt(row.get(m)) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["mean ± std"]
    for run in names:
        cells += [f"{_fmt(runs[run]['mean'][m])} ± {_fmt(runs[run]['std'][m])}" for m in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
    cells = ["pooled (95% CI)"]
    for run in names:
        pooled = runs[run]["pooled"]
        for m in METRICS:
            ci = pooled["ci"].get(m)
            cells.append(_fmt(pooled[m]) + ("" if ci is None else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"))
    lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {run} fold {row['fold']}: {note}" for run in names for row in runs[run]["folds"]
             for note in row.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _plot(path: Path, run: str, summary: dict, curve: str, x: str, y: str, xlabel: str, ylabel: str) -> None:
    fig = Figure(figsize=(5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    entries = [(f"fold {row['fold']}", row, {"linewidth": 1.0}) for row in summary["folds"]]
    entries.append(("pooled", summary["pooled"], {"linewidth": 2.0, "color": "black"}))
    for label, entry, style in entries:
        data = entry.get(curve)
        if not data:
            continue
        xs = np.array([np.nan if v is None else v for v in data[x]], dtype=float)
        ys = np.array([np.nan if v is None else v for v in data[y]], dtype=float)
        if curve == "froc":
            keep = xs > 0  # log axis
            xs, ys = xs[keep], ys[keep]
        ax.plot(xs, ys, label=label, **style)
    if curve == "froc" and ax.lines:
        ax.set_xscale("log")
    if curve == "roc":
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{run}: {curve.upper()}")
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right" if curve != "pr" else "lower left")
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _file_name(run: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run)


def write_cv_report(
    output_dir: str | os.PathLike,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    extra: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``cv_report.json``, ``cv_report.md`` and ROC/PR/FROC plots for one or more CV runs.

    The main run (``pretrained`` when present, else the first) is also at the top level of the
    JSON; every run is under ``runs``; ``comparison`` holds pretrained - scratch when both exist.

    Args:
        output_dir: folder for the report (created).
        runs: run name -> per-fold dicts ``{"fold": k, "cases": [...], "metrics": picai_eval Metrics,
            **extra keys}`` (extra keys such as ``leaked_cases`` or ``checkpoint`` are copied into the fold).
        extra: merged into the top level of the JSON (e.g. leakage checks); must not reuse a report key.
        n_bootstrap: resamples for each confidence interval.
        seed: bootstrap seed.

    Returns:
        The report as written to ``cv_report.json``.

    Example:
        >>> write_cv_report("reports/cv", {"pretrained": folds_a, "scratch": folds_b}, extra={"leaked_cases": []})
    """
    if not runs:
        raise ValueError("runs is empty: give at least one run of per-fold metrics")
    clash = sorted(set(extra or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite report keys; rename them")
    output_dir = Path(output_dir)
    main = "pretrained" if "pretrained" in runs else next(iter(runs))
    summaries = {name: run_summary(folds, n_bootstrap=n_bootstrap, seed=seed) for name, folds in runs.items()}
    report: dict[str, Any] = {"main_run": main, **summaries[main], "runs": summaries}
    if "pretrained" in summaries and "scratch" in summaries:
        comparison = {}
        for m in METRICS:
            a, b = summaries["pretrained"], summaries["scratch"]
            diff = None if a["mean"][m] is None or b["mean"][m] is None else a["mean"][m] - b["mean"][m]
            pooled_diff = None if a["pooled"][m] is None or b["pooled"][m] is None else a["pooled"][m] - b["pooled"][m]
            comparison[m] = {"pretrained": a["mean"][m], "scratch": b["mean"][m], "difference": diff,
                             "pooled_difference": pooled_diff}
        report["comparison"] = comparison
    report.update(extra or {})
    report = _jsonable(report)
    with atomic_target(output_dir / "cv_report.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1, allow_nan=False))
    with atomic_target(output_dir / "cv_report.md") as tmp:
        Path(tmp).write_text(_markdown(report["runs"], main))
    for name, summary in report["runs"].items():
        stem = _file_name(name)
        _plot(output_dir / f"roc_{stem}.png", name, summary, "roc", "fpr", "tpr",
              "1 - specificity (case level)", "sensitivity (case level)")
        _plot(output_dir / f"pr_{stem}.png", name, summary, "pr", "recall", "precision",
              "recall (lesion level)", "precision (lesion level)")
        _plot(output_dir / f"froc_{stem}.png", name, summary, "froc", "lesion_FPR", "sensitivity",
              "false positives per case", "sensitivity (lesion level)")
    return report


def segmentation_summary(dice: Mapping[str, Sequence[float]], hd95: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Mean, std and median of per-case Dice and HD95 per region (TC, WT, ET), undefined cases counted.

    Args:
        dice: region -> per-case Dice (NaN where undefined, e.g. an empty target).
        hd95: region -> per-case HD95 in mm (NaN or Inf where undefined, e.g. an empty prediction).

    Returns:
        ``{region: {"dice_mean", "dice_std", "dice_median", "hd95_mean", "hd95_std", "hd95_median",
        "n", "dice_undefined", "hd95_undefined"}}`` (None where no case is defined).
    """
    out = {}
    for region in dict.fromkeys([*dice, *hd95]):
        row: dict[str, Any] = {}
        for name, values in (("dice", dice.get(region, [])), ("hd95", hd95.get(region, []))):
            values = np.asarray(values, dtype=np.float64)
            defined = values[np.isfinite(values)]
            row["n"] = max(row.get("n", 0), len(values))
            row[f"{name}_undefined"] = int(len(values) - len(defined))
            row[f"{name}_mean"] = float(defined.mean()) if len(defined) else None
            row[f"{name}_std"] = float(defined.std(ddof=1)) if len(defined) > 1 else None
            row[f"{name}_median"] = float(np.median(defined)) if len(defined) else None
        out[region] = row
    return out
