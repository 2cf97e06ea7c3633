#!/usr/bin/env bash
# Builds the Kubernetes components the tests run against, from Go modules,
# once, into $RIDE_K8S_BIN (~/.cache/ride/k8s/<version>/bin):
#
#   kube-apiserver kube-controller-manager kube-scheduler kubectl  (k8s.io/kubernetes)
#   etcd                                                          (go.etcd.io/etcd/server/v3)
#   helm                                                          (helm.sh/helm/v4)
#
# Each family is a small local module under scripts/k8s-tools/<family>/ whose
# go.mod pins the release and lists the commands as `tool` lines; go.sum
# pins every dependency. k8s.io/kubernetes cannot be `go install`ed because
# its own go.mod replaces the 33 staging modules with ./staging paths; our
# module replaces each with its published v0.Y.Z instead (the list is that
# release's `=> ./staging/...` block). The families are separate modules so
# that their shared dependencies are not version-mixed.
#
# Idempotent: a stamp of the module files and this script decides whether
# anything is rebuilt. Go's own caches (~/go/pkg/mod, ~/.cache/go-build)
# stay outside the clone too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
mods="$here/k8s-tools"

if ! command -v go >/dev/null 2>&1; then
  echo "error: go not found; the Kubernetes components are built from Go modules (Go >= 1.26)" >&2
  exit 1
fi

mod_version() { # module-dir module-path → the version its go.mod requires
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1/go.mod"
}
k8s_version="$(mod_version "$mods/kubernetes" k8s.io/kubernetes)"
if [ "$k8s_version" != "$RIDE_K8S_VERSION" ]; then
  echo "error: scripts/k8s-tools/kubernetes/go.mod pins $k8s_version but env.sh says RIDE_K8S_VERSION=$RIDE_K8S_VERSION" >&2
  exit 1
fi
etcd_version="$(mod_version "$mods/etcd" go.etcd.io/etcd/server/v3)"
helm_version="$(mod_version "$mods/helm" helm.sh/helm/v4)"

stamp_of() {
  cat "$mods"/*/go.mod "$mods"/*/go.sum "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd helm)
complete() {
  [ -f "$RIDE_K8S_BIN/.stamp" ] && [ "$(cat "$RIDE_K8S_BIN/.stamp")" = "$(stamp_of)" ] || return 1
  for b in "${bins[@]}"; do [ -x "$RIDE_K8S_BIN/$b" ] || return 1; done
}
if complete; then
  exit 0
fi

start=$(date +%s)
mkdir -p "$RIDE_K8S_BIN"
rm -f "$RIDE_K8S_BIN/.stamp"
# Static, reproducible binaries like upstream's release builds; -mod=readonly
# makes a go.sum that lacks an entry an error instead of a silent download.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

minor="${k8s_version#v1.}"; minor="${minor%%.*}"
# Without these the servers report v0.0.0-master, which Helm's kubeVersion
# checks and kubectl's version skew warnings read.
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "==> building $c $k8s_version from Go modules (once; cached in $RIDE_K8S_BIN)"
  (cd "$mods/kubernetes" && go build -trimpath -ldflags "$k8s_ldflags" -o "$RIDE_K8S_BIN/$c" "k8s.io/kubernetes/cmd/$c")
done
echo "==> building etcd $etcd_version"
(cd "$mods/etcd" && go build -trimpath -ldflags "-s -w" -o "$RIDE_K8S_BIN/etcd" go.etcd.io/etcd/server/v3)
echo "==> building helm $helm_version"
(cd "$mods/helm" && go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  -o "$RIDE_K8S_BIN/helm" helm.sh/helm/v4/cmd/helm)
stamp_of > "$RIDE_K8S_BIN/.stamp"
echo "==> Kubernetes components built in $(( $(date +%s) - start )) s: $(du -sh "$RIDE_K8S_BIN" | cut -f1) in $RIDE_K8S_BIN"
