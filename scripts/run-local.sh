#!/usr/bin/env bash
# The main job: set up (idempotent), then train RIDE (2 experts) on the
# built-in synthetic long-tailed dataset on CPU and print the evaluation.
# Extra arguments go to `ride-trainer train` (e.g. --opts TRAIN.EPOCHS 5).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$here/.."
exec "$RIDE_BIN" train --cfg configs/synthetic_ride_2e_cpu.yaml --device cpu --output output "$@"
