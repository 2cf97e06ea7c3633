#!/usr/bin/env bash
# Gradient all-reduce overlapped with backward against averaging after
# backward, in one run. Two ranks (TCP ring, one compute thread each) train
# Swin-T with 2 RIDE experts on synthetic 224x224 images for one short
# epoch, in alternating rounds, over two links:
#   loopback  both ranks on this machine's loopback;
#   LINK      (default 1gbit) each rank in its own network namespace, joined
#             by a veth pair shaped to LINK with tc (root, iproute2).
# Prints seconds per iteration for each link and mode.
#   ROUNDS=3 ITERS=8 BATCH=4 LINK=1gbit bench/ddp_overlap.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
ROUNDS="${ROUNDS:-3}"; ITERS="${ITERS:-8}"; BATCH="${BATCH:-4}"; LINK="${LINK:-1gbit}"
work="$(mktemp -d)"
NS=(ride-bench-a ride-bench-b); NET=10.231.7
cleanup() {
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# Enough synthetic images (20 classes) for ITERS iterations of 2 x BATCH.
per_class=$(( (ITERS * 2 * BATCH + 19) / 20 ))
train_args=(--cfg "$here/../configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml"
  --device cpu --no-progress --metrics-addr off
  --opts DATA.DATASET synthetic DATA.SYNTHETIC.NUM_CLASSES 20
  DATA.SYNTHETIC.MAX_PER_CLASS "$per_class" DATA.SYNTHETIC.IMBALANCE_FACTOR 1
  DATA.SYNTHETIC.TEST_PER_CLASS 1 MODEL.NUM_CLASSES 20 DATA.BATCH_SIZE "$BATCH"
  DATA.NUM_WORKERS 1 TRAIN.EPOCHS 1 TRAIN.WARMUP_EPOCHS 0 SAVE_FREQ 100)

shaped_link() {
  [ "$(id -u)" = 0 ] && command -v tc >/dev/null && command -v nsenter >/dev/null || return 1
  cleanup_ns() { for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done; }
  cleanup_ns
  ip netns add "${NS[0]}" && ip netns add "${NS[1]}" || return 1
  ip link add rbench0 netns "${NS[0]}" type veth peer name rbench1 netns "${NS[1]}"
  for i in 0 1; do
    ip -n "${NS[$i]}" addr add "$NET.$((i + 1))/24" dev "rbench$i"
    ip -n "${NS[$i]}" link set "rbench$i" up
    ip -n "${NS[$i]}" link set lo up
    ip netns exec "${NS[$i]}" tc qdisc add dev "rbench$i" root tbf rate "$LINK" burst 1mb latency 100ms
  done
}

epoch_seconds() { # log on stdin -> seconds of the training loop
  grep -o 'epoch 1/1 loss [^|]*' | sed -E 's/.* ([0-9.]+)s data.*/\1/'
}

run() { # $1 = link, $2 = mode, rest = extra env
  local link="$1" mode="$2"; shift 2
  local out="$work/$link-$mode" log="$work/$link-$mode.log"
  if [ "$link" = loopback ]; then
    env OMP_NUM_THREADS=1 "$@" "$RIDE_BIN" launch --nproc-per-node 2 -- \
      "${train_args[@]}" --output "$out" >"$log" 2>&1
  else
    for i in 1 0; do
      env OMP_NUM_THREADS=1 "$@" nsenter --net="/var/run/netns/${NS[$i]}" \
        "$RIDE_BIN" launch --nnodes 2 --node-rank "$i" --master-addr "$NET.1" \
        --master-port 29731 -- "${train_args[@]}" --output "$out" >"$log.$i" 2>&1 &
    done
    wait
    cat "$log.0" "$log.1" >"$log"
  fi
  local secs
  secs="$(epoch_seconds <"$log")" || { echo "run $link $mode failed:" >&2; tail -20 "$log" >&2; exit 1; }
  echo "$link $mode $secs" >>"$work/results"
  rm -rf "$out"
}

links=(loopback)
if shaped_link; then links+=("$LINK"); else echo "note: not root or no iproute2/tc: loopback only" >&2; fi
for round in $(seq 1 "$ROUNDS"); do
  for link in "${links[@]}"; do
    run "$link" during
    run "$link" after RIDE_DDP_OVERLAP=0
  done
done
grep -h "overlapped with backward" "$work"/*-during.log | head -1 || true
"$RIDE_VENV/bin/python" - "$work/results" "$ITERS" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    link, mode, secs = line.split()
    rows.setdefault(link, {}).setdefault(mode, []).append(float(secs) / int(sys.argv[2]))
print(f"{'link':>9} {'during backward':>16} {'after backward':>15} {'speed-up':>9}   s/iteration, median of rounds")
for link, m in rows.items():
    d, a = statistics.median(m["during"]), statistics.median(m["after"])
    print(f"{link:>9} {d:>16.3f} {a:>15.3f} {a/d:>8.2f}x   rounds: during {m['during']}, after {m['after']}")
PY
