"""``medssl probe --checkpoint CKPT --data.layout L --data.root R --output DIR``: the frozen encoder's case vectors
against a random encoder's, with logistic-regression and kNN probes on patient-grouped folds."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from medssl.data.layouts import LAYOUTS
    from medssl.progress import progress

    parser = argparse.ArgumentParser(
        prog="medssl probe", description="Do a pretrained encoder's frozen case vectors carry the label? Logistic "
        "regression and kNN on patient-grouped folds, pretrained vs the same architecture at a random init.")
    parser.add_argument("--checkpoint", required=True, help="pretraining (or finetuned) weights")
    parser.add_argument("--data.layout", dest="data_layout", choices=list(LAYOUTS), default="picai")
    parser.add_argument("--data.root", dest="data_root", required=True)
    parser.add_argument("--data.labels_root", dest="data_labels_root", default=None)
    parser.add_argument("--labels", default="case-level",
                        help="case-level (a lesion voxel in the label mask; default) or column:NAME (a clinical "
                             "column)")
    parser.add_argument("--output", required=True, help="folder for probe.json and probe.md")
    parser.add_argument("--pool", default=None, help="cls or mean (default: the architecture's first)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--config", default=None, help="the run's config (default: saved in the checkpoint)")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.probe import run_probe

    result = run_probe(args.checkpoint, args.data_layout, args.data_root, args.output, args.labels,
                       args.data_labels_root, args.pool, args.folds, args.split_seed, args.neighbours,
                       device=args.device, config=args.config, progress=lambda c: progress(c, "medssl probe"))
    for probe, row in result["probes"].items():
        p, r = row["pretrained"], row["random"]
        print(f"{probe}: pretrained AUROC {p['auroc']:.3f} (95% CI {p['ci'][0]:.3f}-{p['ci'][1]:.3f}), random "
              f"{r['auroc']:.3f} (95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}); difference {row['difference']:+.3f}")
    print(f"wrote {args.output}/probe.json and probe.md ({result['cases']} cases, {result['positive']} positive)")
    return 0
