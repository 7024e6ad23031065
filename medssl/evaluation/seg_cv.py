"""The cross-validation report of a segmentation run (BraTS regions): every fold's written label maps scored per
region under one named convention (``medssl.evaluation.segmentation.METRICS``), each run's folds and pooled cases,
and the paired difference of a pretrained run and its from-scratch twin.

``cv_report.json``: ``task: segmentation``, ``metrics`` and ``metrics_convention``, ``main_run``, ``runs`` (per run:
``folds`` with per-region mean Dice and HD95 and the fold record's provenance, ``mean``/``std`` over folds,
``pooled``: per region the mean over every validation case with a 95% bootstrap CI over cases), ``comparison``
(pretrained - scratch: per region the mean per-case Dice and HD95 difference on the cases both scored, its paired
bootstrap CI and the verdict ``compare.verdict`` reads from it), and the ``provenance`` the detection report has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.evaluation.compare import verdict
from medssl.evaluation.evaluate import score_label_maps
from medssl.evaluation.report import write_report_files
from medssl.evaluation.segmentation import METRICS, REGIONS

KEEP = ("fold", "checkpoint", "selection", "init_from", "init_from_sha256", "leaked_cases", "skipped_cases",
        "train_cases", "steps", "epochs")


def score_segmentation_folds(records: Mapping[str, Sequence[Mapping[str, Any]]], metrics: str,
                             brats_labels: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every fold record with its ``scores``: exactly the maps the fold wrote against their labels."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run, folds in records.items():
        out[run] = []
        for record in folds:
            maps = dict(record["predictions"])
            scored = score_label_maps(maps, {c: record["labels"][c] for c in maps}, metrics, brats_labels)
            out[run].append({**{k: record.get(k) for k in KEEP}, "cases": sorted(maps), "scores": scored})
    return out


def _bootstrap_mean(values: np.ndarray, n: int, seed: int) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean of the finite ``values`` (scipy's), None under two values."""
    from scipy.stats import bootstrap

    values = values[np.isfinite(values)]
    if len(values) < 2 or np.ptp(values) == 0:
        return None if len(values) < 2 else [float(values[0])] * 2
    ci = bootstrap((values,), np.mean, n_resamples=n, method="percentile", random_state=seed).confidence_interval
    return [float(ci.low), float(ci.high)]


def _per_case(folds: Sequence[Mapping[str, Any]], what: str) -> dict[str, dict[str, float]]:
    """region -> case -> value over every fold of a run."""
    return {r: {case: float(f["scores"]["per_case"][case][what][r]) for f in folds for case in f["cases"]}
            for r in REGIONS}


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def run_summary(folds: Sequence[Mapping[str, Any]], n_bootstrap: int, seed: int) -> dict[str, Any]:
    rows = [{**{k: f.get(k) for k in KEEP}, "cases": f["cases"], "dice": f["scores"]["dice"],
             "hd95": f["scores"]["hd95"]} for f in folds]
    pooled: dict[str, Any] = {"num_cases": sum(len(f["cases"]) for f in folds)}
    for what in ("dice", "hd95"):
        values = _per_case(folds, what)
        pooled[what] = {r: _mean(list(values[r].values())) for r in REGIONS}
        pooled[f"{what}_ci"] = {r: _bootstrap_mean(np.array(list(values[r].values()), float), n_bootstrap, seed)
                                for r in REGIONS}
    mean = {what: {r: _mean([row[what][r] for row in rows]) for r in REGIONS} for what in ("dice", "hd95")}
    std = {what: {r: (float(np.std([row[what][r] for row in rows if row[what][r] is not None], ddof=1))
                      if sum(row[what][r] is not None for row in rows) > 1 else None) for r in REGIONS}
           for what in ("dice", "hd95")}
    return {"folds": rows, "mean": mean, "std": std, "pooled": pooled}


def compare_runs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], n_bootstrap: int,
                 seed: int) -> dict[str, Any]:
    """Run ``a`` minus run ``b`` per region: the mean per-case difference on the cases both scored (defined on both
    sides), its paired bootstrap CI over cases and the verdict."""
    out: dict[str, Any] = {}
    for what in ("dice", "hd95"):
        va, vb = _per_case(a, what), _per_case(b, what)
        out[what] = {}
        for r in REGIONS:
            common = sorted(c for c in set(va[r]) & set(vb[r]) if np.isfinite(va[r][c]) and np.isfinite(vb[r][c]))
            diff = np.array([va[r][c] - vb[r][c] for c in common], float)
            ci = _bootstrap_mean(diff, n_bootstrap, seed)
            # for HD95 lower is better: the verdict reads the sign of b - a
            words = verdict(ci if what == "dice" or ci is None else [-ci[1], -ci[0]])
            out[what][r] = {"difference": float(diff.mean()) if len(diff) else None, "ci": ci, "cases": len(common),
                            "verdict": words}
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "" if not ci else f" [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# Cross-validation: {report['main_run']} (segmentation)", "",
             f"Metrics `{report['metrics']}`: {report['metrics_convention']}", ""]
    for name, summary in report["runs"].items():
        lines += [f"## {name}", "", "| fold | cases | " + " | ".join(f"Dice {r}" for r in REGIONS) + " | "
                  + " | ".join(f"HD95 {r} (mm)" for r in REGIONS) + " |", "|---" * (2 + 2 * len(REGIONS)) + "|"]
        for row in summary["folds"]:
            lines.append(f"| {row['fold']} | {len(row['cases'])} | "
                         + " | ".join(_fmt(row["dice"][r]) for r in REGIONS) + " | "
                         + " | ".join(_fmt(row["hd95"][r], 2) for r in REGIONS) + " |")
        pooled = summary["pooled"]
        lines.append(f"| pooled | {pooled['num_cases']} | "
                     + " | ".join(_fmt(pooled["dice"][r]) + _ci(pooled["dice_ci"][r]) for r in REGIONS) + " | "
                     + " | ".join(_fmt(pooled["hd95"][r], 2) + _ci(pooled["hd95_ci"][r], 2) for r in REGIONS)
                     + " |")
        lines.append("")
    comparison = report.get("comparison")
    if comparison:
        lines += ["## pretrained - scratch (paired, per case; 95% bootstrap CI over cases)", "",
                  "| region | Dice difference | verdict | HD95 difference (mm) | verdict | cases |",
                  "|---|---|---|---|---|---|"]
        for r in REGIONS:
            d, h = comparison["dice"][r], comparison["hd95"][r]
            lines.append(f"| {r} | {_fmt(d['difference'])}{_ci(d['ci'])} | {d['verdict']} | "
                         f"{_fmt(h['difference'], 2)}{_ci(h['ci'], 2)} | {h['verdict']} | {d['cases']} |")
        lines.append("")
    return "\n".join(lines)


def write_segmentation_cv_report(output_dir: str | os.PathLike, runs: Mapping[str, Sequence[Mapping[str, Any]]],
                                 metrics: str, extra: Mapping[str, Any] | None = None, n_bootstrap: int = 1000,
                                 seed: int = 0) -> dict[str, Any]:
    """Write ``cv_report.{json,md}`` for scored segmentation folds (``score_segmentation_folds``); returns it."""
    if not runs:
        raise ValueError("runs is empty: give at least one run of scored folds")
    output_dir = Path(output_dir)
    main = "pretrained" if "pretrained" in runs else next(iter(runs))
    summaries = {name: run_summary(folds, n_bootstrap, seed) for name, folds in runs.items()}
    report: dict[str, Any] = {"task": "segmentation", "metrics": metrics, "metrics_convention": METRICS[metrics],
                              "main_run": main, **summaries[main], "runs": summaries}
    if "pretrained" in runs and "scratch" in runs:
        report["comparison"] = compare_runs(runs["pretrained"], runs["scratch"], n_bootstrap, seed)
    report.update(extra or {})
    return write_report_files(output_dir, report, _markdown)
