"""Shadow models (issue 17): a registered candidate predicts beside the approved model each hour, a
second risk machine decides what it would have done, everything is ledgered and nothing is sent.

The proofs run a paper daemon on the simulator replaying Kraken's real BTC/USD and ETH/USD bars
(tests/live_harness.py) with the tiny model approved (injected) and a DIFFERENT tiny candidate as
the shadow: fitted on the same Binance bars before the window, but at the 12 h horizon (the
approved one trades the 24 h horizon), registered in a temporary MLflow registry and loaded from it
by the daemon as ``krakenquant/1``.

(a) the simulator receives exactly the orders of the same run without a shadow (count, client ids,
    decision rows); (b) every hour ledgers the shadow's predictions, decisions and snapshot;
(c) ``kq live shadow-report`` equals ``run_backtest`` of the candidate's ledgered predictions over
    the ledgered bars of the same hours (trades, fees, equity every hour, final equity, entries);
(d) a shadow whose prediction raises, or that cannot be loaded, never stops the primary: its
    decisions equal the run without a shadow, and each hour ledgers ``shadow_failed``.
Planted fault (seen once, by hand): the shadow machine fed the APPROVED model's predictions while
its own are ledgered makes (c) fail (the backtest of the ledgered shadow predictions differs).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import ConfigError
from live_bridge.ledger import Kind
from tests.live_harness import (
    FIRST,
    P0,
    SETTLE,
    BundleModel,
    H,
    Mono,
    kraken_store,
    paper_dict,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)
from tests.test_live_operator import kq, one_error

START = P0 + 250 * H  # 2022-06-11 10:00 UTC: both models enter and exit within the next 24 hours
HOURS = 24
FAIL_HOURS = 4
START_USD = "10000"
REF = "krakenquant/1"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("KQ_OPERATOR", "alice")


def shadow_model_dir() -> Path:
    """The shadow candidate: the tiny model's recipe at the 12 h horizon, cached like tiny_model_dir."""
    return tiny_model_dir(horizon=12)


@pytest.fixture(scope="module")
def approved():
    return BundleModel(tiny_model_dir())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A temporary MLflow registry holding the shadow candidate as krakenquant/1."""
    from research.config import TrackingConfig
    from research.tracking import _client, register_candidate

    tmp = tmp_path_factory.mktemp("registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("KQ_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    tracking = TrackingConfig()
    client = _client(tracking)[0]
    exp = client.create_experiment("shadow-test", artifact_location=(tmp / "artifacts").as_uri())
    run = client.create_run(exp)
    c = register_candidate(shadow_model_dir(), tracking=tracking, run_id=run.info.run_id)
    assert f"{c.name}/{c.version}" == REF
    yield tmp
    mp.undo()


class Run:
    def __init__(self, sim: Any, daemon: Any, tmp: Path) -> None:
        self.sim, self.daemon, self.tmp = sim, daemon, tmp
        self.add_orders: list[dict] = []
        real = sim.ex.add_order

        def add_order(acct, p, *a, **kw):
            self.add_orders.append(dict(p))
            return real(acct, p, *a, **kw)

        sim.ex.add_order = add_order

    @property
    def ledger(self):
        return self.daemon.ledger

    @property
    def dsn(self) -> str:
        return str(self.tmp / "ledger.sqlite")

    def advance(self, n: int, first: int = START) -> list:
        out = []
        for i in range(n):
            self.sim.ex.advance(to=float(first + (i + 1) * H + SETTLE))
            out.extend(self.daemon.run_once())
        return out

    def close(self) -> None:
        self.daemon.close()
        self.sim.stop()


def daemon_for(url: str, tmp: Path, model: Any, shadow_model: Any = None, **over: Any):
    from live_bridge.config import live_config_from_dict
    from live_bridge.daemon import Daemon
    from live_bridge.kraken import RateBudget
    from live_bridge.simulator.testing import KEY, SECRET

    live = live_config_from_dict(paper_dict(url, tmp, **over))
    mono = Mono()
    return Daemon.from_config(
        live,
        environ={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET},
        model=model,
        budget=RateBudget("pro", clock=mono.now, sleep=mono.sleep),
        shadow_model=shadow_model,
    )


def start(tmp: Path, model: Any, hours: int, shadow_model: Any = None, **over: Any) -> Run:
    from live_bridge.simulator.testing import start_sim

    tmp.mkdir(parents=True, exist_ok=True)
    after = (START - P0) // H + hours + 10
    kraken_store(tmp / "m.duckdb", shared_frames(after), upto=START - H)
    sim = start_sim(sim_panel(after), start=START + SETTLE, balances={"USD": START_USD})
    try:
        d = daemon_for(sim.url, tmp, model, shadow_model, **over)
    except BaseException:
        sim.stop()
        raise
    run = Run(sim, d, tmp)
    rep = d.start()
    assert rep.reconcile == "ok" and not rep.latch, rep
    return run


def decisions(ledger, upto: int | None = None) -> list[tuple]:
    return [
        (e.hour, e.code, e.pair, e.side, e.qty, e.price, json.dumps(e.payload, sort_keys=True))
        for e in ledger.entries(kind=Kind.DECISION)
        if upto is None or (e.hour is not None and e.hour <= upto)
    ]


# ---- the two runs: with the registered shadow, and without ---------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, approved, registry):
    base = tmp_path_factory.mktemp("shadow_runs")
    plain = start(base / "plain", approved, HOURS)
    try:
        plain.advance(HOURS)
        plain_orders = (len(plain.sim.ex.orders), [p.get("cl_ord_id") for p in plain.add_orders])
        plain_decisions = decisions(plain.ledger)
    finally:
        plain.close()
    shadow = start(base / "shadow", approved, HOURS, shadow={"model": REF})
    try:
        assert shadow.daemon.shadow is not None and shadow.daemon.shadow.model.model == REF
        reps = shadow.advance(HOURS)
        assert len(reps) == HOURS and all(r.status == "completed" for r in reps)
        yield {"plain": (plain_orders, plain_decisions), "shadow": shadow}
    finally:
        shadow.close()


def test_a_shadow_never_sends_an_order(runs):
    (n_orders, cids), plain_decisions = runs["plain"]
    run = runs["shadow"]
    assert n_orders > 0, "the window should trade"
    assert len(run.sim.ex.orders) == n_orders
    assert [p.get("cl_ord_id") for p in run.add_orders] == cids
    assert decisions(run.ledger) == plain_decisions
    intents = run.ledger.entries(kind=Kind.ORDER_INTENT)
    assert len(intents) == len({e.cl_ord_id for e in intents}) and all(
        not str(e.cl_ord_id).startswith("shadow") for e in intents
    )
    assert run.ledger.verify().ok


def test_b_every_hour_ledgers_the_shadow(runs):
    led = runs["shadow"].ledger
    first = START // H
    hours = list(range(first, first + HOURS))
    ev = led.entries(kind=Kind.EVENT)
    (st,) = [e for e in ev if e.code == "shadow_start"]
    assert st.hour == first and st.payload["model"] == REF and Decimal(st.payload["init_cash"]) == Decimal(START_USD)
    snaps = [e for e in led.entries(kind=Kind.RISK_SNAPSHOT) if e.code == "shadow"]
    assert [e.hour for e in snaps] == hours
    preds = {(e.hour, e.pair) for e in ev if e.code == "shadow_prediction"}
    assert preds == {(h, p) for h in hours for p in ("BTC/USD", "ETH/USD")}
    states = [e.hour for e in ev if e.code == "shadow_decision" and e.payload["code"].startswith("STATE:")]
    assert states == hours
    assert not [e for e in ev if e.code == "shadow_failed"]
    # the shadow read the cycle's own feature panel of the last hour (not a recomputation)
    assert runs["shadow"].daemon.cycle.last_features[0] == hours[-1]
    # the shadow's predictions are the candidate's, not the approved model's
    prim = {(e.hour, e.pair): e.payload["values"] for e in led.entries(kind=Kind.PREDICTION)}
    shad = {(e.hour, e.pair): e.payload["values"] for e in ev if e.code == "shadow_prediction"}
    assert sum(prim[k] != shad[k] for k in shad) == len(shad)
    # each shadow row follows its hour's cycle_end (the primary's hour is complete before it)
    ends = {e.hour: e.seq for e in led.entries(kind=Kind.CYCLE_END)}
    assert all(e.seq > ends[e.hour] for e in ev if str(e.code).startswith("shadow_"))


def _backtest_of_the_ledger(led, first: int, last: int, init_cash: Decimal):
    """run_backtest over the ledgered on_bar inputs of first..last with the ledgered SHADOW
    predictions, under the shadow's parameters: built here from the ledger, not by the shadow."""
    from engine.backtest.runner import BacktestInputs, run_backtest
    from engine.config import load_config
    from live_bridge.cycle import live_params, recorded_inputs

    pairs = ("BTC/USD", "ETH/USD")
    hours = list(range(first, last + 1))
    n, m = len(hours), len(pairs)
    a = {k: np.zeros((n, m)) for k in ("open", "high", "low", "close", "volume", "atr", "spread")}
    valid, tradable = np.zeros((n, m), bool), np.zeros((n, m), bool)
    cluster = np.zeros((n, m), np.int64)
    p_up, er = np.full((n, m), np.nan), np.full((n, m), np.nan)
    api, blk, op = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64)
    sp = {(e.hour, e.pair): e.payload["values"] for e in led.entries(kind=Kind.EVENT) if e.code == "shadow_prediction"}
    for t, h in enumerate(hours):
        (hh, bars, _, trd, b, f, o, _), _ = recorded_inputs(led, h, pairs)
        assert hh == h
        for k in a:
            a[k][t] = bars[k]
        valid[t], cluster[t], tradable[t] = bars["valid"], bars["cluster"], trd
        api[t], blk[t], op[t] = f, b, o
        for j, pair in enumerate(pairs):
            v = sp.get((h, pair))
            if v is not None:
                p_up[t, j], er[t, j] = float(Decimal(v["p_up"])), float(Decimal(v["exp_return"]))
    inp = BacktestInputs(
        pairs,
        np.array(hours, dtype=np.int64) * H,
        valid=valid,
        p_up=p_up,
        exp_ret=er,
        cluster=cluster,
        api_fault=api,
        operator=op,
        tradable=tradable,
        entry_block=blk,
        **a,
    )
    from engine.paths import configs_dir

    params = live_params(load_config(configs_dir() / "default.toml"), init_cash)
    return inp, run_backtest(inp, params)


def test_c_shadow_report_equals_a_backtest_of_the_candidate(runs):
    from engine.risk.enums import EventCode, Reason
    from live_bridge.ledger.canonical import exact_decimal
    from live_bridge.shadow import shadow_report

    run = runs["shadow"]
    led = run.ledger
    first, last = START // H, START // H + HOURS - 1
    rep = shadow_report(led)
    assert (rep.first_hour, rep.last_hour, rep.hours, rep.cells) == (first, last, HOURS, 2 * HOURS)
    inp, bt = _backtest_of_the_ledger(led, first, last, Decimal(START_USD))
    d = lambda x: exact_decimal(float(x))  # noqa: E731
    # every hour's equity, and the final one
    states = [
        e for e in led.entries(kind=Kind.EVENT) if e.code == "shadow_decision" and e.payload["code"][:6] == "STATE:"
    ]
    assert [Decimal(e.payload["equity"]) for e in states] == [d(x) for x in bt.equity["equity"]]
    assert rep.shadow.equity_end == d(bt.equity["equity"][-1]) == d(bt.metrics[0]["final_equity"])
    assert rep.shadow.pnl == d(bt.equity["equity"][-1]) - Decimal(START_USD)
    # the trades, each side, the fees
    assert len(bt.trades) >= 2, "the candidate should trade in this window"
    fills = [e for e in led.entries(kind=Kind.EVENT) if e.code == "shadow_fill"]
    mine = [(e.hour, e.pair, e.payload["side"], e.payload["qty"], e.payload["price"], e.payload["fee"]) for e in fills]
    theirs = [
        (
            int(inp.ts[t["bar"]]) // H,
            inp.pairs[t["pair"]],
            "buy" if t["side"] > 0 else "sell",
            str(d(t["qty"])),
            str(d(t["price"])),
            str(d(t["fee"])),
        )
        for t in bt.trades
    ]
    assert mine == theirs
    assert (rep.shadow.buys, rep.shadow.sells) == (
        int((bt.trades["side"] > 0).sum()),
        int((bt.trades["side"] < 0).sum()),
    )
    assert rep.shadow.fees == sum((d(t["fee"]) for t in bt.trades), Decimal(0))
    # the entries the report counts for the shadow are the backtest's entry orders
    bt_entries = {
        (int(inp.ts[v["bar"]]) // H, inp.pairs[v["pair"]])
        for v in bt.events
        if v["code"] == EventCode.ORDER and v["reason"] == Reason.ENTRY
    }
    assert rep.entries["both"] + rep.entries["shadow_only"] == len(bt_entries) > 0
    prim_entries = {
        (e.hour, e.pair) for e in led.entries(kind=Kind.DECISION) if e.code == "ORDER:ENTRY" and e.hour <= last
    }
    assert rep.entries["both"] + rep.entries["primary_only"] == len(prim_entries) > 0
    assert rep.agree + len(rep.disagreements) == rep.cells and rep.disagreements, "the two models should differ"
    # the primary side: its ledgered equity and fills over the same hours
    end = [e for e in led.entries(hour=last, kind=Kind.CYCLE_END)][-1]
    assert rep.primary.equity_end == Decimal(end.payload["equity"]) and rep.primary.equity_start == Decimal(START_USD)
    own = [f for f in led.entries(kind=Kind.FILL) if first <= f.hour <= last]
    assert rep.primary.buys + rep.primary.sells == len(own) > 0
    # the CLI prints the same figures
    rc, out, err = kq(["live", "shadow-report", "--dsn", run.dsn, "--json"])
    assert rc == 0, err
    js = json.loads(out)
    assert js == json.loads(json.dumps(rep.to_json()))
    assert Decimal(js["shadow"]["equity_end"]) == rep.shadow.equity_end
    rc, out, err = kq(["live", "shadow-report", "--dsn", run.dsn])
    assert rc == 0 and f"agreement: {rep.agreement_pct}%" in out and REF in out, out + err
    # kq live status names the shadow
    rc, out, err = kq(["live", "status", "--dsn", run.dsn, "--json"])
    assert rc == 0, err
    s = json.loads(out)["shadow"]
    assert s["model"] == REF and s["last_hour"] == last and Decimal(s["equity"]) == rep.shadow.equity_end
    rc, out, err = kq(["live", "status", "--dsn", run.dsn])
    assert rc == 0 and "shadow" in out and REF in out, out + err


# ---- failures of the shadow never reach the primary ----------------------------------------------


class RaisingModel:
    """A shadow candidate whose prediction always fails."""

    model = "krakenquant/9"
    manifest_sha256 = "f" * 64

    class bundle:  # the face of a ModelBundle
        trade_horizon = 24

    def predict(self, *a: Any, **k: Any):
        raise RuntimeError("planted: the shadow model fails")


def test_d_a_failing_shadow_never_stops_the_primary(tmp_path, approved, registry, runs):
    _, plain_decisions = runs["plain"]
    last = START // H + FAIL_HOURS - 1
    for name, kw in (
        ("raises", {"shadow_model": RaisingModel(), "shadow": {"model": "krakenquant/9"}}),
        ("missing", {"shadow": {"model": "krakenquant/42"}}),  # not in the registry: never loads
    ):
        run = start(tmp_path / name, approved, FAIL_HOURS, **kw)
        try:
            reps = run.advance(FAIL_HOURS)
            assert [r.status for r in reps] == ["completed"] * FAIL_HOURS
            assert decisions(run.ledger) == [r for r in plain_decisions if r[0] <= last]
            fails = [e for e in run.ledger.entries(kind=Kind.EVENT) if e.code == "shadow_failed"]
            assert [e.hour for e in fails] == list(range(START // H, last + 1)), name
            stage = "predict" if name == "raises" else "load"
            assert all(e.payload["stage"] == stage for e in fails), [e.payload for e in fails]
            snaps = [e.hour for e in run.ledger.entries(kind=Kind.RISK_SNAPSHOT) if e.code == "shadow"]
            # a failing prediction still steps the shadow (no entry: NaN predictions); no model, no step
            assert snaps == (list(range(START // H, last + 1)) if name == "raises" else [])
            assert run.ledger.verify().ok
        finally:
            run.close()
    rc, out, err = kq(["live", "shadow-report", "--dsn", str(tmp_path / "missing" / "ledger.sqlite")])
    assert rc == 2
    one_error(err, "no shadow run in the ledger")


# ---- configuration -------------------------------------------------------------------------------


def test_config_and_refusals(tmp_path, approved):
    from live_bridge.config import live_config_from_dict

    url = "http://127.0.0.1:1"
    ok = live_config_from_dict(paper_dict(url, tmp_path, shadow={"model": " krakenquant/3 "}))
    assert ok.shadow.model == "krakenquant/3"
    assert ok.digest() == live_config_from_dict(paper_dict(url, tmp_path)).digest()  # never a decision
    assert live_config_from_dict(paper_dict(url, tmp_path, shadow={"model": ""})).shadow.model is None
    for bad in ("krakenquant", "krakenquant/0", "a b/1", "x/1/2"):
        with pytest.raises(ConfigError, match="shadow.model"):
            live_config_from_dict(paper_dict(url, tmp_path, shadow={"model": bad}))
    with pytest.raises(ConfigError, match="shadow.foo"):
        live_config_from_dict(paper_dict(url, tmp_path, shadow={"foo": 1}))
    # the approved model as its own shadow (say, the candidate was promoted), or a copy of its
    # bundle: the daemon still starts (its positions must be managed), with the shadow unloaded and
    # the reason kept for the hourly shadow_failed row
    from live_bridge.simulator.testing import start_sim

    kraken_store(tmp_path / "m.duckdb", shared_frames(20), upto=FIRST + 900 * H)
    sim = start_sim(sim_panel(20), start=P0 + SETTLE)
    try:
        twin = BundleModel(approved.path, "krakenquant/5")
        for shadow_model, ref, why in (
            (None, "tiny/1", "is the approved model itself"),
            (twin, "tiny/1", "is the approved model itself"),
            (twin, "krakenquant/5", "approved model's bundle"),
        ):
            d = daemon_for(sim.url, tmp_path, approved, shadow_model, shadow={"model": ref})
            try:
                assert d.shadow is not None and d.shadow.model is None and why in d.shadow.load_error
            finally:
                d.close()
    finally:
        sim.stop()
    # shadow-report without a ledger / without shadow rows: one line, exit 2
    rc, _, err = kq(["live", "shadow-report", "--dsn", str(tmp_path / "none.sqlite")])
    assert rc == 2
    one_error(err, "no ledger at")
