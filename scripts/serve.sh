#!/usr/bin/env bash
# Serves the platform on http://127.0.0.1:8000 with Daphne. With REDIS_URL, a Celery worker with
# the beat scheduler runs beside it; without, periodic work runs in a small in-process loop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${CCGSC_HOST:-127.0.0.1}
PORT=${CCGSC_PORT:-8000}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
if [ -n "${REDIS_URL:-}" ]; then
  "$PY" -m celery -A ccgsc_site worker -B -l INFO --concurrency 2 &
  pids+=($!)
else
  "$PY" manage.py run_periodic &
  pids+=($!)
fi
# The WebSocket per-message cap comes from the protocol definition (see docs/protocol.md).
WS_MAX=$(PYTHONPATH=edge_worker "$PY" -c 'from ccgsc_worker.protocol_schema import load_definition as d; print(d(1)["limits"]["websocket_max_message_bytes"])')
"$PY" -m daphne -b "$HOST" -p "$PORT" \
  --websocket-max-message-size "$WS_MAX" --websocket-max-frame-size "$WS_MAX" \
  ccgsc_site.asgi:application &
pids+=($!)
wait -n "${pids[@]}"
