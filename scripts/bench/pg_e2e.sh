#!/usr/bin/env bash
# End to end on PostgreSQL alone, the open loop of backends_e2e.sh: one or two release
# chat-server nodes on a fresh database (two: the LISTEN/NOTIFY notifier, the default with a
# PostgreSQL database), the load generator's 1,000 sockets on the last node and its sends to the
# first, $STEPS steps (default 3) of 10 s at $RATE sends/s (default 1,000) over the same 500 users
# and sockets, so that the first step shows a freshly started server and the later ones the
# steady state; then the first node's store batches from /metrics.
#
#   scripts/bench/pg_e2e.sh BIN_DIR NODES [extra chat-loadgen flags...]
#
# Needs the machine's PostgreSQL (CHATCORE_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432).
# SERVER_FLAGS, METRICS_OUT and OUT as backends_e2e.sh takes them.
set -euo pipefail
bin=$1 nodes=$2
shift 2
case $nodes in
  1) config=postgres ;;
  2) config=postgres2 ;;
  *) echo "NODES is 1 or 2" >&2; exit 2 ;;
esac
MODES=open LOADGEN_FLAGS="${LOADGEN_FLAGS:-} $*" exec "$(dirname "$0")/backends_e2e.sh" "$bin" "$config"
