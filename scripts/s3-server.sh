#!/usr/bin/env bash
# A real S3-compatible server (Garage, from crates.io) on loopback for tests
# and local runs. Idempotent.
#
#   scripts/s3-server.sh install   build garage once into $RIDE_CACHE/garage (~15 min on 2 cores)
#   scripts/s3-server.sh start     start it (installing first if needed); writes $RIDE_S3_DIR/env
#   scripts/s3-server.sh stop      stop it (data stays, so a later start resumes)
#   scripts/s3-server.sh crash     SIGKILL it (tests of outages)
#   scripts/s3-server.sh restart   stop, then start
#   scripts/s3-server.sh status
#
# `source $RIDE_S3_DIR/env` gives AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP and RIDE_TEST_S3_BUCKET.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=object-stores/server.sh
source "$here/object-stores/server.sh"
GARAGE_VERSION=2.5.0
GARAGE_ROOT="$RIDE_CACHE/garage"
GARAGE="$GARAGE_ROOT/bin/garage"
RIDE_S3_DIR="${RIDE_S3_DIR:-$RIDE_CACHE/s3}"
PORT="${RIDE_S3_PORT:-39300}"
RPC_PORT="${RIDE_S3_RPC_PORT:-39301}"
BUCKET="ride-test"
# Fixed test-only credentials (loopback server, throw-away data).
KEY_ID="GK0123456789abcdef01234567"
KEY_SECRET="0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
CONF="$RIDE_S3_DIR/garage.toml"
PIDFILE="$RIDE_S3_DIR/garage.pid"

install() {
  if [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    return
  fi
  echo "==> building garage $GARAGE_VERSION (once; cached in $GARAGE_ROOT)"
  cargo install garage --version "$GARAGE_VERSION" --locked \
    --no-default-features --features bundled-libs,sqlite \
    --root "$GARAGE_ROOT" --target-dir "$RIDE_CACHE/garage-target"
}

g() { "$GARAGE" -c "$CONF" "$@"; }

start() {
  install
  mkdir -p "$RIDE_S3_DIR/meta" "$RIDE_S3_DIR/data"
  if [ ! -f "$CONF" ]; then
    cat > "$CONF" <<TOML
metadata_dir = "$RIDE_S3_DIR/meta"
data_dir = "$RIDE_S3_DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$PORT"
root_domain = ".s3.garage.localhost"
TOML
  fi
  if ! running; then
    port_must_be_free "RIDE_S3_PORT and RIDE_S3_RPC_PORT"
    nohup "$GARAGE" -c "$CONF" server > "$RIDE_S3_DIR/garage.log" 2>&1 &
    echo $! > "$PIDFILE"
  fi
  for _ in $(seq 1 100); do
    g status >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! g status >/dev/null 2>&1; then
    echo "error: garage did not start; see $RIDE_S3_DIR/garage.log" >&2
    exit 1
  fi
  if g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
    node=$(g node id -q 2>/dev/null | cut -d@ -f1)
    g layout assign -z local -c 1G "$node" >/dev/null
    g layout apply --version 1 >/dev/null
  fi
  g key info "$KEY_ID" >/dev/null 2>&1 || g key import --yes -n ride-test "$KEY_ID" "$KEY_SECRET" >/dev/null
  g bucket info "$BUCKET" >/dev/null 2>&1 || g bucket create "$BUCKET" >/dev/null
  g bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
  # The S3 endpoint must answer before we report ready.
  wait_for_port "$RIDE_S3_DIR/garage.log"
  cat > "$RIDE_S3_DIR/env" <<ENV
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_REGION=garage
export AWS_ALLOW_HTTP=true
export RIDE_TEST_S3_BUCKET=$BUCKET
ENV
  echo "s3 server: http://127.0.0.1:$PORT (bucket $BUCKET); source $RIDE_S3_DIR/env"
}

dispatch "$@"
