#!/usr/bin/env bash
# Checkpoint save throughput to a real S3 server (Garage on loopback) against
# a raw upload of the same bytes through the same client, in one run.
#   bench/checkpoint_s3.sh [CFG] [ROUNDS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
CFG="${1:-$here/../configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml}"
ROUNDS="${2:-3}"
RIDE_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-s3-bench.XXXXXX")"
export RIDE_S3_DIR
trap '"$here/../scripts/s3-server.sh" stop; rm -rf "$RIDE_S3_DIR"' EXIT
"$here/../scripts/s3-server.sh" start >/dev/null
# shellcheck disable=SC1091
source "$RIDE_S3_DIR/env"
json=$("$RIDE_BENCH_BIN" checkpoint --cfg "$CFG" --output "s3://$RIDE_TEST_S3_BUCKET/bench-$$" --rounds "$ROUNDS")
"$RIDE_VENV/bin/python" - "$json" "$CFG" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"config: {sys.argv[2]}")
print(f"checkpoint bytes        {r['bytes']/1e6:10.1f} MB (model + AdamW state)")
print(f"ride checkpoint save    {r['save_s']:10.2f} s  {r['save_mbps']:8.1f} MB/s  (serialise, SHA-256, upload, manifest, latest)")
print(f"raw upload, same bytes  {r['raw_upload_s']:10.2f} s  {r['raw_mbps']:8.1f} MB/s")
print(f"save / raw              {r['save_s']/r['raw_upload_s']:10.2f} x")
print(f"training blocked for    {r['blocking_s']:10.3f} s  (host copy; the rest runs on the writer thread)")
PY
