#!/usr/bin/env bash
# Checkpoint save throughput to GCS (fake-gcs-server on loopback) against
# raw uploads of the same bytes, in one run (bench/checkpoint_store.sh).
#   bench/checkpoint_gs.sh [CFG] [ROUNDS]
exec "$(dirname "${BASH_SOURCE[0]}")/checkpoint_store.sh" gs "$@"
