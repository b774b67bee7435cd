#!/usr/bin/env bash
# The whole loop on the embedded default (sqlite online store, DuckDB offline store, local files):
# raw events -> feast apply -> features -> models -> online store -> API -> predictions.
# Knobs: FEASTKIT_DEMO_USERS, FEASTKIT_DEMO_DAYS (data size), FEASTKIT_DEMO_PORT (API port).
set -euo pipefail
cd "$(dirname "$0")/.."
export FEASTKIT_PROJECT_ROOT="$PWD"  # this project's feature_repo/ and data/, never the kit's checkout
PORT="${FEASTKIT_DEMO_PORT:-8000}"
USERS="${FEASTKIT_DEMO_USERS:-@@DEMO_USERS@@}"
DAYS="${FEASTKIT_DEMO_DAYS:-@@DEMO_DAYS@@}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 generate synthetic raw events ($USERS users, $DAYS days; seeded)"
feastkit generate --users "$USERS" --days "$DAYS"
step "2/7 register feature_repo/ with Feast (feast apply): entities, views and their aggregations, services"
feastkit apply
step "3/7 validate + compute every declared view, point in time"
feastkit compute
step "4/7 train every feature service whose model tag names a label recipe (PIT training sets through Feast)"
feastkit train
step "5/7 materialize into the online store (sqlite)"
feastkit materialize
step "6/7 start the prediction API and send requests"
LOG="$(mktemp)"
feastkit serve --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then echo "the server failed to start:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "the server did not become ready:"; cat "$LOG"; exit 1; }
# the kit's hand-picked fraud/churn cases for those services, one request per other served service
feastkit demo-requests --url "http://127.0.0.1:$PORT"
step "7/7 stop the server"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
trap 'rm -f "$LOG"' EXIT
echo "server stopped. Run it again with \`make serve\` (API docs at http://127.0.0.1:8000/docs)."
