#!/usr/bin/env bash
# Instructions per HTTP request at the server's edge: a release chat-server's `POST /_bench/echo`
# (a JSON body parsed and answered, no storage, no authentication) counted by valgrind's
# callgrind, so the figure does not depend on how busy the machine is.
#
#   scripts/bench/edge_instructions.sh BIN_DIR REQUESTS [extra chat-server flags...]
#
# Runs the server (with --bench-endpoints --log warn, as the benchmarks run it) under
# `valgrind --tool=callgrind` twice on a fresh SQLite database, driven by scripts/bench/echo_client.py
# over CONNECTIONS keep-alive connections (environment, default 8): once for REQUESTS requests,
# once for REQUESTS/10, and prints (Ir(REQUESTS) - Ir(REQUESTS/10)) / (REQUESTS - REQUESTS/10):
# start-up, the first requests' one-time work and shutdown cancel out. With KEEP=DIR the two
# callgrind files stay in DIR (many.out, few.out) for `callgrind_annotate --inclusive=yes`.
set -euo pipefail
bin=$1 requests=$2
shift 2
connections=${CONNECTIONS:-8}
client="$(dirname "$0")/echo_client.py"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

instructions() { # instructions COUNT NAME [chat-server flags...] -> prints the total Ir of one server run
  local count=$1 name=$2 dir port pid
  shift 2
  dir=$(mktemp -d) port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$bin/chat-server" \
    --bench-endpoints --log warn --database "sqlite://$dir/chat.db" --listen "127.0.0.1:$port" "$@" \
    >"$dir/server.log" 2>"$dir/valgrind.log" &
  pid=$!
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  python3 "$client" "$port" "$count" "$connections"
  kill -TERM "$pid"; wait "$pid" || true
  callgrind_annotate "$dir/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dir/callgrind.out" "$KEEP/$name.out"; fi
  rm -rf "$dir"
}

few=$((requests / 10))
many_ir=$(instructions "$requests" many "$@")
few_ir=$(instructions "$few" few "$@")
python3 -c "import sys; many, few, n, m = map(int, sys.argv[1:]); print(f'{(many - few) / (n - m):.0f} instructions per request ({n} requests: {many:,} Ir, {m} requests: {few:,} Ir)')" "$many_ir" "$few_ir" "$requests" "$few"
