#!/usr/bin/env bash
# A real Prometheus (Debian's package, which also brings promtool) on
# loopback, for tests and for watching a local training. Idempotent.
#
#   scripts/prometheus.sh install   apt-get install prometheus (needs root once)
#   scripts/prometheus.sh start     start it; writes its URL to $RIDE_PROM_DIR/url
#   scripts/prometheus.sh stop
#   scripts/prometheus.sh status
#
# $RIDE_PROM_CONFIG is the scrape configuration (default
# scripts/prometheus/local.yml: a local `ride-trainer launch` with up to 8
# ranks on ports 9400-9407 and a `ride-operator` on 8080). $RIDE_PROM_DIR
# holds its data and log (default $RIDE_CACHE/prometheus); $RIDE_PROM_PORT
# picks the port (default: a free one).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
RIDE_PROM_DIR="${RIDE_PROM_DIR:-$RIDE_CACHE/prometheus}"
RIDE_PROM_CONFIG="${RIDE_PROM_CONFIG:-$here/prometheus/local.yml}"
PIDFILE="$RIDE_PROM_DIR/prometheus.pid"

install() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: Prometheus is missing; run: sudo apt-get install --no-install-recommends prometheus" >&2
    exit 1
  fi
  echo "==> installing Debian's prometheus package (prometheus, promtool)"
  # The package's own service is not started: there is no init here, and
  # tests start their own server with their own configuration.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
  install
  mkdir -p "$RIDE_PROM_DIR/data"
  if running; then
    echo "prometheus already running: $(cat "$RIDE_PROM_DIR/url")"
    return
  fi
  promtool check config "$RIDE_PROM_CONFIG" >/dev/null
  local port="${RIDE_PROM_PORT:-$(ride_free_port)}"
  local url="http://127.0.0.1:$port"
  nohup prometheus \
    --config.file="$RIDE_PROM_CONFIG" \
    --storage.tsdb.path="$RIDE_PROM_DIR/data" \
    --storage.tsdb.retention.time=7d \
    --web.listen-address="127.0.0.1:$port" \
    --web.enable-lifecycle \
    > "$RIDE_PROM_DIR/prometheus.log" 2>&1 &
  echo $! > "$PIDFILE"
  echo "$url" > "$RIDE_PROM_DIR/url"
  for _ in $(seq 1 100); do
    if curl -fsS "$url/-/ready" >/dev/null 2>&1; then
      echo "prometheus: $url (config $RIDE_PROM_CONFIG)"
      return
    fi
    running || break
    sleep 0.1
  done
  echo "error: prometheus did not become ready; see $RIDE_PROM_DIR/prometheus.log" >&2
  tail -20 "$RIDE_PROM_DIR/prometheus.log" >&2 || true
  exit 1
}

stop() {
  if running; then
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running: $(cat "$RIDE_PROM_DIR/url")"; else echo "stopped"; exit 1; fi
    ;;
  *)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
