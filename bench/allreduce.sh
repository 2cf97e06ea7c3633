#!/usr/bin/env bash
# All-reduce bandwidth on this machine, side by side in one run:
# ride-trainer's TCP ring backend against torch.distributed + gloo (same PyPI
# torch), 2 and 4 local ranks, 1 / 25 / 100 MB float32 messages, ABAB rounds.
#   ROUNDS=2 ITERS=10 bench/allreduce.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
ROUNDS="${ROUNDS:-2}"; ITERS="${ITERS:-10}"; SIZES="${SIZES:-1,25,100}"
out="$(mktemp -d)"
for round in $(seq 1 "$ROUNDS"); do
  for world in 2 4; do
    "$RIDE_BENCH_BIN" allreduce --world "$world" --sizes-mb "$SIZES" --iters "$ITERS" \
      | sed "s/^/ride /" >> "$out/results"
    OMP_NUM_THREADS=1 "$RIDE_VENV/bin/python" "$here/gloo_allreduce.py" "$world" "$SIZES" 2 "$ITERS" \
      | sed "s/^/gloo /" >> "$out/results"
  done
done
"$RIDE_VENV/bin/python" - "$out/results" <<'PY'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    impl, js = line.split(" ", 1)
    r = json.loads(js)
    rows.setdefault((r["world"], r["bytes"]), {}).setdefault(impl, []).append(r["busbw_gbps"])
print(f"{'ranks':>5} {'size':>8} {'ride GB/s':>10} {'gloo GB/s':>10} {'ride/gloo':>9}   (bus bandwidth, median of rounds)")
for (w, b), v in sorted(rows.items()):
    r, g = statistics.median(v["ride"]), statistics.median(v["gloo"])
    print(f"{w:>5} {b/1e6:>6.0f}MB {r:>10.2f} {g:>10.2f} {r/g:>8.2f}x")
PY
rm -rf "$out"
