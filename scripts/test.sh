#!/usr/bin/env bash
# The test command: set up (idempotent), start the services the tests use
# (an S3-compatible server on loopback, a single-node Slurm cluster), run
# every test of the workspace, and stop the services again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"
# shellcheck source=env.sh
source "$here/env.sh"
# Throw-away service directories per run; the garage binary stays cached.
RIDE_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-s3.XXXXXX")"
RIDE_SLURM_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-slurm.XXXXXX")"
export RIDE_S3_DIR RIDE_SLURM_DIR
cleanup() {
  # The tests' exit status is the script's, whatever clean-up meets.
  local rc=$?
  "$here/s3-server.sh" stop || true
  "$here/slurm-cluster.sh" stop || true
  rm -rf "$RIDE_S3_DIR" "$RIDE_SLURM_DIR" || true
  exit "$rc"
}
trap cleanup EXIT
"$here/s3-server.sh" start
"$here/slurm-cluster.sh" start
cd "$here/.."
cargo test --release --workspace "$@"
