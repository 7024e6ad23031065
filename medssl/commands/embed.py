"""``medssl embed``: one feature vector per case from a pretrained encoder (BM-MAE or CSwin UNet).

::

    medssl embed --checkpoint bmmae.pth --data.layout brats --data.root /data/BraTS2021 --output emb/

Writes ``OUT/<case_id>.npy`` and ``OUT/embeddings.csv`` (see ``medssl.embed``).
"""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from medssl.data.layouts import LAYOUTS
    from medssl.progress import progress

    parser = argparse.ArgumentParser(
        prog="medssl embed", description="One vector per case from a pretrained encoder: the official bmmae.pth, "
        "or a BM-MAE / CSwin UNet pretraining or finetuning checkpoint (its encoder).")
    parser.add_argument("--checkpoint", required=True, help="weights file (.ckpt or .pth)")
    parser.add_argument("--data.layout", dest="data_layout", choices=list(LAYOUTS), default="brats")
    parser.add_argument("--data.root", dest="data_root", required=True, help="data folder (datalist: the file)")
    parser.add_argument("--data.labels_root", dest="data_labels_root", default=None,
                        help="PI-CAI picai_labels folder (discovery only; labels are never read)")
    parser.add_argument("--output", required=True, help="folder for <case_id>.npy and embeddings.csv")
    parser.add_argument("--pool", choices=["cls", "mean"], default="cls",
                        help="cls: BM-MAE's CLS token (default); mean: the mean of the patch tokens / CSwin bottleneck")
    parser.add_argument("--config", default=None,
                        help="the run's config (default: the one saved in the checkpoint, else beside checkpoints/)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--overwrite", action="store_true", help="redo a folder another checkpoint or settings wrote")
    args = parser.parse_args(argv)
    # imported once the options are read: `--help` and a mistyped option answer without loading torch
    from medssl.embed import run_embed

    record = run_embed(args.checkpoint, args.data_layout, args.data_root, args.output, pool=args.pool,
                       labels_root=args.data_labels_root, device=args.device, config=args.config,
                       overwrite=args.overwrite, progress=lambda cases: progress(cases, "medssl embed"))
    print(f"embedded {len(record['cases'])} cases ({record['computed']} computed, {record['reused']} kept from an "
          f"earlier run) as {record['dim']}-d {record['pool']} vectors to {args.output}; table: {record['csv']}")
    return 0
