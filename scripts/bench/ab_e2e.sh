#!/usr/bin/env bash
# Same-run end-to-end A/B of two chat-server builds on SQLite: before and after alternate, each
# run on a fresh database and its own port, one load generator run per server start.
#
#   scripts/bench/ab_e2e.sh BEFORE_BIN_DIR AFTER_BIN_DIR PAIRS SENDERS [extra chat-loadgen flags...]
#
# Each BIN_DIR holds a release `chat-server` and `chat-loadgen` (the load generator of each build
# drives its own server). Writes one JSON report per run under $OUT (default /tmp/ab-e2e) and
# prints sends/s, server CPU per send and the ceiling's server CPU per request per run.
#
# Optional environment: SERVER_FLAGS_BEFORE / SERVER_FLAGS_AFTER (extra chat-server flags for one
# side, e.g. flags the older build does not know), LOADGEN_FLAGS_BEFORE / LOADGEN_FLAGS_AFTER
# (extra load generator flags for one side, e.g. `--read-every 4` on the build that has the
# inbox), LOADGEN (one chat-loadgen binary that drives both servers, so the client's cost is
# the same on both sides). One build against itself, e.g. metrics off against on:
#
#   SERVER_FLAGS_BEFORE="--metrics off" scripts/bench/ab_e2e.sh target/release target/release 5 256
set -euo pipefail
before=$1 after=$2 pairs=$3 senders=$4
shift 4
out=${OUT:-/tmp/ab-e2e}
mkdir -p "$out"
port=18800

run() { # run LABEL BIN_DIR N SERVER_FLAGS LOADGEN_FLAGS [common loadgen flags...]
  local label=$1 bin=$2 n=$3 server_flags=$4 loadgen_flags=$5 dir
  shift 5
  dir=$(mktemp -d)
  port=$((port + 1))
  "$bin/chat-server" --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 \
    --registrations-per-hour 0 --bench-endpoints --log warn \
    --database "sqlite://$dir/chat.db" --listen "127.0.0.1:$port" $server_flags &
  local pid=$!
  for _ in $(seq 100); do
    curl -fs -o /dev/null -X POST -H 'content-type: application/json' -d '{"recipient":"x","body":"y"}' \
      "http://127.0.0.1:$port/_bench/echo" && break
    sleep 0.1
  done
  # shellcheck disable=SC2086 # the flag strings split into words on purpose
  "${LOADGEN:-$bin/chat-loadgen}" --url "http://127.0.0.1:$port" --users 32 --connections 64 --senders "$senders" \
    --duration 10 --ceiling --server-pid "$pid" -q --json-out "$out/$label-$senders-$n.json" $loadgen_flags "$@" >/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 - "$out/$label-$senders-$n.json" "$label" "$n" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s, c, n = r["send"], r.get("ceiling") or {}, r["notifications"]
per = lambda p: (p.get("server_cpu_secs") or 0) * 1e6 / max(p.get("sent") or 1, 1)
reads = s.get("reads")
extra = f" marks {reads['marks']} p99 {reads['mark_read_latency']['p99_ms']:.2f} ms, inbox p99 {reads['inbox_latency']['p99_ms']:.2f} ms, read errors {reads['errors']}" if reads else ""
print(f"{sys.argv[2]:6} #{sys.argv[3]}: {s['sends_per_sec']:9.0f} sends/s, server {per(s):5.1f} us/send, "
      f"ceiling {c.get('sends_per_sec', 0):8.0f}/s at {per(c) if c else 0:4.1f} us/req, "
      f"notify p99 {n['latency']['p99_ms']:.2f} ms, lost {n['lost']} dup {n['duplicated']}{extra}")
EOF
}

for i in $(seq "$pairs"); do
  run before "$before" "$i" "${SERVER_FLAGS_BEFORE:-}" "${LOADGEN_FLAGS_BEFORE:-}" "$@"
  run after "$after" "$i" "${SERVER_FLAGS_AFTER:-}" "${LOADGEN_FLAGS_AFTER:-}" "$@"
done
