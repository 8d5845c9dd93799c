# Starts a throwaway PostgreSQL cluster for the tests: initdb in a temp dir, loopback only,
# a free port, owned by the `postgres` user. Source it; it exports POSTGRES_TEST_URL
# and PG_BIN, and stops the cluster when the sourcing shell exits. PG_EXTRA_OPTS adds server
# settings (`-c name=value ...`).
# Installs Debian's postgresql when it is missing.

pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

start_test_postgres() {
  if [ -z "$(pg_bin_dir)" ]; then
    ensure_packages __never__:postgresql
  fi
  PG_BIN=$(pg_bin_dir)
  if [ -z "$PG_BIN" ]; then
    echo "PostgreSQL is not installed and could not be installed" >&2
    return 1
  fi
  export PG_BIN
  PG_DIR=$(mktemp -d /tmp/flotilla-pg.XXXXXX)
  chown postgres:postgres "$PG_DIR" 2>/dev/null || true
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local as_pg=()
  [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U flotilla --auth=trust -E UTF8 >/dev/null
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=on -c max_connections=200 ${PG_EXTRA_OPTS:-}" start >/dev/null
  export PG_DIR PG_PORT=$port
  export POSTGRES_TEST_URL="postgres://flotilla@127.0.0.1:$port/postgres"
  trap stop_test_postgres EXIT
  echo "postgres on 127.0.0.1:$port ($PG_DIR)" >&2
}

stop_test_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  local as_pg=()
  [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR" 2>/dev/null || true
}
