#!/usr/bin/env bash
# Checkpoint save throughput to a real object store server on loopback
# against raw uploads of the same bytes through the same client, in one run:
#   bench/checkpoint_store.sh SERVER [CFG] [ROUNDS]
# SERVER is s3 (Garage, scripts/s3-server.sh), gs (fake-gcs-server,
# scripts/gcs-server.sh) or az (Azurite, scripts/az-server.sh);
# bench/checkpoint_s3.sh, checkpoint_gs.sh and checkpoint_az.sh call this.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER="${1:?usage: $0 s3|gs|az [CFG] [ROUNDS]}"
CFG="${2:-$here/../configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml}"
ROUNDS="${3:-3}"
"$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
dir="$(mktemp -d "${TMPDIR:-/tmp}/ride-$SERVER-bench.XXXXXX")"
case "$SERVER" in
  s3) export RIDE_S3_DIR="$dir"; bucket_var=RIDE_TEST_S3_BUCKET; name="S3 (Garage)" ;;
  gs) export RIDE_GCS_DIR="$dir"; bucket_var=RIDE_TEST_GCS_BUCKET; name="GCS (fake-gcs-server)"; script=gcs ;;
  az) export RIDE_AZ_DIR="$dir"; bucket_var=RIDE_TEST_AZ_CONTAINER; name="Azure Blob Storage (Azurite)" ;;
  *) echo "error: SERVER is s3, gs or az, not $SERVER" >&2; exit 2 ;;
esac
script="$here/../scripts/${script:-$SERVER}-server.sh"
trap '"$script" stop; rm -rf "$dir"' EXIT
"$script" start >/dev/null
# shellcheck disable=SC1091
source "$dir/env"
json=$("$RIDE_BENCH_BIN" checkpoint --cfg "$CFG" --output "$SERVER://${!bucket_var}/bench-$$" --rounds "$ROUNDS")
"$RIDE_VENV/bin/python" - "$json" "$CFG" "$name" "$ROUNDS" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
mb = r["bytes"] / 1e6
print(f"config: {sys.argv[2]}; server: {sys.argv[3]} on loopback; median of {sys.argv[4]} rounds")
print(f"checkpoint tensor files   {mb:10.1f} MB (model + AdamW state)")
def row(label, s, note):
    print(f"{label:26s}{s:10.2f} s {mb/s:8.1f} MB/s  {note}")
row("ride checkpoint save", r["save_s"], "(streamed: serialise, SHA-256 and parallel multipart upload at once; manifest, latest)")
row("save before streaming", r["previous_save_s"], "(serialise in memory, hash, one request per file)")
row("raw upload, one PUT/file", r["raw_put_s"], "(the same bytes, already in memory)")
row("raw multipart upload", r["raw_multipart_s"], "(the same bytes, the save's part size and parts in flight)")
best = min(r["raw_put_s"], r["raw_multipart_s"])
print(f"save / fastest raw        {r['save_s']/best:10.2f} x  ({100*best/r['save_s']:.0f}% of raw speed)")
print(f"training blocked for      {r['blocking_s']:10.3f} s  (host copy; the rest runs on the writer thread)")
print(f"host memory of the save   {r['save_peak_extra_mib']:10.1f} MiB above the host copy ({r['checkpoint_mib']:.1f} MiB)")
PY
