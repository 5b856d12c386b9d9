#!/usr/bin/env bash
# End to end on every storage backend in one run, so their figures sit side by side: SQLite (one
# node), MySQL (one node; two nodes through Redis), PostgreSQL (one node; two nodes through
# LISTEN/NOTIFY alone). Each configuration gets a fresh database and fresh release chat-server
# processes, then:
#   - open loop: $STEPS steps (default 3) of 10 s at $RATE sends/s (default 1,000) over the same
#     500 users and 1,000 sockets (the sockets on the last node, the sends to the first); the first
#     step shows a freshly started server, the later ones the steady state;
#   - closed loop: 64 senders as fast as answers come, 10 s, 100 sockets (sends/s, CPU per send).
#
#   scripts/bench/backends_e2e.sh BIN_DIR [CONFIG...]
#
# CONFIG is any of sqlite mysql mysql2 postgres postgres2 (default: all five). Needs the machine's
# services (CHATCORE_MYSQL_URL, CHATCORE_POSTGRES_URL, CHATCORE_REDIS_URL; defaults on 127.0.0.1).
# JSON reports go to $OUT (default /tmp/backends-e2e). MODES="open" (or "closed") runs one of the two
# loads; SERVER_FLAGS adds chat-server flags, LOADGEN_FLAGS chat-loadgen flags. After each load
# the first node's store batches are printed from its /metrics (kept in $METRICS_OUT when set).
set -euo pipefail
shopt -s inherit_errexit
bin=$1
shift
configs=("${@:-sqlite mysql mysql2 postgres postgres2}")
# shellcheck disable=SC2206
configs=(${configs[*]})
pg=${CHATCORE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
my=${CHATCORE_MYSQL_URL:-mysql://root@127.0.0.1:3306}
redis=${CHATCORE_REDIS_URL:-redis://127.0.0.1:6379}
out=${OUT:-/tmp/backends-e2e}
mkdir -p "$out"
work=$(mktemp -d)
db="chat_e2e_$$"
pids=()
stop_servers() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
drop_databases() {
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
  mysql_cmd -e "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
  rm -f "$work"/chat.db*
}
cleanup() { stop_servers; drop_databases; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# The MySQL client's host, port and user, from the URL chat-server is given.
read -r my_host my_port my_user < <(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 3306, p.username or "root")' "$my")
mysql_cmd() { mysql -h "$my_host" -P "$my_port" -u "$my_user" "$@"; }

# start NODES URL [flags]: fresh chat-server processes on 8301.., all on URL.
start() {
  local nodes=$1 url=$2
  shift 2
  for n in $(seq "$nodes"); do
    local port=$((8300 + n))
    "$bin/chat-server" --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 --registrations-per-hour 0 \
      --max-connections-per-address 100000 --log warn --listen "127.0.0.1:$port" --database "$url" \
      ${SERVER_FLAGS:-} "$@" &
    pids+=($!)
    local up=no
    for _ in $(seq 100); do
      if curl -fs -o /dev/null "http://127.0.0.1:$port/healthz"; then up=yes; break; fi
      sleep 0.1
    done
    if [ "$up" = no ]; then echo "chat-server on port $port did not answer /healthz within 10 s" >&2; exit 1; fi
  done
}

# fresh CONFIG: a new empty database for it; prints its URL and the chat-server flags.
fresh() {
  drop_databases
  case $1 in
    sqlite) echo "sqlite://$work/chat.db" ;;
    mysql*) mysql_cmd -e "CREATE DATABASE $db"; echo "$my/$db" ;;
    postgres*) psql "$pg/postgres" -qc "CREATE DATABASE $db"
      # The new database's pages go through the WAL; a checkpoint keeps that flush out of the run.
      psql "$pg/postgres" -qc "CHECKPOINT"; echo "$pg/$db" ;;
  esac
}

for config in "${configs[@]}"; do
  case $config in
    sqlite | mysql | postgres) nodes=1 flags=() ;;
    mysql2) nodes=2 flags=(--redis "$redis" --redis-prefix "chat_e2e_$$") ;;
    postgres2) nodes=2 flags=(--notify-channel "chat_e2e_$$") ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
  esac
  for mode in ${MODES:-open closed}; do
    url=$(fresh "$config")
    start "$nodes" "$url" "${flags[@]}"
    last=$((8300 + nodes))
    report="$out/$config-$mode-$(date +%H%M%S).json"
    if [ "$mode" = open ]; then
      load=(--users 500 --connections 1000 --senders 16 --duration 10 --sweep-pause-ms 500
        --sweep-rates "$(python3 -c "print(','.join(['${RATE:-1000}'] * ${STEPS:-3}))")")
    else
      load=(--users 100 --connections 100 --senders 64 --duration 10)
    fi
    "$bin/chat-loadgen" --url http://127.0.0.1:8301 --ws-base-url "http://127.0.0.1:$last" \
      --server-pid "${pids[0]}" "${load[@]}" ${LOADGEN_FLAGS:-} -q --json-out "$report" >/dev/null ||
      echo "chat-loadgen exited with $? (a failed send, or a notification lost or duplicated): see the figures" >&2
    metrics=$(curl -fs http://127.0.0.1:8301/metrics || true)
    if [ -n "${METRICS_OUT:-}" ]; then printf "%s\n" "$metrics" > "$METRICS_OUT"; fi
    stop_servers
    python3 - "$config" "$mode" "$report" "$metrics" <<'EOF'
import json, re, sys
config, mode, r, metrics = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4]
def metric(name):
    m = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else None
for i, step in enumerate(r.get("steps", [r]), 1):
    s, n = step["send"], step["notifications"]
    per = (s.get("server_cpu_secs") or 0) * 1e6 / max(s.get("sent") or 1, 1)
    label = f"step {i}" if mode == "open" else "closed loop, 64 senders"
    print(f"{config:10s} {label:24s} {s['sends_per_sec']:7.0f} sends/s, send p50 {s['send_latency']['p50_ms']:6.2f} "
          f"p99 {s['send_latency']['p99_ms']:7.2f} ms, notification p50 {n['latency']['p50_ms']:6.2f} "
          f"p99 {n['latency']['p99_ms']:7.2f} max {n['latency']['max_ms']:6.1f} ms, lost {n['lost']} "
          f"dup {n['duplicated']}, first node {per:4.0f} us CPU per send")
batches = metric("chatcore_store_commit_batch_size_count")
if batches:
    print(f"{config:10s} {'first node store':24s} {batches:7.0f} batches of "
          f"{metric('chatcore_store_commit_batch_size_sum') / batches:.1f} sends, "
          f"{1000 * metric('chatcore_store_commit_seconds_sum') / batches:.2f} ms each")
EOF
  done
done
