"""kq study (research/study.py): Optuna studies over backtests of real Binance bars.

Two worker processes sharing PostgreSQL complete exactly the requested trials (none duplicated or
lost), every trial an MLflow run; a worker killed mid-trial leaves a trial the heartbeat rule
fails and retries (never stuck RUNNING); one worker with a fixed seed is reproducible; a study
stopped midway resumes to exactly N; failing and min-trades trials are recorded, never fatal; the
deflated Sharpe ratio of the same best result falls as the count of trials grows.

PostgreSQL: ``KQ_TEST_PG_DSN`` (.ci/run sets it). Set but unreachable: FAIL; unset: fail in CI,
skip elsewhere. Every PostgreSQL study has a unique name and is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, InputError
from engine.paths import configs_dir

PG_ENV = "KQ_TEST_PG_DSN"
SPACE = """
[study.space]
"signal.fast" = { low = 4, high = 24 }
"signal.slow" = { low = 36, high = 120 }
"risk.p_up_entry" = { low = 0.5, high = 0.6 }
"risk.max_positions" = { low = 1, high = 2 }
"""


def pg_dsn() -> str:
    """The server (tests/test_ledger_pg.py's rule: unset fails in CI, set but unreachable fails)."""
    from tests.test_ledger_pg import pg_dsn_from

    return pg_dsn_from(os.environ)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return store_slice(tmp_path_factory, "tests/test_study.py slice")


def store_slice(tmp_path_factory, label: str) -> str:
    """Binance BTC/USDT + ETH/USDT, 2023-11-14 .. 2024-04-01 (warm-up, study span, hold-out), in a
    market store file of its own."""
    import pandas as pd

    from engine.store.market import MarketStore
    from tests.conftest import require_shared

    d = require_shared()
    path = tmp_path_factory.mktemp("study") / "m.duckdb"
    frames = {}
    for pair, f in (("BTC/USDT", "binance_BTCUSDT_1h"), ("ETH/USDT", "binance_ETHUSDT_1h")):
        df = pd.read_parquet(d / f"{f}.parquet")
        frames[pair] = df[(df["ts"] >= 1699999200) & (df["ts"] < 1712000000)].reset_index(drop=True)
    with MarketStore(path) as s:
        s.import_frames(frames, "binance", label)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def tracking(tmp_path_factory):
    """Every MLflow run of this module goes to a temporary sqlite store (never data/mlflow/; MLflow
    3 keeps its file store in maintenance mode and refuses it)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KQ_TRACKING_URI", uri)
        yield uri


def drop(name: str, dsn: str) -> None:
    import optuna

    from research.study import make_storage

    with contextlib.suppress(KeyError):  # never created
        optuna.delete_study(study_name=name, storage=make_storage(dsn))


def write_config(tmp_path, study: str = "", space: str = SPACE, name: str = "c") -> str:
    ci = configs_dir() / "ci.toml"
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'extends = "{ci}"\n[research]\nstart = "2024-01-01"\nend = "2024-03-15"\n'
        '[study]\nobjectives = ["sharpe"]\nmin_trades = 2\nn_folds = 3\nholdout_start = "2024-03-01"\n'
        f"seed = 3\n{study}\n{space}"
    )
    return str(p)


def spec(cfg, store):
    from research.pipeline import DataSelection
    from research.study import load_study_spec

    return load_study_spec(cfg, None, None, DataSelection(store=store))


# ------------------------------------------------------------------------------------------------
# evaluate hooks (module level: spawned worker processes import them)


def fake_eval(ss, study, trial, n_req):
    """A cheap deterministic objective of the sampled parameters."""
    x = [p.suggest(trial) for p in ss.space]
    return [float(x[0]) - 0.01 * float(x[1])]


def slow_eval_elsewhere(ss, study, trial, n_req):
    """Pretends to run on another machine (so only the heartbeat can tell it died) and hangs."""
    trial.set_user_attr("kq_worker", {"host": "another-machine", "pid": 1, "worker": 9})
    [p.suggest(trial) for p in ss.space]
    time.sleep(600)
    return [0.0]


def flaky_eval(ss, study, trial, n_req):
    if trial.number == 1:
        raise RuntimeError("boom in trial 1")
    return fake_eval(ss, study, trial, n_req)


# ------------------------------------------------------------------------------------------------


def test_bad_study_tables_are_one_line_config_errors(tmp_path, store):
    cases = [
        ("holdout_start", 'name = "x"\n', '[study]\nname = "x"\n' + SPACE, "study.holdout_start: required"),
        ("unknown", "colour = 1\n", None, "study.colour: unknown key"),
        ("objective", 'objectives = ["profit"]\n', None, "study.objectives"),
        ("research key", "", '[study.space]\n"research.folds.train_bars" = { low = 500, high = 900 }\n', "sweep mode"),
        ("range", "", '[study.space]\n"risk.p_up_entry" = { low = 0.6, high = 0.5 }\n', "low (0.6) must be below"),
        ("config key", "", '[study.space]\n"risk.no_such" = { low = 1, high = 2 }\n', "risk.no_such"),
    ]
    for label, extra, space, msg in cases:
        if label == "holdout_start":
            p = tmp_path / "h.toml"
            p.write_text(f'extends = "{configs_dir() / "ci.toml"}"\n{space}')
            cfg = str(p)
        elif label == "objective":
            cfg = write_config(tmp_path, "", SPACE, name=label.replace(" ", "_"))
            text = Path(cfg).read_text().replace('objectives = ["sharpe"]', 'objectives = ["profit"]')
            Path(cfg).write_text(text)
        else:
            cfg = write_config(tmp_path, extra, space if space is not None else SPACE, name=label.replace(" ", "_"))
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
            spec(cfg, store)
        assert "\n" not in str(e.value), label
    # the CLI: one line, exit 2, nothing written
    import io

    import kq.cli

    err = io.StringIO()
    out = tmp_path / "never"
    with contextlib.redirect_stderr(err):
        rc = kq.cli.main(["study", "--config", str(tmp_path / "unknown.toml"), "--trials", "3", "--out", str(out)])
    assert rc == 2 and err.getvalue().startswith("kq: error: ") and err.getvalue().count("\n") == 1
    assert not out.exists()
    # an unreachable study storage: one line naming it (password hidden), before any work
    err = io.StringIO()
    good = write_config(tmp_path, name="good")
    argv = ["study", "--config", good, "--trials", "3", "--out", str(out), "--store", store, "--no-track"]
    with contextlib.redirect_stderr(err):
        rc = kq.cli.main([*argv, "--storage", "postgresql://kq:secret@127.0.0.1:1/none"])
    assert rc == 2 and "study storage" in err.getvalue() and "secret" not in err.getvalue()
    assert err.getvalue().count("\n") == 1 and not out.exists()


def test_two_pg_workers_run_exactly_n_trials_each_an_mlflow_run(tmp_path, store, tracking):
    import optuna

    from kq.study import run_study, summary
    from research.study import make_storage

    dsn = pg_dsn()
    name = f"kq-test-{uuid.uuid4().hex[:10]}"
    cfg = write_config(tmp_path)
    n = 10
    try:
        t0 = time.perf_counter()
        doc = run_study(cfg, n, 2, str(tmp_path / "out"), storage=dsn, study_name=name, store=store, progress=False)
        secs = time.perf_counter() - t0
        study = optuna.load_study(study_name=name, storage=make_storage(dsn))
        trials = study.get_trials()
    finally:
        drop(name, dsn)
    assert sorted(t.number for t in trials) == list(range(n))  # exactly N: none lost, none extra
    assert all(t.state.is_finished() for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == n  # no configuration ran twice
    pids = {t.user_attrs["kq_worker"]["pid"] for t in trials}
    assert len(pids) == 2  # both worker processes ran trials
    assert doc["counts"]["configurations"] == n and doc["trials_requested"] == n
    best = doc["best"]
    assert best["in_study_overfitting"]["n_trials"] == n and best["holdout_overfitting"]["n_trials"] == n
    assert best["in_study_overfitting"]["dsr"] is not None and "pbo" in best["in_study_overfitting"]
    assert best["holdout"]["n_trades"] is not None  # the hold-out re-run, side by side
    text = summary(doc, secs, "out")
    assert "DSR" in text and "PBO" in text and f"n_trials {n}" in text
    # every trial an MLflow run, ended with its state
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(f"krakenquant-walkforward.study.{name}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == n
    by_id = {r.info.run_id: r for r in runs}
    for t in trials:
        r = by_id[t.user_attrs["mlflow_run_id"]]
        assert r.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(t.state.name, "FAILED")
        assert r.data.tags["kq.trial"] == str(t.number)
    out = tmp_path / "out"
    html = (out / "report.html").read_text()
    assert "<script src='plotly.min.js'>" in html and len(html) < 2_000_000
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    import pandas as pd

    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == n and set(df["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert json.loads((out / "study.json").read_text())["best"]["number"] == best["number"]


def test_killed_worker_trial_is_failed_by_the_heartbeat_and_retried(tmp_path, store):
    import multiprocessing as mp

    from optuna.trial import TrialState

    from research.pipeline import DataSelection
    from research.study import WorkerArgs, make_storage, open_study, run_worker, worker_main

    dsn = pg_dsn()
    name = f"kq-test-{uuid.uuid4().hex[:10]}"
    cfg = write_config(tmp_path, "heartbeat_interval = 1\ngrace_period = 3\n")
    ss = spec(cfg, store)
    try:
        study = open_study(ss, make_storage(dsn, ss), 3, name)
        ctx = mp.get_context("spawn")
        a = WorkerArgs(
            cfg, None, {}, DataSelection(store=store), dsn, name, 0, track=False, evaluate=slow_eval_elsewhere
        )
        p = ctx.Process(target=worker_main, args=(a,))
        p.start()
        victim = None
        t_end = time.monotonic() + 90
        while victim is None and time.monotonic() < t_end:
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                if (t.user_attrs.get("kq_worker") or {}).get("host") == "another-machine":
                    victim = t
            time.sleep(0.2)
        assert victim is not None, "the worker never started a trial"
        os.kill(p.pid, signal.SIGKILL)  # mid-trial
        p.join()
        # a fresh worker: the dead trial goes stale (no heartbeat for 3 s), FAIL, queued again
        ran = run_worker(ss, dsn, name, 1, track=False, evaluate=fake_eval, idle_timeout_s=60)
        trials = study.get_trials()
    finally:
        drop(name, dsn)
    by = {t.number: t for t in trials}
    assert by[victim.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == by[victim.number].params  # the same configuration again
    assert not [t for t in trials if not t.state.is_finished()]  # nothing stuck RUNNING or WAITING
    assert ran == 3 and len(trials) == 4  # 3 tickets + 1 retry
    from research.study import count_configurations

    assert count_configurations(trials)["configurations"] == 3


def test_one_seeded_worker_is_reproducible_and_a_stopped_study_resumes(tmp_path, store):
    from optuna.trial import TrialState

    from research.study import make_storage, open_study, run_worker

    cfg = write_config(tmp_path)
    ss = spec(cfg, store)
    n = 8

    def run_all(db, stop_at=None):
        url = f"sqlite:///{tmp_path / db}"
        study = open_study(ss, make_storage(url, ss), n)
        if stop_at is not None:
            assert run_worker(ss, url, ss.name, 0, track=False, stop_after=stop_at) == stop_at
            # the study was killed mid-trial: a RUNNING trial of a dead process on this host
            st = study._storage
            tid = st.get_all_trials(study._study_id, states=(TrialState.WAITING,))[0]._trial_id
            assert st.set_trial_state_values(tid, TrialState.RUNNING)
            st.set_trial_user_attr(tid, "kq_worker", {"host": __import__("socket").gethostname(), "pid": 2**22 + 7})
            study = open_study(ss, make_storage(url, ss), n)  # kq study again: the same study
        run_worker(ss, url, ss.name, 0, track=False, idle_timeout_s=30)
        return study.get_trials()

    a = run_all("a.db")
    b = run_all("b.db")
    assert [(t.params, t.values, t.state) for t in a] == [(t.params, t.values, t.state) for t in b]
    assert len({tuple(sorted(t.params.items())) for t in a}) == n
    c = run_all("c.db", stop_at=3)
    assert [(t.params, t.values) for t in c[:3]] == [(t.params, t.values) for t in a[:3]]
    dead = [t for t in c if t.user_attrs.get("error", "").startswith("worker process")]
    assert len(dead) == 1 and dead[0].state == TrialState.FAIL  # the dead process's trial: FAIL ...
    assert [t.system_attrs.get("failed_trial") for t in c].count(dead[0].number) == 1  # ... and retried
    assert all(t.state.is_finished() for t in c) and len(c) == n + 1
    from research.study import count_configurations

    assert count_configurations(c)["configurations"] == n


def test_failing_and_thin_trials_are_recorded_and_never_stop_the_study(tmp_path, store):
    from optuna.trial import TrialState

    from research.study import make_storage, open_study, run_worker, write_report

    cfg = write_config(tmp_path)
    ss = spec(cfg, store)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    study = open_study(ss, make_storage(url, ss), 4)
    run_worker(ss, url, ss.name, 0, track=False, evaluate=flaky_eval)
    t = study.get_trials()
    assert [x.state for x in t].count(TrialState.FAIL) == 1 and "boom in trial 1" in t[1].user_attrs["error"]
    assert [x.state for x in t].count(TrialState.COMPLETE) == 3
    # min_trades above anything possible: every trial PRUNED with its reason; no best is reported
    cfg2 = write_config(tmp_path, "", SPACE, name="thin")
    Path(cfg2).write_text(Path(cfg2).read_text().replace("min_trades = 2", "min_trades = 100000"))
    ss2 = spec(cfg2, store)
    url2 = f"sqlite:///{tmp_path / 'g.db'}"
    study2 = open_study(ss2, make_storage(url2, ss2), 2)
    run_worker(ss2, url2, ss2.name, 0, track=False)
    t2 = study2.get_trials()
    assert all(x.state == TrialState.PRUNED and x.user_attrs["pruned_reason"].startswith("min_trades") for x in t2)
    doc = write_report(ss2, study2, tmp_path / "thin_out", track=False)
    assert doc["best"] is None and doc["counts"]["configurations"] == 2


def test_deflated_sharpe_falls_as_the_count_of_trials_grows(tmp_path):
    from research.study import overfitting_figures

    rng = np.random.default_rng(5)
    best = rng.normal(0.004, 0.01, 120)  # one fixed best result
    sharpes = list(rng.normal(0.0, 0.08, 30))
    d = [overfitting_figures(best, sharpes, n)["dsr"] for n in (1, 2, 10, 100, 1000, 100000)]
    assert all(x > y for x, y in itertools.pairwise(d)), d
    print(d)
    assert d[0] > 0.9 and d[-1] < 0.2
    with pytest.raises(InputError):
        from research.stats import expected_max_sharpe

        expected_max_sharpe(0, 0.1)


def test_walkforward_mode_two_tiny_trials_and_a_holdout(tmp_path, store):
    """Model/fold parameters: each trial a whole (tiny) walk-forward over the study span only."""
    from kq.study import run_study

    ci = configs_dir() / "ci.toml"
    p = tmp_path / "wf.toml"
    p.write_text(
        f'extends = "{ci}"\n[research]\nstart = "2024-01-01"\nend = "2024-02-24"\n'
        'base_models = ["random_forest"]\n[research.folds]\ntrain_bars = 480\ntest_bars = 168\n'
        '[study]\nmode = "walkforward"\nobjectives = ["sharpe"]\nmin_trades = 1\nholdout_start = "2024-02-10"\n'
        'seed = 3\n[study.space]\n"research.folds.train_bars" = { low = 380, high = 420, step = 20 }\n'
        '"risk.p_up_entry" = { low = 0.5, high = 0.6 }\n'
    )
    doc = run_study(
        str(p),
        2,
        1,
        str(tmp_path / "out"),
        storage=f"sqlite:///{tmp_path / 'wf.db'}",
        store=store,
        track=False,
        progress=False,
    )
    by = doc["counts"]["by_state"]
    assert by["COMPLETE"] >= 1 and by["FAIL"] == 0 and by["COMPLETE"] + by["PRUNED"] == 2, by
    best = doc["best"]
    assert isinstance(best["params"]["research.folds.train_bars"], int)
    assert best["in_study"]["n_trades"] is not None and best["holdout"]["n_trades"] is not None
    assert best["in_study_overfitting"]["n_trials"] == 2
    assert best["holdout_overfitting"]["dsr"] is not None
    assert doc["holdout_span"][0].startswith("2024-02-10") and doc["study_span"][1].startswith("2024-02-09 23")
