#!/usr/bin/env bash
# Checkpoint save throughput to Azure Blob Storage (Azurite on loopback)
# against raw uploads of the same bytes, in one run (bench/checkpoint_store.sh).
#   bench/checkpoint_az.sh [CFG] [ROUNDS]
exec "$(dirname "${BASH_SOURCE[0]}")/checkpoint_store.sh" az "$@"
