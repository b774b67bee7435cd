#!/usr/bin/env bash
# The whole loop on the embedded default: data -> features -> Feast -> models -> online store -> API.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${FEASTKIT_DEMO_PORT:-8000}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/11 generate realistic raw events (seeded; 40 dirty rows; amount + night-hour drift in the last 7 days)"
feastkit generate --drift amount,night
rm -rf "${FEASTKIT_DATA_DIR:-data}/stream_log"  # what an earlier run's stream worker wrote belongs to its data
step "2/11 register the feature repo with Feast (feast apply): views, their aggregations, services"
feastkit apply
step "3/11 validate + compute the declared point-in-time windowed features"
feastkit compute
step "4/11 build point-in-time training sets through Feast get_historical_features"
for service in fraud_detection_v1 fraud_detection_v2 churn_prediction_v1; do
  feastkit training-set --service "$service" --rows 3
done
step "5/11 train, evaluate on the later window, save model bundles"
feastkit train
feastkit leakage
step "6/11 materialize into the online store (sqlite)"
feastkit materialize
step "7/11 start the stream worker and the prediction API; send requests, then one user's burst"
# the replay check of step 10 covers this run's traffic only (the data was just regenerated)
rm -rf "${FEASTKIT_PREDICTION_LOG_DIR:-${FEASTKIT_DATA_DIR:-data}/prediction_log}"
# the realtime view is fed by Redis Streams: the server appends every scored transaction and the
# worker keeps the 10-minute counters (the broker is the local Redis; started if it is down)
export FEASTKIT_STREAM_PUBLISH="${FEASTKIT_STREAM_PUBLISH:-true}"
export FEASTKIT_STREAM_PREFIX="${FEASTKIT_STREAM_PREFIX:-feastkit:demo:}"
export FEASTKIT_STREAM_COMMIT_SECONDS="${FEASTKIT_STREAM_COMMIT_SECONDS:-0.2}"
python -c "import redis, os; redis.Redis.from_url(os.environ.get('FEASTKIT_STREAM_REDIS_URL', 'redis://127.0.0.1:6379/0')).ping()" \
  >/dev/null 2>&1 || bash scripts/ensure-services.sh
LOG="$(mktemp)"
WORKER_LOG="$(mktemp)"
feastkit stream --reset >"$WORKER_LOG" 2>&1 &
WORKER=$!
feastkit serve --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" "$WORKER" 2>/dev/null || true; wait "$SERVER" "$WORKER" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then echo "the server failed to start:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "the server did not become ready:"; cat "$LOG"; exit 1; }
feastkit demo-requests --url "http://127.0.0.1:$PORT"
kill -0 "$WORKER" 2>/dev/null || { echo "the stream worker stopped:"; cat "$WORKER_LOG"; exit 1; }
echo
echo "== a burst of one user's transactions, a minute apart, scored by fraud_detection_v2 (realtime view):"
feastkit demo-burst --url "http://127.0.0.1:$PORT" --service fraud_detection_v2 --count 5 \
  || { echo "stream worker log:"; cat "$WORKER_LOG"; exit 1; }
step "8/11 stop the server and the stream worker"
kill "$SERVER" "$WORKER"; wait "$SERVER" "$WORKER" 2>/dev/null || true
trap - EXIT
echo "stopped. API docs while running: http://127.0.0.1:$PORT/docs  (make serve; the worker: feastkit stream)"
step "9/11 drift check: the last 7 days vs the 28 days before, through Feast (KS/PSI/chi-square + BH)"
feastkit drift --current-days 7 --reference-days 28 --no-fail-on-drift
step "10/11 replay check: the features this demo's predictions were served vs the same rebuilt offline (prediction log)"
feastkit compact-log  # the server wrote a file per flush: each past hour becomes one (rows kept)
feastkit replay-check
step "11/11 model performance per week: realized where chargebacks matured (30 days), estimated from the calibrated scores (CBPE) where not"
feastkit performance --no-fail-on-drop
