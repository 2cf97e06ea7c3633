#!/usr/bin/env bash
# Fetches the third-party CRDs the operator tests install, from the Go
# module proxy (the only download these machines have), pinned by version
# and module checksum, once, into $RIDE_K8S_CRDS (~/.cache/ride/k8s/crds):
#
#   scheduling.x-k8s.io_podgroups.yaml   sigs.k8s.io/scheduler-plugins (coscheduling's PodGroup)
#
# Volcano's PodGroup CRD is not here: the proxy refuses volcano.sh/apis.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

plugins=sigs.k8s.io/scheduler-plugins
plugins_version=v0.34.7
# The module's h1: checksum, as go.sum would hold it: a different zip is refused.
plugins_sum="h1:GENSA4rKpCKBrPvNSo2AV2QHU7j3a6LT14kNlHhXfeg="
crd="$RIDE_K8S_CRDS/scheduling.x-k8s.io_podgroups.yaml"
stamp="$RIDE_K8S_CRDS/.stamp"
want="$plugins@$plugins_version $plugins_sum"
if [ -f "$crd" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: go not found; the PodGroup CRD comes from a Go module (Go >= 1.26)" >&2
  exit 1
fi
echo "==> fetching the PodGroup CRD from $plugins@$plugins_version"
mkdir -p "$RIDE_K8S_CRDS"
# Outside any module, so no go.mod of ours is consulted or changed.
json="$(cd "$RIDE_K8S_CRDS" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$plugins@$plugins_version")"
field() { printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}$/\\1/p" | head -1; }
sum="$(field Sum)"
dir="$(field Dir)"
if [ "$sum" != "$plugins_sum" ]; then
  echo "error: $plugins@$plugins_version has checksum '$sum', expected $plugins_sum" >&2
  exit 1
fi
cp "$dir/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml" "$crd"
chmod u+w "$crd"
printf '%s\n' "$want" > "$stamp"
