"""``medssl synth picai|brats OUT``: synthetic data in a real layout (refuses a non-empty OUT)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from medssl.errors import ConfigError

    parser = argparse.ArgumentParser(prog="medssl synth", description="Write synthetic data in a real layout.")
    parser.add_argument("layout", choices=["picai", "brats"])
    parser.add_argument("out", help="destination folder (new or empty)")
    parser.add_argument("--cases", type=int, default=None, help="number of cases (30 PI-CAI, 12 BraTS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-patient", type=int, default=None,
                        help="PI-CAI: the first patient id (default 10000); give another range to a second set, e.g. "
                             "an unlabelled archive, so no patient is in both")
    parser.add_argument("--difficulty", choices=["easy", "realistic", "context"], default="easy",
                        help="PI-CAI: easy (clear lesions, the tests' default), realistic (small, low-contrast "
                             "lesions, bias fields, Rician noise, misregistration, benign look-alikes) or context "
                             "(realistic plus mimics with the lesions' own contrast that only anatomy tells apart)")
    parser.add_argument("--naming", choices=["2021", "2023", "2024-gli"], default="2021",
                        help="BraTS: the release's file names and label values: 2021 (<case>_t1ce, enhancing 4), "
                             "2023 (<case>-t1c, enhancing 3) or 2024-gli (2023's, and resection cavities labelled 4)")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.data.synth import synth_brats, synth_picai

    if args.cases is not None and args.cases < 1:
        raise ConfigError(f"--cases {args.cases}: give 1 or more")
    if args.seed < 0 or (args.first_patient is not None and args.first_patient < 0):
        raise ConfigError("--seed and --first-patient take a non-negative integer")
    if args.layout == "picai" and args.naming != "2021":
        raise ConfigError("--naming applies to synth brats; PI-CAI has one naming")
    if args.layout == "picai":
        extra = {} if args.first_patient is None else {"first_patient": args.first_patient}
        ids = synth_picai(args.out, cases=args.cases or 30, seed=args.seed, difficulty=args.difficulty, **extra)
    else:
        ids = synth_brats(args.out, cases=args.cases or 12, seed=args.seed, naming=args.naming)
    print(f"wrote {len(ids)} synthetic {args.layout} cases to {args.out}")
    return 0
