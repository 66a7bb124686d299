#!/usr/bin/env bash
# Serves the platform on http://127.0.0.1:8000 with Daphne. With REDIS_URL, several Daphne
# processes share the port (CCGSC_DAPHNE_PROCESSES, default one per core) and a Celery worker with
# the beat scheduler runs beside them; without, one Daphne (the in-memory channel layer cannot
# span processes) and periodic work in a small in-process loop. The Daphne command line lives in
# scripts/daphne_launcher.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${CCGSC_HOST:-127.0.0.1}
PORT=${CCGSC_PORT:-8000}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
if [ -n "${REDIS_URL:-}" ]; then
  PROCESSES=${CCGSC_DAPHNE_PROCESSES:-$(nproc 2>/dev/null || echo 1)}
  mkdir -p var
  "$PY" -m celery -A ccgsc_site worker -B -s var/celerybeat-schedule -l INFO --concurrency 2 &
  pids+=($!)
else
  PROCESSES=1
  "$PY" manage.py run_periodic &
  pids+=($!)
fi
# The launcher sets Daphne's WebSocket per-message cap from the protocol definition.
"$PY" scripts/daphne_launcher.py --host "$HOST" --port "$PORT" --processes "$PROCESSES" &
pids+=($!)
wait -n "${pids[@]}"
