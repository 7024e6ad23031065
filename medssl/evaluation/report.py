"""Cross-validation report: per fold, mean +- std and pooled with bootstrap CIs, runs side by side.

A self-supervised gain is only a claim next to its from-scratch twin, so the report puts every
run (``pretrained``, ``scratch``, ...) side by side and writes their difference, with a paired
bootstrap over the pooled cases (``compare_paired``). ``write_curve_plots`` is the one ROC/PR/FROC
plotting path (this report and ``medssl evaluate``'s). Plots are drawn with matplotlib's object API
on the Agg canvas, so importing this module changes no global backend. Files go through ``medssl.io``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medssl.evaluation.compare import bootstrap_seeds, compare_paired, compare_seeds, verdict
from medssl.evaluation.picai import bootstrap_ci, evaluate_maps, metrics_summary, pool_metrics
from medssl.io import atomic_target, write_json, write_text

METRICS = ("auroc", "ap", "score")
RESERVED = ("main_run", "folds", "mean", "std", "pooled", "runs", "comparison", "controls")
# the control arms of a study (``medssl cv --control``), compared with the from-scratch twin as the pretrained run is:
# supervised pretraining must beat scratch (a positive control: the study can detect a gain), shuffled weights
# must not (a negative control: what looks like a gain is not merely a different initial scale)
CONTROLS = ("supervised", "shuffled")
# curve -> (x key, y key, x label, y label), as ``metrics_summary`` stores the curves
CURVES = {
    "roc": ("fpr", "tpr", "1 - specificity (case level)", "sensitivity (case level)"),
    "pr": ("recall", "precision", "recall (lesion level)", "precision (lesion level)"),
    "froc": ("lesion_FPR", "sensitivity", "false positives per case", "sensitivity (lesion level)"),
}
THIN = {"linewidth": 1.0}
DASHES = ("-", "--", "-.", ":")  # folds drawn on one plot stay apart where their curves coincide
BOLD = {"linewidth": 2.0, "color": "black"}


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/Inf as None, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
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
    """Three decimals; a value that rounds to zero is ``0.000``, never ``-0.000``."""
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def _provenance_markdown(provenance: Mapping[str, Any] | None) -> str:
    """A short header saying which labels, split, selection rule and weights produced the numbers below."""
    if not provenance:
        return ""
    split = provenance.get("split_source") or {}
    init = provenance.get("init_from") or {}
    versions = provenance.get("versions") or {}
    sources = ", ".join(f"{k} {v}" for k, v in (provenance.get("label_sources") or {}).items())
    lines = [
        "## Provenance",
        "",
        f"- labels: `{provenance.get('label_source')}`" + (f" ({sources})" if sources else ""),
        f"- split: {split.get('kind')} `{split.get('name') or split.get('path')}` "
        f"(folds sha256 {str(split.get('sha256_used') or split.get('sha256'))[:12]})",
        f"- selection: `{provenance.get('selection')}`: {provenance.get('selection_note')}",
        "- pretrained weights: " + (f"`{init.get('path')}` (sha256 {str(init.get('sha256'))[:12]})"
                                    if init.get("path") else "none (from scratch)"),
        f"- {provenance.get('leakage_check')}",
        f"- config sha256 {provenance.get('config_sha256')}; device {provenance.get('device')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        "",
    ]
    return "\n".join(lines) + "\n"


def _markdown(runs: Mapping[str, dict], main: str, comparison: Mapping[str, dict] | None = None,
              controls: Mapping[str, Mapping[str, dict]] | None = None) -> str:
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
    for arm, rows in {"pretrained": comparison, **(controls or {})}.items():
        if not rows:
            continue
        lines += ["", f"{arm} - scratch, pooled over the same cases (paired bootstrap over cases, one training run "
                  "each: 95% CI, two-sided p):", "",
                  "| metric | difference of fold means | pooled difference [95% CI] | p | verdict |",
                  "|---|---|---|---|---|"]
        for m in METRICS:
            row = rows[m]
            ci = row.get("pooled_ci")
            lines.append(f"| {m} | {_fmt(row['difference'])} | {_fmt(row['pooled_difference'])}"
                         + ("" if ci is None else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]")
                         + f" | {_fmt(row.get('p_value'))} | {verdict(ci)} |")
    notes = [f"- {run} fold {row['fold']}: {note}" for run in names for row in runs[run]["folds"]
             for note in row.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _plot(path: Path, title: str, entries: Sequence[tuple[str, Mapping, Mapping]], curve: str) -> None:
    x, y, xlabel, ylabel = CURVES[curve]
    fig = Figure(figsize=(5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
    ax.set_title(f"{title}: {curve.upper()}")
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right" if curve != "pr" else "lower left")
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_curve_plots(
    output_dir: str | os.PathLike,
    title: str,
    entries: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
    suffix: str = "",
) -> list[Path]:
    """ROC, PR and FROC plots of one or more evaluations on shared axes, written atomically.

    The one plotting path of the cross-validation report (folds and pooled) and ``medssl evaluate``.

    Args:
        output_dir: folder of the plots (created).
        title: plot title prefix (a run name).
        entries: (legend label, summary holding ``roc``/``pr``/``froc`` curves as ``metrics_summary``
            returns them, matplotlib line style such as ``THIN`` or ``BOLD``); an undefined curve is skipped.
        suffix: file name suffix: ``roc{suffix}.png``, ``pr{suffix}.png``, ``froc{suffix}.png``.

    Returns:
        The written paths.

    Example:
        >>> write_curve_plots("report", "pretrained", [("pooled", metrics_summary(metrics), BOLD)], "_pretrained")
    """
    paths = [Path(output_dir) / f"{curve}{suffix}.png" for curve in CURVES]
    for path, curve in zip(paths, CURVES):
        _plot(path, title, entries, curve)
    return paths


def _twin_comparison(runs: Mapping[str, Sequence[Mapping[str, Any]]], summaries: Mapping[str, dict], arm: str,
                     n_bootstrap: int, seed: int) -> dict[str, Any]:
    """``arm`` - scratch per metric: difference of fold means, pooled difference with its paired CI and p."""
    pooled = [pool_metrics([fold["metrics"] for fold in runs[name]]) for name in (arm, "scratch")]
    # the twins validate on the same folds; when they do not (a fold missing in one), no paired test
    paired = compare_paired(*pooled, n_bootstrap=n_bootstrap, seed=seed) \
        if set(pooled[0].subject_list) == set(pooled[1].subject_list) else None
    comparison = {}
    for m in METRICS:
        a, b = summaries[arm], summaries["scratch"]
        diff = None if a["mean"][m] is None or b["mean"][m] is None else a["mean"][m] - b["mean"][m]
        pooled_diff = None if a["pooled"][m] is None or b["pooled"][m] is None else a["pooled"][m] - b["pooled"][m]
        ci = None if paired is None else paired[m]["ci"]
        comparison[m] = {arm: a["mean"][m], "scratch": b["mean"][m], "difference": diff,
                         "pooled_difference": pooled_diff, "pooled_ci": ci,
                         "p_value": None if paired is None else paired[m]["p_value"],
                         "cases": None if paired is None else paired["cases"], "verdict": verdict(ci)}
    return comparison


def _legend(name: str, summary: Mapping[str, Any]) -> str:
    """A curve's legend with the numbers it stands for: ``fold 0 (AUROC 0.812, AP 0.431)``."""
    return f"{name} (AUROC {_fmt(summary.get('auroc'))}, AP {_fmt(summary.get('ap'))})"


def _file_name(run: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run)


def report_stem(output_dir: Path, report: Mapping[str, Any]) -> str:
    """``cv_report``, or ``cv_report_partial`` for a run of some folds (``report["partial"]``) where a report of every
    fold exists already: a partial run never replaces a complete report."""
    if not report.get("partial"):
        return "cv_report"
    existing = output_dir / "cv_report.json"
    try:
        complete = existing.is_file() and not json.loads(existing.read_text()).get("partial")
    except (OSError, ValueError):
        complete = False
    return "cv_report_partial" if complete else "cv_report"


def write_report_files(output_dir: Path, report: Mapping[str, Any], body: Callable[[dict[str, Any]], str]
                       ) -> dict[str, Any]:
    """``cv_report.{json,md}`` (or ``cv_report_partial``, ``report_stem``): the report as JSON, and as markdown the
    partial-run note, the provenance header and ``body(report)``. Returns the JSON-ready report."""
    report = jsonable(report)
    stem = report_stem(output_dir, report)
    write_json(output_dir / f"{stem}.json", report)
    write_text(output_dir / f"{stem}.md", _partial_markdown(report) + _provenance_markdown(report.get("provenance"))
               + body(report))
    return report


def _partial_markdown(report: Mapping[str, Any]) -> str:
    partial = report.get("partial")
    if not partial:
        return ""
    return (f"**Partial: folds {', '.join(map(str, partial['folds']))} of {partial['of']}** (`--folds`); the pooled "
            "numbers cover these folds' validation cases only.\n\n")


def write_cv_report(
    output_dir: str | os.PathLike,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    extra: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``cv_report.json``, ``cv_report.md`` and ROC/PR/FROC plots for one or more CV runs.

    The main run (``pretrained`` when present, else the first) is also at the top level of the
    JSON; every run is under ``runs``; ``comparison`` holds pretrained - scratch when both exist
    (per metric: ``difference`` of fold means, ``pooled_difference`` with its paired-bootstrap
    ``pooled_ci`` and two-sided ``p_value``, None when the twins' pooled cases differ).

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
        report["comparison"] = _twin_comparison(runs, summaries, "pretrained", n_bootstrap, seed)
    controls = [arm for arm in CONTROLS if arm in summaries and "scratch" in summaries]
    if controls:
        report["controls"] = {arm: _twin_comparison(runs, summaries, arm, n_bootstrap, seed) for arm in controls}
    report.update(extra or {})
    report = write_report_files(output_dir, report,
                                lambda r: _markdown(r["runs"], main, r.get("comparison"), r.get("controls")))
    for name, summary in report["runs"].items():
        entries = [(_legend(f"fold {row['fold']}", row), row, {**THIN, "linestyle": DASHES[i % len(DASHES)]})
                   for i, row in enumerate(summary["folds"])]
        write_curve_plots(output_dir, name, [*entries, (_legend("pooled", summary["pooled"]), summary["pooled"], BOLD)],
                          f"_{_file_name(name)}")
    return report


def write_seeds_report(
    output_dir: str | os.PathLike,
    per_seed: Mapping[int, Mapping[str, Sequence[Mapping[str, Any]]]],
    extra: Mapping[str, Any] | None = None,
    family: int = 1,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The report over training seeds: each arm's pooled metrics per seed, their mean and training-to-training
    spread, and every arm against the from-scratch twin over seeds and cases (``compare_seeds``).

    Args:
        output_dir: the folder above the ``seed_<s>/`` cv outputs.
        per_seed: seed -> arm -> scored fold records (``score_folds``).
        extra: merged into the JSON (provenance, leakage).
        family: the number of comparisons the whole study makes (each row's ``ci_adjusted`` is at 1 - 0.05 / family).

    Returns:
        The report as written to ``cv_report.json``: ``seeds``, ``main_run``, ``runs`` (arm -> ``per_seed``,
        ``mean``, ``training_sd``, ``pooled`` with the two-level ``ci``), ``comparison`` (pretrained - scratch),
        ``controls`` (supervised / shuffled - scratch) and ``positive_control`` (whether the study can detect a gain).
    """
    output_dir = Path(output_dir)
    seeds = sorted(per_seed)
    arms = list(dict.fromkeys(arm for s in seeds for arm in per_seed[s]))
    pooled = {arm: {s: pool_metrics([f["metrics"] for f in per_seed[s][arm]]) for s in seeds} for arm in arms}
    runs: dict[str, Any] = {}
    for arm in arms:
        points = {s: metrics_summary(pooled[arm][s]) for s in seeds}
        per = {s: {m: points[s][m] for m in METRICS} for s in seeds}
        mean, sd = {}, {}
        for m in METRICS:
            mean[m], sd[m] = _mean_std([per[s][m] for s in seeds])
        runs[arm] = {"per_seed": per, "mean": mean, "std": sd, "training_sd": sd,
                     "pooled": {**mean, "ci": bootstrap_seeds(pooled[arm], n_bootstrap, seed)},
                     "folds": [{"seed": s, "fold": f["fold"], **{m: metrics_summary(f["metrics"])[m] for m in METRICS}}
                               for s in seeds for f in per_seed[s][arm]]}
    main = "pretrained" if "pretrained" in runs else arms[0]
    report: dict[str, Any] = {"seeds": seeds, "main_run": main, "runs": runs,
                              "mean": runs[main]["mean"], "std": runs[main]["std"], "pooled": runs[main]["pooled"]}

    def versus(arm: str) -> dict[str, Any]:
        out = compare_seeds(pooled[arm], pooled["scratch"], n_bootstrap=n_bootstrap, seed=seed, family=family)
        for m in METRICS:  # the single-seed comparison's field names, for the study's tables and plots
            out[m].update(pooled_difference=out[m]["difference"], pooled_ci=out[m]["ci"], cases=out["cases"])
        return out

    if "scratch" in runs and "pretrained" in runs:
        report["comparison"] = versus("pretrained")
    controls = {arm: versus(arm) for arm in CONTROLS if arm in runs and "scratch" in runs}
    if controls:
        report["controls"] = controls
    if "supervised" in controls:
        report["positive_control"] = positive_control(controls["supervised"]["score"])
    report.update(extra or {})
    return write_report_files(output_dir, report, _seeds_markdown)


def positive_control(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the positive control says about the study: it must beat scratch, or no null result can be read."""
    helped = row.get("verdict") == "helped"
    return {"verdict": row.get("verdict"), "beat_scratch": helped,
            "reading": "the positive control beat scratch: the study can detect a pretraining gain of that size"
            if helped else "the positive control did not beat scratch: this study cannot detect a pretraining gain, "
            "so a null result for the pretrained run says nothing"}


def _seeds_markdown(report: Mapping[str, Any]) -> str:
    seeds, runs = report["seeds"], report["runs"]
    lines = ["# Cross-validation report over training seeds (PI-CAI protocol)", "",
             f"Seeds {', '.join(map(str, seeds))}; each seed trains every fold of every arm (`seed_<s>/` holds its own "
             "report). Pooled PI-CAI score ((AUROC + AP) / 2) over all validation cases, per seed; the mean over "
             "seeds with its 95% interval over seeds and cases (two-level bootstrap), and the training-to-training "
             "standard deviation.", "",
             "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95% CI] | training sd |",
             "|" + "---|" * (len(seeds) + 3)]
    for arm, run in runs.items():
        ci = (run["pooled"].get("ci") or {}).get("score")
        lines.append(f"| {arm} | " + " | ".join(_fmt(run["per_seed"][str(s)]["score"] if str(s) in run["per_seed"]
                                                      else run["per_seed"].get(s, {}).get("score")) for s in seeds)
                     + f" | {_fmt(run['mean']['score'])}" + ("" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]")
                     + f" | {_fmt(run['training_sd']['score'])} |")
    rows = {"pretrained": report.get("comparison"), **(report.get("controls") or {})}
    rows = {arm: row for arm, row in rows.items() if row}
    if rows:
        family = next(iter(rows.values())).get("family", 1)
        lines += ["", "Each arm - scratch on the same cases and seeds: the mean over seeds of the pooled difference, "
                  "its 95% interval over seeds and cases, the interval adjusted for the study's "
                  f"{family} comparison(s) (Bonferroni), the spread between trainings and between case resamples, "
                  "and the verdict the 95% interval gives.", "",
                  "| arm - scratch | score difference [95% CI] | adjusted CI | p | training sd | case sd | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for arm, row in rows.items():
            r = row["score"]
            ci, adj = r.get("ci"), r.get("ci_adjusted")
            lines.append(f"| {arm} | {_fmt(r['difference'])}" + ("" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]")
                         + " | " + ("n/a" if not adj else f"[{_fmt(adj[0])}, {_fmt(adj[1])}]")
                         + f" | {_fmt(r.get('p_value'))} | {_fmt(r.get('training_sd'))} | {_fmt(r.get('case_sd'))}"
                         f" | {r.get('verdict')} |")
    if report.get("positive_control"):
        lines += ["", f"Positive control: {report['positive_control']['reading']}."]
    return "\n".join(lines) + "\n"


def score_folds(records: Mapping[str, Sequence[dict[str, Any]]],
                label_reference: Mapping[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every fold record with its ``metrics``: picai_eval on exactly the maps the fold wrote and their labels.

    Args:
        records: run name -> the folds' ``fold_result.json`` contents (``predictions``, ``labels``).
        label_reference: case -> the image whose grid the label is scored on, for labels stored on another grid
            than the maps (Prostate158: the ADC grid, scored on the T2W grid).
    """
    label_reference = label_reference or {}
    out: dict[str, list[dict[str, Any]]] = {}
    for run, folds in records.items():
        out[run] = []
        for record in folds:
            record = dict(record)
            record["metrics"] = evaluate_maps(record["predictions"], record["labels"],
                                              label_reference={c: r for c, r in label_reference.items()
                                                               if c in record["predictions"]})
            out[run].append(record)
    return out


def fraction_row(fraction: float, report: Mapping[str, Any],
                 records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """One fraction of a label-efficiency study: each run's pooled metrics and training-set sizes, and the
    paired difference pretrained - scratch of the fraction's report."""
    runs = {}
    for name, summary in report["runs"].items():
        sizes = [r["train_cases"] for r in records.get(name, [])]
        runs[name] = {"pooled": summary["pooled"], "mean": summary["mean"], "std": summary["std"],
                      "train_cases": sizes, "mean_train_cases": sum(sizes) / max(len(sizes), 1)}
    return {"fraction": fraction, "runs": runs, "difference": report.get("comparison"),
            "controls": report.get("controls"),
            "validation_cases": report["pooled"].get("num_cases") or (report.get("comparison") or {}).get("cases")}


def study_positive_control(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A study's positive control, fraction by fraction (None without one): where it beat scratch, a pretraining gain
    of its size would have been seen, so the pretrained run's verdict there can be read; where it did not, a null
    result of the pretrained run at that fraction says nothing. (The largest fraction's report, which the study's
    report extends, holds that fraction's reading only.)"""
    verdicts = {}
    for row in rows:
        score = (((row.get("controls") or {}).get("supervised") or {}).get("score")) or {}
        if score:
            verdicts[f"{row['fraction']:g}"] = verdict(score.get("pooled_ci")) \
                if score.get("pooled_difference") is not None else "not tested"
    if not verdicts:
        return None
    beat = [f for f, v in verdicts.items() if v == "helped"]
    other = [f for f, v in verdicts.items() if v != "helped"]
    if beat:
        reading = (f"the positive control beat scratch at fraction(s) {', '.join(beat)}: there the study can detect a "
                   "pretraining gain of that size")
        if other:
            reading += (f"; at {', '.join(other)} it did not, so a null result for the pretrained run there says "
                        "nothing")
    else:
        reading = ("the positive control beat scratch at no fraction: this study cannot detect a pretraining gain, so "
                   "a null result for the pretrained run says nothing")
    return {"verdict_by_fraction": verdicts, "beat_scratch": bool(beat), "beat_scratch_at": beat, "reading": reading}


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


def _verdict(row: Mapping[str, Any] | None) -> str:
    """Whether pretraining helped, hurt or made no detectable difference, from the paired CI of the score."""
    row = row or {}
    said = verdict(row.get("pooled_ci")) if row.get("pooled_difference") is not None else "undefined"
    return {"helped": "pretraining helped", "hurt": "pretraining hurt",
            "undefined": "not tested (no paired comparison)"}.get(said, said)


def write_label_efficiency(output_dir: str | os.PathLike, report: Mapping[str, Any],
                           stem: str = "cv_report") -> Path | None:
    """``label_efficiency.png`` (pooled PI-CAI score against the number of labelled training cases, each run
    with its 95 % bootstrap band) and a "Label efficiency" section appended to ``cv_report.md``.

    Args:
        output_dir: the study's folder (holding ``cv_report.md``).
        report: the study's ``cv_report.json`` content, with ``fractions``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report.get("fractions") or []
    if not rows:
        return None
    output_dir = Path(output_dir)
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name in dict.fromkeys(run for row in rows for run in row["runs"]):
        xs, ys, lo, hi = [], [], [], []
        for row in rows:
            run = row["runs"].get(name)
            score = run and (run["pooled"] or {}).get("score")
            if score is None:
                continue
            ci = ((run["pooled"].get("ci") or {}).get("score")) or [score, score]
            xs.append(run["mean_train_cases"])
            ys.append(score)
            lo.append(ci[0] if ci[0] is not None else score)
            hi.append(ci[1] if ci[1] is not None else score)
        if xs:
            ax.plot(xs, ys, marker="o", label=name)
            ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel("labelled training cases per fold (mean)")
    ax.set_ylabel("pooled PI-CAI score ((AUROC + AP) / 2)")
    ax.set_ylim(0, 1.02)
    ax.set_title("label efficiency (95% bootstrap bands)")
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = output_dir / "label_efficiency.png"
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)

    seeds = report.get("seeds")
    how = (f"over seeds {', '.join(map(str, seeds))} and cases (two-level bootstrap: the interval holds the spread "
           "between trainings too)" if seeds else "over cases (paired bootstrap, one training run per arm)")
    names = list(dict.fromkeys(r for row in rows for r in row["runs"]))
    steps = (report.get("provenance") or {}).get("optimiser_steps_per_fold") or ["not recorded"]
    lines = ["", "## Label efficiency", "",
             "Each fraction trains every fold on that share of its training patients (nested, stratified subsets; "
             "the validation folds are the same) with the same number of optimiser steps "
             f"(steps per fold: {', '.join(map(str, steps))}). "
             f"Pooled PI-CAI score per arm; each difference is the arm - scratch on the same validation cases, its 95% "
             f"interval {how}.", "",
             "| fraction | training cases (mean per fold) | " + " | ".join(f"{name} score [95% CI]" for name in names)
             + " |", "|" + "---|" * (2 + len(names))]
    for row in rows:
        cells = [f"{row['fraction']:g}", " / ".join(f"{run['mean_train_cases']:.1f}" for run in row["runs"].values())]
        for name in names:
            pooled = (row["runs"].get(name) or {}).get("pooled") or {}
            ci = (pooled.get("ci") or {}).get("score")
            cells.append(_fmt(pooled.get("score")) + ("" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| fraction | arm - scratch | difference [95% CI] | p | cases | verdict |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        for arm, rows_arm in {"pretrained": row.get("difference"), **(row.get("controls") or {})}.items():
            diff = (rows_arm or {}).get("score") or {}
            if not diff:
                continue
            ci = diff.get("pooled_ci")
            lines.append(f"| {row['fraction']:g} | {arm} | " + _fmt(diff.get("pooled_difference"))
                         + ("" if not ci else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]")
                         + f" | {_fmt(diff.get('p_value'))} | {diff.get('cases') or 'n/a'} | {verdict(ci)} |")
    helped = [f"{row['fraction']:g}" for row in rows if _verdict((row.get("difference") or {}).get("score")) ==
              "pretraining helped"]
    hurt = [f"{row['fraction']:g}" for row in rows if _verdict((row.get("difference") or {}).get("score")) ==
            "pretraining hurt"]
    same = [f"{row['fraction']:g}" for row in rows if _verdict((row.get("difference") or {}).get("score")) ==
            "no detectable difference"]
    words = []
    if helped:
        words.append(f"pretraining helped at fraction(s) {', '.join(helped)}")
    if hurt:
        words.append(f"it hurt at {', '.join(hurt)}")
    if same:
        words.append(f"it made no detectable difference at {', '.join(same)}")
    positive = study_positive_control(rows)
    if positive:
        words.append(positive["reading"])
    family = next((((row.get("difference") or {}).get("score") or {}).get("family") for row in rows), None) or \
        len(rows) * (1 + len({a for row in rows for a in (row.get("controls") or {})}))
    lines += ["", ("In words: " + "; ".join(words) + ".") if words else "In words: no paired comparison (no twin).",
              f"These are {family} comparisons; read together, use each row's interval at 1 - 0.05 / {family} "
              "(Bonferroni; `ci_adjusted` in the JSON where seeds were run), or expect about one in twenty 95% "
              "intervals to exclude 0 by chance.",
              "", "![label efficiency](label_efficiency.png)", ""]
    md = output_dir / f"{stem}.md"
    write_text(md, (md.read_text() if md.is_file() else "") + "\n".join(lines))
    return path
