"""``medssl reconstruct``: fill in the sequences each case lacks with a pretrained BM-MAE, in the case's own geometry.

::

    medssl reconstruct --checkpoint runs/pre/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data.layout brats --data.root /data/BraTS2021 --output recon/

Writes each missing sequence in the input's own naming (``OUT/<case>-t2f.nii.gz`` for BraTS 2023,
``OUT/<case>_flair.nii.gz`` for 2021; see ``medssl.reconstruct.output_name``).
"""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from medssl.data.layouts import LAYOUTS

    parser = argparse.ArgumentParser(
        prog="medssl reconstruct",
        description="Synthesise the sequences each case lacks with a pretrained BM-MAE, in the case's own geometry.")
    parser.add_argument("--checkpoint", required=True,
                        help="BM-MAE pretraining checkpoint (.ckpt) or the official bmmae.pth")
    parser.add_argument("--data.layout", dest="data_layout", choices=list(LAYOUTS), default="brats")
    parser.add_argument("--data.root", dest="data_root", required=True, help="data folder (datalist: the file)")
    parser.add_argument("--data.labels_root", dest="data_labels_root", default=None,
                        help="PI-CAI picai_labels folder (labels are not used, only discovery)")
    parser.add_argument("--output", required=True,
                        help="folder for the reconstructed sequences, named as the input names them")
    parser.add_argument("--config", default=None,
                        help="pretraining config (default: the one saved in the checkpoint, else beside checkpoints/)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.reconstruct import run_reconstruct

    def show(entry: dict) -> None:
        if not entry["written"]:
            print(f"{entry['case_id']}: has every modality, skipped")
        present = ", ".join(entry["present"])
        for m, path in entry["written"].items():
            print(f"wrote {path} ({entry['case_id']}: {m} from {present})")

    record = run_reconstruct(args.checkpoint, args.data_layout, args.data_root, args.output,
                             labels_root=args.data_labels_root, config=args.config, device=args.device, on_case=show)
    cases = record["cases"]
    done = [c for c in cases if c["written"]]
    print(f"reconstructed {sum(len(c['written']) for c in done)} sequences in {len(done)} cases to {args.output}; "
          f"{len(cases) - len(done)} of {len(cases)} cases had every modality (skipped)")
    return 0
