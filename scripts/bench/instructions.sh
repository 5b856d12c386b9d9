#!/usr/bin/env bash
# Instructions per send of a release chat-server, counted by valgrind's callgrind: immune to the
# noise of a busy machine, so two configurations compare within a fraction of a percent.
#
#   scripts/bench/instructions.sh BIN_DIR SENDS [extra chat-server flags...]
#
# Runs the server under `valgrind --tool=callgrind` twice on a fresh SQLite database: once driven
# by `chat-loadgen --count SENDS`, once by `--count 1`, and prints (Ir(SENDS) - Ir(1)) / (SENDS - 1):
# start-up, sign-ups, sockets and shutdown cancel out. With KEEP=DIR, both callgrind files are kept
# there (DIR/SENDS.out, DIR/1.out) for a per-function difference with callgrind_annotate.
# With --webhook-url among the flags, each run waits until every message was delivered
# (chatcore_webhook_lag_seconds_count) before stopping the server, so the deliveries' work is
# counted too (start the receiver yourself, e.g. hook_sink).
set -euo pipefail
bin=$1 sends=$2
shift 2
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
webhooks=false
case " $* " in *" --webhook-url "*) webhooks=true ;; esac

instructions() { # instructions COUNT [chat-server flags...] -> prints the total Ir of one server run
  local count=$1 dir port pid
  shift
  dir=$(mktemp -d) port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$bin/chat-server" \
    --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 --registrations-per-hour 0 \
    --log warn --database "sqlite://$dir/chat.db" --listen "127.0.0.1:$port" "$@" >"$dir/server.log" 2>"$dir/valgrind.log" &
  pid=$!
  # any answer will do: builds before /healthz answer it with 404
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done
  "$bin/chat-loadgen" --url "http://127.0.0.1:$port" --users 8 --connections 16 --senders 8 \
    --count "$count" -q --json-out "$dir/load.json" >/dev/null
  if $webhooks; then
    local sent delivered
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["send"]["sent"])' "$dir/load.json")
    for _ in $(seq 1200); do
      delivered=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^chatcore_webhook_lag_seconds_count/ {s+=$2} END {print s+0}')
      [ "${delivered%.*}" -ge "$sent" ] && break
      sleep 0.25
    done
    [ "${delivered%.*}" -ge "$sent" ] || { echo "only $delivered of $sent messages were delivered" >&2; exit 1; }
  fi
  kill -TERM "$pid"; wait "$pid" || true
  callgrind_annotate "$dir/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dir/callgrind.out" "$KEEP/$count.out"; fi
  rm -rf "$dir"
}

many=$(instructions "$sends" "$@")
one=$(instructions 1 "$@")
python3 -c "import sys; many, one, n = map(int, sys.argv[1:]); print(f'{(many - one) / (n - 1):.0f} instructions per send ({n} sends: {many:,} Ir, 1 send: {one:,} Ir)')" "$many" "$one" "$sends"
