"""Shared test fixtures: where real data lives, and a fresh store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.paths import shared_ohlcv_dir

SHARED = shared_ohlcv_dir()


def require_shared() -> Path:
    """The shared real-data folder. In CI it must exist (fail, not skip); elsewhere skip without it."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real market data not found at {SHARED} (set KQ_SHARED)")
        pytest.skip(f"real market data not found at {SHARED}")
    return SHARED


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()


def pytest_sessionfinish(session, exitstatus):
    """``make fuzz`` sets KQ_FUZZ_REPORT: write the cases tried per fuzz target there."""
    out = os.environ.get("KQ_FUZZ_REPORT")
    if out:
        from fuzzing import write_report

        write_report(out)
