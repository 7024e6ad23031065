"""Score a folder of predictions against labels: PI-CAI detection maps or BraTS label maps.

One entry point for ``medssl evaluate`` and scripts. ``evaluate_predictions`` pairs
``<case_id>.nii.gz`` (or ``.mha``) in the predictions folder with every labelled case, checks that
each map lies on the grid its label is scored on, and scores them: detection with picai_eval
exactly as the cross-validation report does (``evaluate_maps``, ``metrics_summary``,
``bootstrap_ci``), segmentation with MONAI's Dice and HD95 per BraTS region. A labelled case
without a map is an error unless ``missing="empty"``; a map without a label is listed, not scored.
``write_evaluation_report`` writes ``evaluation.json``, ``evaluation.md`` and the ROC/PR/FROC plots.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from picai_eval.metrics import Metrics

from medssl.data.layouts import discover, get_layout
from medssl.errors import ConfigError, DataError
from medssl.evaluation.compare import compare_paired
from medssl.evaluation.picai import bootstrap_ci, evaluate_maps, metrics_summary, read_label, scoring_grids
from medssl.evaluation.report import BOLD, jsonable, segmentation_summary, write_curve_plots
from medssl.io import write_json, write_text

TASKS = ("detection", "segmentation")
MISSING = ("error", "empty")
MAP_SUFFIXES = (".nii.gz", ".mha")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha")
PathLike = str | os.PathLike
MISSING_NOTE = "labelled cases without a map, scored as empty"
UNLABELLED_NOTE = "maps without a label, not scored"


@dataclass
class Matched:
    """Which map scores which label.

    Args:
        maps: case id -> map file; None where the case has no map and it is scored as an empty one.
        labels: case id -> label file, for the same cases.
        missing_as_empty: cases without a map, scored as empty maps (``missing="empty"``).
        unlabelled_maps: cases with a map and no label: not scored.
    """

    maps: dict[str, str | None]
    labels: dict[str, str]
    missing_as_empty: list[str]
    unlabelled_maps: list[str]


def _files_by_case(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, str]:
    """``<case_id><suffix>`` files of ``folder``: case id -> path."""
    if not folder.is_dir():
        raise DataError(f"{what} folder not found (or not a folder)", path=str(folder))
    found: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        # hidden names are unfinished atomic writes; other suffixes are reports such as predictions.json
        if suffix is None or path.name.startswith(".") or not path.is_file():
            continue
        case = path.name[: -len(suffix)]
        if case in found:
            raise DataError(f"two {what} files, {Path(found[case]).name} and {path.name}: keep one", case, str(folder))
        found[case] = str(path)
    return found


def label_files(labels: Mapping[str, PathLike] | PathLike) -> dict[str, str]:
    """Case id -> label file, from a mapping or a folder of ``<case_id>.nii.gz`` (``.nii``, ``.mha``) label maps."""
    if isinstance(labels, Mapping):
        return {str(case): str(path) for case, path in labels.items()}
    return _files_by_case(Path(labels), LABEL_SUFFIXES, "label")


def labels_of_cases(cases: Iterable[Any], reference_modality: str = "t2w") -> tuple[dict[str, str], dict[str, str]]:
    """Label files of discovered cases, and the image each label stored on another grid is resampled onto.

    A case whose ``label_grid`` names a modality other than ``reference_modality`` (Prostate158's
    tumour labels lie on the ADC grid) is scored with its label resampled (nearest neighbour) onto
    its ``reference_modality`` image's grid, the grid its maps are written on.

    Args:
        cases: ``medssl.data.layouts.Case`` objects (``case_id``, ``images``, ``label``, optional ``label_grid``);
            unlabelled cases are skipped.
        reference_modality: the modality whose grid maps lie on.

    Returns:
        (case id -> label file, case id -> reference image for labels to resample), as ``evaluate_predictions``
        takes them (``labels``, ``label_reference``).
    """
    labels, reference = {}, {}
    for case in cases:
        if case.label is None:
            continue
        labels[case.case_id] = str(case.label)
        grid = getattr(case, "label_grid", None)
        if grid and grid != reference_modality:
            image = case.images.get(reference_modality)
            if image is None:
                raise DataError(f"its label lies on the {grid} grid and it has no {reference_modality} image to "
                                "resample the label onto", case.case_id, str(case.label))
            reference[case.case_id] = str(image)
    return labels, reference


def discover_labels(
    layout: str, root: PathLike, labels_root: PathLike | None = None, label_source: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """``labels_of_cases`` of the cases ``medssl.data.layouts.discover`` finds under ``root``.

    Args:
        layout: a layout of ``discover`` (picai, brats, prostate158, datalist, ...).
        root: the data root (datalist: the file).
        labels_root: PI-CAI's ``picai_labels`` folder (default: beside ``images/``).
        label_source: PI-CAI labels (``human_expert``, ``AI``, ``human_expert+AI``); None: discover's default.

    Example:
        >>> labels, reference = discover_labels("picai", "/data/picai", "/data/picai_labels")
    """
    options = {} if label_source is None else {"label_source": label_source}
    cases = discover(layout, root, labels_root, **options)
    return labels_of_cases(cases, (get_layout(layout).reference_order or ("t2w",))[0])


def match_predictions(
    predictions_dir: PathLike,
    labels: Mapping[str, PathLike] | PathLike,
    missing: str = "error",
    case_ids: Sequence[str] | None = None,
) -> Matched:
    """Pair the maps of ``predictions_dir`` with the labelled cases (all, or ``case_ids``).

    Refuses in one line: a case of ``case_ids`` without a label, a folder with no map of any labelled
    case, and (``missing="error"``) a labelled case without a map, naming it and how many lack one.
    """
    if missing not in MISSING:
        raise ConfigError(f"missing {missing!r}: choose error (refuse) or empty (score a missing map as empty)")
    predictions_dir = Path(predictions_dir)
    maps = _files_by_case(predictions_dir, MAP_SUFFIXES, "predictions")
    label_paths = label_files(labels)
    if case_ids is None:
        cases = sorted(label_paths)
    else:
        cases = list(dict.fromkeys(str(c) for c in case_ids))
        unlabelled = [c for c in cases if c not in label_paths]
        if unlabelled:
            raise DataError(f"has no label ({len(unlabelled)} of the {len(cases)} cases asked for have none)",
                            unlabelled[0])
    if not cases:
        raise DataError("no labelled case to evaluate", path=None if isinstance(labels, Mapping) else str(labels))
    absent = [c for c in cases if c not in maps]
    if len(absent) == len(cases):
        raise DataError(f"no map of any of the {len(cases)} labelled cases (<case_id>.nii.gz or .mha; found "
                        f"{len(maps)} maps of other cases, e.g. {sorted(maps)[:3]})", path=str(predictions_dir))
    if absent and missing == "error":
        raise DataError(f"no map {absent[0]}.nii.gz or .mha in {predictions_dir} ({len(absent)} of the {len(cases)} "
                        "labelled cases have none; --missing empty scores them as empty maps)", absent[0])
    return Matched(
        maps={c: maps.get(c) for c in cases},
        labels={c: label_paths[c] for c in cases},
        missing_as_empty=absent,
        unlabelled_maps=sorted(c for c in maps if c not in label_paths),
    )


def detection_metrics(
    predictions_dir: PathLike,
    labels: Mapping[str, PathLike] | PathLike,
    missing: str = "error",
    case_ids: Sequence[str] | None = None,
    label_reference: Mapping[str, PathLike] | None = None,
    num_parallel_calls: int = 1,
) -> tuple[Metrics, Matched]:
    """picai_eval ``Metrics`` of a folder of detection maps (``evaluate_maps``), and how maps were paired.

    Arguments as ``evaluate_predictions``. Use it for ``compare_paired`` (e.g. pretrained vs scratch per
    label fraction): ``compare_paired(detection_metrics(a, labels)[0], detection_metrics(b, labels)[0])``.
    """
    matched = match_predictions(predictions_dir, labels, missing, case_ids)
    reference = {c: str(p) for c, p in (label_reference or {}).items() if c in matched.maps}
    return evaluate_maps(matched.maps, matched.labels, num_parallel_calls, reference), matched


def evaluate_predictions(
    predictions_dir: PathLike,
    labels: Mapping[str, PathLike] | PathLike,
    task: str = "detection",
    missing: str = "error",
    case_ids: Sequence[str] | None = None,
    *,
    label_reference: Mapping[str, PathLike] | None = None,
    compare_with: PathLike | None = None,
    brats_labels: str | None = None,
    metrics: str = "monai",
    n_bootstrap: int = 1000,
    seed: int = 0,
    num_parallel_calls: int = 1,
) -> dict[str, Any]:
    """Score ``<case_id>.nii.gz`` (or ``.mha``) maps of ``predictions_dir`` against their labels.

    Args:
        predictions_dir: folder of maps: detection maps on each label's grid (``medssl infer``, ``medssl cv``'s
            ``fold_k/predictions``), or BraTS label maps for segmentation.
        labels: case id -> label file, or a folder of ``<case_id>.nii.gz`` label maps (e.g. picai_labels'
            ``csPCa_lesion_delineations/human_expert/resampled``); detection labels are binarised as ``>= 1``.
        task: ``detection`` (PI-CAI protocol) or ``segmentation`` (BraTS TC, WT, ET).
        missing: a labelled case without a map is an ``error``, or scored as an ``empty`` map and listed.
        case_ids: score only these cases (e.g. a fold's validation cases); default every labelled case.
        label_reference: case id -> image whose grid that case's label is resampled onto (nearest) before
            scoring (``labels_of_cases``: Prostate158's ADC-grid tumour labels onto T2W).
        compare_with: a second predictions folder (detection): adds ``comparison``, the paired bootstrap
            of this folder minus that one on the same cases (``compare_paired``).
        brats_labels: segmentation label convention of every map, ``2021`` (enhancing 4) or ``2023``
            (enhancing 3), refusing a map in the other; None reads each map's own from its values, so a
            2021-style prediction scores against 2023 labels (``medssl.evaluation.segmentation``).
        metrics: segmentation: ``monai`` (case-wise, empty regions left out) or ``legacy`` (the BraTS legacy
            empty-region scores); the result names it and says what it does (``segmentation.METRICS``).
        n_bootstrap: resamples for the confidence intervals and the comparison.
        seed: bootstrap seed.
        num_parallel_calls: picai_eval threads.

    Returns:
        JSON-ready. Detection: ``task``, ``predictions``, ``cases``, ``positives``, then the cv report's
        summary (``auroc``, ``ap``, ``score``, ``num_lesions``, ``froc``, ``roc``, ``pr``, ``case_pred``,
        ``case_target``, ``notes``, ``ci``), ``missing_as_empty``, ``unlabelled_maps`` and with
        ``compare_with`` ``comparison``. Segmentation: ``task``, ``predictions``, ``cases``, ``dice`` and
        ``hd95`` (mean per region), ``regions`` (``segmentation_summary``), ``per_case``,
        ``missing_as_empty``, ``unlabelled_maps``.

    Example:
        >>> evaluate_predictions("preds", "picai_labels/csPCa_lesion_delineations/human_expert/resampled")["auroc"]
        0.87
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: choose detection (PI-CAI detection maps) or segmentation (BraTS)")
    if task == "segmentation":
        if compare_with is not None:
            raise ConfigError("a paired comparison (compare_with / --compare) is for detection maps only")
        matched = match_predictions(predictions_dir, labels, missing, case_ids)
        result = {"task": task, "predictions": str(predictions_dir),
                  **_segmentation(matched, label_reference or {}, brats_labels, metrics)}
    else:
        metrics, matched = detection_metrics(predictions_dir, labels, missing, case_ids, label_reference,
                                             num_parallel_calls)
        result = {"task": task, "predictions": str(predictions_dir), "cases": metrics.num_cases,
                  **metrics_summary(metrics), "ci": bootstrap_ci(metrics, n=n_bootstrap, seed=seed)}
        if compare_with is not None:
            other, other_matched = detection_metrics(compare_with, matched.labels, missing, list(matched.maps),
                                                     label_reference, num_parallel_calls)
            result["comparison"] = {"a": str(predictions_dir), "b": str(compare_with),
                                    **compare_paired(metrics, other, n_bootstrap=n_bootstrap, seed=seed),
                                    "b_missing_as_empty": other_matched.missing_as_empty}
    result["missing_as_empty"] = matched.missing_as_empty
    result["unlabelled_maps"] = matched.unlabelled_maps
    return jsonable(result)


def score_label_maps(maps: Mapping[str, PathLike], labels: Mapping[str, PathLike], metrics: str = "monai",
                     brats_labels: str | None = None) -> dict[str, Any]:
    """Dice and HD95 per region of BraTS label maps (case -> map) against their labels (case -> label), under the
    ``metrics`` convention: ``cases``, ``dice`` and ``hd95`` (means), ``regions``, ``per_case`` (the cv report's
    scoring of a fold's written maps)."""
    matched = Matched({c: str(p) for c, p in maps.items()}, {c: str(labels[c]) for c in maps}, [], [])
    return _segmentation(matched, {}, brats_labels, metrics)


def _segmentation(matched: Matched, label_reference: Mapping[str, PathLike], brats_labels: str | None,
                  metrics: str = "monai") -> dict:
    """Dice and HD95 per case and region, and their summary, under the ``metrics`` convention."""
    from medssl.evaluation.segmentation import METRICS, REGIONS, label_map_metrics  # torch, MONAI: this task only

    if metrics not in METRICS:
        raise ConfigError(f"metrics {metrics!r}: choose {' or '.join(METRICS)}")

    grids = scoring_grids(matched.maps, matched.labels, label_reference)
    dice: dict[str, list[float]] = {r: [] for r in REGIONS}
    hd95: dict[str, list[float]] = {r: [] for r in REGIONS}
    per_case = {}
    for case, map_path in matched.maps.items():
        grid, label_path = grids[case], matched.labels[case]
        label = read_label(label_path, case, grid if case in label_reference else None)
        pred = np.zeros(grid.shape_zyx, np.uint8) if map_path is None else read_label(map_path, case, what="prediction")
        out = label_map_metrics(pred, label, spacing=grid.spacing[::-1], brats_labels=brats_labels, case_id=case,
                                paths=(map_path, label_path), metrics=metrics)
        per_case[case] = out
        for r in REGIONS:
            dice[r].append(out["dice"][r])
            hd95[r].append(out["hd95"][r])
    regions = segmentation_summary(dice, hd95)
    return {"cases": len(per_case), "metrics": metrics, "metrics_convention": METRICS[metrics],
            "dice": {r: regions[r]["dice_mean"] for r in REGIONS},
            "hd95": {r: regions[r]["hd95_mean"] for r in REGIONS}, "regions": regions, "per_case": per_case}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    return _fmt(value) + ("" if ci is None else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]")


def _listed(what: str, cases: Sequence[str]) -> list[str]:
    if not cases:
        return []
    more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
    return [f"{len(cases)} {what}: {', '.join(cases[:5])}{more}"]


def format_result(result: Mapping[str, Any]) -> str:
    """A few lines for the console: the metrics with their 95% CIs, what was missing or ignored."""
    if result["task"] == "segmentation":
        lines = [f"{result['cases']} cases in {result['predictions']} (BraTS regions, mean over cases; metrics "
                 f"{result.get('metrics', 'monai')}: {result.get('metrics_convention', '')})"]
        for region, row in result["regions"].items():
            lines.append(f"  {region}: Dice {_fmt(row['dice_mean'])} ± {_fmt(row['dice_std'])}, HD95 "
                         f"{_fmt(row['hd95_mean'], 2)} mm ({row['hd95_undefined']} undefined)")
    else:
        ci = result["ci"]
        lines = [f"{result['cases']} cases ({result['positives']} positive, {result['num_lesions']} lesions) in "
                 f"{result['predictions']}",
                 f"  AUROC {_with_ci(result['auroc'], ci['auroc'])}   AP {_with_ci(result['ap'], ci['ap'])}   "
                 f"PI-CAI score {_with_ci(result['score'], ci['score'])}   (95% bootstrap CI)",
                 *(f"  {note}" for note in result["notes"])]
        comparison = result.get("comparison")
        if comparison:
            lines.append(f"  minus {comparison['b']} on the same {comparison['cases']} cases (paired bootstrap, "
                         f"{comparison['n_bootstrap']} resamples):")
            for m, name in (("auroc", "AUROC"), ("ap", "AP"), ("score", "score")):
                row = comparison[m]
                lines.append(f"    {name} {_fmt(row['a'])} - {_fmt(row['b'])} = "
                             f"{_with_ci(row['difference'], row['ci'])}, p = {_fmt(row['p_value'])}")
    lines += [f"  {line}" for line in _listed(MISSING_NOTE, result["missing_as_empty"])]
    lines += [f"  {line}" for line in _listed(UNLABELLED_NOTE, result["unlabelled_maps"])]
    return "\n".join(lines)


def _markdown(result: Mapping[str, Any]) -> str:
    lines = ["# Evaluation", "", f"Predictions: `{result['predictions']}`, {result['cases']} cases.", ""]
    if result["task"] == "segmentation":
        lines += [f"BraTS regions, Dice and HD95 in mm, metrics `{result.get('metrics', 'monai')}`: "
                  f"{result.get('metrics_convention', '')}", "",
                  "| region | Dice mean ± std | Dice median | HD95 mean ± std | HD95 median | undefined Dice / HD95 |",
                  "|---|---|---|---|---|---|"]
        for region, row in result["regions"].items():
            lines.append(f"| {region} | {_fmt(row['dice_mean'])} ± {_fmt(row['dice_std'])} | {_fmt(row['dice_median'])}"
                         f" | {_fmt(row['hd95_mean'], 2)} ± {_fmt(row['hd95_std'], 2)} | {_fmt(row['hd95_median'], 2)}"
                         f" | {row['dice_undefined']} / {row['hd95_undefined']} |")
    else:
        ci = result["ci"]
        lines += [f"PI-CAI protocol (picai_eval): {result['positives']} positive cases, {result['num_lesions']} "
                  "lesions. AUROC is case-level, AP lesion-level, score = (AUROC + AP) / 2; 95% bootstrap CIs "
                  f"({ci['n']} resamples of the cases).", "",
                  "| AUROC | AP | PI-CAI score |", "|---|---|---|",
                  f"| {_with_ci(result['auroc'], ci['auroc'])} | {_with_ci(result['ap'], ci['ap'])} "
                  f"| {_with_ci(result['score'], ci['score'])} |"]
        comparison = result.get("comparison")
        if comparison:
            lines += ["", f"Minus `{comparison['b']}` on the same {comparison['cases']} cases (paired bootstrap, "
                      f"{comparison['n_bootstrap']} resamples: 95% CI of the difference, two-sided p):", "",
                      "| metric | this | other | difference [95% CI] | p |", "|---|---|---|---|---|"]
            for m in ("auroc", "ap", "score"):
                row = comparison[m]
                lines.append(f"| {m} | {_fmt(row['a'])} | {_fmt(row['b'])} | {_with_ci(row['difference'], row['ci'])}"
                             f" | {_fmt(row['p_value'])} |")
    notes = [*result.get("notes", []), *_listed(MISSING_NOTE, result["missing_as_empty"]),
             *_listed(UNLABELLED_NOTE, result["unlabelled_maps"])]
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def write_evaluation_report(output_dir: PathLike, result: Mapping[str, Any]) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and (detection) ``roc.png``, ``pr.png``, ``froc.png``.

    Every file goes through ``medssl.io`` (temporary name, checked, renamed); the plots are the cv
    report's (``write_curve_plots``).

    Args:
        output_dir: folder (created).
        result: from ``evaluate_predictions``.

    Returns:
        The written paths.

    Example:
        >>> write_evaluation_report("reports/test", evaluate_predictions("preds", "labels"))
    """
    output_dir = Path(output_dir)
    paths = [output_dir / "evaluation.json", output_dir / "evaluation.md"]
    write_json(paths[0], jsonable(result))
    write_text(paths[1], _markdown(result))
    if result["task"] == "detection":
        title = Path(result["predictions"]).name or "predictions"
        paths += write_curve_plots(output_dir, title, [(f"{result['cases']} cases", result, BOLD)])
    return paths
