"""Each app's metrics start at zero, whatever prometheus-client's mode in the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import values

from serving.metrics import ServingMetrics


def test_two_apps_in_one_process_never_share_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what importing Feast before prometheus-client gives: values kept in files per metric name
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    first = ServingMetrics()
    first.requests.labels("/v1/predict/fraud", "POST", "200").inc(15)
    first.request_seconds.labels("/v1/predict/fraud", "POST").observe(0.01)
    second = ServingMetrics()
    second.requests.labels("/v1/predict/fraud", "POST", "200").inc(2)
    assert second.requests.labels("/v1/predict/fraud", "POST", "200")._value.get() == 2
    assert second.request_seconds.labels("/v1/predict/fraud", "POST")._sum.get() == 0
    assert first.requests.labels("/v1/predict/fraud", "POST", "200")._value.get() == 15
    assert not list(tmp_path.iterdir())  # nothing written to the multiprocess folder
