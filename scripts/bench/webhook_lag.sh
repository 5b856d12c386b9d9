#!/usr/bin/env bash
# Webhook delivery lag under open-loop load (BENCHMARKS.md, issue 23): a release chat-server on
# SQLite with one --webhook-url pointing at the hook_sink example (which checks every signature
# and measures receipt time minus the message's timestamp), driven by chat-loadgen --rate.
#
#   scripts/bench/webhook_lag.sh BIN_DIR RATE SECONDS [extra chat-server flags...]
#
# BIN_DIR holds release `chat-server`, `chat-loadgen` and `examples/hook_sink`
# (cargo build --release -p chat-server -p chat-loadgen --bins --example hook_sink).
# Prints the load generator's send figures, the sink's lag (p50/p99/max), what it received,
# and the server's own lag histogram (chatcore_webhook_lag_seconds) as bucket bounds.
set -euo pipefail
bin=$1 rate=$2 seconds=$3
shift 3
secret=benchmark-webhook-secret
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port) port=$(free_port)
"$bin/examples/hook_sink" "127.0.0.1:$sink_port" "$secret" >/dev/null &
sink=$!
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$sink_port/stats" && break; sleep 0.1; done
"$bin/chat-server" --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 \
  --registrations-per-hour 0 --max-connections-per-address 4096 --log warn --database "sqlite://$dir/chat.db" --listen "127.0.0.1:$port" \
  --webhook-url "http://127.0.0.1:$sink_port/hook" --webhook-secret "$secret" "$@" &
server=$!
trap 'kill $server $sink 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$sink_port/stats" >/dev/null # start counting now
"$bin/chat-loadgen" --url "http://127.0.0.1:$port" --users 32 --connections 64 --senders 64 \
  --rate "$rate" --duration "$seconds" --server-pid "$server" -q --json-out "$dir/load.json" >/dev/null
sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["send"]["sent"])' "$dir/load.json")
# Wait until the sink has every message (the deliveries trail the sends by the lag).
for _ in $(seq 100); do
  # one lag observation per message delivered, with or without --webhook-events-per-post
  m=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^chatcore_webhook_lag_seconds_count/ {s+=$2} END {print s+0}')
  [ "${m%.*}" -ge "$sent" ] && break
  sleep 0.1
done
python3 - "$dir/load.json" "$(curl -fs "http://127.0.0.1:$sink_port/stats")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, n = r["send"], r["notifications"]
sink = json.loads(sys.argv[2])
per = (s.get("server_cpu_secs") or 0) * 1e6 / max(s.get("sent") or 1, 1)
print(f"offered {s.get('offered_rate')}: {s['sends_per_sec']:.0f} sends/s, sent {s['sent']}, errors {s['send_errors']}, "
      f"send p50 {s['send_latency']['p50_ms']:.2f} ms p99 {s['send_latency']['p99_ms']:.2f} ms, server {per:.1f} us/send, "
      f"notify p99 {n['latency']['p99_ms']:.2f} ms")
lag = sink["lag_ms"]
print(f"webhook: received {sink['received']} (duplicates {sink['duplicates']}, bad signatures {sink['bad_signatures']}), "
      f"lag p50 {lag['p50']:.2f} ms p99 {lag['p99']:.2f} ms max {lag['max']:.2f} ms")
PY
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^chatcore_webhook_(lag_seconds_(count|sum)|retries_total)|^chatcore_webhook_deliveries_total' || true
