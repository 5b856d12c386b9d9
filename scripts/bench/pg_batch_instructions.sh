#!/usr/bin/env bash
# Instructions per call of chatcore-postgres's batch function, counted by valgrind's callgrind on
# a single-user PostgreSQL backend (`postgres --single`): no other process, no timing, so schema
# versions compare within a fraction of a percent on a busy machine (pg_send_cpu.sh measures
# CPU time, which a busy machine inflates).
#
#   scripts/bench/pg_batch_instructions.sh VERSION...      (BATCH=N in the environment: sends per call)
#
# FUNCTION=name counts another function of the same arguments (default chatcore_insert_messages;
# chatcore_insert_messages_each from schema 10, what the store calls for a batch of one).
#
# For each schema VERSION (built by pg_schema.py from chatcore-postgres/src/schema.rs) a database
# in a throwaway cluster (initdb in a temp dir, fsync off, own port, removed at the end) gets 500
# users and 3,000 batches of history (random pairs), then VACUUM ANALYZE. Then, for 20 and for 220
# calls of a prepared `chatcore_insert_messages` with BATCH sends (default 6, random pairs, the
# same seed for every version), callgrind counts the backend's instructions, each run on a fresh
# copy of the cluster. Printed per call: `(Ir(220) - Ir(20)) / 200` of the whole backend and of
# the function alone (plpgsql_exec_function, inclusive: what the server would execute; the whole
# also counts parsing this script's EXECUTE text and evaluating its random arguments).
# Needs: valgrind, PostgreSQL's server binaries (PGBIN, default /usr/lib/postgresql/15/bin), root
# (the cluster runs as user postgres).
set -euo pipefail
batch=${BATCH:-6}
pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
here=$(cd "$(dirname "$0")" && pwd)
schema=$here/../../chatcore-postgres/src/schema.rs
work=$(mktemp -d)
chown postgres "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { su postgres -c "$pgbin/pg_ctl -D $work/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

call() { # one EXECUTE of the prepared batch with $batch random sends
  local s="" r="" b="" k=""
  for _ in $(seq "$batch"); do
    s+=",(random()*498)::int+1" r+=",'user'||(random()*498)::int"
    b+=",'a typical chat message of moderate length'" k+=",NULL"
  done
  echo "EXECUTE batch(ARRAY[${s:1}]::BIGINT[], ARRAY[${r:1}], ARRAY[${b:1}], ARRAY[${k:1}]::BYTEA[]);"
}
function=${FUNCTION:-chatcore_insert_messages}
prepare="PREPARE batch(BIGINT[], TEXT[], TEXT[], BYTEA[]) AS SELECT * FROM $function(\$1, \$2, \$3, \$4);"
call > "$work/call.sql"

su postgres -c "$pgbin/initdb -D $work/data -A trust -U postgres" >/dev/null
su postgres -c "$pgbin/pg_ctl -D $work/data -w -l $work/log -o '-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off' start" >/dev/null
psql_cmd="psql -h 127.0.0.1 -p $port -U postgres -q -v ON_ERROR_STOP=1"
for v in "$@"; do
  $psql_cmd -c "CREATE DATABASE v$v"
  python3 "$here/pg_schema.py" "$schema" "$v" | $psql_cmd -d "v$v"
  $psql_cmd -d "v$v" -c "INSERT INTO chatcore_users (username, username_key) \
    SELECT 'user' || i, 'user' || i FROM generate_series(0, 499) i"
  { echo "$prepare"; for _ in $(seq 3000); do cat "$work/call.sql"; done; } | $psql_cmd -d "v$v" >/dev/null
  $psql_cmd -d "v$v" -c "VACUUM ANALYZE"
done
su postgres -c "$pgbin/pg_ctl -D $work/data -m fast stop" >/dev/null

count() { # count VERSION N -> "total function" instructions of one single-user run
  local v=$1 n=$2 run=$work/run
  rm -rf "$run"; cp -a "$work/data" "$run"
  { echo "SELECT setseed(0.5);"; echo; echo "$prepare"; echo
    for _ in $(seq "$n"); do cat "$work/call.sql"; echo; done; } > "$work/in.sql"
  su postgres -c "valgrind --tool=callgrind --callgrind-out-file=$work/cg.out $pgbin/postgres --single -j \
    -D $run -c fsync=off -c synchronous_commit=off v$v < $work/in.sql > $work/out.txt 2>&1"
  if grep -q "ERROR" "$work/out.txt"; then grep -m3 "ERROR" "$work/out.txt" >&2; exit 1; fi
  callgrind_annotate --inclusive=yes "$work/cg.out" 2>/dev/null | awk '
    /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
    /plpgsql_exec_function / && !fn { gsub(",", "", $1); fn = $1 }
    END { print total, fn }'
}
for v in "$@"; do
  read -r t20 f20 <<<"$(count "$v" 20)"
  read -r t220 f220 <<<"$(count "$v" 220)"
  echo "schema $v, $function, batches of $batch: $(( (t220 - t20) / 200 )) instructions per call," \
    "$(( (f220 - f20) / 200 )) in the function ($(( (f220 - f20) / 200 / batch )) per send)"
done
