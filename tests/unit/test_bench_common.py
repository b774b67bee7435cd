"""Tests for the benchmarks' shared helpers: a child's peak memory is its own."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from common import run_child  # noqa: E402


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_started_by_a_large_parent_reports_its_own_peak() -> None:
    ballast = np.ones(60_000_000)  # ~480 MB resident in this process when the child starts
    measured = run_child(["-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); "
                                "from common import report; report({})"])
    assert ballast.sum() == 60_000_000
    assert measured["peak_rss_mb"] < 200, (
        f"child reported {measured['peak_rss_mb']} MB: it inherited the parent's peak (ru_maxrss survives exec)")
