# feastkit: every target installs what it needs into a local virtualenv (.venv) first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.installed-dev

.PHONY: install demo test test-unit test-integration lint serve bench bench-batch bench-aggregates bench-serving bench-cluster bench-spark-profile bench-stream bench-drift bench-drift-alarms bench-drift-evidently bench-performance-estimate airflow clean

$(INSTALLED): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found — install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[redis]"
	@touch $@

$(DEV_INSTALLED): $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[redis,dev]"
	@touch $@

install: $(DEV_INSTALLED)

## The main job end to end on the embedded default (sqlite online, DuckDB offline, local files).
demo: $(INSTALLED)
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

## All tests: the lint (ruff + the layer contract), then unit and integration tests (real Redis and
## PostgreSQL, started if they are down).
test: lint
	@bash scripts/ensure-services.sh
	$(BIN)/pytest -q --durations=25

test-unit: $(DEV_INSTALLED)
	$(BIN)/pytest -q tests/unit

test-integration: $(DEV_INSTALLED)
	@bash scripts/ensure-services.sh
	$(BIN)/pytest -q tests/integration

## ruff, then the layer contract of pyproject.toml [tool.importlinter] (docs/architecture.md).
lint: $(DEV_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

serve: $(INSTALLED)
	$(BIN)/feastkit serve

## Benchmarks print same-run ratios against baselines; scale with ARGS="--help" to see flags.
bench: bench-batch bench-aggregates bench-serving bench-cluster bench-spark-profile bench-stream bench-drift bench-drift-alarms bench-performance-estimate

bench-batch: $(DEV_INSTALLED)
	@bash scripts/ensure-services.sh
	$(PY) bench/batch.py $(ARGS)

bench-serving: $(DEV_INSTALLED)
	@bash scripts/ensure-services.sh
	$(PY) bench/serving.py $(ARGS)

## Redis Cluster (3 masters + 3 replicas, started here) vs a single Redis: materialization, reads, memory.
bench-cluster: $(DEV_INSTALLED)
	$(PY) bench/cluster.py $(ARGS)

## The spark profile's training sets and materialization (Feast's Spark store and engine) vs the local ones.
bench-spark-profile: $(DEV_INSTALLED)
	@bash scripts/ensure-services.sh
	$(PY) bench/spark_profile.py $(ARGS)

bench-stream: $(DEV_INSTALLED)
	$(PY) bench/stream.py $(ARGS)

bench-aggregates: $(DEV_INSTALLED)
	$(PY) bench/aggregates.py $(ARGS)

bench-drift: $(DEV_INSTALLED)
	$(PY) bench/drift.py $(ARGS)

## Quality, not speed: drift false alarms over clean seeds and power per drift kind; CBPE's error.
bench-drift-alarms: $(DEV_INSTALLED)
	$(PY) bench/drift_false_alarms.py $(ARGS)

## The same, with the multivariate test, beside Evidently's default data-drift preset on the same
## windows. Evidently lives in its own virtualenv (.venv-evidently): it is a yardstick, not a dependency.
EVIDENTLY_VENV ?= .venv-evidently
$(EVIDENTLY_VENV)/.installed:
	$(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/pip install --quiet "evidently==0.7.23" "pandas<3" pyarrow
	@touch $@

bench-drift-evidently: $(DEV_INSTALLED) $(EVIDENTLY_VENV)/.installed
	$(PY) bench/drift_false_alarms.py --multivariate --evidently $(EVIDENTLY_VENV)/bin/python $(ARGS)

bench-performance-estimate: $(DEV_INSTALLED)
	$(PY) bench/performance_estimate.py $(ARGS)

## Airflow standalone on this repo's DAGs, with AIRFLOW_HOME in .airflow/ (gitignored).
airflow: $(DEV_INSTALLED)
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/airflow.sh

clean:
	rm -rf data feature_repo/data .pytest_cache .ruff_cache .import_linter_cache .airflow
