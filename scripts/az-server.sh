#!/usr/bin/env bash
# An Azure Blob Storage emulator (Azurite, from npm) on loopback for tests
# and local runs, like s3-server.sh. Idempotent.
#
#   scripts/az-server.sh install   npm-install it once into $RIDE_CACHE/object-stores/azurite
#   scripts/az-server.sh start     start it (installing first if needed); writes $RIDE_AZ_DIR/env
#   scripts/az-server.sh stop      stop it (data stays on disk, so a later start resumes)
#   scripts/az-server.sh crash     SIGKILL it (tests of outages)
#   scripts/az-server.sh restart | status
#
# `source $RIDE_AZ_DIR/env` gives AZURE_STORAGE_ACCOUNT_NAME and
# AZURE_STORAGE_ACCOUNT_KEY (the variables the operator passes from a
# training's credentials Secret: Azurite's public development account),
# AZURE_STORAGE_ENDPOINT (where the account lives; an http:// endpoint is
# allowed plain HTTP), and
# RIDE_TEST_AZ_CONTAINER.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=object-stores/server.sh
source "$here/object-stores/server.sh"
PKG="$here/object-stores/azurite"
ROOT="$RIDE_CACHE/object-stores/azurite"
BIN="$ROOT/node_modules/.bin/azurite-blob"
RIDE_AZ_DIR="${RIDE_AZ_DIR:-$RIDE_CACHE/az}"
PORT="${RIDE_AZ_PORT:-39310}"
CONTAINER="ride-test"
ACCOUNT="devstoreaccount1"
# Azurite's documented development key, public by design.
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PIDFILE="$RIDE_AZ_DIR/azurite.pid"

stamp_of() { cat "$PKG/package.json" "$PKG/package-lock.json" | sha256sum | cut -d' ' -f1; }

install() {
  if [ -x "$BIN" ] && [ "$(cat "$ROOT/.stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
    return
  fi
  if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "error: Azurite comes from npm, which is missing; run: sudo apt-get install --no-install-recommends nodejs npm" >&2
      exit 1
    fi
    echo "==> installing Debian's nodejs and npm packages (Azurite comes from npm)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm >/dev/null
  fi
  local t0
  t0=$(date +%s)
  echo "==> installing Azurite from npm (once; cached in $ROOT)"
  mkdir -p "$ROOT"
  cp "$PKG/package.json" "$PKG/package-lock.json" "$ROOT/"
  # The lock file pins every package; no install scripts run.
  (cd "$ROOT" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  stamp_of > "$ROOT/.stamp"
  echo "==> Azurite installed in $(( $(date +%s) - t0 )) s"
}

start() {
  install
  mkdir -p "$RIDE_AZ_DIR/data"
  if ! running; then
    port_must_be_free RIDE_AZ_PORT
    # --skipApiVersionCheck: object_store may speak a newer service version
    # than this Azurite knows.
    nohup node "$ROOT/node_modules/azurite/dist/src/blob/main.js" \
      --blobHost 127.0.0.1 --blobPort "$PORT" --location "$RIDE_AZ_DIR/data" \
      --silent --skipApiVersionCheck --disableProductStyleUrl \
      > "$RIDE_AZ_DIR/azurite.log" 2>&1 &
    echo $! > "$PIDFILE"
  fi
  wait_for_port "$RIDE_AZ_DIR/azurite.log"
  node "$PKG/create-container.js" "http://127.0.0.1:$PORT" "$CONTAINER" "$ACCOUNT" "$KEY"
  cat > "$RIDE_AZ_DIR/env" <<ENV
export AZURE_STORAGE_ACCOUNT_NAME=$ACCOUNT
export AZURE_STORAGE_ACCOUNT_KEY=$KEY
export AZURE_STORAGE_ENDPOINT=http://127.0.0.1:$PORT/$ACCOUNT
export RIDE_TEST_AZ_CONTAINER=$CONTAINER
ENV
  echo "azure blob server: http://127.0.0.1:$PORT/$ACCOUNT (container $CONTAINER); source $RIDE_AZ_DIR/env"
}

dispatch "$@"
