#!/usr/bin/env bash
# Does RIDE help the tail on real images? CE, LDAM-DRW, RIDE with 2 and 3
# experts, and RIDE-3 with the router, on long-tailed handwritten digits
# (experiments/digits_lt.py), SEEDS seeds each, then a mean ± sd table.
#
#   experiments/digits.sh                 # seeds 0 1 2, into output/digits-lt
#   SEEDS="0 1 2 3 4" OUT=/tmp/x experiments/digits.sh
#
# About 1 min per RIDE run on 2 CPU cores (60 epochs of 422 images, 16x16).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
"$root/scripts/setup.sh"
# shellcheck source=../scripts/env.sh
source "$root/scripts/env.sh"
SEEDS="${SEEDS:-0 1 2}"
OUT="${OUT:-$root/output/digits-lt}"
DATA="${DATA:-$RIDE_CACHE/data/digits-lt-if20}"
BIN="${RIDE_EXPERIMENT_BIN:-$RIDE_BIN}"
cd "$root"
python -c "import sklearn" 2>/dev/null || pip install --disable-pip-version-check -q "scikit-learn==1.9.1"
[ -f "$DATA/counts.json" ] || python experiments/digits_lt.py "$DATA" --imb-factor 20 --size 16

train() { # config seed extra...
  local cfg=$1 seed=$2
  shift 2
  "$BIN" train --cfg "configs/$cfg.yaml" --device cpu --output "$OUT" --tag "seed$seed" \
    --data-path "$DATA" --no-progress --metrics-addr off "$@" --opts SEED "$seed" \
    > "$OUT/logs/$cfg-seed$seed$([ $# -gt 0 ] && echo -router).log" 2>&1
}
mkdir -p "$OUT/logs"
for seed in $SEEDS; do
  for m in ce ldam_drw ride_2e ride_3e; do
    echo "==> $m seed $seed"
    train "digits_lt_resnet32_$m" "$seed"
  done
  echo "==> ride_3e + router seed $seed"
  train digits_lt_resnet32_ride_3e "$seed" --stage router
done
python experiments/summarize.py "$OUT"
