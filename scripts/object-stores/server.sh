# Shared by the object-store servers' scripts (s3-server.sh, gcs-server.sh,
# az-server.sh): one process per server under a pid file, stopped gently or
# killed as a crash would, and the command-line verbs they all answer.
# The caller sets PIDFILE and PORT and defines install and start.

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Refuse to start over someone else's server on our port.
port_must_be_free() {
  if port_answers "$PORT"; then
    echo "error: port $PORT is already in use (another server? stop it, or set $1)" >&2
    exit 1
  fi
}

# Wait (up to 20 s) until the server answers on PORT; fail naming its log.
wait_for_port() {
  local log=$1
  for _ in $(seq 1 200); do
    port_answers "$PORT" && return 0
    running || break
    sleep 0.1
  done
  echo "error: the server did not start on 127.0.0.1:$PORT; see $log" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$PIDFILE")"
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    running && kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

# Kill the server at once (SIGKILL), as a crash would; `start` brings it back.
crash() {
  if running; then kill -9 "$(cat "$PIDFILE")"; fi
  for _ in $(seq 1 50); do running || break; sleep 0.02; done
  rm -f "$PIDFILE"
}

dispatch() {
  case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    crash) crash ;;
    restart) stop; start ;;
    status) if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 1; fi ;;
    *) echo "usage: $0 install|start|stop|crash|restart|status" >&2; exit 2 ;;
  esac
}
