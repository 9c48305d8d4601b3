"""Fold pruning of walk-forward-mode studies (research/study.py, issue 19).

A walk-forward-mode trial runs its folds one by one; after each fold but the last it reports the
objective of the out-of-sample backtest so far (research.walkforward ``fold_oos`` event) and a weak
trial stops there: PRUNED, ``pruned_reason = "weak after fold k"``, and no later fold is trained
(counted at the fold function itself). The same seed gives the same pruned/complete sequence, and a
pruned trial counts in the configurations tried (the DSR's number of trials). Real Binance bars,
tiny random-forest walk-forwards (5 folds of 360 training / 120 test bars).
"""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.paths import configs_dir
from tests.test_study import store  # noqa: F401  (module fixture: Binance BTC/ETH slice)

STUDY = """
[study]
mode = "walkforward"
objectives = ["sharpe"]
min_trades = 1
holdout_start = "2024-02-10"
pruning = true
pruner_startup_trials = 1
seed = 4
[study.space]
"fees.fee_rate" = { choices = [0.001, 0.004] }
"risk.max_hold_bars" = { low = 6, high = 72 }
"""


def write_config(tmp_path, study: str = STUDY, research: str = "", name: str = "wf") -> str:
    ci = configs_dir() / "ci.toml"
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'extends = "{ci}"\n[research]\nstart = "2024-01-01"\nend = "2024-02-24"\n'
        f'base_models = ["random_forest"]\n{research}[research.folds]\ntrain_bars = 360\ntest_bars = 120\n'
        f"{study}"
    )
    return str(p)


def load(cfg: str, store: str):  # noqa: F811
    from research.pipeline import DataSelection
    from research.study import load_study_spec

    return load_study_spec(cfg, None, None, DataSelection(store=store))


@pytest.fixture
def fold_counter(monkeypatch):
    """Counts the folds actually trained (research.walkforward._run_fold calls)."""
    import research.walkforward as wf

    calls: list[int] = []
    real = wf._run_fold

    def counting(ctx, task, progress):
        calls.append(int(task[0]))
        return real(ctx, task, progress)

    monkeypatch.setattr(wf, "_run_fold", counting)
    return calls


def run_study(ss, url: str, n: int):
    import optuna

    from research.study import make_storage, open_study, run_worker

    open_study(ss, make_storage(url, ss), n, name="wfp")
    run_worker(ss, url, "wfp", 0, track=False)
    return optuna.load_study(study_name="wfp", storage=make_storage(url))


def test_weak_trial_is_pruned_after_a_fold_trains_no_later_fold_and_counts(tmp_path, store, fold_counter):  # noqa: F811
    import pandas as pd
    from optuna.trial import TrialState

    from research.study import write_report

    ss = load(write_config(tmp_path), store)
    assert ss.pruning and ss.mode == "walkforward"
    study = run_study(ss, f"sqlite:///{tmp_path / 'a.db'}", 3)
    trials = study.get_trials(deepcopy=False)
    n_folds = max(t.user_attrs["folds_run"] for t in trials)
    assert n_folds == 5
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) >= 1 and len(pruned) >= 1 and len(complete) + len(pruned) == 3, [t.state for t in trials]
    for t in complete:
        assert t.user_attrs["folds_run"] == n_folds
        assert sorted(t.intermediate_values) == list(range(n_folds - 1))  # every fold but the last reported
    for t in pruned:
        reason = t.user_attrs["pruned_reason"]
        assert reason.startswith("weak after fold "), reason
        k = int(reason.rsplit(" ", 1)[1])
        assert k < n_folds - 1
        assert t.user_attrs["folds_run"] == k + 1 < n_folds  # stopped there: the later folds never ran
        assert sorted(t.intermediate_values) == list(range(k + 1))
        assert "daily_returns" not in t.user_attrs  # never scored as a complete run
    # the folds trained, counted at the fold function: every complete trial's, each pruned one's prefix
    assert len(fold_counter) == sum(t.user_attrs["folds_run"] for t in trials) < 3 * n_folds
    assert fold_counter == [k for t in trials for k in range(t.user_attrs["folds_run"])]

    # a pruned trial is a configuration tried: counted in the DSR's number of trials
    doc = write_report(ss, study, tmp_path / "out", track=False)
    assert doc["counts"]["by_state"]["PRUNED"] == len(pruned)
    assert doc["counts"]["configurations"] == 3
    assert doc["best"]["in_study_overfitting"]["n_trials"] == 3
    assert doc["best"]["holdout_overfitting"]["n_trials"] == 3
    rows = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert rows["folds_run"].tolist() == [t.user_attrs["folds_run"] for t in trials]

    # the same seed: the same pruned/complete sequence (parameters, fold values, reasons)
    def seq(st):
        return [
            (
                t.state.name,
                t.params,
                t.intermediate_values,
                t.user_attrs.get("pruned_reason"),
                t.user_attrs["folds_run"],
            )
            for t in st.get_trials(deepcopy=False)
        ]

    again = run_study(ss, f"sqlite:///{tmp_path / 'b.db'}", 3)
    assert seq(again) == seq(study)


def test_last_fold_score_is_the_walkforward_backtest(tmp_path, store):  # noqa: F811
    """The per-fold score is the backtest of the folds back so far; after the last fold it equals
    the walk-forward's own backtest (the value a complete trial is scored on)."""
    import numpy as np

    from research.pipeline import run

    ss = load(write_config(tmp_path), store)
    seen: list = []

    def on_event(event, **kw):
        if event == "fold_oos":
            seen.append((kw["fold"], kw["n_folds"], kw["backtest"]()))

    o = run(ss.base.with_data(start=ss.start, end=ss.study_end), None, track=False, progress=on_event)
    assert [(k, n) for k, n, _ in seen] == [(k, 5) for k in range(5)]
    last, full = seen[-1][2], o.result.backtest
    assert np.array_equal(last.ts, full.ts)
    assert np.array_equal(last.equity["equity"], full.equity["equity"])
    assert last.metrics_dict()["sharpe"] == full.metrics_dict()["sharpe"]
    # a prefix covers the test blocks back so far (120 bars each; the last block is cut by the span)
    lens = [len(bt.ts) for _, _, bt in seen]
    assert lens[:4] == [120, 240, 360, 480] and 480 < lens[4] == len(full.ts) <= 600, lens


def test_pruning_defaults_and_the_fanout_refusal(tmp_path, store):  # noqa: F811
    plain = STUDY.replace("pruning = true\n", "")
    assert load(write_config(tmp_path, plain, name="d"), store).pruning is False  # default: off
    fan_space = STUDY + '"research.fanout.workers" = { low = 1, high = 2 }\n'
    for i, (study, research) in enumerate(((STUDY, "fanout = { workers = 2 }\n"), (fan_space, ""))):
        with pytest.raises(ConfigError, match="fold pruning trains folds one by one") as e:
            load(write_config(tmp_path, study, research, name=f"f{i}"), store)
        assert "\n" not in str(e.value)
    assert load(write_config(tmp_path, plain, "fanout = { workers = 2 }\n", name="g"), store).pruning is False
    with pytest.raises(ConfigError, match="study.pruning: true or false"):
        load(write_config(tmp_path, STUDY.replace("pruning = true", 'pruning = "yes"'), name="h"), store)


def test_an_undefined_fold_value_is_never_judged_and_pruned_trials_count_in_the_dsr_variance():
    """No trade yet (NaN objective): no report and no pruning (Optuna's MedianPruner prunes a NaN
    report unconditionally); a weak defined value is pruned. The DSR variance reads every complete
    and pruned trial's daily Sharpe ratio (pruning the weak tail must not shrink it)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from research.study import _trial_sharpes, weak_after_fold

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    st.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, intermediate_values={0: 1.0}))
    t = st.ask()
    assert not weak_after_fold(t, float("nan"), 0) and t.storage.get_trial(t._trial_id).intermediate_values == {}
    assert weak_after_fold(t, -5.0, 0)
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"daily_sharpe": -0.4}))
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"daily_sharpe": float("nan")}))
    st.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs={"daily_sharpe": 0.1}))
    got = _trial_sharpes(st.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    assert got == [-0.4, 0.1]
