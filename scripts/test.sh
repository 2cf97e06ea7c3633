#!/usr/bin/env bash
# The test command: set up (idempotent), then run every test of the workspace.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$here/.."
cargo test --release --workspace "$@"
