#!/usr/bin/env bash
# Benchmark: one CPU training step of the 1-expert Swin config, ride-trainer
# (Rust, tch) against timm's Swin in PyTorch from the same torch wheel, with
# the same threads, batch and image size, measured in one run, side by side.
# Usage: bench/cpu_train_step.sh [CFG] [BATCH] [STEPS] [THREADS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RIDE_SETUP_BENCH=1 "$root/scripts/setup.sh" >/dev/null
source "$root/scripts/env.sh"
cfg="${1:-$root/configs/swin_tiny_patch4_window7_224.yaml}"
batch="${2:-8}"; steps="${3:-5}"; threads="${4:-$(nproc)}"
"$RIDE_VENV/bin/python" -c "import yaml" 2>/dev/null || "$RIDE_VENV/bin/pip" install -q pyyaml
echo "config $cfg, batch $batch, $steps timed steps (+2 warm-up), $threads threads, CPU"
# Alternate the two implementations (ABAB...) so drift on a shared machine
# hits both alike; each round reports its median step.
rounds="${ROUNDS:-2}"; rust="["; ref="["
for r in $(seq 1 "$rounds"); do
  sep=$([ "$r" -gt 1 ] && echo "," || true)
  rust+="$sep$("$RIDE_BENCH_BIN" step --cfg "$cfg" --batch-size "$batch" --steps "$steps" --threads "$threads" --device cpu)"
  ref+="$sep$("$RIDE_VENV/bin/python" "$root/bench/timm_train_step.py" --cfg "$cfg" --batch-size "$batch" --steps "$steps" --threads "$threads" 2>/dev/null)"
done
rust+="]"; ref+="]"
"$RIDE_VENV/bin/python" - "$rust" "$ref" "$batch" <<'PY'
import json, sys
import statistics
rs, ts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
r = statistics.median(x["median_ms"] for x in rs)
t = statistics.median(x["median_ms"] for x in ts)
batch = int(sys.argv[3])
print(f"{'implementation':<28}{'median ms/step':>16}{'img/s':>10}   per-round medians (ms)")
print(f"{'ride-trainer (Rust, tch)':<28}{r:>16.1f}{batch / r * 1e3:>10.2f}   {[round(x['median_ms']) for x in rs]}")
print(f"{'timm Swin (PyTorch)':<28}{t:>16.1f}{batch / t * 1e3:>10.2f}   {[round(x['median_ms']) for x in ts]}")
print(f"ride-trainer optimizer part (clip + AdamW): {statistics.median(x['optimizer_ms'] for x in rs):.1f} ms")
print(f"speed-up of ride-trainer: {t / r:.3f}x")
PY
