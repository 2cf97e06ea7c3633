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
rust=$("$RIDE_BIN" bench-step --cfg "$cfg" --batch-size "$batch" --steps "$steps" --threads "$threads" --device cpu)
ref=$("$RIDE_VENV/bin/python" "$root/bench/timm_train_step.py" --cfg "$cfg" --batch-size "$batch" --steps "$steps" --threads "$threads" 2>/dev/null)
"$RIDE_VENV/bin/python" - "$rust" "$ref" <<'PY'
import json, sys
r, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'implementation':<28}{'median ms/step':>16}{'img/s':>10}")
print(f"{'ride-trainer (Rust, tch)':<28}{r['median_ms']:>16.1f}{r['images_per_second']:>10.2f}")
print(f"{'timm Swin (PyTorch)':<28}{t['median_ms']:>16.1f}{t['images_per_second']:>10.2f}")
print(f"speed-up of ride-trainer: {t['median_ms'] / r['median_ms']:.3f}x")
PY
