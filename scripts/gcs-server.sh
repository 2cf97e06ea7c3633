#!/usr/bin/env bash
# A GCS emulator on loopback for tests and local runs, like s3-server.sh:
# fake-gcs-server v1.56.1's own server (its fakestorage package, from Go
# modules) behind a front that adds the XML API object writes it lacks and
# object_store's GCS client uses (scripts/object-stores/fake-gcs-server/main.go;
# fsouza/fake-gcs-server#331). Idempotent.
#
#   scripts/gcs-server.sh install   build it once into $RIDE_CACHE/object-stores/bin
#   scripts/gcs-server.sh start     start it (installing first if needed); writes $RIDE_GCS_DIR/env
#   scripts/gcs-server.sh stop      stop it (data stays on disk, so a later start resumes)
#   scripts/gcs-server.sh crash     SIGKILL it (tests of outages)
#   scripts/gcs-server.sh restart | status
#
# `source $RIDE_GCS_DIR/env` gives GOOGLE_SERVICE_ACCOUNT_KEY (the variable
# the operator passes from a training's credentials Secret) holding a key
# whose `gcs_base_url` points at the emulator and `disable_oauth` skips the
# token exchange (the emulator checks no credentials), and RIDE_TEST_GCS_BUCKET.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=object-stores/server.sh
source "$here/object-stores/server.sh"
MOD="$here/object-stores/fake-gcs-server"
BIN_DIR="$RIDE_CACHE/object-stores/bin"
BIN="$BIN_DIR/fake-gcs-server"
RIDE_GCS_DIR="${RIDE_GCS_DIR:-$RIDE_CACHE/gcs}"
PORT="${RIDE_GCS_PORT:-39305}"
BUCKET="ride-test"
PIDFILE="$RIDE_GCS_DIR/fake-gcs-server.pid"

stamp_of() { cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/main.go" | sha256sum | cut -d' ' -f1; }

install() {
  if [ -x "$BIN" ] && [ "$(cat "$BIN.stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
    return
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "error: go not found; fake-gcs-server is built from Go modules (Go >= 1.26)" >&2
    exit 1
  fi
  local t0
  t0=$(date +%s)
  echo "==> building fake-gcs-server from Go modules (once; cached in $BIN_DIR)"
  mkdir -p "$BIN_DIR"
  (cd "$MOD" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
    go build -trimpath -ldflags "-s -w" -o "$BIN.new" .)
  mv "$BIN.new" "$BIN"
  stamp_of > "$BIN.stamp"
  echo "==> fake-gcs-server built in $(( $(date +%s) - t0 )) s"
}

start() {
  install
  # The filesystem backend keeps objects across a restart; a bucket is a
  # directory of its root.
  mkdir -p "$RIDE_GCS_DIR/data/$BUCKET"
  if ! running; then
    port_must_be_free RIDE_GCS_PORT
    nohup "$BIN" -host 127.0.0.1 -port "$PORT" -filesystem-root "$RIDE_GCS_DIR/data" \
      > "$RIDE_GCS_DIR/fake-gcs-server.log" 2>&1 &
    echo $! > "$PIDFILE"
  fi
  wait_for_port "$RIDE_GCS_DIR/fake-gcs-server.log"
  local key
  key="{\"gcs_base_url\":\"http://127.0.0.1:$PORT\",\"disable_oauth\":true,\"client_email\":\"\",\"private_key\":\"\",\"private_key_id\":\"\"}"
  cat > "$RIDE_GCS_DIR/env" <<ENV
export GOOGLE_SERVICE_ACCOUNT_KEY='$key'
export RIDE_TEST_GCS_BUCKET=$BUCKET
ENV
  echo "gcs server: http://127.0.0.1:$PORT (bucket $BUCKET); source $RIDE_GCS_DIR/env"
}

dispatch "$@"
