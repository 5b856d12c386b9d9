#!/usr/bin/env bash
# How fast a lone send could be on PostgreSQL while keeping what issue 21 asks of it, against the
# issue's baseline (a raw autocommit INSERT of the same row, plain sequence, same indexes). One
# client, pgbench, each shape in turn for SECONDS, ROUNDS times round-robin, so every round
# compares shapes on the same machine; per shape the median sends/s and its ratio to raw.
#
#   scripts/bench/pg_send_floor.sh [ROUNDS] [SECONDS]          (defaults 5 and 6)
#
# The shapes, from the least work to what the store runs:
#   raw        INSERT ... VALUES (nextval(...)) into a copy of chatcore_messages (the baseline)
#   statement  one plain INSERT ... SELECT: an advisory transaction lock and nextval (ids in
#              commit order across processes), both users by index, the two block checks. No
#              removed-sender or replay check, no previous positions, no counters, no inbox.
#   function   PL/pgSQL: the sequence row locked and moved (as the store does), the same
#              lookup, the insert. Still no previous positions, counters or inbox.
#   previous   `function` plus each user's exact newest position before the send (the event's
#              `previous` link): their total row and two backward index probes each.
#   chatcore   `chatcore_insert_messages_each`, what the store calls for a batch of one.
# SYNC=off runs every shape with synchronous_commit off (no flush wait: the work alone).
# A scratch database on the machine's PostgreSQL (PSQL, default `psql -h 127.0.0.1 -U postgres`;
# PGBENCH_CONN, default `-h 127.0.0.1 -U postgres`), the latest schema from schema.rs (pg_schema.py),
# 500 users and 60,000 messages of history; dropped at the end.
set -euo pipefail
rounds=${1:-5} seconds=${2:-6}
here=$(cd "$(dirname "$0")" && pwd)
psql_cmd=${PSQL:-psql -h 127.0.0.1 -U postgres}
conn=${PGBENCH_CONN:--h 127.0.0.1 -U postgres}
db=chatcore_send_floor_$$
work=$(mktemp -d)
cleanup() { $psql_cmd -q -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

$psql_cmd -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db"
q() { $psql_cmd -q -v ON_ERROR_STOP=1 -d "$db" "$@"; }
python3 "$here/pg_schema.py" "$here/../../chatcore-postgres/src/schema.rs" | q >/dev/null
q >/dev/null <<'SQL'
INSERT INTO chatcore_users (username, username_key) SELECT 'user' || i, 'user' || i FROM generate_series(0, 499) i;
SELECT count(*) FROM chatcore_insert_messages(
    (SELECT array_agg((i % 499) + 1) FROM generate_series(1, 60000) i),
    (SELECT array_agg('user' || ((i * 7) % 500)) FROM generate_series(1, 60000) i),
    (SELECT array_agg('a typical chat message of moderate length'::TEXT) FROM generate_series(1, 60000) i),
    (SELECT array_agg(NULL::BYTEA) FROM generate_series(1, 60000) i));
CREATE TABLE floor_raw (LIKE chatcore_messages INCLUDING ALL);
CREATE SEQUENCE floor_raw_ids;
CREATE SEQUENCE floor_ids START 100000000;
CREATE FUNCTION floor_function(p_sender BIGINT, p_rkey TEXT, p_body TEXT, p_previous BOOLEAN)
RETURNS TABLE (message_id BIGINT, created_at TIMESTAMPTZ, sender_previous BIGINT, recipient_previous BIGINT)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE v_last BIGINT; v_at TIMESTAMPTZ; v_rid BIGINT; v_sname TEXT; v_blocked BOOLEAN;
BEGIN
    SELECT c.total INTO v_last FROM chatcore_counts c WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
    v_at := date_trunc('microseconds', clock_timestamp());
    SELECT r.id, s.username, r.id <> s.id AND (
            EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = s.id AND b.blocked_id = r.id)
            OR EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = r.id AND b.blocked_id = s.id))
        INTO v_rid, v_sname, v_blocked
        FROM (SELECT 1) AS one
        LEFT JOIN chatcore_users r ON r.username_key = p_rkey
        LEFT JOIN chatcore_users s ON s.id = p_sender;
    IF p_previous THEN
        SELECT GREATEST(
            (SELECT c.last_position FROM chatcore_counts c WHERE c.low_id = p_sender AND c.high_id = 0),
            (SELECT m.id FROM chatcore_messages m WHERE m.sender_id = p_sender ORDER BY m.id DESC LIMIT 1),
            (SELECT m.id FROM chatcore_messages m WHERE m.recipient_id = p_sender ORDER BY m.id DESC LIMIT 1)),
          GREATEST(
            (SELECT c.last_position FROM chatcore_counts c WHERE c.low_id = v_rid AND c.high_id = 0),
            (SELECT m.id FROM chatcore_messages m WHERE m.sender_id = v_rid ORDER BY m.id DESC LIMIT 1),
            (SELECT m.id FROM chatcore_messages m WHERE m.recipient_id = v_rid ORDER BY m.id DESC LIMIT 1))
          INTO sender_previous, recipient_previous;
    END IF;
    v_last := v_last + 1;
    INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, conversation_high,
        created_at, body) VALUES (v_last, p_sender, v_rid, LEAST(p_sender, v_rid),
        GREATEST(p_sender, v_rid), v_at, p_body);
    UPDATE chatcore_counts c SET total = v_last WHERE c.low_id = 0 AND c.high_id = 0;
    message_id := v_last; created_at := v_at;
    RETURN NEXT;
END $fn$;
VACUUM ANALYZE;
SQL

head='\set s random(1, 499)
\set r random(1, 499)'
body="'a typical chat message of moderate length'"
printf '%s\n%s\n' "$head" "INSERT INTO floor_raw (id, sender_id, recipient_id, conversation_low, conversation_high, \
created_at, body) VALUES (nextval('floor_raw_ids'), :s, :r, LEAST(:s::BIGINT, :r::BIGINT), GREATEST(:s::BIGINT, :r::BIGINT), \
now(), $body);" > "$work/raw.sql"
printf '%s\n%s\n' "$head" "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, conversation_high, \
created_at, body) SELECT nextval('floor_ids'), s.id, r.id, LEAST(s.id, r.id), GREATEST(s.id, r.id), now(), $body \
FROM (SELECT pg_advisory_xact_lock(42) OFFSET 0) l, chatcore_users r, chatcore_users s \
WHERE r.username_key = 'user' || :r AND s.id = :s \
AND NOT EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = s.id AND b.blocked_id = r.id) \
AND NOT EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = r.id AND b.blocked_id = s.id) \
RETURNING id, created_at;" > "$work/statement.sql"
printf '%s\n%s\n' "$head" "SELECT * FROM floor_function(:s, 'user' || :r, $body, false);" > "$work/function.sql"
printf '%s\n%s\n' "$head" "SELECT * FROM floor_function(:s, 'user' || :r, $body, true);" > "$work/previous.sql"
printf '%s\n%s\n' "$head" "SELECT * FROM chatcore_insert_messages_each(ARRAY[:s]::BIGINT[], ARRAY['user' || :r], \
ARRAY[$body], ARRAY[NULL]::BYTEA[]);" > "$work/chatcore.sql"

shapes="raw statement function previous chatcore"
export PGOPTIONS="-c synchronous_commit=${SYNC:-on}"
for round in $(seq "$rounds"); do
  line="round $round (load $(cut -d' ' -f1 /proc/loadavg)):"
  for shape in $shapes; do
    # shellcheck disable=SC2086
    tps=$(pgbench $conn -n -M prepared -c 1 -T "$seconds" -f "$work/$shape.sql" "$db" 2>&1 \
      | awk '/^tps/ { printf "%d", $3 }')
    [ -n "$tps" ] || { echo "pgbench failed on $shape" >&2; exit 1; }
    echo "$round $shape $tps" >> "$work/results"
    line+=" $shape $tps"
  done
  echo "$line"
done
echo "synchronous_commit=${SYNC:-on}, 1 client, median sends/s of $rounds rounds (ratio to raw: median of the per-round ratios)"
for shape in $shapes; do
  awk -v shape="$shape" '
    { tps[$1, $2] = $3; rounds[$1] = 1 }
    END {
      for (r in rounds) { n++; v[n] = tps[r, shape]; q[n] = tps[r, shape] / tps[r, "raw"] }
      asort(v); asort(q)
      printf "  %-10s %6d /s  %.2fx\n", shape, v[int((n + 1) / 2)], q[int((n + 1) / 2)]
    }' "$work/results"
done
