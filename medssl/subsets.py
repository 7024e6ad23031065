"""The missing-modality table: one model (or a fold ensemble) on every subset of its modalities, the same cases
for every row, as the field reports multimodal methods (mmFormer, M3AE, BM-MAE: 15 subsets of the four BraTS
sequences, 7 of the three bpMRI ones).

Each subset is one ``medssl.inference.run_infer`` run with the other modalities shown as absent (zero channels,
masked out: what a case without them is), in ``OUT/subsets/<m1+m2>/`` (resumable, stamped like any ``infer``
output), then scored by ``medssl.evaluation.evaluate.evaluate_predictions`` against the same labels. Writes
``OUT/modality_subsets.{json,md,png}``: one row per subset, then the mean over the subsets.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import ConfigError
from medssl.evaluation.evaluate import discover_labels, evaluate_predictions
from medssl.inference import run_infer
from medssl.io import atomic_target, refuse_output_over_inputs, write_json, write_text
from medssl.runs import load_finetuned

logger = logging.getLogger(__name__)

COLUMNS = {"segmentation": ("WT", "TC", "ET"), "detection": ("auroc", "ap", "score")}
NAMES = {"auroc": "AUROC", "ap": "AP", "score": "PI-CAI score", "WT": "Dice WT", "TC": "Dice TC", "ET": "Dice ET"}


def subsets_of(modalities: Sequence[str], spec: str = "all") -> list[tuple[str, ...]]:
    """``all``: every non-empty subset, the largest first, each in channel order; else ``a+b,c``: those subsets.

    Example:
        >>> subsets_of(["t2w", "adc", "hbv"])[:4]
        [('t2w', 'adc', 'hbv'), ('t2w', 'adc'), ('t2w', 'hbv'), ('adc', 'hbv')]
    """
    modalities = list(modalities)
    if spec == "all":
        return [s for k in range(len(modalities), 0, -1) for s in itertools.combinations(modalities, k)]
    out = []
    for part in spec.split(","):
        names = [n.strip() for n in part.split("+") if n.strip()]
        unknown = [n for n in names if n not in modalities]
        if not names or unknown or len(set(names)) != len(names):
            raise ConfigError(f"--modality-subsets {spec}: {part!r} is not a subset of the model's modalities "
                              f"{modalities} (give all, or subsets such as {'+'.join(modalities[:2])},"
                              f"{modalities[-1]})")
        out.append(tuple(m for m in modalities if m in names))
    return list(dict.fromkeys(out))


def _row(subset: tuple[str, ...], result: dict[str, Any], task: str) -> dict[str, Any]:
    if task == "segmentation":
        values = {r: result["dice"][r] for r in COLUMNS[task]}
        return {"subset": list(subset), "values": values, "hd95": result["hd95"], "cases": result["cases"]}
    ci = result["ci"]
    return {"subset": list(subset), "values": {m: result[m] for m in COLUMNS[task]},
            "ci": {m: ci[m] for m in COLUMNS[task]}, "cases": result["cases"]}


def _mean(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [r["values"][column] for r in rows if r["values"][column] is not None]
    return float(np.mean(values)) if values and len(values) == len(rows) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _markdown(report: dict[str, Any]) -> str:
    task, modalities = report["task"], report["modalities"]
    columns = COLUMNS[task]
    models = ", ".join(f"`{m['checkpoint']}` (sha256 {m['sha256'][:12]})" for m in report["models"])
    lines = ["# Missing-modality table", "", f"Models: {models}.",
             f"Data: `{report['root']}` ({report['layout']}), {report['cases']} labelled cases with every modality, "
             f"the same in every row ({len(report['left_out'])} labelled cases lacking one left out); labels: "
             f"{report['labels']}. A modality not in a row's subset is shown to the model as absent (zero channel, "
             "masked out).",
             f"Metrics: {report['metrics_note']}", "",
             "| " + " | ".join(modalities) + " | " + " | ".join(NAMES[c] for c in columns) + " |",
             "|" + "---|" * (len(modalities) + len(columns))]
    for row in report["rows"]:
        marks = ["●" if m in row["subset"] else "○" for m in modalities]
        lines.append("| " + " | ".join(marks) + " | " + " | ".join(_fmt(row["values"][c]) for c in columns) + " |")
    lines.append("| " + " | ".join(["mean"] + [""] * (len(modalities) - 1)) + " | "
                 + " | ".join(_fmt(report["mean"][c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _heatmap(path: Path, report: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    columns = COLUMNS[report["task"]]
    labels = ["+".join(r["subset"]) for r in report["rows"]] + ["mean"]
    grid = np.array([[np.nan if r["values"][c] is None else r["values"][c] for c in columns] for r in report["rows"]]
                    + [[np.nan if report["mean"][c] is None else report["mean"][c] for c in columns]], dtype=float)
    fig = Figure(figsize=(1.4 * len(columns) + 2.5, 0.32 * len(labels) + 1.2))
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), [NAMES[c] for c in columns], fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if np.isnan(value) or value < 0.6 else "black")
    ax.set_title("modality subsets", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def evaluate_subsets(checkpoints: Sequence[str | Path], output: str | Path, layout: str, root: str,
                     labels_root: str | None = None, label_source: str | None = None, spec: str = "all",
                     metrics: str = "monai", brats_labels: str | None = None, n_bootstrap: int = 1000,
                     overwrite: bool = False, device: str = "auto", progress=None) -> dict[str, Any]:
    """Every subset of the models' modalities (``spec``), one row each, on the labelled cases under ``root``.

    Args:
        checkpoints: finetuned checkpoint(s) (several: their mean, as ``medssl infer``).
        output: the report's folder; the maps go to ``output/subsets/<m1+m2>/``.
        layout, root, labels_root, label_source: the labelled data (``medssl evaluate --layout``).
        spec: ``all`` or ``a+b,c`` (``subsets_of``).
        metrics: segmentation's convention (``medssl.evaluation.segmentation.METRICS``).
        brats_labels: segmentation's label convention (None: read from each map).
        n_bootstrap: detection's bootstrap resamples (the CIs of each row).
        overwrite, device, progress: as ``run_infer``.

    Returns:
        The report written to ``modality_subsets.json``: ``rows`` (``subset``, ``values``, CIs or HD95),
        ``mean`` over the subsets, and what made them (models, data, labels, metrics).
    """
    output = Path(output)
    labels, reference = discover_labels(layout, root, labels_root, label_source)
    if not labels:
        raise ConfigError(f"--data.root {root}: no labelled case to score the subsets on")
    refuse_output_over_inputs(output, [root, *(p for p in [labels_root] if p), *checkpoints,
                                       *{Path(f).parent for f in labels.values()}])
    overrides = {"data": {"init_args": {"layout": layout, "root": str(root)}}}
    first = load_finetuned(checkpoints[0], None, overrides, None, "cpu")  # the models' modalities name the rows
    modalities, task = list(first.datamodule.modalities), first.system.task
    # the rows simulate absent modalities on cases that have them all: a case lacking one already would be shown
    # less than its row says (or nothing at all), so it is left out of every row and listed
    lacking = {c.case_id: [m for m in modalities if not c.images.get(m)] for c in first.cases}
    complete = sorted(c for c in labels if c in lacking and not lacking[c])
    left_out = {c: f"lacks {', '.join(lacking[c])}" for c in sorted(labels) if lacking.get(c)}
    del first
    if not complete:
        raise ConfigError(f"--data.root {root}: no labelled case has every modality of the model ({modalities}); the "
                          "table simulates absent modalities on complete cases")
    if task == "detection" and metrics != "monai":
        raise ConfigError(f"--metrics {metrics} is a BraTS segmentation convention; {checkpoints[0]} is a detection "
                          "model, scored by picai_eval (drop --metrics)")
    rows, results, record = [], {}, {}
    for subset in subsets_of(modalities, spec):
        folder = output / "subsets" / "+".join(subset)
        logger.info("modalities %s", "+".join(subset))
        record = run_infer(checkpoints, folder, None, overrides, overwrite, progress, device, present=list(subset),
                           case_ids=complete)
        results[subset] = evaluate_predictions(folder, labels, task=task, case_ids=complete, label_reference=reference,
                                               brats_labels=brats_labels, metrics=metrics, n_bootstrap=n_bootstrap)
        rows.append(_row(subset, results[subset], task))
    cases = {r["cases"] for r in rows}
    if len(cases) != 1:
        raise ConfigError(f"the subsets were scored on different numbers of cases {sorted(cases)}; every row must "
                          "score the same cases")
    any_result = next(iter(results.values()))
    note = (any_result.get("metrics_convention", "") if task == "segmentation"
            else f"picai_eval (AUROC, AP, their mean), 95% bootstrap CIs of {n_bootstrap} resamples")
    report = {"task": task, "modalities": modalities, "models": record["models"], "layout": layout,
              "root": str(root), "labels": label_source or "the layout's default labels", "cases": rows[0]["cases"],
              "case_ids": complete, "left_out": left_out,
              "metrics": metrics if task == "segmentation" else "picai_eval", "metrics_note": note,
              "rows": rows, "mean": {c: _mean(rows, c) for c in COLUMNS[task]}}
    write_json(output / "modality_subsets.json", report)
    write_text(output / "modality_subsets.md", _markdown(report))
    _heatmap(output / "modality_subsets.png", report)
    return report


def format_subsets(report: dict[str, Any]) -> str:
    """The table for the console: one line per subset, then the mean."""
    columns = COLUMNS[report["task"]]
    width = max(len("+".join(r["subset"])) for r in report["rows"])
    lines = [f"{report['cases']} cases with every modality, {len(report['rows'])} modality subsets "
             f"({report['metrics_note']}); {len(report['left_out'])} labelled case(s) lacking a modality left out",
             f"  {'modalities'.ljust(width)}  " + "  ".join(NAMES[c].rjust(8) for c in columns)]
    for row in report["rows"]:
        lines.append(f"  {'+'.join(row['subset']).ljust(width)}  "
                     + "  ".join(_fmt(row["values"][c]).rjust(8) for c in columns))
    lines.append(f"  {'mean'.ljust(width)}  " + "  ".join(_fmt(report["mean"][c]).rjust(8) for c in columns))
    return "\n".join(lines)
