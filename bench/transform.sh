#!/usr/bin/env bash
# Train-transform throughput per core, side by side in one run: ride-trainer
# (Rust: DCT-scaled JPEG decode, SIMD bicubic resize, RandAugment, erasing)
# against timm's transform on torchvision + PIL from PyPI, same settings
# (Swin-T LT config: RRC 224 bicubic, flip, rand-m9-mstd0.5-inc1, REPROB 0.25),
# on N generated photo-like JPEGs, one thread each, alternating rounds.
#   N=300 ROUNDS=3 bench/transform.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIDE_SETUP_BENCH=1 "$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
N="${N:-300}"; ROUNDS="${ROUNDS:-3}"
CFG="$here/../configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml"
photos="$RIDE_CACHE/bench-photos-$N"
[ -d "$photos" ] || "$RIDE_VENV/bin/python" "$here/make_photos.py" "$photos" "$N"
out="$(mktemp)"
for _ in $(seq 1 "$ROUNDS"); do
  echo "ride $(OMP_NUM_THREADS=1 "$RIDE_BENCH_BIN" transform --cfg "$CFG" --images "$photos" --rounds 1 | tail -1)" >> "$out"
  echo "torch $(OMP_NUM_THREADS=1 "$RIDE_VENV/bin/python" "$here/torchvision_transform.py" "$photos" 1 224 | tail -1)" >> "$out"
done
"$RIDE_VENV/bin/python" - "$out" "$N" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    impl, js = line.split(" ", 1)
    rows.setdefault(impl, []).append(json.loads(js)["images_per_second"])
r, t = statistics.median(rows["ride"]), statistics.median(rows["torch"])
print(f"{sys.argv[2]} photo-like JPEGs, train transform, 1 thread (median of {len(rows['ride'])} rounds)")
print(f"ride-trainer            {r:8.1f} images/s/core   rounds {['%.1f' % x for x in rows['ride']]}")
print(f"timm+torchvision+PIL    {t:8.1f} images/s/core   rounds {['%.1f' % x for x in rows['torch']]}")
print(f"speed-up                {r / t:8.2f} x")
PY
rm -f "$out"
