#!/usr/bin/env bash
# `make airflow`: Airflow standalone (scheduler, DAG processor, triggerer, API server + UI) on this
# repo's dags/, with its metadata DB and logs in .airflow/ (gitignored). Stop with Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AIRFLOW_BIN="${AIRFLOW_BIN:-$(command -v airflow || true)}"
if [ -z "$AIRFLOW_BIN" ]; then
  echo "error: the 'airflow' command is not installed — pip install -e '.[airflow]' (Apache Airflow 3.3)"
  exit 1
fi
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
# the feastkit settings the tasks read (defaults: this checkout's data/ and feature_repo/)
export FEASTKIT_PROJECT_ROOT="${FEASTKIT_PROJECT_ROOT:-$ROOT}"
mkdir -p "$AIRFLOW_HOME"
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
Airflow $("$AIRFLOW_BIN" version 2>/dev/null | tail -1) standalone
  AIRFLOW_HOME  $AIRFLOW_HOME
  DAGs          $AIRFLOW__CORE__DAGS_FOLDER  (feature_pipeline, materialize, train, drift_check; paused)
  UI            http://127.0.0.1:$AIRFLOW__API__PORT   user: admin
  password      in $PASSWORDS (written on first start)
Data comes from FEASTKIT_* settings (data dir: ${FEASTKIT_DATA_DIR:-$ROOT/data}); run \`make demo\` first.
MSG
exec "$AIRFLOW_BIN" standalone
