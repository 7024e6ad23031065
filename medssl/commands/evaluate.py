"""``medssl evaluate``: score a folder of predictions against labels (PI-CAI protocol or BraTS regions).

    medssl evaluate --predictions DIR (--labels LABELS | --layout picai --data.root ROOT [--data.labels_root L])
        [--task detection|segmentation] [--missing error|empty] [--compare OTHER_DIR] [--output OUT] [--json]
    medssl evaluate --checkpoint C [C ...] --modality-subsets all|a+b,c --layout L --data.root ROOT --output OUT

The second form is the missing-modality table (``medssl.subsets``).

All logic is in ``medssl.evaluation.evaluate``; this module parses, calls it and prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from medssl.data.layouts import LAYOUTS, brats, picai

    parser = argparse.ArgumentParser(
        prog="medssl evaluate",
        description="Score <case_id>.nii.gz (or .mha) maps against labels: detection maps with picai_eval "
                    "(AUROC, AP, PI-CAI score, FROC, 95% bootstrap CIs), BraTS label maps with Dice and HD95 "
                    "per region (TC, WT, ET).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="DIR", help="folder of <case_id>.nii.gz maps (medssl infer's OUT)")
    source.add_argument("--checkpoint", nargs="+", metavar="C",
                        help="with --modality-subsets: finetuned checkpoint(s) (several: their mean) to predict the "
                             "labelled cases with, once per subset of their modalities")
    parser.add_argument("--modality-subsets", dest="modality_subsets", metavar="SPEC", default=None,
                        help="all (every non-empty subset of the checkpoint's modalities: 15 for BraTS, 7 for "
                             "bpMRI) or subsets such as t2w+adc,adc; one row each, the same cases in every row: "
                             "modality_subsets.{json,md,png} in --output, each subset's maps in OUT/subsets/")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="with --checkpoint: auto (a GPU when there is one), cpu or cuda")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --checkpoint: redo subset folders other models or settings wrote")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="LABELS",
                        help="folder of <case_id>.nii.gz label maps (e.g. picai_labels/csPCa_lesion_delineations/"
                             "human_expert/resampled)")
    labels.add_argument("--layout", choices=list(LAYOUTS), help="find the labels by case discovery under --data.root")
    parser.add_argument("--data.root", dest="root", metavar="ROOT", help="data root of --layout (datalist: the file)")
    parser.add_argument("--data.labels_root", dest="labels_root", metavar="DIR", help="PI-CAI picai_labels folder "
                        "(default: beside images/)")
    parser.add_argument("--data.label_source", "--label-source", dest="label_source", default=None,
                        choices=list(picai.LABEL_SOURCES),
                        help="PI-CAI labels (default: discovery's, human_expert+AI, the published cohort)")
    parser.add_argument("--task", choices=["detection", "segmentation"], default=None,
                        help="default: segmentation for --layout brats, else detection")
    parser.add_argument("--missing", choices=["error", "empty"], default="error",
                        help="a labelled case without a map: refuse (default) or score it as an empty map")
    parser.add_argument("--brats-labels", "--data.brats_labels", dest="brats_labels", choices=list(brats.OPTIONS),
                        default=None,
                        help="segmentation label convention: enhancing tumour 4 (2021), 3 (2023), or 3 with 4 the "
                             "resection cavity, scored in no region (2024-gli); default: read from each map's values")
    parser.add_argument("--metrics", choices=["monai", "legacy", "brats2023"], default="monai",
                        help="segmentation: monai (case-wise Dice/HD95, empty regions left out and counted), legacy "
                             "(BraTS up to 2021: empty-empty Dice 1/HD95 0, one side empty Dice 0/HD95 373.13 mm) or "
                             "brats2023 (BraTS 2023+ lesion-wise Dice/HD95, as the official BraTS-2023-Metrics code)")
    parser.add_argument("--compare", metavar="OTHER_DIR", default=None,
                        help="second predictions folder: paired bootstrap of this minus that on the same cases")
    parser.add_argument("--output", default=None, metavar="OUT",
                        help="write evaluation.json, evaluation.md and plots here")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="picai_eval threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def main(argv: list[str]) -> int:
    from medssl.data.layouts import LAYOUTS
    from medssl.errors import ConfigError

    args = _parser().parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.evaluation.evaluate import (
        discover_labels,
        evaluate_predictions,
        format_result,
        write_evaluation_report,
    )
    from medssl.io import refuse_output_over_inputs

    for name in ("bootstrap", "workers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}: give 1 or more")
    if args.checkpoint is not None or args.modality_subsets is not None:
        return _subsets(args)
    reference = None
    if args.layout is not None:
        if args.root is None:
            raise ConfigError(f"--layout {args.layout} needs --data.root (the data set's root folder)")
        labels, reference = discover_labels(args.layout, args.root, args.labels_root, args.label_source)
    else:
        if args.root or args.labels_root or args.label_source:
            raise ConfigError("--data.root, --data.labels_root and --data.label_source go with --layout, not --labels")
        labels = args.labels
    if args.output is not None:  # checked before anything is scored: the report never lands on what it reads
        label_files = list(labels.values()) if isinstance(labels, dict) else [labels]
        roots = LAYOUTS[args.layout].input_roots(args.root, args.labels_root) if args.layout else []
        refuse_output_over_inputs(args.output, [args.predictions, args.compare, *roots, *label_files,
                                                *(Path(f).parent for f in label_files if isinstance(labels, dict))])
    brats_like = args.layout is not None and LAYOUTS[args.layout].label_kind == "brats"
    task = args.task or ("segmentation" if brats_like else "detection")
    if args.metrics != "monai" and task != "segmentation":
        raise ConfigError(f"--metrics {args.metrics} is a BraTS segmentation convention; detection is scored by "
                          "picai_eval (drop --metrics or give --task segmentation)")
    result = evaluate_predictions(
        args.predictions, labels, task=task, missing=args.missing, label_reference=reference,
        compare_with=args.compare, brats_labels=args.brats_labels, metrics=args.metrics, n_bootstrap=args.bootstrap,
        num_parallel_calls=args.workers)
    if args.output is not None:
        write_evaluation_report(args.output, result)
    print(json.dumps(result) if args.json else format_result(result))
    if args.output is not None and not args.json:
        plots = ", roc.png, pr.png, froc.png" if task == "detection" else ""
        print(f"wrote {args.output}: evaluation.json, evaluation.md{plots}")
    return 0


def _subsets(args: argparse.Namespace) -> int:
    """``--checkpoint C --modality-subsets SPEC``: the missing-modality table."""
    from medssl.errors import ConfigError

    if args.checkpoint is None or args.modality_subsets is None:
        raise ConfigError("--modality-subsets and --checkpoint go together (to score maps already written, give "
                          "--predictions without --modality-subsets)")
    if args.layout is None or args.root is None or args.output is None:
        raise ConfigError("--modality-subsets needs --layout, --data.root (the labelled cases to predict) and "
                          "--output (the table and each subset's maps)")
    for option in ("compare", "labels", "task"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option} does not go with --modality-subsets (the labels are found under "
                              "--data.root; the task is the checkpoint's)")
    from medssl.progress import progress, quiet_lightning
    from medssl.subsets import evaluate_subsets, format_subsets

    quiet_lightning(False)
    report = evaluate_subsets(args.checkpoint, args.output, args.layout, args.root, args.labels_root,
                              args.label_source, args.modality_subsets, args.metrics, args.brats_labels,
                              args.bootstrap, args.overwrite, args.device,
                              progress=lambda cases: progress(cases, "medssl evaluate"))
    print(json.dumps(report) if args.json else format_subsets(report))
    if not args.json:
        print(f"wrote {args.output}: modality_subsets.json, modality_subsets.md, modality_subsets.png")
    return 0
