#!/usr/bin/env bash
# The GPU path, run for real in one call of about 8 minutes (issue 16 / L).
#
#   python benchmarks/gpu_data.py          # on the machine with the shared data: fills ./data (git-ignored)
#   bash benchmarks/gpu_check.sh           # on the GPU machine, with ./data carried; results in $OUT
#
# Steps (each guarded: one failing does not stop the others; the exit status is the
# number of failed steps): 1 versions, 2 gpu tests + a short `search trial`, 3 throughput
# (medtune default vs fp32 NCHW vs DataLoader), 4 packing 1 vs 4 trials, 5 resnet50 MFU.
# Log: $OUT/gpu_check.log; numbers: $OUT/gpu_check.json (+ one JSON per step).
#
# CPU smoke run (every Python step imports and runs a few iterations):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
TOTAL=${GPU_CHECK_BUDGET_S:-500}          # global deadline for all steps, seconds
export MEDTUNE_DATA=${MEDTUNE_DATA:-$ROOT/data}
export MEDTUNE_CACHE=${MEDTUNE_CACHE:-/tmp/medtune-gpu-cache}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null && PY=$ROOT/.venv/bin/python
LOG=$OUT/gpu_check.log
: > "$LOG"
START=$(date +%s)
FAILED=0
STEPS=()

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: run CMD with a timeout capped by what is left of the budget.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( TOTAL - ($(date +%s) - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then log "SKIP $name: budget spent"; STEPS+=("\"$name\": \"skipped (budget)\""); return; fi
  log "START $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  if (( rc == 0 )); then log "OK $name"; STEPS+=("\"$name\": \"ok\"")
  else log "FAIL $name rc=$rc"; STEPS+=("\"$name\": \"rc $rc\""); FAILED=$((FAILED + 1)); fi
}

log "gpu_check: device=$DEVICE tiny=$TINY OUT=$OUT MEDTUNE_DATA=$MEDTUNE_DATA python=$PY"
[ -f "$MEDTUNE_DATA/medmnist/pneumoniamnist.npz" ] || log "WARNING: no $MEDTUNE_DATA/medmnist/pneumoniamnist.npz (run benchmarks/gpu_data.py and carry data)"
[ -f "$MEDTUNE_DATA/pcam/pcam_gpu_subset_96px.zip" ] || log "WARNING: no PCam subset under $MEDTUNE_DATA/pcam (run benchmarks/gpu_data.py and carry data)"

# 1. versions
step versions 60 bash -c "nvidia-smi || echo 'no nvidia-smi'; $PY - <<'PYEOF' > '$OUT/versions.json'
import json, platform, subprocess, torch
info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda_runtime': torch.version.cuda,
        'cudnn': torch.backends.cudnn.version(), 'cuda_available': torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}',
                bf16_supported=torch.cuda.is_bf16_supported())
try:
    info['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                    capture_output=True, text=True).stdout.strip() or None
except OSError:
    info['driver'] = None
for mod in ('torchvision', 'timm', 'numpy'):
    try: info[mod] = __import__(mod).__version__
    except Exception as e: info[mod] = repr(e)
print(json.dumps(info))
PYEOF
cat '$OUT/versions.json'"

# 2. the gpu tests (skipped without CUDA) and a short `search trial` on the device
step pytest_gpu 150 "$PY" -m pytest -q -rs -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"
if [ "$TINY" = 1 ]; then TSET=(--set epochs=1 --set train_fraction=0.05 --set device=$DEVICE)
else TSET=(--set epochs=2 --set device=$DEVICE); fi
step search_trial 90 "$PY" -m search trial spaces/quickstart.yaml "${TSET[@]}" --out /tmp/medtune-gpu-trial

# 3. throughput: medtune default (bf16, channels_last, GPU-resident) vs fp32 NCHW vs DataLoader
if [ "$TINY" = 1 ]; then TP=(--models cnn3 --images 128 --rounds 1 --batch-size 32 --calibration-images 64 --baseline-configs "1,0")
else TP=(--models resnet18 tf_efficientnet_lite0 --images 4096 --rounds 3 --batch-size 256); fi
step throughput 200 "$PY" benchmarks/gpu_throughput.py --device "$DEVICE" "${TP[@]}" --json "$OUT/throughput.json"

# 4. packing: 1 vs 4 concurrent trial processes on one GPU
if [ "$TINY" = 1 ]; then PK=(--backbone cnn3 --images 128 --epochs 1 --batch-size 32 --procs 1 2)
else PK=(--backbone resnet18 --images 4096 --epochs 3 --batch-size 128 --procs 1 4); fi
step packing 150 "$PY" benchmarks/gpu_packing.py --device "$DEVICE" "${PK[@]}" --json "$OUT/packing.json"

# 5. model FLOP utilisation, resnet50 at 96 px
if [ "$TINY" = 1 ]; then MF=(--batch-size 4 --steps 1 --warmup 1)
else MF=(--batch-size 256 --steps 30 --warmup 10); fi
step mfu 90 "$PY" benchmarks/gpu_mfu.py --device "$DEVICE" --backbone resnet50 --size 96 "${MF[@]}" --json "$OUT/mfu.json"

# numbers, all in one file
"$PY" - "$OUT" "$FAILED" "$(( $(date +%s) - START ))" "{$(IFS=,; echo "${STEPS[*]}")}" <<'PYEOF' 2>>"$LOG"
import json, sys
from pathlib import Path
out, failed, seconds, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
result = {"steps": steps, "failed_steps": failed, "seconds": seconds}
for name in ("versions", "throughput", "packing", "mfu"):
    f = out / f"{name}.json"
    try:
        result[name] = json.loads(f.read_text())
    except Exception as e:  # noqa: BLE001
        result[name] = f"missing: {e}"
if isinstance(result["throughput"], dict):
    result["throughput_summary"] = {r["model"]: {n: a["img_s"] for n, a in r["arms"].items()}
                                    for r in result["throughput"]["results"]}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps({k: result[k] for k in ("steps", "failed_steps", "seconds")}))
PYEOF
log "done: $FAILED failed step(s); numbers in $OUT/gpu_check.json"
exit "$FAILED"
