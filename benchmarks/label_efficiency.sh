#!/usr/bin/env bash
# The label-efficiency study recorded in RESULTS.md: does pretraining help, at how many labels, and could this
# study tell?
#
# The context benchmark (medssl synth picai --difficulty context): realistic synthetic PI-CAI data plus benign
# mimics with exactly the lesions' ADC/HBV contrast, told apart only by anatomy (transition zone, mirror-symmetric
# pairs, the capsule), so a local intensity cue is not enough and an encoder that knows anatomy can help:
#   - CASES labelled studies, 5 patient-grouped folds; an archive of ARCHIVE studies (other patients, 10x);
#   - CSwin UNet multi-task pretraining on the archive (SSL, its labels unused), pretext metrics in pretext.json;
#   - the positive control: the same net trained with supervision on the archive's labels, STEPS_PRE batches of 4
#     per epoch for EPOCHS_PRE epochs (one pass over the archive each; the SSL pretraining takes one batch fewer
#     per epoch, its 4 pretext-metric cases held out), made by benchmarks/context_common.sh as positive_control.sh makes it,
#     so that script's checkpoint can be copied into OUT/supervised/ (its steps are checked) instead of training it;
#   - the negative control: the SSL weights with every tensor's entries permuted;
#   - every arm moves what fits by name and shape (`init_parts: all`): the positive control its whole UNet
#     (decoder and head included: RESULTS.md shows that the encoder alone cannot win at 10 % of the labels), the
#     SSL and shuffled weights their encoder (the inpainting decoder is another module; fold_result.json lists
#     what moved);
#   - every fold of every arm (pretrained, scratch, supervised, shuffled) trained on FRACTIONS of its training
#     patients with a fixed step budget (STEPS batches of 4 per epoch, drawn with replacement, EPOCHS_FT epochs: the
#     same optimiser steps at every fraction), once per training seed in SEEDS; the final checkpoint is reported.
# Each step resumes: run the same command again after an interruption.
#
#   bash benchmarks/label_efficiency.sh [OUT]    (default runs/label_efficiency)
set -euo pipefail
OUT=${1:-runs/label_efficiency}
CASES=${CASES:-60}
ARCHIVE=${ARCHIVE:-600}
EPOCHS_PRE=${EPOCHS_PRE:-15}      # SSL pretraining (and the supervised control) over the archive
STEPS_PRE=${STEPS_PRE:-150}       # the supervised control's batches of 4 per epoch: one pass over the archive
EPOCHS_FT=${EPOCHS_FT:-20}        # finetuning epochs of STEPS batches each
STEPS=${STEPS:-6}
FRACTIONS=${FRACTIONS:-0.1,0.25,1.0}
SEEDS=${SEEDS:-0,1,2}
WORKERS=${WORKERS:-1}
QUIET=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)
mkdir -p "$OUT"
source "$(dirname "$0")/context_common.sh"
make_context_data "$OUT" "$CASES" "$ARCHIVE"
[ -f "$OUT/pretrain/checkpoints/last.ckpt" ] || \
    medssl fit --config configs/pretrain/cswin_tiny.yaml --data.root "$OUT/archive" --data.cache_dir "$OUT/cache" \
        --trainer.max_epochs "$EPOCHS_PRE" --trainer.default_root_dir "$OUT/pretrain" "${QUIET[@]}"
python -c "import json, sys; e = json.load(open(sys.argv[1]))['epoch']; e == $EPOCHS_PRE or sys.exit(f'error: {sys.argv[1]}: the pretraining ran {e} epochs, EPOCHS_PRE is $EPOCHS_PRE: move it away to pretrain again')" \
    "$OUT/pretrain/checkpoints/pretext.json"
supervised_control "$OUT" "$OUT/archive" "$EPOCHS_PRE" "$STEPS_PRE" "$OUT/cache"
medssl cv --config configs/finetune/cswin_picai_tiny.yaml --data.root "$OUT/data" --data.cache_dir "$OUT/cache" \
    --model.init_args.init_from "$OUT/pretrain/checkpoints/last.ckpt" --model.init_args.init_parts all --twin \
    --control "supervised=$OUT/supervised/checkpoints/last.ckpt" --control shuffled \
    --train-fractions "$FRACTIONS" --seeds "$SEEDS" --workers "$WORKERS" \
    --data.train_batches_per_epoch "$STEPS" --trainer.max_epochs "$EPOCHS_FT" \
    --trainer.check_val_every_n_epoch "$EPOCHS_FT" "${QUIET[@]}" --output "$OUT/cv"
