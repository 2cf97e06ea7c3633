# Sourced by the project's scripts: where the cache, the virtual environment
# and the cargo target directory live. Everything heavy stays outside the clone
# so fresh clones (CI) reuse builds.
RIDE_CACHE="${RIDE_CACHE:-$HOME/.cache/ride}"
RIDE_VENV="${RIDE_VENV:-$RIDE_CACHE/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$RIDE_CACHE/target}"
export VIRTUAL_ENV="$RIDE_VENV"
export PATH="$RIDE_VENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
RIDE_BIN="$CARGO_TARGET_DIR/release/ride-trainer"
# The benchmarks bench/*.sh run (a separate binary, not in the images).
RIDE_BENCH_BIN="${RIDE_BENCH_BIN:-$CARGO_TARGET_DIR/release/ride-bench}"
# The Kubernetes components of the tests' control plane (scripts/k8s-tools.sh).
RIDE_K8S_VERSION=v1.36.3
RIDE_K8S_BIN="${RIDE_K8S_BIN:-$RIDE_CACHE/k8s/$RIDE_K8S_VERSION/bin}"
export RIDE_K8S_BIN
# Third-party CRDs the operator tests install (scripts/k8s-crds.sh).
RIDE_K8S_CRDS="${RIDE_K8S_CRDS:-$RIDE_CACHE/k8s/crds}"
export RIDE_K8S_CRDS
# Kubeflow's training-operator and JobSet with their CRDs, for
# bench/operators.sh (scripts/k8s-peers.sh).
RIDE_K8S_PEERS="${RIDE_K8S_PEERS:-$RIDE_CACHE/k8s/peers}"
export RIDE_K8S_PEERS
# Kueue for operator/tests/queues.rs (scripts/k8s-kueue.sh).
RIDE_KUEUE_VERSION=v0.17.0
RIDE_K8S_KUEUE="${RIDE_K8S_KUEUE:-$RIDE_CACHE/k8s/kueue/$RIDE_KUEUE_VERSION}"
export RIDE_K8S_KUEUE

# ride_free_port: a loopback port that is free now, drawn below the kernel's
# ephemeral range so that no outgoing connection of a busy test run can take
# it between this check and the server binding it (the range itself is what
# binding port 0 hands out, and what every client socket uses).
ride_free_port() {
  python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    port = random.randrange(10000, max(lo, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port below the ephemeral range")
PY
}
