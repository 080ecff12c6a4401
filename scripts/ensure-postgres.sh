#!/usr/bin/env bash
# Make sure a local PostgreSQL server answers on 127.0.0.1:$CI_PG_PORT (default 55432) and
# print its URL (postgresql://postgres@127.0.0.1:55432/postgres) on stdout; everything else
# goes to stderr. Idempotent: returns at once when the server answers. On a fresh machine
# it installs Debian's postgresql package; with no systemd it makes a cluster with initdb
# (trust authentication, local connections only) and starts it with pg_ctl, as the
# `postgres` user when run as root (the server refuses to run as root).
#   CI_PG_PORT  the port (default 55432)
#   CI_PG_DATA  the cluster's folder (default /var/tmp/ci-postgres-<port>)
set -euo pipefail

PORT="${CI_PG_PORT:-55432}"
DATA="${CI_PG_DATA:-/var/tmp/ci-postgres-$PORT}"
LOG="$DATA.log"
URL="postgresql://postgres@127.0.0.1:$PORT/postgres"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
answers() { [[ -n $(pg_bin) ]] && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

if answers; then
  echo "$URL"
  exit 0
fi

# One run at a time from here (helpers and test sessions start it together): a second
# initdb into the same folder fails, and so would a second apt-get.
exec 9>"$DATA.lock"
flock 9
if answers; then
  echo "$URL"
  exit 0
fi

if [[ -z $(pg_bin) ]]; then
  echo "ensure-postgres: installing postgresql" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
fi
BIN="$(pg_bin)"

# As root, the cluster belongs to `postgres` (the package creates that user).
as_owner=()
if [[ $(id -u) == 0 ]]; then
  as_owner=(runuser -u postgres --)
fi

if [[ ! -f $DATA/PG_VERSION ]]; then
  echo "ensure-postgres: creating a cluster in $DATA" >&2
  mkdir -p "$DATA"
  [[ $(id -u) == 0 ]] && chown postgres: "$DATA"
  "${as_owner[@]}" "$BIN/initdb" -D "$DATA" -A trust -U postgres -E UTF8 >&2
fi
touch "$LOG"
[[ $(id -u) == 0 ]] && chown postgres: "$LOG"

echo "ensure-postgres: starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG)" >&2
# fsync off: a test cluster, thrown away with the machine; it spares the loaded disk.
# 9>&-: the server must not inherit the lock, or it would hold it for as long as it runs.
"${as_owner[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
  -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
  >&2 9>&-

if ! answers; then
  echo "ensure-postgres: ERROR: PostgreSQL does not answer; tail of $LOG:" >&2
  tail -n 30 "$LOG" >&2 || true
  exit 1
fi
echo "$URL"
