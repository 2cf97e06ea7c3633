#!/usr/bin/env bash
# The test command: set up (idempotent), start the services the tests use
# (object stores on loopback: S3 (Garage), GCS (fake-gcs-server) and Azure
# Blob Storage (Azurite); a single-node Slurm cluster and a
# two-node one in network namespaces; Prometheus is installed here and
# started by the tests that scrape), build the container images, run
# every test of the workspace, and stop the services again. Tests that need
# Kubernetes start their own control plane (scripts/k8s-cluster.sh) under
# $RIDE_K8S_TEST_ROOT; whatever a crashed test leaves there is killed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIDE_SETUP_K8S=1 "$here/setup.sh"
# shellcheck source=env.sh
source "$here/env.sh"
# Throw-away service directories per run; the garage binary stays cached.
RIDE_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-s3.XXXXXX")"
RIDE_GCS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-gcs.XXXXXX")"
RIDE_AZ_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-az.XXXXXX")"
RIDE_SLURM_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-slurm.XXXXXX")"
RIDE_SLURM2_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ride-slurm2.XXXXXX")"
RIDE_K8S_TEST_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/ride-k8s.XXXXXX")"
# Unpacked image root filesystems (scripts/images.sh smoke; several GB).
RIDE_IMAGE_ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/ride-rootfs.XXXXXX")"
export RIDE_S3_DIR RIDE_GCS_DIR RIDE_AZ_DIR RIDE_SLURM_DIR RIDE_SLURM2_DIR RIDE_K8S_TEST_ROOT RIDE_IMAGE_ROOTFS
# Kill every process whose command line or working directory lies under $1
# (control-plane components and pod processes of tests that did not clean up).
reap() {
  local p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF "$1" \
      || [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$1"* ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}
cleanup() {
  # The tests' exit status is the script's, whatever clean-up meets.
  local rc=$?
  "$here/s3-server.sh" stop || true
  "$here/gcs-server.sh" stop || true
  "$here/az-server.sh" stop || true
  "$here/slurm-two-nodes.sh" stop || true
  "$here/slurm-cluster.sh" stop || true
  reap "$RIDE_K8S_TEST_ROOT" || true
  rm -rf "$RIDE_S3_DIR" "$RIDE_GCS_DIR" "$RIDE_AZ_DIR" "$RIDE_SLURM_DIR" "$RIDE_SLURM2_DIR" "$RIDE_K8S_TEST_ROOT" "$RIDE_IMAGE_ROOTFS" || true
  exit "$rc"
}
trap cleanup EXIT
"$here/prometheus.sh" install
# `cargo test` unifies dev-dependency features, so it links ride-trainer
# differently from set-up's `cargo build --bins`; build the test binaries
# first so the images hold the very binaries operator/tests/images.rs hashes.
cargo test --release --workspace --no-run
# The container images, from those binaries (skipped when they did not
# change); operator/tests/images.rs checks and runs them.
"$here/images.sh" build
"$here/s3-server.sh" start
"$here/gcs-server.sh" start
"$here/az-server.sh" start
"$here/slurm-cluster.sh" start
"$here/slurm-two-nodes.sh" start
cd "$here/.."
# Every test binary runs even after a failure, so one run shows them all.
cargo test --release --workspace --no-fail-fast "$@"
