#!/usr/bin/env bash
# Checkpoint save throughput to S3 (Garage on loopback) against raw uploads
# of the same bytes, in one run (bench/checkpoint_store.sh says what).
#   bench/checkpoint_s3.sh [CFG] [ROUNDS]
exec "$(dirname "${BASH_SOURCE[0]}")/checkpoint_store.sh" s3 "$@"
