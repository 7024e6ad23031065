"""``medssl check ROOT --layout L``: read every case without training and summarise the data set."""

from __future__ import annotations

import argparse
import json
import sys

# the config keys the data layer names in its messages, and this command's options for them
OPTIONS = {"data.modalities": "--modalities", "data.labels_root": "--labels", "data.label_source": "--label-source",
           "data.brats_labels": "--brats-labels"}


def main(argv: list[str]) -> int:
    from medssl.data.layouts import LAYOUTS, brats, picai
    from medssl.progress import progress

    parser = argparse.ArgumentParser(prog="medssl check", description="Read every case and summarise the data.")
    parser.add_argument("root", help="data root (PI-CAI: the folder holding images/; datalist: the file)")
    parser.add_argument("--layout", choices=list(LAYOUTS), required=True)
    parser.add_argument("--labels", default=None, help="PI-CAI picai_labels folder (default: beside images/)")
    parser.add_argument("--label-source", "--data.label_source", dest="label_source", default=None,
                        choices=list(picai.LABEL_SOURCES),
                        help="PI-CAI labels (default human_expert+AI: expert where present, else AI-derived)")
    parser.add_argument("--brats-labels", "--data.brats_labels", dest="brats_labels", default=None,
                        choices=list(brats.OPTIONS), help="BraTS label convention (default: from the file naming)")
    parser.add_argument("--modalities", default=None, help="comma-separated modalities (datalist)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.data.check import check_dataset, format_summary
    from medssl.errors import MedsslError

    modalities = args.modalities.split(",") if args.modalities else None
    try:
        summary = check_dataset(args.root, args.layout, args.labels, args.label_source, modalities,
                                brats_labels=args.brats_labels,
                                progress=lambda cases: progress(cases, "medssl check", total=len(cases)))
    except MedsslError as e:  # the data layer names config keys; this command takes options
        for key, option in OPTIONS.items():
            e.args = tuple(str(a).replace(key, option) for a in e.args)
        raise
    for line in summary["errors"]:
        print(f"medssl: error: {line}", file=sys.stderr)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 1 if summary["errors"] else 0
