#!/usr/bin/env bash
# The device check: run in one go on a machine with an NVIDIA GPU and the
# PyTorch wheel (torch 2.11, nothing else), with ride-trainer
# and ride-bench built on the development machine and carried over (the
# GPU machine needs no Rust). Prints one table:
#   - the authors' model as rebuilt in bench/ride_swin_reference.py against
#     the fixtures their code produced (CPU, seconds);
#   - fp16 and bf16 training steps of ride-trainer with a finite loss;
#   - Swin-T 2-expert training steps, img/s and peak memory, ride-trainer
#     (fused AdamW, autocast) against the authors' model in PyTorch eager
#     with AMP, same batch, same image size, measured in this run;
#   - NCCL: a one-rank communicator, all-reduce and broadcast on the GPU.
# Usage: scripts/gpu-check.sh [BATCH]
#   RIDE_BIN, RIDE_BENCH_BIN  the binaries (default: target/release or $CARGO_TARGET_DIR)
#   PYTHON                    python with torch (default: python3)
#   DEVICE                    cuda (default) or cpu (a smoke run of this script)
#   STEPS                     timed steps per measurement (default 20; 2 on cpu)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
batch="${1:-64}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
target="${CARGO_TARGET_DIR:-$root/target}"
RIDE_BIN="${RIDE_BIN:-$target/release/ride-trainer}"
RIDE_BENCH_BIN="${RIDE_BENCH_BIN:-$target/release/ride-bench}"
if [ "$DEVICE" = cpu ]; then steps="${STEPS:-2}"; warmup=1; else steps="${STEPS:-20}"; warmup=5; fi
# The binaries were linked against the development machine's wheel; point
# them at this machine's (torch's own libraries find the CUDA ones).
torch_lib="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$(mktemp -d "${TMPDIR:-/tmp}/ride-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
results="$work/results.jsonl"
row() { printf '%s\n' "$1" >> "$results"; }
json() { "$PYTHON" -c 'import json,sys; print(json.dumps(dict(a.split("=",1) for a in sys.argv[1:])))' "$@"; }

echo "== device"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

echo "== the authors' model, rebuilt, against their fixtures"
if out="$("$PYTHON" "$root/bench/ride_swin_reference.py" --check "$root/trainer/tests/fixtures" 2>&1)"; then
  row "$(json check="reference model = authors' outputs" result=PASS detail="$(echo "$out" | tr '\n' ';')")"
else
  row "$(json check="reference model = authors' outputs" result=FAIL detail="$(echo "$out" | tail -1)")"
fi

echo "== fp16 and bf16 training steps (ride-trainer train, synthetic data, 1 epoch)"
for dtype in float16 bfloat16; do
  if [ "$DEVICE" = cpu ] && [ "$dtype" = float16 ]; then
    row "$(json check="train step $dtype" result=SKIP detail="fp16 autocast is CUDA-only")"; continue
  fi
  log="$work/train-$dtype.log"
  if timeout 300 "$RIDE_BIN" train --cfg "$root/configs/synthetic_ride_2e_cpu.yaml" --device "$DEVICE" \
      --output "$work/out-$dtype" --metrics-addr off --no-progress --amp-opt-level O1 \
      --opts AMP_DTYPE "$dtype" TRAIN.EPOCHS 1 > "$log" 2>&1; then
    loss="$(sed -n 's/^epoch 1\/1 loss \([^ ]*\).*/\1/p' "$log" | head -1)"
    ok="$("$PYTHON" -c "import math,sys; v=float(sys.argv[1] or 'nan'); print('PASS' if math.isfinite(v) else 'FAIL')" "$loss")"
    row "$(json check="train step $dtype" result="$ok" detail="epoch loss $loss; $(grep -m1 'mixed precision' "$log" || true)")"
  else
    row "$(json check="train step $dtype" result=FAIL detail="$(tail -1 "$log")")"
  fi
done

if [ "$DEVICE" = cpu ]; then
  row "$(json check="NCCL 1-rank init and all-reduce" result=SKIP detail="needs a GPU")"
elif out="$("$RIDE_BENCH_BIN" nccl 2>&1)"; then
  row "$(json check="NCCL 1-rank init and all-reduce" result=PASS detail="$out")"
else
  row "$(json check="NCCL 1-rank init and all-reduce" result=FAIL detail="$(echo "$out" | tail -1)")"
fi

echo "== Swin-T 2 experts, batch $batch, $steps timed steps after $warmup"
cfg="$root/configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml"
"$RIDE_BENCH_BIN" spec --cfg "$cfg" > "$work/spec.json"
amps="float16 bfloat16"; [ "$DEVICE" = cpu ] && amps="bfloat16"
for amp in $amps; do
  # Alternate the two implementations so drift hits both alike.
  r="$("$RIDE_BENCH_BIN" step --cfg "$cfg" --batch-size "$batch" --warmup "$warmup" --steps "$steps" \
        --device "$DEVICE" --amp "$amp" --fused-adamw)"
  t="$("$PYTHON" "$root/bench/ride_swin_step.py" --spec "$work/spec.json" --batch-size "$batch" --warmup "$warmup" \
        --steps "$steps" --device "$DEVICE" --amp "$amp")"
  row "$(json check="throughput $amp" result=MEASURED ride="$r" reference="$t")"
done

"$PYTHON" - "$results" "$batch" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch = int(sys.argv[2])
print()
print(f"{'check':<38}{'result':<17}detail")
for r in rows:
    if r["result"] != "MEASURED":
        print(f"{r['check']:<38}{r['result']:<17}{r.get('detail', '')[:110]}")
print()
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
print(f"{'Swin-T 2 experts, batch ' + str(batch):<34}{'amp':<10}{'img/s':>9}{'ms/step':>10}{'peak GiB':>10}")
for r in rows:
    if r["result"] != "MEASURED":
        continue
    amp = r["check"].split()[-1]
    ride, ref = json.loads(r["ride"]), json.loads(r["reference"])
    print(f"{'ride-trainer (fused AdamW)':<34}{amp:<10}{ride['images_per_second']:>9.1f}{ride['median_ms']:>10.1f}{gib(ride.get('peak_memory_bytes')):>10}")
    print(f"{'authors model, PyTorch eager AMP':<34}{amp:<10}{ref['images_per_second']:>9.1f}{ref['median_ms']:>10.1f}{gib(ref.get('peak_memory_bytes')):>10}")
    print(f"{'  speed-up of ride-trainer':<34}{'':<10}{ride['images_per_second'] / ref['images_per_second']:>9.2f}x")
    same = "equal" if ride["params"] == ref["params"] else "DIFFERENT"
    print(f"{'  parameters':<34}{'':<10}{ride['params']:>9} vs {ref['params']} ({same})")
PY
