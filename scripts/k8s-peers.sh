#!/usr/bin/env bash
# Builds the operators `bench/operators.sh` compares ride-operator with, from
# Go modules, once, into $RIDE_K8S_PEERS/bin (~/.cache/ride/k8s/peers), with
# their CRDs from the same modules in $RIDE_K8S_PEERS/crds:
#
#   training-operator.v1  github.com/kubeflow/training-operator (PyTorchJob, Kubeflow's v1 line)
#   jobset                sigs.k8s.io/jobset (JobSet; its Jobs are run by kube-controller-manager)
#   kwok                  sigs.k8s.io/kwok (the bench's simulated nodes: kubelets that run nothing)
#
# Each is a local module under scripts/k8s-peers/<name>/ whose go.mod pins the
# release (a `tool` line) and whose go.sum pins every dependency, as for the
# control plane (scripts/k8s-tools.sh). None of the modules has `replace` lines,
# so the build is the release's own dependency set. Not part of the tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
mods="$here/k8s-peers"
out="$RIDE_K8S_PEERS"

if ! command -v go >/dev/null 2>&1; then
  echo "error: go not found; the peer operators are built from Go modules (Go >= 1.26)" >&2
  exit 1
fi
stamp_of() {
  cat "$mods"/kubeflow/go.* "$mods"/jobset/go.* "$mods"/kwok/go.* "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$(stamp_of)" ] \
  && [ -x "$out/bin/training-operator.v1" ] && [ -x "$out/bin/jobset" ] && [ -x "$out/bin/kwok" ]; then
  exit 0
fi
start=$(date +%s)
mkdir -p "$out/bin" "$out/crds"
rm -f "$out/.stamp"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
# build MODULE-DIR MODULE PACKAGE BINARY CRD-PATH...
build() {
  local dir=$1 module=$2 pkg=$3 bin=$4
  shift 4
  local src version
  # The module's directory exists only once it is downloaded: on an empty
  # module cache `go list -m` names no directory until this has run.
  (cd "$mods/$dir" && go mod download "$module")
  src="$(cd "$mods/$dir" && go list -m -f '{{.Dir}}' "$module")"
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    echo "error: module $module has no directory after go mod download" >&2
    exit 1
  fi
  version="$(cd "$mods/$dir" && go list -m -f '{{.Version}}' "$module")"
  echo "==> building $bin ($module $version) from Go modules (once; cached in $out/bin)"
  (cd "$mods/$dir" && go build -trimpath -ldflags "-s -w" -o "$out/bin/$bin" "$pkg")
  local crd
  for crd in "$@"; do
    cp "$src/$crd" "$out/crds/"
    chmod u+w "$out/crds/$(basename "$crd")"
  done
  echo "$module $version" > "$out/bin/$bin.version"
}
build kubeflow github.com/kubeflow/training-operator \
  github.com/kubeflow/training-operator/cmd/training-operator.v1 training-operator.v1 \
  manifests/base/crds/kubeflow.org_pytorchjobs.yaml
build jobset sigs.k8s.io/jobset sigs.k8s.io/jobset jobset \
  config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml
build kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok kwok
stamp_of > "$out/.stamp"
echo "==> peer operators and kwok built in $(( $(date +%s) - start )) s into $out"
