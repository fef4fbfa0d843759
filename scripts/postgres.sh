#!/usr/bin/env bash
# A throwaway PostgreSQL server for execlog's PostgreSQL backend tests and benchmarks.
#
# Uses the Debian `postgresql` package's binaries (initdb, pg_ctl, psql). The server
# lives in a fresh temporary directory, listens on 127.0.0.1 on a free port (plus a
# unix socket in that directory), trusts every local connection, and keeps the
# durability settings on (fsync=on, synchronous_commit=on): the test suite checks them.
#
#   scripts/postgres.sh install         as root: apt-get install postgresql (no-op if present)
#   scripts/postgres.sh start           start a server; prints ONLY its URL on stdout
#   scripts/postgres.sh url             print the running server's URL
#   scripts/postgres.sh status          describe it; exit 0 if running, 3 if not
#   scripts/postgres.sh restart         pg_ctl restart -m fast (same port, same data)
#   scripts/postgres.sh stop            stop it and delete its directory
#   scripts/postgres.sh run -- CMD...   start a private server, run CMD with the
#                                       variables below exported, always stop and
#                                       delete the server afterwards; exits with CMD's code
#
# `run` exports: EXECLOG_PG_URL (postgres://execlog@127.0.0.1:PORT/execlog),
# EXECLOG_PG_PORT, EXECLOG_PG_DIR (the temporary directory, also the unix socket
# directory), EXECLOG_PG_DATA (data directory), EXECLOG_PG_LOG (server log),
# EXECLOG_PG_BINDIR, EXECLOG_PG_CTL (path to pg_ctl), EXECLOG_PG_USER (the OS user the
# server runs as: `postgres` when this script runs as root), EXECLOG_PG_SCRIPT (absolute
# path of this script) and EXECLOG_PG_STATE (its private state file), so a test can
# run `"$EXECLOG_PG_SCRIPT" restart` (or `stop`, `status`) on the same server.
#
# State: the running server's directory is recorded in the file
# ${EXECLOG_PG_STATE:-${TMPDIR:-/tmp}/execlog-pg.state}; `run` uses a private one.
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
TMP_ROOT="${TMPDIR:-/tmp}"
STATE="${EXECLOG_PG_STATE:-$TMP_ROOT/execlog-pg.state}"
DB_USER=execlog
DB_NAME=execlog
MARKER=.execlog-pg          # file in every directory this script created; stop/rm require it

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { printf 'postgres.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//' >&2
}

# ---------------------------------------------------------------- binaries and user

# Sets BINDIR to a directory holding initdb, pg_ctl, postgres and psql; returns 1 if none.
find_bindir() {
  local dir candidates=()
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir 2>/dev/null || true)"
    [ -n "$dir" ] && candidates+=("$dir")
  fi
  # Highest version first.
  while IFS= read -r dir; do
    candidates+=("$dir")
  done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5Vr)
  for dir in "${candidates[@]}"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && [ -x "$dir/psql" ]; then
      BINDIR="$dir"
      return 0
    fi
  done
  return 1
}

need_bindir() {
  find_bindir || die "no PostgreSQL server binaries found (looked at \`pg_config --bindir\` and /usr/lib/postgresql/*/bin); install them with: apt-get install postgresql (or, as root: $SCRIPT install)"
}

# The OS user that owns and runs the server: initdb and postgres refuse to run as root.
server_user() {
  if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

ensure_server_user() {
  [ "$(id -u)" = 0 ] || return 0
  if ! id -u postgres >/dev/null 2>&1; then
    log "creating the system user 'postgres' (initdb and postgres refuse to run as root)"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
      --shell /usr/sbin/nologin postgres >&2 ||
      die "could not create the system user 'postgres'; create it, or run this script as a non-root user"
  fi
  command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is needed to run the server as 'postgres'"
}

# Runs a command as the server user, from / (the caller's cwd may be unreadable to it).
as_server() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# ---------------------------------------------------------------- state

# Sets DIR, DATA, LOGFILE, PORT, URL from the state file; returns 1 if there is none.
load_state() {
  DIR="" DATA="" LOGFILE="" PORT="" URL=""
  [ -f "$STATE" ] || return 1
  DIR="$(head -n 1 "$STATE")"
  [ -n "$DIR" ] && [ -f "$DIR/$MARKER" ] || return 1
  DATA="$DIR/data"
  LOGFILE="$DIR/log"
  PORT="$(cat "$DIR/port" 2>/dev/null || true)"
  URL="$(cat "$DIR/url" 2>/dev/null || true)"
}

is_running() {
  [ -n "${DATA:-}" ] && [ -f "$DATA/PG_VERSION" ] || return 1
  as_server "$BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

# ---------------------------------------------------------------- ports

port_in_use() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ] && return 0
  fi
  # Fallback (and double check): something answers on it.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
  return 1
}

pick_port() {
  local port i
  for i in $(seq 1 100); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40001))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  die "found no free TCP port in 20000-60000 after 100 tries"
}

# ---------------------------------------------------------------- start / stop

psql_q() {
  "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U "$DB_USER" "$@"
}

# Starts a new server and records it in the state file (as soon as its directory
# exists, so that a failure or a signal part-way leaves something `stop` can clean).
# Sets DIR, DATA, LOGFILE, PORT, URL.
start_server() {
  need_bindir
  ensure_server_user
  local user
  user="$(server_user)"

  mkdir -p "$TMP_ROOT"
  DIR="$(mktemp -d "$TMP_ROOT/execlog-pg.XXXXXXXXXX")"
  touch "$DIR/$MARKER"
  mkdir -p "$(dirname "$STATE")"
  printf '%s\n' "$DIR" >"$STATE"
  DATA="$DIR/data"
  LOGFILE="$DIR/log"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$DIR"
    as_server test -w "$DIR" ||
      die "user 'postgres' cannot write to $DIR (is a parent directory of TMPDIR=$TMP_ROOT closed to it?); set TMPDIR to e.g. /tmp"
  fi

  log "initdb in $DATA (bin: $BINDIR, OS user: $user)"
  if ! as_server "$BINDIR/initdb" -D "$DATA" --auth=trust -U "$DB_USER" \
      --encoding=UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1; then
    cat "$DIR/initdb.log" >&2
    die "initdb failed (output above)"
  fi

  # Settings live in a file included from postgresql.conf, so that `restart` (and a
  # test's own pg_ctl restart) keeps them, and the port can be rewritten on a retry.
  printf "include_if_exists = 'execlog.conf'\n" | as_server tee -a "$DATA/postgresql.conf" >/dev/null

  local attempt
  for attempt in 1 2 3 4 5; do
    PORT="$(pick_port)"
    as_server tee "$DATA/execlog.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh (execlog tests and benchmarks).
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 200
shared_buffers = 256MB
# Durability is the product: the test suite checks these.
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
    if as_server "$BINDIR/pg_ctl" start -D "$DATA" -l "$LOGFILE" -w -t 60 >&2; then
      break
    fi
    if grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets' "$LOGFILE" 2>/dev/null &&
       [ "$attempt" -lt 5 ]; then
      log "port $PORT was taken meanwhile; trying another"
      continue
    fi
    tail -n 30 "$LOGFILE" >&2 2>/dev/null || true
    die "the server did not start (log: $LOGFILE, shown above)"
  done

  psql_q -d postgres -c "CREATE DATABASE $DB_NAME" >&2 || die "could not create the database $DB_NAME"
  URL="postgres://$DB_USER@127.0.0.1:$PORT/$DB_NAME"
  printf '%s\n' "$PORT" >"$DIR/port"
  printf '%s\n' "$URL" >"$DIR/url"

  report_server >&2
}

report_server() {
  local version settings
  version="$(psql_q -d "$DB_NAME" -At -c 'SELECT version()')"
  settings="$(psql_q -d "$DB_NAME" -At -F= -c "SELECT n, current_setting(n) FROM unnest(ARRAY['fsync','synchronous_commit','wal_sync_method','full_page_writes','shared_buffers','max_connections','listen_addresses','port']) AS n")"
  echo "postgres.sh: server running: $version"
  echo "postgres.sh:   data directory: $DATA (OS user $(server_user)), log: $LOGFILE, socket dir: $DIR"
  echo "postgres.sh:   settings: $(echo $settings)"
  echo "postgres.sh:   url: $URL"
}

# Stops the server recorded in the state file (if any) and deletes its directory and
# the state file. Quiet about "nothing to stop" unless $1 = loud.
stop_server() {
  local loud="${1:-}"
  if [ ! -f "$STATE" ]; then
    [ "$loud" = loud ] && log "no server recorded in $STATE"
    return 0
  fi
  if ! load_state; then
    [ "$loud" = loud ] && log "stale state file $STATE (directory ${DIR:-?} is gone); removing it"
    rm -f "$STATE"
    return 0
  fi
  find_bindir || true
  if [ -n "${BINDIR:-}" ] && [ -f "$DATA/postmaster.pid" ]; then
    if is_running; then
      as_server "$BINDIR/pg_ctl" stop -D "$DATA" -m fast -w -t 30 >&2 ||
        as_server "$BINDIR/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 >&2 || true
    fi
  fi
  # Last resort: a postmaster still running on this data directory.
  if [ -f "$DATA/postmaster.pid" ]; then
    local pid
    pid="$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DATA"; then
      log "killing postmaster $pid"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  case "$(basename "$DIR")" in
    execlog-pg.*) rm -rf -- "$DIR" ;;
    *) log "not deleting $DIR: not a directory this script created" ;;
  esac
  rm -f "$STATE"
  log "stopped and deleted $DIR"
}

# ---------------------------------------------------------------- subcommands

cmd_install() {
  if find_bindir; then
    log "PostgreSQL server binaries already present in $BINDIR"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing needs root: apt-get install postgresql"
  log "installing PostgreSQL: apt-get install postgresql"
  local out
  out="$(mktemp "$TMP_ROOT/execlog-pg-install.XXXXXXXXXX.log")"
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >"$out" 2>&1; then
    tail -n 40 "$out" >&2 || true
    rm -f "$out"
    die "apt-get install postgresql failed (output above)"
  fi
  rm -f "$out"
  need_bindir
  log "installed: $BINDIR"
}

cmd_start() {
  need_bindir
  if load_state && is_running; then
    log "already running (state: $STATE)"
    printf '%s\n' "$URL"
    return 0
  fi
  if [ -f "$STATE" ]; then
    log "cleaning up a server recorded in $STATE that is not running"
    stop_server
  fi
  # Do not leave a half-started server behind on failure or on a signal.
  trap 'rc=$?; trap - EXIT INT TERM; [ "$rc" = 0 ] || stop_server; exit "$rc"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_server
  trap - EXIT INT TERM
  printf '%s\n' "$URL"
}

cmd_url() {
  need_bindir
  load_state || die "no server recorded in $STATE (start one with: $SCRIPT start)"
  is_running || die "the server recorded in $STATE ($DIR) is not running"
  printf '%s\n' "$URL"
}

cmd_status() {
  need_bindir
  if ! load_state; then
    echo "no server recorded in $STATE"
    return 3
  fi
  if is_running; then
    echo "running: $URL"
    echo "data directory: $DATA (OS user $(server_user)), log: $LOGFILE"
    as_server "$BINDIR/pg_ctl" status -D "$DATA" | sed -n '1p'
    return 0
  fi
  echo "not running (directory $DIR is still there; \`$SCRIPT stop\` deletes it)"
  return 3
}

cmd_restart() {
  need_bindir
  load_state || die "no server recorded in $STATE"
  log "restarting (pg_ctl restart -m fast) $DATA"
  as_server "$BINDIR/pg_ctl" restart -D "$DATA" -m fast -w -t 60 -l "$LOGFILE" >&2 ||
    { tail -n 30 "$LOGFILE" >&2 || true; die "restart failed (log: $LOGFILE)"; }
  psql_q -d "$DB_NAME" -At -c 'SELECT 1' >/dev/null || die "the server does not answer after the restart"
  log "restarted: $URL"
}

cmd_stop() {
  find_bindir || true
  stop_server loud
}

RUN_CHILD=""
run_cleanup() {
  local rc="$1"
  trap - EXIT INT TERM
  if [ -n "$RUN_CHILD" ] && kill -0 "$RUN_CHILD" 2>/dev/null; then
    kill -TERM "$RUN_CHILD" 2>/dev/null || true
    wait "$RUN_CHILD" 2>/dev/null || true
  fi
  stop_server || true
  rm -f "$STATE"
  exit "$rc"
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ "$#" -gt 0 ] || die "usage: $SCRIPT run -- CMD [ARGS...]"
  need_bindir
  # A private state file: never touches a server started with `start`.
  STATE="$(mktemp "$TMP_ROOT/execlog-pg-run.XXXXXXXXXX.state")"
  trap 'run_cleanup $?' EXIT
  trap 'log "interrupted; stopping the server"; run_cleanup 130' INT
  trap 'log "terminated; stopping the server"; run_cleanup 143' TERM
  start_server

  export EXECLOG_PG_URL="$URL"
  export EXECLOG_PG_PORT="$PORT"
  export EXECLOG_PG_DIR="$DIR"
  export EXECLOG_PG_DATA="$DATA"
  export EXECLOG_PG_LOG="$LOGFILE"
  export EXECLOG_PG_BINDIR="$BINDIR"
  export EXECLOG_PG_CTL="$BINDIR/pg_ctl"
  EXECLOG_PG_USER="$(server_user)"
  export EXECLOG_PG_USER
  export EXECLOG_PG_SCRIPT="$SCRIPT"
  export EXECLOG_PG_STATE="$STATE"

  log "running: $*"
  # In the background so that a signal to this script runs the trap at once (bash
  # defers traps while a foreground command runs); stdin is passed through, and
  # SIGINT/SIGQUIT (ignored by default for background jobs) are restored.
  local rc=0
  { exec 3<&0; } 2>/dev/null || exec 3</dev/null
  ( trap - INT QUIT; exec "$@" <&3 3<&- ) &
  RUN_CHILD=$!
  exec 3<&-
  wait "$RUN_CHILD" || rc=$?
  RUN_CHILD=""
  [ "$rc" = 0 ] || log "command exited with status $rc"
  run_cleanup "$rc"
}

main() {
  local cmd="${1:-}"
  [ "$#" -gt 0 ] && shift
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    url) cmd_url ;;
    status) cmd_status ;;
    restart) cmd_restart ;;
    run) cmd_run "$@" ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
