#!/usr/bin/env bash
# Builds Kueue (sigs.k8s.io/kueue) from Go modules, once, into $RIDE_K8S_KUEUE
# (~/.cache/ride/k8s/kueue/<version>), for operator/tests/queues.rs:
#
#   bin/kueue                 cmd/kueue, the controller manager with its webhooks
#   crds/*.yaml               its CRDs (config/components/crd/bases)
#   webhooks.yaml             its webhook configurations (config/components/webhook),
#                             pointed at a loopback URL by the tests
#
# scripts/k8s-kueue/go.mod pins the release as a `tool` line and go.sum pins
# every dependency, as for the control plane (scripts/k8s-tools.sh). Kueue's
# go.mod has no `replace` lines, so the build is the release's own dependency
# set; it is a module of its own so that it neither mixes versions with the
# control plane's (Kueue v0.17 is built against k8s.io v0.35) nor changes
# k8s-tools.sh's stamp. Idempotent: a stamp of the module files and this
# script decides whether anything is rebuilt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
mod="$here/k8s-kueue"
module=sigs.k8s.io/kueue
out="$RIDE_K8S_KUEUE"

stamp_of() {
  cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$(stamp_of)" ] && [ -x "$out/bin/kueue" ]; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: go not found; Kueue is built from Go modules (Go >= 1.26)" >&2
  exit 1
fi
start=$(date +%s)
rm -rf "$out"
mkdir -p "$out/bin" "$out/crds"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
# The module's directory exists only once it is downloaded.
(cd "$mod" && go mod download "$module")
src="$(cd "$mod" && go list -m -f '{{.Dir}}' "$module")"
version="$(cd "$mod" && go list -m -f '{{.Version}}' "$module")"
if [ -z "$src" ] || [ ! -d "$src" ] || [ "$version" != "$RIDE_KUEUE_VERSION" ]; then
  echo "error: scripts/k8s-kueue/go.mod pins '$version' (dir '$src') but env.sh says RIDE_KUEUE_VERSION=$RIDE_KUEUE_VERSION" >&2
  exit 1
fi
echo "==> building kueue $version from Go modules (once; cached in $out)"
# Without the version the manager reports v0.0.0 in its logs and metrics.
(cd "$mod" && go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" \
  -o "$out/bin/kueue" "$module/cmd/kueue")
cp "$src"/config/components/crd/bases/*.yaml "$out/crds/"
cp "$src/config/components/webhook/manifests.yaml" "$out/webhooks.yaml"
chmod -R u+w "$out/crds" "$out/webhooks.yaml"
echo "$module $version" > "$out/bin/kueue.version"
stamp_of > "$out/.stamp"
echo "==> kueue built in $(( $(date +%s) - start )) s into $out"
