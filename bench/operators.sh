#!/usr/bin/env bash
# ride-operator side by side with Kubeflow's training-operator v1 (PyTorchJob)
# and JobSet, on the same real control plane and simulated nodes, in one run
# (operator/benches/operators.rs says what is measured). Builds the control
# plane and the peers from Go modules first (once; cached in ~/.cache/ride).
# Nodes are simulated by kwok (built with the peers), so thousands of
# trainings fit on one machine. After the burst scenario at each size, a
# sustained churn: CHURN=RATExMINUTES trainings a minute (0 skips it;
# SIZES=0 runs the churn alone).
#   SIZES=100,500,2000 CHURN=20x10 SYSTEMS=ride,pytorchjob,pytorchjob-tuned,jobset WAIT=180 bench/operators.sh
# RIDE_BENCH_OPERATOR_LOG=DIR keeps each operator's log there (DIR/ride.log,
# ...); RIDE_BENCH_RUST_LOG sets ride-operator's filter (default warn; with
# ride_operator::reconcile::controller=debug it logs what each status write
# changes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../scripts/setup.sh" >/dev/null
# shellcheck source=../scripts/env.sh
source "$here/../scripts/env.sh"
"$here/../scripts/k8s-tools.sh"
"$here/../scripts/k8s-peers.sh"
root="$(mktemp -d)"
trap 'for d in "$root"/k8s-*; do [ -d "$d" ] && RIDE_K8S_DIR="$d" "$here/../scripts/k8s-cluster.sh" stop >/dev/null 2>&1; done; rm -rf "$root"' EXIT
cd "$here/.."
RIDE_K8S_TEST_ROOT="$root" \
RIDE_BENCH_TRAININGS="${SIZES:-100,500,2000}" \
RIDE_BENCH_CHURN="${CHURN:-20x10}" \
RIDE_BENCH_SYSTEMS="${SYSTEMS:-ride,pytorchjob,pytorchjob-tuned,jobset}" \
RIDE_BENCH_WAIT="${WAIT:-180}" \
  cargo bench -p ride-operator --bench operators
