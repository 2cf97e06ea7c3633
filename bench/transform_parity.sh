#!/usr/bin/env bash
# Evaluation-transform parity: ride-trainer's eval tensors (libjpeg-turbo
# region decode, fast_image_resize bicubic) against the reference's
# torchvision + PIL transform, image by image, on N generated photo-like JPEGs;
# and the train transform's output statistics against timm's (random, so
# compared as distributions).  N=300 bench/transform_parity.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIDE_SETUP_BENCH=1 "$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
N="${N:-300}"
CFG="$here/../configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml"
photos="$RIDE_CACHE/bench-photos-$N"
[ -d "$photos" ] || "$RIDE_VENV/bin/python" "$here/make_photos.py" "$photos" "$N"
dump="$(mktemp --suffix=.safetensors)"
train_dump="$(mktemp --suffix=.safetensors)"
trap 'rm -f "$dump" "$train_dump"' EXIT
ride_json="$(OMP_NUM_THREADS=1 "$RIDE_BENCH_BIN" transform --eval --cfg "$CFG" --images "$photos" --rounds 3 --dump "$dump" | tail -1)"
parity_json="$(OMP_NUM_THREADS=1 "$RIDE_VENV/bin/python" "$here/transform_parity.py" "$photos" "$dump" 224 | tail -1)"
OMP_NUM_THREADS=1 "$RIDE_BENCH_BIN" transform --cfg "$CFG" --images "$photos" --rounds 1 --dump "$train_dump" >/dev/null
train_json="$(OMP_NUM_THREADS=1 "$RIDE_VENV/bin/python" "$here/transform_parity.py" --train "$photos" "$train_dump" 224 | tail -1)"
"$RIDE_VENV/bin/python" - "$ride_json" "$parity_json" "$train_json" <<'PY'
import json, sys
r, p, t = (json.loads(a) for a in sys.argv[1:4])
print(f"{p['images']} photo-like JPEGs, eval transform (resize 256 bicubic + centre crop 224)")
print(f"ride-trainer eval transform       {r['images_per_second']:8.1f} images/s/core")
print("difference from torchvision + PIL, in 8-bit grey levels:")
print(f"  mean absolute                   {p['mean_abs_levels']:8.3f}")
print(f"  largest, median over images     {p['median_of_max_levels']:8.2f}")
print(f"  largest, any image              {p['max_abs_levels']:8.2f}")
print(f"  values within 2 levels          {100 * p['share_within_2_levels']:8.2f} %")
print("train transform output statistics (normalised units), per channel R G B:")
fmt = lambda v: " ".join(f"{x:7.3f}" for x in v)
print(f"  mean  ride-trainer {fmt(t['ours_mean'])}   timm {fmt(t['timm_mean'])}")
print(f"  std   ride-trainer {fmt(t['ours_std'])}   timm {fmt(t['timm_std'])}")
PY
