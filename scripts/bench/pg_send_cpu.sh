#!/usr/bin/env bash
# Server CPU per send of chatcore-postgres's batch function, less sensitive to a busy machine than
# the criterion bench (whose single-sender figure is mostly the WAL flush): a DO loop of N calls
# of `chatcore_insert_messages` (one message each, user k to user k+1 of 65, each call committed,
# `synchronous_commit` off in that session only so the flush wait does not count), and the
# backend's CPU over it from /proc (user ticks and schedstat), per call. Databases are measured
# round-robin, ROUNDS times, each run in a new session (its plans warmed by 50 calls first).
#
#   scripts/bench/pg_send_cpu.sh ROUNDS N DB...
#
# Each DB holds the crate's schema (e.g. `scripts/bench/pg_schema.py chatcore-postgres/src/schema.rs
# 7 | psql -d DB -q`); users user0..user64 are added when missing. Run it on the database's host
# (it reads /proc/<backend pid>). Environment: PSQL (default `psql -h 127.0.0.1 -U postgres`).
set -euo pipefail
rounds=$1 n=$2
shift 2
psql_cmd=${PSQL:-psql -h 127.0.0.1 -U postgres}
tick=$(getconf CLK_TCK)
out=$(mktemp)
call="PERFORM * FROM chatcore_insert_messages(ARRAY[(i % 64) + 1]::BIGINT[], ARRAY['user' || ((i % 64) + 1)], \
ARRAY['a typical chat message of moderate length'], ARRAY[NULL::BYTEA]); COMMIT;"
for db in "$@"; do
  $psql_cmd -d "$db" -qc "INSERT INTO chatcore_users (username, username_key) SELECT 'user' || i, 'user' || i \
    FROM generate_series(0, 64) i ON CONFLICT DO NOTHING"
done
for round in $(seq "$rounds"); do
  for db in "$@"; do
    stats=$($psql_cmd -d "$db" -qAt -v ON_ERROR_STOP=1 <<SQL
SET synchronous_commit = off;
SELECT pg_backend_pid() AS pid \gset
\setenv PGPID :pid
DO \$\$ BEGIN FOR i IN 1..50 LOOP $call END LOOP; END \$\$;
\! awk '{printf "%s %s ", \$14, \$15}' /proc/\$PGPID/stat; awk '{print \$1}' /proc/\$PGPID/schedstat
DO \$\$ BEGIN FOR i IN 1..$n LOOP $call END LOOP; END \$\$;
\! awk '{printf "%s %s ", \$14, \$15}' /proc/\$PGPID/stat; awk '{print \$1}' /proc/\$PGPID/schedstat
SQL
)
    read -r u0 s0 c0 u1 s1 c1 <<<"$(echo $stats)"
    user=$(( (u1 - u0) * 1000000 / tick / n )) cpu=$(( (c1 - c0) / 1000 / n ))
    echo "round $round $db user_us_per_send $user cpu_us_per_send $cpu load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out"
  done
done
for db in "$@"; do
  grep " $db " "$out" | awk -v db="$db" '{u[NR]=$5; c[NR]=$7} END {
    n = asort(u); asort(c); printf "%s: median user %d µs, cpu %d µs per send (%d runs)\n", db, u[int((n+1)/2)], c[int((n+1)/2)], n }'
done
rm -f "$out"
