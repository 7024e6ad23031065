#!/usr/bin/env bash
# Could the label-efficiency study (benchmarks/label_efficiency.sh) detect a gain at all? Its positive control on
# its own: the same CSwin UNet trained with supervision on the labelled context archive (10x the labelled set),
# then five-fold finetuning at the smallest fraction of labels against the from-scratch run, three training seeds,
# the same fixed step budget. If the supervised weights do not beat scratch here, no SSL null result of that study
# means anything; if they do, the benchmark and the transfer path can show a gain.
#
#   bash benchmarks/positive_control.sh [OUT] [DATA_FROM]
#       OUT: default runs/positive_control; DATA_FROM: a label_efficiency.sh output whose data/ and archive/ to
#       reuse (default runs/label_efficiency; made here when absent). Resumes after an interruption.
set -euo pipefail
OUT=${1:-runs/positive_control}
FROM=${2:-runs/label_efficiency}
CASES=${CASES:-60}
ARCHIVE=${ARCHIVE:-600}
EPOCHS_PRE=${EPOCHS_PRE:-15}      # as label_efficiency.sh (context_common.sh's supervised_control)
STEPS_PRE=${STEPS_PRE:-150}       # one pass over the 600-study archive in batches of 4, as the SSL pretraining
EPOCHS_FT=${EPOCHS_FT:-20}
STEPS=${STEPS:-6}
FRACTIONS=${FRACTIONS:-0.1}
SEEDS=${SEEDS:-0,1,2}
QUIET=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)
mkdir -p "$OUT"
source "$(dirname "$0")/context_common.sh"
make_context_data "$FROM" "$CASES" "$ARCHIVE"
supervised_control "$OUT" "$FROM/archive" "$EPOCHS_PRE" "$STEPS_PRE" "$OUT/cache"
medssl cv --config configs/finetune/cswin_picai_tiny.yaml --data.root "$FROM/data" --data.cache_dir "$OUT/cache" \
    --control "supervised=$OUT/supervised/checkpoints/last.ckpt" \
    --train-fractions "$FRACTIONS" --seeds "$SEEDS" \
    --data.train_batches_per_epoch "$STEPS" --trainer.max_epochs "$EPOCHS_FT" \
    --trainer.check_val_every_n_epoch "$EPOCHS_FT" "${QUIET[@]}" --output "$OUT/cv"
