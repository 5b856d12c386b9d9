#!/usr/bin/env bash
# End to end on PostgreSQL alone: one or two release chat-server nodes on a fresh database (the
# LISTEN/NOTIFY notifier, the default with a PostgreSQL database), the load generator's sockets
# on the last node and its sends to the first, open loop.
#
#   scripts/bench/pg_e2e.sh BIN_DIR NODES [extra chat-loadgen flags...]
#
# Defaults: 500 users, 1,000 sockets, 16 senders, $STEPS steps (default 3) of 10 s each at $RATE
# sends/s (default 1,000) over the same users and sockets (the load generator's sweep mode), so
# that the first step shows a freshly started server (connections opened, plans made, first
# rows of every conversation written) and the later ones the steady state. Needs the machine's
# PostgreSQL (CHATCORE_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432). Prints each
# step's send and notification latency and the first node's CPU per send, then the store's
# batches over the whole run from /metrics; the JSON report goes to $OUT (default /tmp/pg-e2e),
# the first node's /metrics text to $METRICS_OUT when set. SERVER_FLAGS adds chat-server flags.
set -euo pipefail
bin=$1 nodes=$2
shift 2
base=${CHATCORE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
out=${OUT:-/tmp/pg-e2e}
mkdir -p "$out"
db="chat_pg_e2e_$$"
psql "$base/postgres" -qc "CREATE DATABASE $db"
# The new database's pages go through the WAL; a checkpoint now keeps that flush out of the run.
psql "$base/postgres" -qc "CHECKPOINT"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT
ports=()
for n in $(seq "$nodes"); do
  port=$((8300 + n))
  "$bin/chat-server" --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 --registrations-per-hour 0 \
    --max-connections-per-address 100000 ${SERVER_FLAGS:-} --log warn --listen "127.0.0.1:$port" --database "$base/$db" &
  pids+=($!)
  ports+=("$port")
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
done
first=${ports[0]} last=${ports[-1]}
report="$out/$nodes-node-$(date +%H%M%S).json"
"$bin/chat-loadgen" --url "http://127.0.0.1:$first" --ws-base-url "http://127.0.0.1:$last" \
  --users 500 --connections 1000 --senders 16 --duration 10 --server-pid "${pids[0]}" \
  --sweep-rates "$(python3 -c "print(','.join(['${RATE:-1000}'] * ${STEPS:-3}))")" --sweep-pause-ms 500 \
  -q --json-out "$report" "$@" >/dev/null ||
  echo "chat-loadgen exited with $? (a failed send, or a notification lost or duplicated): see the figures" >&2
metrics=$(curl -fs "http://127.0.0.1:$first/metrics")
if [ -n "${METRICS_OUT:-}" ]; then printf "%s\n" "$metrics" > "$METRICS_OUT"; fi
python3 - "$report" "$metrics" <<'EOF'
import json, re, sys
r, metrics = json.load(open(sys.argv[1])), sys.argv[2]
def metric(name):
    m = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0
for i, step in enumerate(r["steps"], 1):
    s, n = step["send"], step["notifications"]
    per = (s.get("server_cpu_secs") or 0) * 1e6 / max(s.get("sent") or 1, 1)
    print(f"step {i}{' (warm-up)' if i == 1 else ''}: {s['sends_per_sec']:.0f} sends/s, "
          f"send p50 {s['send_latency']['p50_ms']:.2f} p99 {s['send_latency']['p99_ms']:.2f} ms, "
          f"notification p50 {n['latency']['p50_ms']:.2f} p99 {n['latency']['p99_ms']:.2f} "
          f"max {n['latency']['max_ms']:.1f} ms, lost {n['lost']} dup {n['duplicated']}, "
          f"first node {per:.0f} us CPU per send, client start lag p99 {s['start_lag']['p99_ms']:.2f} ms")
batches = metric("chatcore_store_commit_batch_size_count")
print(f"whole run: {batches:.0f} batches of "
      f"{metric('chatcore_store_commit_batch_size_sum') / max(batches, 1):.1f} sends, "
      f"{1000 * metric('chatcore_store_commit_seconds_sum') / max(batches, 1):.2f} ms each")
EOF
