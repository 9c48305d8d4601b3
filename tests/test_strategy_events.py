"""The regime selector's choice in the backtester's event log and in parity (issue 18).

* ``[strategy] enabled``: ``run_backtest``'s event log (``events.parquet``) carries one ``STRATEGY``
  row per selector decision (``engine.strategy.selection_records``: every bar and pair whose P(up)
  passed the entry threshold), reason ``strategy_<profile>_entry`` / ``_no_entry`` (the daemon
  ledger's codes), before the kernel's events of the same bar; ``selection.parquet`` holds the same
  rows with the regime and the exit parameters; both read back through ``read_outputs``.
* ``[strategy]`` off: no such rows, no ``selection.parquet``, the event log as before the layer.
* ``kq parity`` compares the selector's rows hour by hour (reason code, pair, regime, P(up)): a
  40-hour paper run with the layer on agrees; one dropped and one flipped row on the backtest side
  are each reported at their hour.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.backtest.io import (
    EVENT_COLUMNS,
    SELECTION_COLUMNS,
    enum_codes,
    read_outputs,
    write_outputs,
)
from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.risk.enums import EventCode, Reason
from engine.strategy import PROFILE_NAMES, REASON_CODES, STRATEGY_EVENT, reason_code, selection_records
from tests.test_strategy import _cfg, _on_case, _panel, _params, _signals


def _on():
    inp, cfg, bt = _on_case()  # tests/test_strategy.py's layer-on run (cached there)
    return cfg, bt, inp.strategy


def _kernel_frame(res) -> pd.DataFrame:
    """The event log as it was before the layer: the kernel's rows only, decoded."""
    v = res.events
    pairs = np.asarray(("",) + tuple(res.pairs), dtype=object)
    return pd.DataFrame(
        {
            "ts": res.ts[v["bar"]],
            "pair": pairs[v["pair"] + 1],
            "event": [EventCode(int(c)).name for c in v["code"]],
            "reason": [Reason(int(r)).name for r in v["reason"]],
            "value": v["value"],
        }
    )


def _content_digest(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(df["ts"].to_numpy(dtype=np.int64).tobytes())
    for c in ("pair", "event", "reason"):
        h.update("\x00".join(map(str, df[c])).encode())
    h.update(df["value"].to_numpy(dtype=np.float64).tobytes())
    return h.hexdigest()


def test_backtest_event_log_carries_one_row_per_selector_decision(tmp_path):
    cfg, res, sel = _on()
    rows = selection_records(sel, cfg.risk.p_up_entry)
    assert res.selection is not None and res.selection.tobytes() == rows.tobytes()
    ev = res.events_frame()
    s = ev[ev["event"] == STRATEGY_EVENT]
    assert len(s) == len(rows) >= 1000
    want = [reason_code(int(q), bool(c)) for q, c in zip(rows["profile"], rows["candidate"], strict=True)]
    assert s["reason"].tolist() == want
    assert s["pair"].tolist() == [res.pairs[int(j)] for j in rows["pair"]]
    assert s["ts"].tolist() == res.ts[rows["bar"]].tolist()
    assert np.array_equal(s["value"].to_numpy(), rows["p_up"])
    profiles = {r.split("_", 1)[1].rsplit("_entry", 1)[0].removesuffix("_no") for r in s["reason"]}
    assert len(profiles) >= 3 and profiles <= set(PROFILE_NAMES)
    assert s["reason"].str.endswith("_no_entry").any() and (~s["reason"].str.endswith("_no_entry")).any()
    # the kernel's rows unchanged and in their order; each bar's selector rows come first
    k = ev[ev["event"] != STRATEGY_EVENT].reset_index(drop=True)
    pd.testing.assert_frame_equal(k, _kernel_frame(res))
    ts = ev["ts"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    is_s = (ev["event"] == STRATEGY_EVENT).to_numpy()
    for t in np.unique(ts[is_s]):
        g = is_s[ts == t]
        assert not (np.diff(g.astype(int)) > 0).any(), f"a STRATEGY row after a kernel event at {t}"
    print(
        f"\n{len(s)} selector rows among {len(ev)} events: "
        + ", ".join(f"{r} {n}" for r, n in s["reason"].value_counts().items())
    )

    # written and read back: events.parquet's new names decode, selection.parquet has the details
    out = tmp_path / "bt"
    write_outputs(out, res, cfg, {})
    o = read_outputs(out)
    assert set(o.events["reason"].cat.categories) >= set(REASON_CODES)
    assert o.events["reason"].astype(str).tolist() == ev["reason"].tolist()
    ok = o.events[o.events["event"] != STRATEGY_EVENT]
    assert np.array_equal(enum_codes(ok["reason"], Reason), res.events["reason"])
    assert np.array_equal(enum_codes(ok["event"], EventCode), res.events["code"])
    assert o.selection is not None and tuple(o.selection.columns) == SELECTION_COLUMNS
    assert o.selection["reason"].tolist() == want
    assert np.array_equal(o.selection["stop_atr_mult"].to_numpy(), rows["stop_atr_mult"])
    assert np.array_equal(o.selection["size_scale"].to_numpy(), rows["size_scale"])
    assert set(o.selection["regime"]) <= {"range", "trending", "high_vol", "crash", "unknown"}
    assert (o.selection["candidate"].to_numpy() == rows["candidate"]).all()
    # the lifecycle's risk audit still reads the event log
    from research.lifecycle.riskaudit import audit_backtest

    a = audit_backtest(out, cfg)
    assert "records" not in a.n_breaches_by_rule, a.breaches[:3]


def test_an_unknown_strategy_reason_in_the_event_log_is_an_integrity_error(tmp_path):
    from engine.errors import IntegrityError

    cfg, res, _ = _on()
    out = tmp_path / "bt"
    write_outputs(out, res, cfg, {})
    ev = pd.read_parquet(out / "events.parquet")
    i = int(np.flatnonzero((ev["event"] == STRATEGY_EVENT).to_numpy())[3])
    ev.loc[i, "reason"] = "strategy_moonshot_entry"
    ev.to_parquet(out / "events.parquet", index=False)
    with pytest.raises(IntegrityError, match=rf"events.parquet: row {i}: reason 'strategy_moonshot_entry'"):
        read_outputs(out)


# the kernel-only event log of run_backtest(_panel(), _signals(), _params(load_config())) before the
# selector rows existed (1dc1db5), by content (ts, pair, event, reason, value)
OFF_EVENTS_DIGEST = "3ca96f6f14931d302cf2ba738b11f10e6139714352137f601564bf089299ff5e"


def test_layer_off_event_log_unchanged(tmp_path):
    p = _panel()
    pu, er = _signals(p)
    cfg = load_config()
    res = run_backtest(make_inputs(p, pu, er, cfg), _params(cfg))
    assert res.selection is None
    ev = res.events_frame()
    assert STRATEGY_EVENT not in set(ev["event"])
    pd.testing.assert_frame_equal(ev, _kernel_frame(res))
    assert _content_digest(ev[list(EVENT_COLUMNS)]) == OFF_EVENTS_DIGEST
    out = tmp_path / "bt"
    write_outputs(out, res, cfg, {})
    assert not (out / "selection.parquet").exists()
    o = read_outputs(out)
    assert o.selection is None
    assert _content_digest(pd.read_parquet(out / "events.parquet")) == OFF_EVENTS_DIGEST


def test_selection_not_on_the_inputs_bars_is_refused():
    from engine.errors import InputError

    p = _panel()
    pu, er = _signals(p)
    cfg = _cfg()
    inp = make_inputs(p, pu, er, cfg)
    cut = {k: getattr(inp, k)[:100] for k in ("open", "high", "low", "close", "volume", "valid", "p_up")}
    cut |= {k: getattr(inp, k)[:100] for k in ("exp_ret", "atr", "spread", "cluster", "api_fault", "operator")}
    cut |= {k: getattr(inp, k)[:100] for k in ("ts", "month_id", "tradable", "entry_block", "bar_exits")}
    bad = dataclasses.replace(inp, **{k: np.ascontiguousarray(v) for k, v in cut.items()})
    with pytest.raises(InputError, match="strategy selection is not on the inputs' bars"):
        run_backtest(bad, _params(cfg))


# ---- parity ----------------------------------------------------------------------------------------

PARITY_HOURS = 40


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
    """A 40-hour parity run with [strategy] enabled (default selector table); compare()'s arguments
    kept so planted differences are compared against the same paper ledger."""
    import live_bridge.parity as parity
    from engine.paths import configs_dir
    from live_bridge.config import live_config_from_dict
    from tests.live_harness import P0, PAIRS, BundleModel, H, paper_dict, tiny_model_dir

    tmp = tmp_path_factory.mktemp("strategy-parity")
    eng = tmp / "engine.toml"
    eng.write_text(f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\n')
    live = live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp / "cfg", engine_config=str(eng)))
    start = P0 // H
    panel = parity.shared_panel(PAIRS, (start - 1168) * H, (start + PARITY_HOURS) * H)
    seen: dict[str, Any] = {}
    real = parity.compare

    def keep(*a: Any) -> Any:
        seen["args"] = a
        return real(*a)

    mp = pytest.MonkeyPatch()
    mp.setattr(parity, "compare", keep)
    try:
        rep = parity.run_parity(
            live,
            start,
            start + PARITY_HOURS - 1,
            model=BundleModel(tiny_model_dir()),
            panel=panel,
            work=tmp / "work",
        )
    finally:
        mp.undo()
    yield rep, seen["args"]
    seen["args"][2].ledger.close()


def test_parity_with_the_layer_on_compares_the_selector_per_hour(parity_run):
    rep, (inp, bt, paper, params, start, end) = parity_run
    assert inp.strategy is not None and inp.strategy.p_up.shape == inp.shape
    assert rep.ok, [m.line() for m in rep.mismatches[:5]]
    n = rep.counts["strategy_rows"]
    assert n["backtest"] == n["paper"] == len(bt.selection) >= 10
    codes = {
        reason_code(int(q), bool(c)) for q, c in zip(bt.selection["profile"], bt.selection["candidate"], strict=True)
    }
    print(f"\nparity {PARITY_HOURS} h, layer on: {n} selector rows, codes {sorted(codes)}")


def test_parity_reports_a_dropped_and_a_flipped_selector_row(parity_run):
    """Planted on the backtest side only: the first selector row of one hour dropped, the profile of
    a row of a later hour flipped: each is reported at its hour as ``strategy[i]``."""
    import live_bridge.parity as parity

    _, (inp, bt, paper, params, start, end) = parity_run
    sel = bt.selection
    bars = np.unique(sel["bar"])
    assert len(bars) >= 2
    t_drop, t_flip = int(bars[0]), int(bars[-1])
    i_drop = int(np.flatnonzero(sel["bar"] == t_drop)[0])
    i_flip = int(np.flatnonzero(sel["bar"] == t_flip)[-1])
    bad = sel.copy()
    bad[i_flip]["profile"] = (int(bad[i_flip]["profile"]) + 1) % len(PROFILE_NAMES)
    bad = np.delete(bad, i_drop)
    out, counts, _ = parity.compare(inp, dataclasses.replace(bt, selection=bad), paper, params, start, end)
    assert [(m.hour - start, m.field) for m in out] == [
        (t_drop, "strategy[0]"),
        (t_flip, f"strategy[{int((sel['bar'][:i_flip] == t_flip).sum())}]"),
    ], [m.line() for m in out]
    assert out[1].backtest.split()[0] != out[1].paper.split()[0]  # the reason codes differ
    assert counts["strategy_rows"]["backtest"] == counts["strategy_rows"]["paper"] - 1
