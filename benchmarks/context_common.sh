# Shared by label_efficiency.sh and positive_control.sh (sourced, not run): the context benchmark's data and the
# supervised positive control, made by one command so both studies hold the same control; a step whose output
# exists is skipped only after checking that it is what these settings make.

# make_context_data DIR CASES ARCHIVE: DIR/data (labelled studies) and DIR/archive (other patients, 10x)
make_context_data() {
    [ -f "$1/data/picai_labels/clinical_information/marksheet.csv" ] || \
        medssl synth picai "$1/data" --cases "$2" --seed 0 --difficulty context
    [ -f "$1/archive/picai_labels/clinical_information/marksheet.csv" ] || \
        medssl synth picai "$1/archive" --cases "$3" --seed 1000 --first-patient 20000 --difficulty context
}

# expect_steps CKPT STEPS: stop in one line unless CKPT took exactly STEPS optimiser steps
expect_steps() {
    python - "$1" "$2" <<'PY'
import sys

import torch

path, want = sys.argv[1], int(sys.argv[2])
got = torch.load(path, weights_only=True, map_location="cpu").get("global_step")
if got != want:
    sys.exit(f"error: {path} took {got} optimiser steps, these settings make {want}: move it away to retrain")
PY
}

# supervised_control OUT ARCHIVE EPOCHS STEPS_PER_EPOCH CACHE: the tiny PI-CAI recipe trained on the archive's labels
# (fold 0 of 5 held out) into OUT/supervised; its last.ckpt is the positive control
supervised_control() {
    [ -f "$1/supervised/checkpoints/last.ckpt" ] || \
        medssl fit --config configs/finetune/cswin_picai_tiny.yaml --data.root "$2" --data.cache_dir "$5" \
            --data.n_folds 5 --data.fold 0 --data.split_file "$1/supervised_splits.json" \
            --data.train_batches_per_epoch "$4" --trainer.max_epochs "$3" \
            --trainer.limit_val_batches 0 --trainer.default_root_dir "$1/supervised" \
            --trainer.enable_progress_bar false --trainer.enable_model_summary false
    expect_steps "$1/supervised/checkpoints/last.ckpt" $(($3 * $4))
}
