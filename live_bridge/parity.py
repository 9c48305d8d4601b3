"""Backtest/paper parity (issue 16): the vectorised backtester and the paper daemon, run over the same
window on the same bars with the same model and config, compared bar by bar.

**Paper side.** A market store holding the bars before the window, the simulator
(:mod:`live_bridge.simulator`, the HTTP server ``kq sim serve`` runs) replaying the window under its
manual clock, and the daemon (:class:`live_bridge.daemon.Daemon`, python-kraken-sdk over HTTP)
running each hour 30 s after its close. Operator actions are written to its ledger with the CLI's
own function (:func:`live_bridge.operator.request`) before the hour they should apply at; a restart
closes the daemon and builds a new one from the config (crash recovery: ``resume``, reconciliation,
the re-run of an interrupted hour).

**Backtest side.** :func:`engine.backtest.runner.run_backtest` over the same window, with inputs
built the backtester's way: features over the whole stored history (not the daemon's fixed window),
the model's prediction at every bar, the universe rule and the warm-up rule as the daemon applies
them, the training window, and as operator input the actions the daemon's ledger says it applied
(``risk_inputs``), so manual actions are part of the comparison. Params are the daemon's
(:func:`live_bridge.cycle.live_params`: no timed kill-switch or halt release).

**Compared, hour by hour** (the first difference is named with both values):

* inputs: each pair's bar (OHLCV, valid), ATR, spread, cluster, P(up), expected return, tradable,
  entry block, operator bits; exactly (float bits);
* decisions: every risk event (refusal, order, tier, kill, reset, pause) with its reason and value,
  exactly;
* the regime selector (``[strategy] enabled``): its rows of the hour, in pair order (the
  backtester's :func:`engine.strategy.selection_records` of the bar, the daemon's ledgered
  ``strategy_<profile>_entry`` / ``_no_entry`` events): reason code (profile and candidate), pair,
  regime and P(up), exactly;
* fills: the orders decided at the close of hour h fill at the open of bar h+1 (the backtester's
  trade records of bar h+1, the daemon's ledgered fills of cycle h): pair, side, quantity, price and
  fee, exactly;
* state after the close: trading state, kill reason, positions (quantity per pair), open positions,
  cash and drawdown exactly, equity to the cent.

**Fill model (the one adjustment).** Both sides trade market orders at the next bar's open:
limit-first cannot be reproduced from hourly bars (the backtester rests a limit a whole bar and falls
back at its close; the daemon rests it ``limit_timeout_s`` and falls back at the price then, which
no hourly bar records). The simulator uses the backtester's fill numbers (spread estimate, impact,
slippage floor, fee) and the daemon's spread input is the OHLC estimate (``cycle.quoted_spread``
off: the backtester has no quotes). Every such adjustment is listed in the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.store.panel import HOUR, Panel
from live_bridge.ledger.canonical import exact_decimal
from live_bridge.replay import hour_label

SETTLE_S = 30  # seconds after a bar's close at which the paper side runs its cycle
EQUITY_TOLERANCE = Decimal("0.01")  # equity is compared to the cent; everything else exactly
FILL_MODEL = "market orders at the next bar's open on both sides (the backtester's slippage and fee kernels)"
OPERATOR_ACTIONS = ("reactivate", "reset_halt", "pause", "resume", "flatten")


@dataclass(frozen=True)
class Operation:
    """An operator action written to the paper daemon's ledger before hour ``hour`` runs (so the
    close of ``hour`` applies it)."""

    hour: int
    action: str
    reason: str = "parity run"

    def __post_init__(self) -> None:
        if self.action not in OPERATOR_ACTIONS:
            raise InputError(f"operator action {self.action!r}: one of {', '.join(OPERATOR_ACTIONS)}")


@dataclass
class Hooks:
    """Test hooks: each changes ONE side, so a planted difference must be found by the comparison."""

    paper_engine_cfg: Callable[[Any], Any] | None = None  # the daemon's engine config
    paper_model: Callable[[Any], Any] | None = None  # the daemon's model
    sim_fee_rate: Decimal | None = None  # the simulator's fee rate
    crash_at: frozenset[int] = frozenset()  # hours whose cycle crashes after execution (then restart)


@dataclass(frozen=True)
class Mismatch:
    hour: int
    field: str
    backtest: str
    paper: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "hour": hour_label(self.hour),
            "ts": self.hour * HOUR,
            "field": self.field,
            "backtest": self.backtest,
            "paper": self.paper,
        }

    def line(self) -> str:
        return f"{hour_label(self.hour)} {self.field}: backtest {self.backtest} != paper {self.paper}"


@dataclass
class ParityReport:
    start: int
    end: int
    pairs: tuple[str, ...]
    model: str
    manifest_sha256: str
    init_cash: Decimal
    adjustments: list[str]
    mismatches: list[Mismatch] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    restarts: list[int] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self, limit: int = 20) -> dict[str, Any]:
        return {
            "mismatches": len(self.mismatches),
            "first_mismatch": self.mismatches[0].to_dict() if self.mismatches else None,
            "mismatch_list": [m.to_dict() for m in self.mismatches[:limit]],
            "window": {
                "start": hour_label(self.start),
                "end": hour_label(self.end),
                "hours": self.end - self.start + 1,
            },
            "pairs": list(self.pairs),
            "model": self.model,
            "manifest_sha256": self.manifest_sha256,
            "init_cash": str(self.init_cash),
            "compared": self.counts,
            "final": self.final,
            "fill_model": FILL_MODEL,
            "adjustments": self.adjustments,
            "tolerances": {"equity": str(EQUITY_TOLERANCE), "everything else": "exact"},
            "restarts": [hour_label(h) for h in self.restarts],
            "operations": self.operations,
            "wall_s": {k: round(v, 2) for k, v in self.wall_s.items()},
        }


# ---- configs -------------------------------------------------------------------------------------


def parity_engine_config(cfg: Any) -> tuple[Any, list[str]]:
    """The engine config both sides run under, and the list of what differs from ``cfg``."""
    x = cfg.execution
    upd: dict[str, Any] = {}
    notes = []
    for k in ("entry_order", "exit_order"):
        if getattr(x, k) != "market":
            upd[k] = "market"
            notes.append(
                f"execution.{k} {getattr(x, k)} -> market on both sides "
                "(limit-first is not reproducible from hourly bars)"
            )
    if not x.spread_in_slippage:
        upd["spread_in_slippage"] = True
        notes.append(
            "execution.spread_in_slippage false -> true on both sides (the simulator always charges half the spread)"
        )
    if not x.enforce_precision:
        upd["enforce_precision"] = True
        notes.append("execution.enforce_precision false -> true on both sides (Kraken's rules apply on the exchange)")
    if not upd:
        return cfg, notes
    return cfg.model_copy(update={"execution": x.model_copy(update=upd)}), notes


def parity_sim_config(cfg: Any, fee_rate: Decimal | None = None) -> Any:
    """The simulator under the backtester's fill numbers (no rate limits: the run is not real time)."""
    from live_bridge.simulator.config import sim_config_from_dict

    x = cfg.execution
    fee = str(fee_rate if fee_rate is not None else exact_decimal(float(cfg.fees.fee_rate)))
    return sim_config_from_dict(
        {
            "rate_limit": {"max_counter": 1e9, "order_max_counter": 1e9},
            "fills": {
                "use_estimator": True,
                "default_spread": 0.0,  # no estimate: no half spread, as the backtester
                "spread_window": int(cfg.backtest.spread_window),
                "atr_window": int(cfg.features.atr_window),
                "impact_coef": float(x.impact_coef),
                "min_slip": float(x.min_slippage_bps) * 1e-4,
                "impact_volume": "execution_bar",
            },
            "fees": {"default": {"taker": fee, "maker": fee}},
        }
    )


def paper_live_config(live: Any, url: str, work: Path) -> Any:
    """The daemon's config for the parity run: ``live``'s pairs and cycle rules in paper mode against
    the local simulator, state under ``work``, the spread input without quotes."""
    from live_bridge.config import live_config_from_dict

    d = live.model_dump(mode="json")
    d["mode"] = "paper"
    d["engine_config"] = str(live.engine_path().resolve())
    d["exchange"]["url"] = url
    d["cycle"].update(settle_delay_s=0, clock="exchange", behind_retries=0, poll_s=0.05, quoted_spread=False)
    d["execution"].update(limit_timeout_s=0.2, poll_interval_s=0.1, lookup_interval_s=0.05, lookup_margin_s=0.5)
    d["paths"] = {
        "store": str(work / "market.duckdb"),
        "state_dir": str(work / "state"),
        "ledger": f"sqlite:///{work / 'ledger.sqlite'}",
        "ledger_schema": None,
    }
    return live_config_from_dict(d, source=f"{live.source or 'live config'} (parity)")


# ---- bars ----------------------------------------------------------------------------------------


def shared_panel(pairs: Sequence[str], start_ts: int, end_ts: int) -> Panel:
    """Kraken's bars of ``pairs`` from the shared Parquet files (``XBTUSD_1h`` ...), in ``pairs`` order."""
    from engine.pairs import instrument
    from engine.store.panel import load_shared_panel

    stems = [f"{instrument(p).altname}_1h" for p in pairs]
    p = load_shared_panel(stems, start=start_ts, end=end_ts)
    return reorder(p, pairs)


def store_panel(path: str | Path, pairs: Sequence[str], start_ts: int, end_ts: int) -> Panel:
    from engine.store.market import MarketStore

    if not Path(path).is_file():
        raise InputError(f"no market store at {path}")
    s = MarketStore(path, read_only=True)
    try:
        stored = {i.pair for i in s.list_pairs("kraken")}
        missing = [p for p in pairs if p not in stored]
        if missing:
            raise InputError(f"{path}: no kraken bars of {', '.join(missing)} (kq data update)")
        return reorder(s.load_panel(list(pairs), "kraken", start=start_ts, end=end_ts), pairs)
    finally:
        s.close()


def reorder(p: Panel, pairs: Sequence[str]) -> Panel:
    """``p`` on an hourly grid with its columns in ``pairs`` order."""
    pairs = tuple(pairs)
    if tuple(p.pairs) == pairs:
        return p
    missing = [x for x in pairs if x not in p.pairs]
    if missing:
        raise InputError(f"no bars of {', '.join(missing)}")
    idx = [list(p.pairs).index(x) for x in pairs]
    cols = {
        k: np.ascontiguousarray(getattr(p, k)[:, idx])
        for k in ("open", "high", "low", "close", "volume", "trades", "vwap")
    }
    return Panel(p.venue, pairs, p.ts, valid=np.ascontiguousarray(p.valid[:, idx]), **cols)


def rest_precision(panel: Panel) -> tuple[Panel, int]:
    """``panel`` as Kraken's OHLC endpoint serves it (and so as the daemon stores it): prices at the
    pair's decimals, volumes at 8; with the number of values that changed. Kraken's downloadable
    OHLCVT files carry some volumes to 10 decimals; the daemon would see those rounded."""
    from engine.pairs import instrument
    from live_bridge.simulator.market import fmt

    cols = {
        k: np.array(getattr(panel, k), dtype=np.float64, copy=True) for k in ("open", "high", "low", "close", "volume")
    }
    changed = 0
    for j, pair in enumerate(panel.pairs):
        pd_ = instrument(pair).pair_decimals
        for k, a in cols.items():
            places = 8 if k == "volume" else pd_
            col = a[:, j]
            for i in np.flatnonzero(panel.valid[:, j]):
                v = float(fmt(float(col[i]), places))
                if v != col[i]:
                    col[i] = v
                    changed += 1
    out = Panel(panel.venue, panel.pairs, panel.ts, trades=panel.trades, vwap=panel.vwap, valid=panel.valid, **cols)
    return out, changed


def _seed_store(path: Path, panel: Panel, upto_ts: int) -> None:
    """A market store holding ``panel``'s valid bars with ts < ``upto_ts`` as venue ``kraken``."""
    import pandas as pd

    from engine.store.market import MarketStore

    s = MarketStore(path)
    try:
        keep = panel.ts < upto_ts
        for j, pair in enumerate(panel.pairs):
            ok = keep & panel.valid[:, j]
            df = pd.DataFrame(
                {
                    "ts": panel.ts[ok],
                    "open": panel.open[ok, j],
                    "high": panel.high[ok, j],
                    "low": panel.low[ok, j],
                    "close": panel.close[ok, j],
                    "volume": panel.volume[ok, j],
                    "trades": np.nan_to_num(panel.trades[ok, j], nan=0.0).astype(np.int64),
                }
            )
            s.import_bars(df, "kraken", pair, f"parity-{pair}")
    finally:
        s.close()


# ---- the paper side ------------------------------------------------------------------------------


@dataclass
class PaperRun:
    ledger: Any
    pairs: tuple[str, ...]
    init_cash: Decimal
    restarts: list[int]
    wall_s: float


def run_paper(
    live: Any,
    cfg: Any,
    model: Any,
    panel: Panel,
    start: int,
    end: int,
    work: Path,
    *,
    init_cash: Decimal,
    operations: Sequence[Operation] = (),
    restart_after: Iterable[int] = (),
    hooks: Hooks | None = None,
    progress: Callable[[int], None] | None = None,
) -> PaperRun:
    """The daemon in paper mode over hours ``start..end`` against the simulator replaying ``panel``."""
    from live_bridge.daemon import Daemon
    from live_bridge.kraken import RateBudget
    from live_bridge.ledger import Ledger
    from live_bridge.operator import CONFIRM_WORDS, request
    from live_bridge.simulator.testing import KEY, SECRET, VirtualClock, start_sim

    hooks = hooks or Hooks()
    quote = live.quote
    _seed_store(work / "market.duckdb", panel, start * HOUR)
    sim = start_sim(
        panel,
        start=float(start * HOUR + SETTLE_S),
        balances={quote: str(init_cash)},
        config=parity_sim_config(cfg, hooks.sim_fee_rate),
    )
    plive = paper_live_config(live, sim.url, work)
    pcfg = hooks.paper_engine_cfg(cfg) if hooks.paper_engine_cfg else cfg
    pmodel = hooks.paper_model(model) if hooks.paper_model else model
    env = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
    restarts: list[int] = []
    restart_set = set(int(h) for h in restart_after)
    ops: dict[int, list[Operation]] = {}
    for op in operations:
        ops.setdefault(int(op.hour), []).append(op)

    def build() -> Any:
        mono = VirtualClock()
        d = Daemon.from_config(
            plive,
            environ=env,
            model=pmodel,
            budget=RateBudget("pro", clock=mono.now, sleep=mono.sleep),
            engine_cfg=pcfg,
        )
        rep = d.start()
        if rep.reconcile != "ok" or rep.unresolved:
            d.close()
            raise InputError(
                f"the paper daemon did not start cleanly: reconcile {rep.reconcile}, {rep.unresolved} unresolved"
            )
        return d

    t0 = time.perf_counter()
    daemon = build()
    try:
        for h in range(start, end + 1):
            for op in ops.get(h, []):
                request(daemon.ledger, op.action, op.reason, "kq-parity", CONFIRM_WORDS[op.action], force=True)
            sim.ex.advance(to=float((h + 1) * HOUR + SETTLE_S))
            if h in hooks.crash_at:
                _plant_crash(daemon)
                with contextlib.suppress(_PlantedCrash):
                    daemon.run_once()
                daemon.close()
                restarts.append(h)
                daemon = build()
            daemon.run_once()
            if not daemon.cycle.completed(h):
                raise InputError(f"the paper daemon did not complete hour {hour_label(h)}")
            if h in restart_set and h < end:
                daemon.close()
                restarts.append(h)
                daemon = build()
            if progress:
                progress(1)
        cash = _portfolio_cash(daemon.ledger)
    finally:
        daemon.close()
        sim.stop()
    ledger = Ledger.open(f"sqlite:///{work / 'ledger.sqlite'}", migrate=False)
    return PaperRun(ledger, tuple(plive.universe.pairs), cash, restarts, time.perf_counter() - t0)


class _PlantedCrash(RuntimeError):
    pass


def _plant_crash(daemon: Any) -> None:
    """The next cycle dies after its orders executed, before its reconciliation and snapshot."""
    cyc = daemon.cycle

    def crash(*a: Any, **kw: Any) -> Any:
        raise _PlantedCrash("planted crash after execution")

    cyc._reconcile = crash


def _portfolio_cash(ledger: Any) -> Decimal:
    from live_bridge.ledger import Kind

    for e in ledger.entries(kind=Kind.EVENT):
        if e.code == "portfolio_start":
            return Decimal(str(e.payload["init_cash"]))
    raise InputError("the paper ledger has no portfolio_start event")


# ---- the backtest side ---------------------------------------------------------------------------


def backtest_inputs(
    cfg: Any,
    universe: Any,
    model: Any,
    panel: Panel,
    start: int,
    end: int,
    operator: np.ndarray,
) -> Any:
    """Inputs of the window ``start..end`` built the backtester's way over the whole of ``panel``
    (features, ATR, spread, clusters from its first bar), sliced to the window."""
    from engine.backtest.runner import make_inputs
    from engine.features.featureset import build_features
    from engine.universe import universe_mask

    ts = panel.ts
    last = int(np.searchsorted(ts, (end + 1) * HOUR))  # rows through bar `end`
    if last == 0 or int(ts[last - 1]) != end * HOUR:
        raise InputError(f"the bars end before {hour_label(end)}")
    p = Panel(
        panel.venue,
        panel.pairs,
        ts[:last],
        **{k: getattr(panel, k)[:last] for k in ("open", "high", "low", "close", "volume", "trades", "vwap")},
        valid=panel.valid[:last],
    )
    i0 = int(np.searchsorted(p.ts, start * HOUR))
    if i0 >= last or int(p.ts[i0]) != start * HOUR:
        raise InputError(f"the bars do not include {hour_label(start)}")
    n, m = p.close.shape
    umask = universe_mask(p, universe)
    feats = build_features(p, cfg.features, umask)
    p_up = np.full((n, m), np.nan)
    er = np.full((n, m), np.nan)
    th = int(model.bundle.trade_horizon)
    j_of = {x: j for j, x in enumerate(p.pairs)}
    for i in range(i0, n):
        pr = model.predict(feats, p, at=int(p.ts[i]))
        pr = pr[pr["horizon"] == th]
        for pair, pu, e in zip(pr["pair"], pr["p_up"], pr["exp_return"], strict=True):
            j = j_of[str(pair)]
            p_up[i, j], er[i, j] = float(pu), float(e)
    # the daemon's warm-up rule: `warmup_bars` contiguous stored bars ending at the bar
    need = int(cfg.features.warmup_bars)
    run = np.zeros((n, m), dtype=np.int64)
    for i in range(n):
        run[i] = np.where(p.valid[i], (run[i - 1] if i else 0) + 1, 0)
    ready = run >= need
    ops = np.zeros(n, dtype=np.int64)
    ops[i0:] = operator
    from live_bridge.cycle import strategy_raw_regime

    raw = strategy_raw_regime(cfg, model, p)  # regime_thresholds = "model": the bundle's rule, as the daemon
    inp = make_inputs(p, p_up, er, cfg, tradable=umask & ready, operator=ops, raw_regime=raw)
    sl = slice(i0, n)
    names = ("ts", "open", "high", "low", "close", "volume", "valid", "p_up", "exp_ret", "atr", "spread", "cluster")
    names2 = ("api_fault", "operator", "month_id", "tradable", "entry_block")
    cut: dict[str, Any] = {k: np.ascontiguousarray(getattr(inp, k)[sl]) for k in names + names2}
    if inp.strategy is not None:  # the selector's arrays are on the panel's bars too
        cut["strategy"] = inp.strategy.rows(sl)
    if inp.bar_exits is not None and inp.bar_exits.shape[0] != 0:  # [strategy] enabled: the exits of the window
        cut["bar_exits"] = np.ascontiguousarray(inp.bar_exits[sl])
    return dataclasses.replace(inp, **cut)


# ---- comparison ----------------------------------------------------------------------------------


def _txt(x: Any) -> str:
    if x is None:
        return "none"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x)).lower()
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, Decimal):
        return str(x.normalize()) if x == x else "nan"
    f = float(x)
    return "nan" if f != f else str(exact_decimal(f).normalize())


def _event_label(code: int, reason: int) -> str:
    from engine.risk.enums import EventCode, Reason

    why = Reason(reason).name if reason in set(Reason) else str(reason)
    return f"{EventCode(code).name}:{why}"


def _bt_selection(bt: Any, t: int, pairs: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """The backtester's selector rows of bar ``t`` (``bt.selection``; none with the layer off) as
    (reason code, pair, regime, P(up)), in pair order."""
    from engine.strategy import reason_code

    sel = getattr(bt, "selection", None)
    if sel is None:
        return []
    return [
        (
            reason_code(int(r["profile"]), bool(r["candidate"])),
            pairs[int(r["pair"])],
            _txt(int(r["regime"])),
            _txt(r["p_up"]),
        )
        for r in sel[sel["bar"] == t]
    ]


def _paper_selection(rows: Iterable[Any]) -> list[tuple[str, str, str, str]]:
    """The daemon's selector rows of one hour (its ``strategy_*`` ledger events), in ledger order."""
    from live_bridge.ledger import Kind

    return [
        (str(e.code), str(e.pair), _txt(e.payload.get("regime")), _txt(Decimal(str(e.payload.get("p_up")))))
        for e in rows
        if e.kind == Kind.EVENT and str(e.code).startswith("strategy_")
    ]


def compare(
    inp: Any, bt: Any, paper: PaperRun, params: np.ndarray, start: int, end: int
) -> tuple[list[Mismatch], dict[str, Any], dict[str, Any]]:
    """Every difference, hour by hour (inputs, decisions, fills, state), plus counts and final books."""
    from engine.execution.nb import BUY
    from engine.risk.enums import EventCode, Reason, TradingState
    from engine.risk.machine import RiskMachine, bar_inputs
    from live_bridge.cycle import recorded_inputs
    from live_bridge.ledger import Kind

    pairs = paper.pairs
    led = paper.ledger
    out: list[Mismatch] = []
    ev, tr, eq = bt.events, bt.trades, bt.equity
    qty = np.zeros(len(pairs))
    n_dec = n_fill_bt = n_fill_paper = n_sel_bt = n_sel_paper = 0
    last_state: dict[str, Any] = {}
    for t, h in enumerate(range(start, end + 1)):

        def ne(fieldname: str, a: Any, b: Any, h: int = h) -> None:
            out.append(Mismatch(h, fieldname, _txt(a), _txt(b)))

        rows = led.entries(hour=h)
        rec_in = recorded_inputs(led, h, pairs, rows)
        if rec_in is None:
            ne("inputs", "recorded", "missing")
            continue
        (_, pb, pp, ptrd, pblk, papi, pop, pex), _ = rec_in
        _, bb, bp, btrd, bblk, bapi, bop, bex = bar_inputs(inp, t)
        for j, pair in enumerate(pairs):
            for k in bb.dtype.names or ():
                a, b = bb[j][k], pb[j][k]
                if not _same(a, b):
                    ne(f"input {pair} {k}", a, b)
            for k in ("p_up", "exp_ret"):
                if not _same(bp[j][k], pp[j][k]):
                    ne(f"input {pair} {k}", bp[j][k], pp[j][k])
            if bool(btrd[j]) != bool(ptrd[j]):
                ne(f"input {pair} tradable", btrd[j], ptrd[j])
            if (bex is None) != (pex is None):
                ne(f"input {pair} exits", "none" if bex is None else "given", "none" if pex is None else "given")
            elif bex is not None and pex is not None:
                for k in bex.dtype.names or ():
                    if not _same(bex[j][k], pex[j][k]):
                        ne(f"input {pair} exits.{k}", bex[j][k], pex[j][k])
        for name, a, b in (("entry_block", bblk, pblk), ("api_fault", bapi, papi), ("operator", bop, pop)):
            if a != b:
                ne(f"input {name}", a, b)
        # the selector's choice per pair ([strategy] enabled; both empty when it is off)
        bsel, psel = _bt_selection(bt, t, pairs), _paper_selection(rows)
        n_sel_bt += len(bsel)
        n_sel_paper += len(psel)
        for i in range(max(len(bsel), len(psel))):
            a = bsel[i] if i < len(bsel) else None
            b = psel[i] if i < len(psel) else None
            if a != b:
                ne(f"strategy[{i}]", " ".join(a) if a else None, " ".join(b) if b else None)
                break
        # decisions: every event of the close (CANCEL events happen at execution: compared as fills)
        bev = [
            (
                _event_label(int(e["code"]), int(e["reason"])),
                pairs[int(e["pair"])] if int(e["pair"]) >= 0 else None,
                _txt(e["value"]),
            )
            for e in ev[ev["bar"] == t]
            if int(e["code"]) != int(EventCode.CANCEL)
        ]
        dec = [e for e in rows if e.kind == Kind.DECISION]
        pev = [
            (str(e.code), e.pair, _txt(Decimal(str(e.payload["value"]))) if e.payload["value"] is not None else "nan")
            for e in dec
            if "value" in e.payload and not str(e.code).startswith("CANCEL:")
        ]
        n_dec += len(bev)
        for i in range(max(len(bev), len(pev))):
            a = bev[i] if i < len(bev) else None
            b = pev[i] if i < len(pev) else None
            if a != b:
                ne(
                    f"decision[{i}]",
                    " ".join(x or "-" for x in a) if a else None,
                    " ".join(x or "-" for x in b) if b else None,
                )
                break
        # orders decided at this close (side, quantity, limit)
        border = [
            (
                pairs[int(e["pair"])],
                "buy" if int(e["reason"]) == int(Reason.ENTRY) else "sell",
                _txt(e["value"]),
                "none",
            )
            for e in ev[(ev["bar"] == t) & (ev["code"] == int(EventCode.ORDER))]
        ]
        porder = [
            (str(e.pair), str(e.side), _txt(e.qty), _txt(e.price))
            for e in dec
            if str(e.code).startswith("ORDER:") and e.side is not None and e.payload.get("tag") == "close"
        ]
        if sorted(border) != sorted(porder):
            ne("orders", "; ".join(" ".join(x) for x in sorted(border)), "; ".join(" ".join(x) for x in sorted(porder)))
        # fills of these orders: the backtester's trades of bar t+1, the daemon's fills of cycle h
        btr = sorted(
            (
                pairs[int(x["pair"])],
                "buy" if int(x["side"]) == BUY else "sell",
                _txt(x["qty"]),
                _txt(x["price"]),
                _txt(x["fee"]),
            )
            for x in tr[tr["bar"] == t + 1]
        )
        pfl = sorted(
            (str(e.pair), str(e.side), _txt(float(e.qty)), _txt(float(e.price)), _txt(float(e.fee)))
            for e in rows
            if e.kind == Kind.FILL
        )
        n_fill_bt += len(btr)
        n_fill_paper += len(pfl)
        if h < end or btr or pfl:
            for i in range(max(len(btr), len(pfl))):
                a = btr[i] if i < len(btr) else None
                b = pfl[i] if i < len(pfl) else None
                if a != b:
                    label = a[:2] if a else b[:2] if b else ()
                    ne(f"fill[{' '.join(label)}]", " ".join(a) if a else None, " ".join(b) if b else None)
                    break
        # the state after the close
        for x in tr[tr["bar"] == t]:
            qty[int(x["pair"])] += float(x["qty"]) * (1 if int(x["side"]) == BUY else -1)
        st = [e for e in dec if str(e.code).startswith("STATE:")]
        erow = eq[eq["bar"] == t]
        if not st or len(erow) != 1:
            ne("state", f"{len(erow)} rows", f"{len(st)} rows")
            continue
        e0, ps = erow[0], st[-1].payload
        bstate = TradingState(int(e0["trading_state"])).name
        pstate = str(st[-1].code).split(":", 1)[1]
        if bstate != pstate:
            ne("state.trading_state", bstate, pstate)
        for k in ("cash", "drawdown"):
            a, b = exact_decimal(float(e0[k])), Decimal(str(ps[k]))
            if a != b:
                ne(f"state.{k}", a, b)
        a, b = exact_decimal(float(e0["equity"])), Decimal(str(ps["equity"]))
        if abs(a - b) > EQUITY_TOLERANCE:
            ne("state.equity", a, b)
        for k in ("n_positions", "kill_reason"):
            if int(e0[k]) != int(ps[k]):
                ne(f"state.{k}", int(e0[k]), int(ps[k]))
        after = [e for e in rows if e.kind == Kind.RISK_SNAPSHOT and e.code == "after"]
        if after and after[-1].blob:
            m = RiskMachine.restore(after[-1].blob)
            for j, pair in enumerate(pairs):
                # the daemon's snapshot after cycle h holds the fills of its orders (bar h+1's open)
                a, b = float(m.positions[j]["qty"]), float(_bt_qty(tr, t + 1, j))
                if a != b:
                    ne(f"position {pair} qty", b, a)
        last_state = {
            "backtest": {
                "cash": str(exact_decimal(float(e0["cash"]))),
                "equity": str(exact_decimal(float(e0["equity"]))),
                "state": bstate,
            },
            "paper": {"cash": str(ps["cash"]), "equity": str(ps["equity"]), "state": pstate},
        }
    counts = {
        "hours": end - start + 1,
        "decisions": n_dec,
        "fills": {"backtest": n_fill_bt, "paper": n_fill_paper},
        "strategy_rows": {"backtest": n_sel_bt, "paper": n_sel_paper},
        "inputs_per_hour": len(pairs) * (len(bb.dtype.names or ()) + 3) + 3 if end >= start else 0,
    }
    return out, counts, last_state


def _bt_qty(tr: np.ndarray, t: int, j: int) -> float:
    """The backtester's position in pair ``j`` after bar ``t``: its fills booked in order."""
    from engine.execution.nb import BUY

    q = 0.0
    for x in tr[(tr["bar"] <= t) & (tr["pair"] == j)]:
        if int(x["side"]) == BUY:
            q = q + float(x["qty"])
        else:
            q = q - float(x["qty"]) if q - float(x["qty"]) > 0 else 0.0
    return q


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        fa, fb = float(a), float(b)
        return (fa != fa and fb != fb) or fa == fb
    return bool(a == b)


# ---- the whole run -------------------------------------------------------------------------------


def run_parity(
    live: Any,
    start: int,
    end: int,
    *,
    model: Any,
    panel: Panel,
    init_cash: Decimal = Decimal("10000"),
    operations: Sequence[Operation] = (),
    restart_after: Iterable[int] = (),
    hooks: Hooks | None = None,
    work: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ParityReport:
    """Both sides over hours ``start..end`` (bar-open hours, unix seconds // 3600), compared."""
    from engine.backtest.runner import run_backtest
    from engine.config import load_config
    from engine.universe import load_universe
    from live_bridge.cycle import live_params
    from live_bridge.ledger import Kind

    if end < start:
        raise InputError(f"--end {hour_label(end)} is before --start {hour_label(start)}")
    cfg0 = load_config(live.engine_path())
    cfg, notes = parity_engine_config(cfg0)
    notes = [*notes, "cycle.quoted_spread -> false on the paper side (the backtester has no quotes)"]
    panel, changed = rest_precision(panel)
    if changed:
        notes.append(
            f"bars: {changed} values rounded to Kraken's OHLC precision (prices at the pair's decimals, volumes at 8) "
            "on both sides, as the daemon stores them"
        )
    own = work is None
    wdir = Path(tempfile.mkdtemp(prefix="kq-parity-")) if work is None else Path(work)
    wdir.mkdir(parents=True, exist_ok=True)
    rep = ParityReport(
        start, end, tuple(live.universe.pairs), str(model.model), str(model.manifest_sha256), init_cash, notes
    )
    try:
        paper = run_paper(
            live,
            cfg,
            model,
            panel,
            start,
            end,
            wdir,
            init_cash=init_cash,
            operations=operations,
            restart_after=restart_after,
            hooks=hooks,
            progress=progress,
        )
        rep.restarts = paper.restarts
        actions = {e.seq: e for e in paper.ledger.entries(kind=Kind.OPERATOR_ACTION)}
        rep.operations = [
            {
                "applied_at": hour_label(int(e.hour)) if e.hour is not None else None,
                "action": str(actions[e.ref_seq].code) if e.ref_seq in actions else None,
                "status": str(e.code),
            }
            for e in paper.ledger.entries(kind=Kind.OPERATOR_APPLIED)
        ]
        t0 = time.perf_counter()
        op = np.zeros(end - start + 1, dtype=np.int64)
        from live_bridge.cycle import recorded_inputs

        for i, h in enumerate(range(start, end + 1)):
            r = recorded_inputs(paper.ledger, h, paper.pairs)
            if r is not None:
                op[i] = int(r[0][6])
        inp = backtest_inputs(cfg, load_universe(), model, panel, start, end, op)
        params = live_params(cfg, paper.init_cash, live.capital_ceiling)
        bt = run_backtest(inp, params, record=True)
        rep.wall_s["backtest"] = time.perf_counter() - t0
        rep.wall_s["paper"] = paper.wall_s
        t0 = time.perf_counter()
        rep.mismatches, rep.counts, rep.final = compare(inp, bt, paper, params, start, end)
        rep.wall_s["compare"] = time.perf_counter() - t0
        paper.ledger.close()
    finally:
        if own:
            shutil.rmtree(wdir, ignore_errors=True)
    return rep
