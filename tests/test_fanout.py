"""Fan-out (research/fanout.py): a local Dask cluster of two worker processes gives the serial results,
in task order; a failing task names its index; a tiny walk-forward on real bars fanned out over the
two workers predicts bit-identically to the serial run."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from engine.errors import ConfigError, InputError
from research.fanout import TaskFailed, run_tasks
from tests.conftest import require_shared

H = 3600
START = 1704067200  # 2024-01-01
WARM = 768
N = 8


# task functions: top level, so workers import them by name
def _draw(i: int) -> tuple[int, list[float]]:
    """Later tasks finish first: results must still come back in task order."""
    time.sleep(0.03 * (N - i))
    return i, np.random.default_rng([11, i]).standard_normal(4).tolist()


def _scaled(shared: dict, i: int) -> float:
    return float(shared["w"][i] * shared["scale"])


def _where(_i: int) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("NUMBA_CACHE_DIR")


def _fails_on_3(i: int) -> int:
    if i == 3:  # fails after task 4 has failed: the first failure in task order is still reported
        time.sleep(0.3)
        raise ValueError("bad chunk")
    if i == 4:
        raise InputError("no bars in chunk")
    return i


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


def test_two_worker_cluster_gives_the_serial_results_in_task_order(cluster):
    serial = run_tasks(_draw, range(N))
    assert [r[0] for r in serial] == list(range(N))
    assert run_tasks(_draw, range(N), scheduler=cluster) == serial
    shared = {"w": np.arange(N, dtype=np.float64) ** 2, "scale": 0.5}
    want = [float(i * i * 0.5) for i in range(N)]
    assert run_tasks(_scaled, range(N), shared=shared) == want
    assert run_tasks(_scaled, range(N), scheduler=cluster, shared=shared) == want
    assert run_tasks(_draw, [], scheduler=cluster) == []


def test_tasks_run_on_both_workers_with_the_callers_numba_cache(cluster):
    import engine

    seen = run_tasks(_where, range(12), scheduler=cluster)
    pids = {p for p, _ in seen}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {c for _, c in seen} == {str(engine.NUMBA_CACHE)}


def test_local_worker_processes_without_a_scheduler():
    assert run_tasks(_draw, range(4), workers=2) == run_tasks(_draw, range(4))


def test_a_failing_task_names_its_index(cluster):
    for kw in ({}, {"scheduler": cluster}):
        with pytest.raises(TaskFailed, match=r"chunks: task 3 of 6 failed: ValueError: bad chunk") as ei:
            run_tasks(_fails_on_3, range(6), desc="chunks", **kw)
        assert ei.value.index == 3 and isinstance(ei.value.__cause__, ValueError)
        # a user error keeps its class (the CLI prints it as one line)
        with pytest.raises(InputError, match=r"^task 1 of 2: no bars in chunk$"):
            run_tasks(_fails_on_3, [0, 4], **kw)
    with pytest.raises(InputError, match="workers"):
        run_tasks(_draw, range(2), workers=0)


def test_a_worker_with_other_code_refuses_the_task():
    from research.fanout import _worker_call

    with pytest.raises(RuntimeError, match="another version"):
        _worker_call(1, fn=_draw, shared=None, has_shared=False, digest="0" * 128)


def test_fanout_config_validates_and_stays_out_of_the_result_record():
    from engine.config import load_config
    from research.config import research_from_dict, research_to_json

    cfg = load_config()
    rc = research_from_dict({"fanout": {"workers": 4, "scheduler": " tcp://10.0.0.5:8786 "}}, cfg)
    assert rc.fanout.workers == 4 and rc.fanout.scheduler == "tcp://10.0.0.5:8786"
    assert "fanout" not in research_to_json(rc)
    assert research_from_dict({"fanout": {"scheduler": ""}}, cfg).fanout.scheduler is None
    with pytest.raises(ConfigError, match=r"research\.fanout\.scheduler"):
        research_from_dict({"fanout": {"scheduler": "10.0.0.5"}}, cfg)
    with pytest.raises(ConfigError, match=r"research\.fanout\.workers"):
        research_from_dict({"fanout": {"workers": 0}}, cfg)


def test_walkforward_folds_on_two_workers_are_bit_identical_to_serial(cluster):
    require_shared()
    from engine.config import load_config
    from engine.store.panel import load_shared_panel
    from research.config import research_from_dict
    from research.walkforward import run_walkforward

    cfg = load_config()
    raw = {
        "tiny": True,
        "horizons": [1, 24],
        "trade_horizon": 24,
        "base_models": ["xgboost", "lightgbm", "random_forest"],
        "folds": {"train_bars": 480, "test_bars": 168, "purge_bars": 24, "embargo_bars": 24, "inner_folds": 2},
    }
    end = START + (480 + 24 + 3 * 168 - 1) * H  # three folds
    panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], START - WARM * H, end)
    runs = []
    for fanout in ({}, {"scheduler": cluster}):
        rc = research_from_dict(raw | {"fanout": fanout}, cfg)
        runs.append(run_walkforward(panel, cfg, rc, start_ts=START, shuffle_train_labels=5, keep_models=True))
    serial, fanned = runs
    assert len(serial.folds) == 3 and sorted(set(serial.predictions["fold"])) == [0, 1, 2]
    pd.testing.assert_frame_equal(serial.predictions, fanned.predictions, check_exact=True)
    pd.testing.assert_frame_equal(serial.regime, fanned.regime, check_exact=True)
    pd.testing.assert_frame_equal(serial.signals, fanned.signals, check_exact=True)
    assert np.array_equal(serial.backtest.equity, fanned.backtest.equity)
    assert [t["fold"] for t in fanned.timings] == [0, 1, 2]
    assert [t["n_test_rows"] for t in fanned.timings] == [t["n_test_rows"] for t in serial.timings]
    assert sorted(fanned.fitted) == sorted(serial.fitted)
