#!/usr/bin/env bash
# GPU check: one script that measures medssl on a GPU machine inside a fixed time budget.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repo root, with $OUT set
#   OUT=/tmp/gpu_smoke bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps at CPU sizes (a dry run)
#
# GPU mode (default) expects the wheels of what the machine's image lacks in .whl/ (monai, SimpleITK,
# nibabel, jsonargparse with docstring-parser and typeshed-client, picai_eval, report_guided_annotation,
# mlxtend, picai_baseline: medssl reads only its split files, so picai-prep is left out). `.whl/` is
# listed in .git/info/exclude and travels with the device tool's `carry: [".whl"]`.
# The SimpleITK wheel there is the PyPI wheel repacked with LZMA zip compression (28 MiB instead of 50;
# the same files, the wheel's RECORD hashes still match); pip installs it as any wheel. They are installed
# into /tmp/site and medssl itself is used from this checkout: PYTHONPATH=/tmp/site:$PWD, nothing installed.
#
# Steps (each under `timeout`, all output tee'd to $OUT/gpu_check.log with elapsed-time stamps; a failed
# or timed-out step is recorded and the script goes on; the whole run stays within BUDGET seconds,
# 480 on the GPU, by shortening or skipping the later steps; at most about 495 s with timeout's 10 s kill
# grace and the final summary):
#   install     pip install --no-index --no-deps --target /tmp/site .whl/*.whl      (GPU mode only)
#   nvidia_smi  the card, driver and clocks                                           (when present)
#   env         python3 -m medssl --help, `medssl fit --help` (jsonargparse signatures), library versions
#   bench       (a) benchmarks/run.py --device cuda --full --skip data eval --out $OUT/results_gpu.json:
#               matmul ceiling, BM-MAE and CSwin train steps beside MONAI in fp32 and bf16 autocast (SDPA
#               attention) with peak memory, channels-last speed path, real-size sliding window. The data
#               and eval sections are CPU work already measured in BENCHMARKS.md and are skipped; --compile
#               is left out here (CPU compiles took 42 to 183 s per model; two models x two dtypes would not
#               fit in about 4 minutes) and measured by the last step instead.
#   pytest      (b) python3 -m pytest -q tests/test_speed_paths.py (holds the CUDA-only sync-free test
#               test_training_steps_never_wait_for_the_gpu; no -x, so an earlier failure cannot skip it)
#   synth_cv    (c) python3 -m medssl synth picai (20 small studies)
#   cv          (c) medssl cv, cswin_picai_tiny, folds 0,1, 2 epochs on the GPU: wall time and the report
#   synth_real  (d) 4 studies at a real field of view (192 mm: T2W 384^2 to 640^2 x 16 slices)
#   infer       (d) medssl infer with fold 0's reported checkpoint (its fold_result.json, else the best
#               .ckpt, else last.ckpt) on them: wall, seconds per case (from the
#               time stamps of its per-case log lines) and start-up
#   infer_cv    (d) the same with `--cv <cv output>` (all folds) when `medssl infer --help` offers --cv;
#               otherwise skipped, and the log and the JSON say so. If it fails and --checkpoint takes
#               several files, infer_ensemble times the same fold ensemble as --checkpoint A B (the
#               checkpoints named in fold_*/fold_result.json)
#   compile     (e) only with time left (>= 100 s, up to the end of the budget): torch.compile (inductor) of
#               the BM-MAE and then the CSwin UNet train step at --full size in bf16 against the plain
#               step: compile (first step) seconds, step seconds, ratio; $OUT/compile_gpu.json is rewritten
#               after each first step and each model, so a step cut by the budget still leaves its figures
# Results in $OUT: gpu_check.log, gpu_check.json (per step: command, exit code, wall seconds, status,
# key figures; rewritten after every step), results_gpu.json (run.py's own JSON), compile_gpu.json,
# cv_report.json, infer_predictions.json, infer_cv_predictions.json (that of infer_cv or infer_ensemble).
# Scratch data (sets, cv runs, maps, step logs) lives in /tmp/gpu_check.XXXXXX (--cpu-smoke keeps only the logs).
#
# --cpu-smoke: the same steps with CPU sizes (run.py --tiny on the CPU, 10 small studies, 1 epoch on the CPU,
# 2 real-size studies, compile with the eager backend), no wheel install, this environment's python3 (the
# active venv), OMP_NUM_THREADS=1, a budget of 1800 s. It checks the script's logic, not the GPU.
#
# Device tool call (suggested): carry [".whl"], timeout_s 560, command:
#   bash benchmarks/gpu_check.sh
set -u -o pipefail

MODE=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) MODE=cpu ;;
        -h|--help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $arg (only --cpu-smoke)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg TQDM_DISABLE=1

if [[ $MODE == gpu ]]; then
    BUDGET=${GPU_CHECK_BUDGET:-480}
    PY=python3
    export PYTHONPATH=/tmp/site:$REPO
    ACCEL=gpu
    CV_CASES=20 CV_EPOCHS=2 REAL_CASES=4
    BENCH_ARGS=(--device cuda --full --skip data eval)
    COMPILE_SIZES=full COMPILE_DEVICE=cuda COMPILE_BACKEND=inductor COMPILE_DTYPE=bf16
    SCALE=1
else
    BUDGET=${GPU_CHECK_BUDGET:-1800}
    PY=python3
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
    export OMP_NUM_THREADS=1
    ACCEL=cpu
    CV_CASES=10 CV_EPOCHS=1 REAL_CASES=2
    BENCH_ARGS=(--device cpu --tiny --skip data eval)
    COMPILE_SIZES=tiny COMPILE_DEVICE=cpu COMPILE_BACKEND=eager COMPILE_DTYPE=fp32
    SCALE=4
fi
RESERVE=5     # seconds kept for the final JSON
MIN_STEP=15   # a step gets at least this much or is skipped

# Clocks in microseconds from bash's EPOCHREALTIME (no process per call).
now_us() { local t=${EPOCHREALTIME//[!0-9]/}; echo $(( 10#$t )); }
T0_US=$(now_us)
elapsed() { echo $(( ($(now_us) - T0_US) / 1000000 )); }
say() { printf '[+%4ss] %s\n' "$(elapsed)" "$*" | tee -a "$LOG"; }
# Prefix each line with the seconds since the start.
stamp() {
    local line t
    while IFS= read -r line; do
        t=${EPOCHREALTIME//[!0-9]/}; t=$(( 10#$t - T0_US ))
        printf '[+%4d.%03d] %s\n' $(( t / 1000000 )) $(( t % 1000000 / 1000 )) "$line"
    done
}

# run_step NAME CAP_SECONDS CMD...: run CMD under timeout (CAP * SCALE, cut to what the budget has left),
# its output stamped into $LOG and $WORK/NAME.log; one TSV row: name rc start end status command.
run_step() {
    local name=$1 cap=$(( $2 * SCALE )); shift 2
    local left=$(( BUDGET - $(elapsed) - RESERVE ))
    local t=$(( cap < left ? cap : left ))
    local cmd="$*"
    LAST_RC=""
    if (( t < MIN_STEP )); then
        say "=== $name: SKIPPED (budget: ${left}s left of ${BUDGET}s)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "" "$(now_us)" "$(now_us)" "skipped: budget" "$cmd" >>"$STEPS"
        summarise
        return 0
    fi
    say "=== $name (timeout ${t}s): $cmd"
    local start
    start=$(now_us)
    timeout -k 10 "$t" "$@" </dev/null 2>&1 | stamp | tee -a "$LOG" "$WORK/$name.log"
    local rc=${PIPESTATUS[0]} end status=ok
    end=$(now_us)
    (( rc == 0 )) || status=failed
    (( rc == 124 || rc == 137 )) && status="timed out after ${t}s"
    local wall=$(( (end - start) / 100000 ))
    wall="$(( wall / 10 )).$(( wall % 10 ))"
    say "=== $name: exit $rc, ${wall}s ($status)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$start" "$end" "$status" "$cmd" >>"$STEPS"
    LAST_RC=$rc
    summarise
    return 0
}

skip_step() {  # skip_step NAME REASON COMMAND
    say "=== $1: SKIPPED ($2)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "" "$(now_us)" "$(now_us)" "skipped: $2" "$3" >>"$STEPS"
    summarise
}

# gpu_check.json from the TSV, the step logs and the files the steps wrote (rewritten after every step).
summarise() {
    MODE=$MODE BUDGET=$BUDGET T0_US=$T0_US "$PY" - "$STEPS" "$WORK" "$OUT" <<'PYEOF' 2>>"$LOG" || echo "summarise failed" >>"$LOG"
import json, os, re, statistics, sys, time
from pathlib import Path

steps_tsv, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
t0_us = int(os.environ["T0_US"])


def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def rnd(v, d=4):
    return None if v is None else round(float(v), d)


def log_lines(name):
    try:
        return (work / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return []


def stamped(lines):
    for line in lines:
        m = re.match(r"\[\+\s*([0-9.]+)\] (.*)", line)
        if m:
            yield float(m.group(1)), m.group(2)


def figures(name, step):
    lines = log_lines(name)
    if name == "nvidia_smi":
        rows = [l for _, l in stamped(lines) if l.startswith("GPU:")]
        return {"gpu": rows[0][4:].strip()} if rows else {}
    if name == "env":
        found = {}
        for _, l in stamped(lines):
            if l.startswith("versions:"):
                try:
                    found = json.loads(l[len("versions:"):])
                except ValueError:
                    pass
        return found
    if name == "bench":
        r = load(out / "results_gpu.json")
        if not r:
            return {}
        f = {"file": "results_gpu.json", "complete": r.get("complete"), "sections_s": r.get("sections_s"),
             "device_name": r.get("machine", {}).get("device_name")}
        for dt in r.get("dtypes", []):
            mm = r.get("matmul", {}).get(dt)
            if mm:
                f[f"matmul_{dt}_tflops"] = rnd(mm["flops_per_s"] / 1e12, 1)
            for pair, block in (r.get("models") or {}).items():
                b = block.get(dt) if isinstance(block, dict) else None
                if not b:
                    continue
                for role in ("ours", "monai"):
                    x = b[role]
                    f[f"{pair}_{dt}_{role}_step_s"] = rnd(x["step_s"])
                    if x.get("peak_mem_bytes"):
                        f[f"{pair}_{dt}_{role}_peak_mem_mib"] = rnd(x["peak_mem_bytes"] / 2**20, 1)
                    if x.get("fraction_of_ceiling") is not None:
                        f[f"{pair}_{dt}_{role}_fraction_of_ceiling"] = rnd(x["fraction_of_ceiling"], 3)
                f[f"{pair}_{dt}_ratio_step_s"] = rnd(b["ratio_step_s"], 3)
            for pair, block in ((r.get("speed_paths") or {}).items()):
                if isinstance(block, dict) and isinstance(block.get(dt), dict):
                    for variant, x in block[dt].items():
                        f[f"speed_{pair}_{dt}_{variant}_step_s"] = rnd(x["step_s"])
            sw = (r.get("sliding_window") or {}).get(dt)
            if sw:
                f[f"sliding_window_{dt}_s_per_case"] = rnd(sw["s_per_case"])
        return f
    if name == "pytest":
        for _, l in reversed(list(stamped(lines))):
            if re.search(r"\b(passed|failed|error|skipped)\b", l) and " in " in l:
                return {"summary": l.strip("= ").strip()}
        return {}
    if name == "cv":
        cv = work / "cv"
        f = {"folds_finished": sorted(p.parent.name for p in cv.glob("fold_*/fold_result.json"))}
        rep = load(cv / "cv_report.json")
        if isinstance(rep, dict):
            f["report"] = "cv_report.json"
            for key in ("pooled", "mean"):
                v = rep.get(key)
                if isinstance(v, dict):
                    f[key] = {k: rnd(v[k]) for k in ("auroc", "ap", "score", "AUROC", "AP") if
                              isinstance(v.get(k), (int, float))}
        # per fold, from the stamped log: "<run> fold K: training" ... "`Trainer.fit` stopped" ... next fold
        marks = [(t, l) for t, l in stamped(lines)
                 if re.search(r"\bfold \d+: (training|epoch)", l) or "Trainer.fit` stopped" in l or "cv_report.json" in l]
        starts = [(t, re.search(r"fold (\d+): training", l).group(1)) for t, l in marks if ": training" in l]
        folds = {}
        for i, (t, k) in enumerate(starts):
            nxt = starts[i + 1][0] if i + 1 < len(starts) else next(
                (u for u, l in marks if u > t and "cv_report.json" in l), None)
            ends = [u for u, l in marks if u > t and (nxt is None or u <= nxt)
                    and ("Trainer.fit` stopped" in l or re.search(r"fold \d+: epoch", l))]
            fit_end = ends[-1] if ends else None
            folds[f"fold_{k}"] = {"fit_s": round(fit_end - t, 2) if fit_end else None,
                                  "fold_s": round(nxt - t, 2) if nxt else None}
        if folds:
            f["folds"] = folds
        if starts and step.get("start_rel") is not None:
            f["startup_s"] = round(starts[0][0] - step["start_rel"], 2)
        return f
    if name in ("infer", "infer_cv", "infer_ensemble"):
        pred = load(work / name / "predictions.json")
        f = {}
        wall = step.get("wall_s")
        if isinstance(pred, dict):
            n = len(pred.get("cases", {}))
            f.update(cases=n, skipped=len(pred.get("skipped", [])))
            if isinstance(pred.get("models"), list):
                f["models"] = len(pred["models"])
            if n and wall:
                f["wall_s_per_case_incl_startup"] = round(wall / n, 2)
        ts = [t for t, l in stamped(lines) if re.search(r": wrote \S+\.nii\.gz", l)]
        if ts:
            start_rel = step.get("start_rel")
            f["first_case_done_after_s"] = round(ts[0] - start_rel, 2) if start_rel is not None else None
            if len(ts) > 1:
                gaps = [b - a for a, b in zip(ts, ts[1:])]
                f["s_per_case"] = round(statistics.median(gaps), 2)
                f["s_per_case_all"] = [round(g, 2) for g in gaps]
                f["startup_s_est"] = round(ts[0] - start_rel - f["s_per_case"], 2) if start_rel is not None else None
        return f
    if name == "compile":
        c = load(out / "compile_gpu.json")
        return c if isinstance(c, dict) else {}
    return {}


steps = []
for row in steps_tsv.read_text().splitlines():
    parts = row.split("\t")
    if len(parts) < 6:
        continue
    name, rc, start, end, status, cmd = parts[:6]
    step = {"name": name, "command": cmd, "exit_code": int(rc) if rc else None, "status": status}
    if rc:
        step["wall_s"] = round((int(end) - int(start)) / 1e6, 1)
        step["start_rel"] = round((int(start) - t0_us) / 1e6, 3)
    try:
        step["figures"] = figures(name, step)
    except Exception as e:  # a parse problem must not lose the record
        step["figures"] = {"parse_error": repr(e)}
    if rc and status != "ok":  # what went wrong, in a few lines
        text = [l for _, l in stamped(log_lines(name)) if l.strip()]
        errors = [l for l in text if re.match(r"(medssl: error|FAILED |ERROR |\w*Error\b|E  )", l)]
        step["error_lines"] = (errors[-5:] or text[-3:])
    steps.append(step)

summary = {
    "schema": 1,
    "mode": os.environ["MODE"],
    "budget_s": int(os.environ["BUDGET"]),
    "elapsed_s": round(time.time() - t0_us / 1e6, 1),
    "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "ok": [s["name"] for s in steps if s["status"] == "ok"],
    "not_ok": [s["name"] for s in steps if s["status"] != "ok"],
    "steps": steps,
}
tmp = out / ".gpu_check.json.tmp"
tmp.write_text(json.dumps(summary, indent=2) + "\n")
os.replace(tmp, out / "gpu_check.json")
PYEOF
}

say "gpu_check.sh mode=$MODE budget=${BUDGET}s repo=$REPO out=$OUT work=$WORK"
say "host: $(uname -srm), $(getconf _NPROCESSORS_ONLN) cores; python3: $(command -v python3)"

# ------------------------------------------------------------------ install + environment
if [[ $MODE == gpu ]]; then
    run_step install 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$REPO"/.whl/*.whl
else
    skip_step install "cpu-smoke: this venv already has the packages" "python3 -m pip install ... .whl/*.whl"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    run_step nvidia_smi 20 bash -c 'nvidia-smi; printf "GPU: "; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader'
else
    skip_step nvidia_smi "nvidia-smi not found" "nvidia-smi"
fi

cat >"$WORK/env_check.py" <<'PYEOF'
import importlib
import importlib.metadata as md
import json

import torch

names = ["torch", "lightning", "monai", "SimpleITK", "nibabel", "jsonargparse", "docstring_parser", "typeshed_client",
         "picai_eval", "report_guided_annotation", "mlxtend", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
         "joblib", "einops", "tensorboard", "pytest"]
v = {}
for n in names:
    try:
        v[n] = md.version(n)
    except md.PackageNotFoundError:
        v[n] = None
for mod in ("monai", "SimpleITK", "nibabel", "jsonargparse", "docstring_parser", "typeshed_client", "picai_eval",
            "report_guided_annotation", "mlxtend.evaluate", "medssl.cli", "medssl.evaluation.picai"):
    importlib.import_module(mod)
import medssl  # noqa: E402

v["medssl_from"] = medssl.__file__
v["cuda_available"] = torch.cuda.is_available()
v["cuda"] = torch.version.cuda
if torch.cuda.is_available():
    v["device"] = torch.cuda.get_device_name(0)
    v["cudnn"] = torch.backends.cudnn.version()
print("versions:" + json.dumps(v))
PYEOF
run_step env 60 bash -c "\"$PY\" -m medssl --help >$WORK/help.txt && head -3 $WORK/help.txt && \"$PY\" -m medssl fit --help >/dev/null && echo 'medssl fit --help: ok' && \"$PY\" $WORK/env_check.py"

# ------------------------------------------------------------------ (a) the benchmark suite
run_step bench 270 "$PY" benchmarks/run.py "${BENCH_ARGS[@]}" --out "$OUT/results_gpu.json"

# ------------------------------------------------------------------ (b) the CUDA-only tests
# No -x: pytest runs the file in order, and a failure in an earlier test must not skip the CUDA one.
run_step pytest 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_speed_paths.py

# ------------------------------------------------------------------ (c) two-fold tiny cv
run_step synth_cv 40 "$PY" -m medssl synth picai "$WORK/picai" --cases "$CV_CASES" --seed 0
run_step cv 150 "$PY" -m medssl cv --config configs/finetune/cswin_picai_tiny.yaml --data.root "$WORK/picai" \
    --data.cache_dir "$WORK/cache" --folds 0,1 --trainer.accelerator "$ACCEL" --trainer.devices 1 \
    --trainer.max_epochs "$CV_EPOCHS" --trainer.enable_progress_bar false --output "$WORK/cv"
[[ -f $WORK/cv/cv_report.json ]] && cp "$WORK/cv/cv_report.json" "$OUT/cv_report.json"

# ------------------------------------------------------------------ (d) inference on real-size cases
run_step synth_real 40 "$PY" -c "from medssl.data.synth import synth_picai; synth_picai('$WORK/picai_real', cases=$REAL_CASES, seed=1, fov_mm=192.0, first_patient=20000); print('wrote $REAL_CASES real-size studies')"
# fold 0's reported checkpoint (fold_result.json), else its best by the monitored score, else last.ckpt
CKPT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("checkpoint") or "")' \
    "$WORK/cv/fold_0/fold_result.json" 2>/dev/null)
[[ -n $CKPT && -f $CKPT ]] || CKPT=$(ls -t "$WORK"/cv/fold_0/checkpoints/*.ckpt 2>/dev/null | grep -v '/last\.ckpt$' | head -1)
[[ -n $CKPT ]] || CKPT=$(ls "$WORK"/cv/fold_0/checkpoints/last.ckpt 2>/dev/null)
if [[ -n $CKPT ]]; then
    say "fold 0 checkpoint: $CKPT"
    run_step infer 90 "$PY" -m medssl infer --checkpoint "$CKPT" --data.root "$WORK/picai_real" \
        --data.cache_dir "$WORK/cache_infer" --output "$WORK/infer"
    [[ -f $WORK/infer/predictions.json ]] && cp "$WORK/infer/predictions.json" "$OUT/infer_predictions.json"
else
    skip_step infer "no fold_0 checkpoint from the cv step" "medssl infer --checkpoint <fold_0 checkpoint> ..."
fi
INFER_HELP=""
(( BUDGET - $(elapsed) - RESERVE >= MIN_STEP )) && INFER_HELP=$(timeout 30 "$PY" -m medssl infer --help 2>&1)
if grep -q -- '--cv' <<<"$INFER_HELP"; then
    run_step infer_cv 90 "$PY" -m medssl infer --cv "$WORK/cv" --data.root "$WORK/picai_real" \
        --data.cache_dir "$WORK/cache_infer_cv" --output "$WORK/infer_cv"
    ENS=infer_cv
    # Fallback: the same fold ensemble through several --checkpoint (each finished fold's reported checkpoint).
    if [[ $LAST_RC != 0 ]] && grep -qE 'CHECKPOINT \[CHECKPOINT' <<<"$INFER_HELP"; then
        mapfile -t FOLD_CKPTS < <("$PY" -c 'import json, sys
for p in sys.argv[1:]:
    print(json.load(open(p))["checkpoint"])' "$WORK"/cv/fold_*/fold_result.json 2>/dev/null)
        if (( ${#FOLD_CKPTS[@]} > 0 )); then
            say "infer --cv did not run (exit ${LAST_RC:-skipped}); the same ensemble through --checkpoint ${FOLD_CKPTS[*]}"
            run_step infer_ensemble 90 "$PY" -m medssl infer --checkpoint "${FOLD_CKPTS[@]}" \
                --data.root "$WORK/picai_real" --data.cache_dir "$WORK/cache_infer_ens" --output "$WORK/infer_ensemble"
            ENS=infer_ensemble
        fi
    fi
    [[ -f $WORK/$ENS/predictions.json ]] && cp "$WORK/$ENS/predictions.json" "$OUT/infer_cv_predictions.json"
elif [[ -z $INFER_HELP ]]; then
    skip_step infer_cv "budget: no time left to ask medssl infer --help" "medssl infer --cv $WORK/cv ..."
else
    skip_step infer_cv "medssl infer --help offers no --cv: the ensemble of all folds is not timed" \
        "medssl infer --cv $WORK/cv --data.root $WORK/picai_real --output $WORK/infer_cv"
fi

# ------------------------------------------------------------------ (e) torch.compile, with the time left
LEFT=$(( BUDGET - $(elapsed) - RESERVE ))
if (( LEFT >= 100 )); then
    cat >"$WORK/compile_check.py" <<'PYEOF'
"""torch.compile'd train steps of our two models against the plain ones (alternated), one dtype."""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from benchmarks.bench_cswin import make_loss_step, time_alternating  # noqa: E402
from benchmarks.run import DTYPES, SIZES, _median, build_case, write_json_atomic  # noqa: E402

sizes, dev, backend, dtype, out = sys.argv[1], torch.device(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
res = {"sizes": sizes, "dtype": dtype, "backend": backend, "device": str(dev), "torch": torch.__version__,
       "how": "benchmarks.run.build_case + bench_cswin.make_loss_step; model.compile(backend); first step = compile"}
for pair in ("bmmae_pretrain", "cswin_unet"):  # the quicker compile first: the budget may cut the second
    cfg = SIZES[sizes][pair]
    steps, first = {}, {}
    for variant in ("plain", "compiled"):
        model, loss_fn, _ = build_case(pair, "ours", cfg, dev)
        if variant == "compiled":
            model.compile(backend=backend)
        steps[variant] = make_loss_step(model, loss_fn, dev, DTYPES[dtype])
        start = time.perf_counter()
        steps[variant]()
        first[variant] = time.perf_counter() - start
        print(f"{pair} {variant}: first step {first[variant]:.1f} s", flush=True)
        res[pair] = {"first_step_s": {v: round(t, 2) for v, t in first.items()}}  # kept if the timing is cut
        write_json_atomic(out, res)
    times = time_alternating(steps, int(cfg["repeats"]), max(int(cfg["warmup"]) - 1, 0))
    block = {v: {"first_step_s": round(first[v], 2), "step_s": round(_median([w for w, _ in times[v]]), 5)}
             for v in steps}
    block["ratio_compiled_to_plain"] = round(block["compiled"]["step_s"] / block["plain"]["step_s"], 3)
    res[pair] = block
    print(pair, json.dumps(block), flush=True)
    write_json_atomic(out, res)
    del steps, model, loss_fn
    if dev.type == "cuda":
        torch.cuda.empty_cache()
PYEOF
    run_step compile 600 "$PY" "$WORK/compile_check.py" "$COMPILE_SIZES" "$COMPILE_DEVICE" "$COMPILE_BACKEND" \
        "$COMPILE_DTYPE" "$OUT/compile_gpu.json"
else
    skip_step compile "only ${LEFT}s of the budget left (needs 100)" "torch.compile of the CSwin and BM-MAE steps"
fi

summarise
if [[ $MODE == cpu ]]; then  # a dry run leaves its step logs in $WORK, not the data sets and runs (about 120 MB)
    rm -rf "$WORK"/picai "$WORK"/picai_real "$WORK"/cache* "$WORK"/cv "$WORK"/infer*/ 2>/dev/null
fi
say "done: $(elapsed)s of ${BUDGET}s; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
# The summary once more at the end of the output (what a tool that keeps only the output's tail shows).
"$PY" - "$OUT/gpu_check.json" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no gpu_check.json: {e}")
print(f"SUMMARY mode={d['mode']} elapsed={d['elapsed_s']}s ok={d['ok']} not_ok={d['not_ok']}")
for s in d["steps"]:
    fig = json.dumps(s.get("figures") or {}, separators=(",", ":"))
    print(f"  {s['name']}: {s['status']}, exit {s['exit_code']}, {s.get('wall_s')} s  {fig[:900]}")
PYEOF
exit 0
