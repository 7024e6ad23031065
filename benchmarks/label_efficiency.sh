#!/usr/bin/env bash
# The label-efficiency study recorded in RESULTS.md: does pretraining help, and at how many labels?
#
# Realistic synthetic PI-CAI data (small, low-contrast lesions, bias fields, Rician noise, misregistration,
# benign look-alikes), sized so the whole study fits a 2-core CPU in under an hour:
#   - 60 labelled studies, 5 patient-grouped folds;
#   - an unlabelled archive 2.5x larger (150 studies, other patients) for CSwin UNet multi-task pretraining;
#   - every fold finetuned on FRACTIONS of its training patients (nested, stratified), pretrained and from
#     scratch, with the tiny recipe; the final checkpoint of each fold is reported.
# Each step resumes: run the same command again after an interruption.
#
#   bash benchmarks/label_efficiency.sh [OUT]    (default runs/label_efficiency)
set -euo pipefail
OUT=${1:-runs/label_efficiency}
EPOCHS_PRE=${EPOCHS_PRE:-8}      # RESULTS.md's second run: EPOCHS_PRE=30 EPOCHS_FT=12 FRACTIONS=0.1,0.25,0.5,1.0
EPOCHS_FT=${EPOCHS_FT:-8}
FRACTIONS=${FRACTIONS:-0.25,0.5,1.0}
mkdir -p "$OUT"
[ -f "$OUT/data/picai_labels/clinical_information/marksheet.csv" ] || \
    medssl synth picai "$OUT/data" --cases 60 --seed 0 --difficulty realistic
[ -f "$OUT/archive/picai_labels/clinical_information/marksheet.csv" ] || \
    medssl synth picai "$OUT/archive" --cases 150 --seed 1000 --first-patient 20000 --difficulty realistic
[ -f "$OUT/pretrain/checkpoints/last.ckpt" ] || \
    medssl fit --config configs/pretrain/cswin_tiny.yaml --data.root "$OUT/archive" --data.cache_dir "$OUT/cache" \
        --trainer.max_epochs "$EPOCHS_PRE" --trainer.default_root_dir "$OUT/pretrain" \
        --trainer.enable_progress_bar false --trainer.enable_model_summary false
medssl cv --config configs/finetune/cswin_picai_tiny.yaml --data.root "$OUT/data" --data.cache_dir "$OUT/cache" \
    --model.init_args.init_from "$OUT/pretrain/checkpoints/last.ckpt" --twin --train-fractions "$FRACTIONS" \
    --trainer.max_epochs "$EPOCHS_FT" --trainer.check_val_every_n_epoch "$EPOCHS_FT" \
    --trainer.enable_progress_bar false --output "$OUT/cv"
