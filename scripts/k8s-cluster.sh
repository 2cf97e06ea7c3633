#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests and for
# development: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler, built from Go modules by scripts/k8s-tools.sh. There is no
# kubelet: the tests bring node agents (operator/tests/common/node_agent.rs)
# that register Nodes and run pods as local processes.
#
#   scripts/k8s-cluster.sh start        start (building the components first if needed)
#   scripts/k8s-cluster.sh stop         stop every component (state stays, a later start resumes)
#   scripts/k8s-cluster.sh status
#   scripts/k8s-cluster.sh node NAME    a kubeconfig for a node agent named NAME
#                                       (system:node:NAME in group system:nodes); prints its path
#   scripts/k8s-cluster.sh user NAME    a kubeconfig for user NAME (no groups); prints its path
#
# State lives in $RIDE_K8S_DIR (default ~/.cache/ride/k8s-cluster): pki/,
# etcd data, logs, kubeconfigs and `env`, which gives KUBECONFIG (the admin
# kubeconfig), RIDE_K8S_BIN and RIDE_K8S_API. Ports are picked free at the
# first start, below the ephemeral range, and again should another process
# take one before the first start binds it (parallel clusters in different
# directories do not collide), and kept for later starts. Node failure is
# detected fast for tests: a node whose Lease is not renewed for 8 s is
# NotReady, and its pods are evicted 5 s later (stock: 50 s and 300 s).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
DIR="${RIDE_K8S_DIR:-$RIDE_CACHE/k8s-cluster}"
PKI="$DIR/pki"
BIN="$RIDE_K8S_BIN"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

# ---- certificates (ECDSA P-256, openssl) ----
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# cert NAME SUBJECT [SAN] [client|server]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 subj=$2 san=${3:-} usage=${4:-client}
  [ -f "$PKI/$name.crt" ] && return
  key "$PKI/$name.key"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ "$usage" = server ]; then echo "extendedKeyUsage=serverAuth"; else echo "extendedKeyUsage=clientAuth"; fi
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}
pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ride-test-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" server
  cert admin "/O=system:masters/CN=kubernetes-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  # The service-account token signing key pair.
  if [ ! -f "$PKI/sa.key" ]; then
    key "$PKI/sa.key"
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
}

# kubeconfig FILE CERT-NAME: a kubeconfig with the CA and a client certificate embedded.
kubeconfig() {
  local file=$1 who=$2
  [ -f "$file" ] && return
  local k=("$BIN/kubectl" --kubeconfig "$file")
  "${k[@]}" config set-cluster ride --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "${k[@]}" config set-credentials "$who" --client-certificate "$PKI/$who.crt" \
    --client-key "$PKI/$who.key" --embed-certs >/dev/null
  "${k[@]}" config set-context ride --cluster ride --user "$who" >/dev/null
  "${k[@]}" config use-context ride >/dev/null
  chmod 600 "$file"
}

running() { # component
  [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null
}

launch() { # component args...
  local c=$1
  shift
  running "$c" && return
  # setsid: the components outlive the shell that started them, and a
  # terminal's Ctrl-C does not reach them.
  setsid "$BIN/$c" "$@" > "$DIR/$c.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$c.pid"
}

wait_until() { # seconds what command...
  local secs=$1 what=$2
  shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    # A component that died will not come up: say so now, not at the deadline.
    if [ -f "$DIR/$what.pid" ] && ! running "$what"; then
      echo "error: $what exited; logs in $DIR/*.log" >&2
      tail -n 20 "$DIR"/*.log >&2 || true
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "error: $what did not come up within ${secs}s; logs in $DIR/*.log" >&2
      tail -n 20 "$DIR"/*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

ports() {
  if [ ! -f "$DIR/ports" ]; then
    local etcd peer api
    etcd=$(ride_free_port)
    until peer=$(ride_free_port) && [ "$peer" != "$etcd" ]; do :; done
    until api=$(ride_free_port) && [ "$api" != "$etcd" ] && [ "$api" != "$peer" ]; do :; done
    printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\n' "$etcd" "$peer" "$api" > "$DIR/ports"
  fi
  # shellcheck disable=SC1091
  source "$DIR/ports"
}

# bind_lost COMPONENT: whether COMPONENT died because another process took
# its port between the pick and the bind.
bind_lost() {
  ! running "$1" && grep -q "address already in use" "$DIR/$1.log" 2>/dev/null
}

start() {
  "$here/k8s-tools.sh"
  mkdir -p "$DIR"
  # A cluster that has never started picks new ports when one was taken
  # under it; one with state keeps its ports (its kubeconfigs name them).
  local fresh=0 attempt
  [ -f "$DIR/ports" ] || fresh=1
  for attempt in 1 2 3; do
    ports
    pki
    if start_control_plane; then return; fi
    if [ "$fresh" = 1 ] && [ "$attempt" -lt 3 ] && { bind_lost etcd || bind_lost kube-apiserver; }; then
      echo "==> a port was taken before the control plane bound it; picking new ones" >&2
      stop
      rm -rf "$DIR/ports" "$DIR/etcd" "$DIR"/*.kubeconfig "$DIR/users" "$DIR/nodes"
      continue
    fi
    return 1
  done
}

start_control_plane() {
  local t0
  t0=$(date +%s.%N)

  launch etcd --name ride --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ride=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_until 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health" || return 1

  # RIDE_K8S_AUDIT_USERS=a,b: an audit log ($DIR/audit.log, JSON lines,
  # metadata only, one line per finished request) of these users' requests,
  # for the benchmarks' request breakdown by verb and resource.
  local audit=()
  if [ -n "${RIDE_K8S_AUDIT_USERS:-}" ]; then
    {
      echo "apiVersion: audit.k8s.io/v1"
      echo "kind: Policy"
      echo "omitStages: [RequestReceived, ResponseStarted, Panic]"
      echo "rules:"
      echo "  - level: Metadata"
      echo "    users: [$(echo "$RIDE_K8S_AUDIT_USERS" | sed 's/[^,][^,]*/"&"/g')]"
      echo "  - level: None"
    } > "$DIR/audit-policy.yaml"
    audit=(--audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$DIR/audit.log"
      --audit-log-format json --audit-log-mode blocking)
  fi
  # RIDE_K8S_FEATURE_GATES=A=true,B=true: feature gates for the API server,
  # the controller manager and the scheduler (operator/tests/queues.rs turns
  # on the alpha gang scheduling); RIDE_K8S_RUNTIME_CONFIG: the API server's
  # --runtime-config, for the API versions those gates serve. Read at every
  # start.
  local gates=() runtime=()
  if [ -n "${RIDE_K8S_FEATURE_GATES:-}" ]; then gates=(--feature-gates "$RIDE_K8S_FEATURE_GATES"); fi
  if [ -n "${RIDE_K8S_RUNTIME_CONFIG:-}" ]; then runtime=(--runtime-config "$RIDE_K8S_RUNTIME_CONFIG"); fi
  launch kube-apiserver \
    "${audit[@]}" "${gates[@]}" "${runtime[@]}" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,OwnerReferencesPermissionEnforcement \
    --service-cluster-ip-range 10.0.0.0/24 \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --endpoint-reconciler-type none \
    --default-not-ready-toleration-seconds 5 --default-unreachable-toleration-seconds 5 \
    --profiling=false --v 1
  ADMIN="$DIR/admin.kubeconfig"
  kubeconfig "$ADMIN" admin
  wait_until 60 kube-apiserver "$BIN/kubectl" --kubeconfig "$ADMIN" get --raw /readyz || return 1

  kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager
  launch kube-controller-manager "${gates[@]}" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --node-monitor-period 1s --node-monitor-grace-period 8s \
    --profiling=false --v 1
  kubeconfig "$DIR/scheduler.kubeconfig" scheduler
  launch kube-scheduler "${gates[@]}" \
    --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --profiling=false --v 1

  # Usable means: pods can be created in "default" (its ServiceAccount exists,
  # made by the controller-manager), which also proves the controllers run.
  wait_until 60 "the default ServiceAccount" "$BIN/kubectl" --kubeconfig "$ADMIN" -n default get serviceaccount default || return 1
  cat > "$DIR/env" <<ENV
export KUBECONFIG="$ADMIN"
export RIDE_K8S_BIN="$BIN"
export RIDE_K8S_API="https://127.0.0.1:$API_PORT"
ENV
  printf '==> control plane %s up in %.1f s at https://127.0.0.1:%s (source %s/env)\n' \
    "$RIDE_K8S_VERSION" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$API_PORT" "$DIR"
}

stop() {
  local i c pid
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c=${COMPONENTS[$i]}
    running "$c" || { rm -f "$DIR/$c.pid"; continue; }
    pid=$(cat "$DIR/$c.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DIR/$c.pid"
  done
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then echo "$c: running (pid $(cat "$DIR/$c.pid"))"; else echo "$c: stopped"; fi
  done
}

# identity KIND NAME SUBJECT: a client certificate with SUBJECT and a
# kubeconfig for it, in $DIR/KINDs/NAME.kubeconfig; prints its path.
identity() {
  local kind=$1 name=$2 subject=$3
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { echo "error: bad $kind name $name" >&2; exit 1; }
  ports
  mkdir -p "$DIR/${kind}s"
  cert "$kind-$name" "$subject"
  kubeconfig "$DIR/${kind}s/$name.kubeconfig" "$kind-$name"
  echo "$DIR/${kind}s/$name.kubeconfig"
}

node() {
  local name=${1:?usage: k8s-cluster.sh node NAME}
  identity node "$name" "/O=system:nodes/CN=system:node:$name"
}

# A plain user identity (no groups beyond system:authenticated), e.g. for an
# operator whose API requests should be told apart from everyone else's: its
# requests fall in the global-default flow schema of API Priority and
# Fairness, which no component of the control plane uses.
user() {
  local name=${1:?usage: k8s-cluster.sh user NAME}
  identity user "$name" "/CN=$name"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  node) shift; node "$@" ;;
  user) shift; user "$@" ;;
  *) echo "usage: $0 start|stop|status|node NAME|user NAME" >&2; exit 2 ;;
esac
