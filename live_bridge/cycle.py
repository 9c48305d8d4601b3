"""The hourly cycle: one bar close, end to end (docs/LIVE.md, "The daemon").

For the bar of hour ``h`` (open at ``h * 3600``, closed at ``(h + 1) * 3600``):

1. **Data**: :func:`live_bridge.data.update_bars` tops up the store with Kraken's closed bars.
2. **Inputs**: the stored history of the last ``cycle.history_bars`` hours (a fixed window, so a
   re-run computes the same numbers), the feature kernels (``build_features``), the approved
   model's prediction at the trade horizon, and the risk inputs built by the backtester's own
   functions (``engine.backtest.runner.make_inputs``: ATR, spread, clusters, entry-block window;
   ``engine.universe.universe_mask`` for the tradable mask), then ``bar_inputs`` of the last row.
   The exact arguments of ``RiskMachine.on_bar`` are ledgered (``bars`` rows carry the risk
   record of each pair, ``prediction`` rows the model outputs, a ``risk_inputs`` event the flags)
   with the snapshot before, in ONE append: that batch is the hour's commitment.
3. **Risk**: ``RiskMachine.on_bar`` (no rule lives here); its orders and events are ledgered as
   ``decision`` rows.
4. **Execution**: each order through :class:`live_bridge.execution.Executor` (intent ledgered
   before it is sent; limit first, market fallback), then ``on_fill`` for each of its fills as
   ledgered, ``on_cancel`` for what did not fill.
5. **Reconciliation** (:func:`live_bridge.reconcile.reconcile`), then the snapshot after and
   ``cycle_end``, in one append.

**Crash safety.** The machine is always rebuilt from the last ``after`` snapshot. A cycle killed at
any point is run again from the start: if its input batch is in the ledger those inputs are used
(never recomputed), so ``on_bar`` decides exactly the same orders; the executor finds each intent by
its deterministic ``cl_ord_id`` and never sends one twice; the fills fed to the machine are read
from the ledger, so none is lost or booked twice. The run that completes writes the same risk state
as one that never crashed.

**Fills reach the machine from the ledger only.** The ``after`` snapshot carries a fill mark (the
ledger seq up to which every own fill is booked). Each hour books the fills of its own orders as
the executor ledgers them (``on_fill``; the market fallback leg as ``MARKET_CLOSE``), settles every
order it sent (``on_cancel`` for what did not fill: no order is carried to the next close), then
sweeps every other own fill above the mark (found by ``resume`` for an intent left open, or by
reconciliation after a crash) and books it as unexpected, which latches the kill switch. An
intent whose fate is unknown stays open in the ledger and is looked up at the start of every hour
(:func:`live_bridge.execution.resume`, which sends nothing but cancels). The live parameters
never release the kill switch or the drawdown halt by themselves (``kill_reset_bars`` and
``halt_reset_bars`` are the backtest's emulated operator; live they are 0).

**Kill-switch input.** ``api_fault`` of a bar is the backtester's API-instability input. It is set
when the previous cycle asked for it (an unexplained reconciliation mismatch, an order whose fate
is unknown, too many failed API calls, a Kraken halt) or when this hour's data step had
``cycle.max_api_failures`` failed calls. The machine latches its kill switch from it; only an
operator's ``reactivate`` (applied at a bar close through the operator input) clears it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from engine.errors import InputError, IntegrityError
from engine.risk.enums import (
    OP_FLATTEN,
    OP_PAUSE,
    OP_RESET_HALT,
    OP_RESET_KILL,
    OP_RESUME,
    FillHow,
    Reason,
    TradingState,
    bar_dt,
    bar_exit_dt,
    prediction_dt,
)
from engine.timeutil import HOUR
from live_bridge.execution import ExecConfig, Executor, OrderIntent
from live_bridge.kraken import KrakenAdapter
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger import records as rec
from live_bridge.ledger.canonical import exact_decimal

__all__ = ["Cycle", "HourReport", "code_version", "decision_records", "exec_config", "live_params", "recorded_inputs"]

log = logging.getLogger("live_bridge.cycle")

BAR_FIELDS = ("open", "high", "low", "close", "volume", "atr", "spread")
# the strategy layer's per-bar exit parameters, ledgered in each bars row's payload ("exits")
EXIT_FIELDS = tuple(bar_exit_dt.names or ())
OP_BITS = {
    "reactivate": OP_RESET_KILL,
    "reset_halt": OP_RESET_HALT,
    "pause": OP_PAUSE,
    "resume": OP_RESUME,
    "flatten": OP_FLATTEN,
}


def code_version() -> str:
    """A short id of the running code: the package version plus the git commit when known."""
    import subprocess
    from pathlib import Path

    try:
        from importlib.metadata import version

        v = version("krakenquant")
    except Exception:
        v = "0"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:
        head = ""
    return f"{v}+{head}" if head else v


def exec_config(live: Any, cfg: Any) -> ExecConfig:
    x = live.execution
    return ExecConfig(
        limit_timeout_s=float(x.limit_timeout_s),
        poll_interval_s=float(x.poll_interval_s),
        lookup_attempts=int(x.lookup_attempts),
        lookup_interval_s=float(x.lookup_interval_s),
        lookup_margin_s=float(x.lookup_margin_s),
        track_attempts=int(x.track_attempts),
        fee_rate=Decimal(repr(float(cfg.fees.fee_rate))),
        market_buffer=Decimal(x.market_buffer),
        market_fallback=bool(x.market_fallback),
    )


def model_regime_rule(cfg: Any, model: Any) -> Any:
    """``[strategy] enabled`` with ``regime_thresholds = "model"``: the approved bundle's fitted
    regime rule (``engine.strategy.RegimeRule`` of the trade horizon's meta-learner's classifier,
    fitted on the final model's training window); None otherwise. A one-line ConfigError naming the
    setting when the bundle holds no fitted regime classifier (the daemon refuses to start)."""
    if not (cfg.strategy.enabled and cfg.strategy.regime_thresholds == "model"):
        return None
    from engine.errors import ConfigError
    from engine.strategy import regime_rule_of

    bundle = getattr(model, "bundle", None)
    metas = getattr(bundle, "metas", None) or {}
    meta = metas.get(int(getattr(bundle, "trade_horizon", -1)))
    reg = getattr(meta, "regime_", None)
    if reg is None or not hasattr(reg, "vol_hi_"):
        raise ConfigError(
            '[strategy] regime_thresholds = "model": the approved model has no fitted regime classifier '
            '(fit it with [research.models.meta] use_regime = true, or set regime_thresholds = "config")'
        )
    return regime_rule_of(reg)


def strategy_raw_regime(cfg: Any, model: Any, panel: Any) -> np.ndarray | None:
    """The raw regime codes ``make_inputs`` takes (``raw_regime``) for ``panel`` under ``cfg`` and
    ``model``: the bundle's fitted rule on the panel's bars (``regime_thresholds = "model"``), else
    None (the ``[strategy]`` thresholds). The daemon's cycle and parity's backtest side both call it."""
    rule = model_regime_rule(cfg, model)
    if rule is None:
        return None
    from engine.strategy import regime_raw

    return regime_raw(panel.close, panel.valid, rule)


def strategy_lookback(cfg: Any, model: Any) -> int:
    """History rows the selector's last row needs: ``[strategy] lookback_bars``, with the bundle's
    fitted regime windows when ``regime_thresholds = "model"``."""
    rule = model_regime_rule(cfg, model)
    if rule is None:
        return int(cfg.strategy.lookback_bars)
    return int(cfg.strategy.lookback_for(rule.trend_bars, rule.vol_bars))


def live_params(cfg: Any, init_cash: Decimal | float, capital_ceiling: Decimal | None = None) -> np.ndarray:
    """The RiskMachine parameters of a live portfolio: the backtester's (``params_from_config``)
    with the account's starting cash, and WITHOUT the backtest's emulated operator: the kill switch
    and the drawdown halt are never released after N bars (``kill_reset_bars`` /
    ``halt_reset_bars`` = 0); only an operator's reactivate / reset_halt, ledgered and applied at a
    close, clears them. ``capital_ceiling`` (the live config's): the risk step's capital ceiling,
    the lower of it and the engine config's ``risk.capital_ceiling``."""
    from engine.risk.params import params_from_config

    p = params_from_config(cfg)
    p[0]["init_cash"] = float(init_cash)
    if capital_ceiling is not None:
        p[0]["capital_ceiling"] = min(float(p[0]["capital_ceiling"]), float(capital_ceiling))
    p[0]["kill_reset_bars"] = 0
    p[0]["halt_reset_bars"] = 0
    return p


def _dec(x: float) -> Decimal | None:
    x = float(x)
    return exact_decimal(x) if np.isfinite(x) else None


def _flt(v: Any) -> float:
    return float("nan") if v is None else float(Decimal(v))


def recorded_inputs(ledger: Ledger, hour: int, pairs: Sequence[str], rows: Sequence[Entry] | None = None):
    """The ledgered ``on_bar`` arguments of ``hour`` for the portfolio trading ``pairs``, decoded
    from its input batch (``bars`` and ``prediction`` rows before its ``risk_inputs`` event), as
    ``((hour, bars, predictions, tradable, entry_block, api_fault, operator, exits), api_fault_reasons)``
    (``exits``: the strategy layer's ``bar_exit_dt`` rows when the bars rows carry them, else None);
    None when the hour has no input batch. Used by a re-run after a crash and by the replay
    (:mod:`live_bridge.replay`). ``rows``: the hour's entries when already read."""
    rows = ledger.entries(hour=hour) if rows is None else rows
    flags = [e for e in rows if e.kind == Kind.EVENT and e.code == "risk_inputs"]
    if not flags:
        return None
    f = flags[-1]
    m = len(pairs)
    bars = np.zeros(m, dtype=bar_dt)
    pred = np.zeros(m, dtype=prediction_dt)
    pred["p_up"] = np.nan
    pred["exp_ret"] = np.nan
    tradable = np.zeros(m, dtype=np.bool_)
    exits = np.full(m, np.nan, dtype=bar_exit_dt)
    any_exits = False
    by_pair = {e.pair: e for e in rows if e.kind == Kind.BARS and e.seq < f.seq}
    preds = {e.pair: e for e in rows if e.kind == Kind.PREDICTION and e.seq < f.seq}
    for j, pair in enumerate(pairs):
        b = by_pair.get(pair)
        if b is None:
            raise IntegrityError(f"hour {hour}: the ledgered inputs lack the bars of {pair}")
        r = b.payload["bars"][0]
        for k in BAR_FIELDS:
            bars[j][k] = _flt(r.get(k))
        bars[j]["valid"] = bool(r["valid"])
        bars[j]["cluster"] = int(r["cluster"])
        tradable[j] = bool(b.payload["tradable"])
        ex = b.payload.get("exits")
        if ex is not None:
            any_exits = True
            for k in EXIT_FIELDS:
                exits[j][k] = _flt(ex.get(k))
        p = preds.get(pair)
        if p is not None:
            pred[j]["p_up"] = _flt(p.payload["values"]["p_up"])
            pred[j]["exp_ret"] = _flt(p.payload["values"]["exp_return"])
    fp = f.payload
    args = (
        hour,
        bars,
        pred,
        tradable,
        bool(fp["entry_block"]),
        bool(fp["api_fault"]),
        int(fp["operator"]),
        exits if any_exits else None,
    )
    return args, list(fp.get("api_fault_reasons", []))


def decision_records(hour: int, res: Any, pairs: Sequence[str], tag: str = "close") -> list[rec.Record]:
    """The ``decision`` rows of one ``RiskMachine`` result (``on_bar`` or ``finish_bar``): each
    event, each order (side, quantity, limit as exact Decimals) and the STATE row of a complete
    close, tagged ``tag`` ("close", or "carry" for a close still waiting for fills). The cycle
    ledgers them; the replay (:mod:`live_bridge.replay`) compares its own against them."""
    from engine.risk.enums import EventCode

    pairs = tuple(pairs)
    out: list[rec.Record] = []
    for ev in res.events:
        j = int(ev["pair"])
        pair = pairs[j] if 0 <= j < len(pairs) else None
        code = EventCode(int(ev["code"])).name
        r = int(ev["reason"])
        why = Reason(r).name if r in set(Reason) else str(r)
        out.append(
            rec.decision(hour, f"{code}:{why}"[:64], pair, payload={"tag": tag, "value": _dec(float(ev["value"]))})
        )
    for o, j in zip(res.orders, res.order_pairs, strict=True):
        out.append(
            rec.decision(
                hour,
                f"ORDER:{Reason(int(o['reason'])).name}",
                pairs[int(j)],
                "buy" if int(o["side"]) > 0 else "sell",
                _dec(float(o["qty"])),
                _dec(float(o["limit_price"])) if np.isfinite(o["limit_price"]) else None,
                payload={"tag": tag, "fallback": int(o["fallback"]), "bar": int(o["bar"])},
            )
        )
    if res.equity is not None:
        e = res.equity[0]
        out.append(
            rec.decision(
                hour,
                f"STATE:{TradingState(int(e['trading_state'])).name}",
                payload={
                    "tag": tag,
                    "equity": _dec(float(e["equity"])),
                    "cash": _dec(float(e["cash"])),
                    "drawdown": _dec(float(e["drawdown"])),
                    "n_positions": int(e["n_positions"]),
                    "kill_reason": int(e["kill_reason"]),
                },
            )
        )
    return out


@dataclass
class HourReport:
    hour: int
    status: str  # completed | skipped (already completed earlier)
    resumed: bool = False  # the hour's inputs were already ledgered (a re-run after a crash)
    catch_up: bool = False
    orders: int = 0
    fills: int = 0
    reconcile: str = ""
    latch: str = ""  # reason the kill switch is asked for at the next bar ("" none)
    equity: float = float("nan")
    cash: float = float("nan")
    state: str = ""
    n_positions: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(self.hour * HOUR, UTC).strftime("%Y-%m-%d %H:00")
        if self.status == "skipped":
            return f"{when} UTC: already completed"
        s = (
            f"{when} UTC: {self.state} equity {self.equity:,.2f} cash {self.cash:,.2f} "
            f"positions {self.n_positions} orders {self.orders} fills {self.fills} reconcile {self.reconcile}"
        )
        if self.latch:
            s += f"; kill switch asked: {self.latch}"
        if self.notes:
            s += "; " + "; ".join(self.notes)
        return s


class Cycle:
    """Runs hours in order for one portfolio. Collaborators are injected (store, adapter, ledger,
    model); the daemon (:mod:`live_bridge.daemon`) builds them from the config and owns the clock.

    ``model`` is a :class:`live_bridge.models.ApprovedModel` (or any object with ``model``,
    ``manifest_sha256``, ``bundle.trade_horizon`` and ``predict(features, panel, at)``)."""

    def __init__(
        self,
        *,
        live: Any,
        cfg: Any,
        store: Any,
        adapter: KrakenAdapter,
        ledger: Ledger,
        model: Any,
        universe: Any = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        version: str | None = None,
    ) -> None:
        self.live, self.cfg, self.store, self.adapter, self.ledger, self.model = (
            live,
            cfg,
            store,
            adapter,
            ledger,
            model,
        )
        self.pairs: tuple[str, ...] = tuple(live.universe.pairs)
        self.quote = live.quote
        self.universe = universe
        self.clock = clock or adapter.clock
        self.sleep = sleep or adapter.sleep
        xc = exec_config(live, cfg)
        self.executor = Executor(ledger, adapter, xc, clock=self.clock, sleep=self.sleep)
        # catch-up entries already sent before a crash: resolved, never topped up at market hours late
        self.executor_stale = Executor(
            ledger, adapter, dataclasses.replace(xc, market_fallback=False), clock=self.clock, sleep=self.sleep
        )
        from engine.universe import load_universe

        if self.universe is None:
            self.universe = load_universe()
        self.universe_digest = hashlib.sha256(self.universe.model_dump_json().encode()).hexdigest()
        self.version = version or code_version()
        self.config_digest = live.digest()
        self.machine: Any = None
        self.init_cash: Decimal | None = None
        self.latch_next: list[str] = []  # reasons asked for the next bar
        self.extra_latch: list[str] = []  # asked outside a cycle (the daemon's start-up checks)
        self.fill_mark = 0  # ledger seq up to which every own fill is booked in the machine
        self.data_notes: list[str] = []  # the data step's problems this hour (reasons, for the operator)
        self.journal: list[list[Any]] = []  # machine calls after on_bar this hour: fill/unexpected/cancel
        # [strategy] regime_thresholds = "model": the bundle's fitted regime rule (ConfigError: none)
        self.regime_rule = model_regime_rule(cfg, model)

    # ---- the machine -----------------------------------------------------------------------------

    def _params(self, init_cash: Decimal, upto_hour: int | None = None) -> np.ndarray:
        """The live parameters under the ceiling in force after the close of ``upto_hour`` (all
        applied when None): the newest applied ``set_ceiling`` in the ledger, else the config's
        (:func:`live_bridge.ceiling.effective_ceiling`)."""
        from live_bridge.ceiling import effective_ceiling

        ceiling, _ = effective_ceiling(self.ledger, self.live.capital_ceiling, upto_hour)
        return live_params(self.cfg, init_cash, ceiling)

    def _instruments(self):
        from engine.risk.params import instrument_arrays

        om, cm, lot, px, qd = (np.array(a, copy=True) for a in instrument_arrays(self.pairs))
        for j, pair in enumerate(self.pairs):
            r = self.adapter.pairs.get(pair)
            if r is not None:
                ins = r.instrument
                om[j], cm[j] = float(ins.ordermin), float(ins.costmin)
                lot[j], px[j], qd[j] = ins.lot_decimals, ins.pair_decimals, ins.quote_decimals
        return om, cm, lot, px, qd

    def restore(self) -> int | None:
        """Rebuild the machine from the ledger's last ``after`` snapshot; returns its last hour
        (None: no snapshot yet, the machine starts at the first hour run)."""
        from engine.risk.machine import RiskMachine

        e = self.ledger.last_risk_snapshot("after")
        end = self._last_cycle_end()
        self.latch_next = list(end.payload.get("latch_next", [])) if end is not None else []
        self.latch_next += [x for x in self.extra_latch if x not in self.latch_next]
        if e is None:
            self.machine = None
            return None
        p = e.payload
        self.init_cash = Decimal(p["init_cash"])
        self.fill_mark = int(p["fill_mark"])
        if tuple(p.get("pairs", ())) != self.pairs:
            raise IntegrityError(
                f"the ledger's portfolio trades {', '.join(p.get('pairs', ()))}, this config {', '.join(self.pairs)}: "
                "use a new ledger for another universe"
            )
        if e.blob is None:
            raise IntegrityError(f"risk snapshot at seq {e.seq} has no bytes")
        m = RiskMachine.restore(e.blob, self._params(self.init_cash, e.hour), self.pairs, self._instruments())
        self.machine = m
        return m.last_hour

    def _last_cycle_end(self) -> Entry | None:
        rows = self.ledger.entries(kind=Kind.CYCLE_END)
        return rows[-1] if rows else None

    def _new_machine(self, hour: int):
        from engine.risk.machine import RiskMachine

        bal = self.adapter.balances()
        if not bal.done or bal.result is None:
            raise IntegrityError(f"cannot start the portfolio: balances unavailable ({bal.reason})")
        cash = bal.result.available(self.quote)
        if cash <= 0:
            raise InputError(f"cannot start the portfolio: no available {self.quote} on the account")
        self.init_cash = cash
        (e,) = self.ledger.append(
            rec.event("portfolio_start", hour, payload={"init_cash": cash, "quote": self.quote, "pairs": self.pairs})
        )
        self.fill_mark = int(e.seq)  # fills before the portfolio began are history
        self.machine = RiskMachine(self.pairs, self._params(cash, hour - 1), self._instruments())
        return self.machine

    # ---- one hour --------------------------------------------------------------------------------

    def completed(self, hour: int) -> bool:
        last = self.ledger.last_completed_hour()
        return last is not None and last >= hour

    def run_hour(self, hour: int, *, catch_up: bool = False) -> HourReport:
        """Run the cycle of bar ``hour`` (unix seconds // 3600). ``catch_up``: an hour that closed
        while the daemon was down: exits are executed, entries are not sent (stale)."""
        hour = int(hour)
        t0 = time.perf_counter()
        rep = HourReport(hour, "completed", catch_up=catch_up)
        if self.completed(hour):
            rep.status = "skipped"
            return rep
        last = self.restore()
        if last is not None and last != hour - 1:
            raise InputError(f"hour {hour}: the portfolio's last completed bar is hour {last}; run hours in order")
        recorded = self._recorded_inputs(hour)
        t = time.perf_counter()
        failures = self._resolve_open(hour, rep)
        if recorded is None:
            if self.machine is None:
                self._new_machine(hour)
            args, batch, api_failures = self._build(hour)
            rep.notes.extend(self.data_notes)
            self.ledger.append(*batch)
            self.extra_latch.clear()  # now in this hour's ledgered inputs
            rep.timings["data_features_model"] = time.perf_counter() - t
        else:
            if self.machine is None:
                self._new_machine_from_ledger(hour)
            args, reasons = recorded
            rep.resumed = True
            api_failures = 0
            before = [e for e in self.ledger.entries(hour, Kind.RISK_SNAPSHOT) if e.code == "before"]
            if before and before[-1].blob is not None:
                from engine.risk.machine import RiskMachine

                # compared under the current pair rules (Kraken's, reloaded on every restore)
                ref = RiskMachine.restore(
                    before[-1].blob,
                    self._params(self.init_cash or Decimal(0), hour - 1),
                    self.pairs,
                    self._instruments(),
                )
                if ref.snapshot() != self.machine.snapshot():
                    raise IntegrityError(
                        f"hour {hour}: the restored risk state differs from the one ledgered before it"
                    )
            # kill-switch requests made after these inputs were committed (a halt, start-up checks)
            late = [x for x in self.latch_next if x not in reasons]
            if late:
                rep.latch = late[0]
        t = time.perf_counter()
        m = self.machine
        from live_bridge.ceiling import apply_ledgered

        # an operator's set_ceiling applied at this close (ledgered in its input batch)
        apply_ledgered(m, self.ledger.entries(hour=hour, kind=Kind.OPERATOR_APPLIED), hour)
        res = m.on_bar(*args)
        applied: dict[str, list[str]] = {}
        self.journal = []
        if not res.complete:  # orders of an earlier close still pending (a snapshot from before settling)
            self._ledger_decisions(hour, res, tag="carry")
            failures += self._execute(hour, res, applied, rep, catch_up=catch_up)
            res = m.finish_bar()
            self.journal.append(["finish_bar"])
        self._ledger_decisions(hour, res)
        rep.timings["risk"] = time.perf_counter() - t
        t = time.perf_counter()
        failures += self._execute(hour, res, applied, rep, catch_up=catch_up)
        rep.timings["execution"] = time.perf_counter() - t
        t = time.perf_counter()
        failures += self._reconcile(hour, applied, rep)
        self._sweep(applied, rep)
        rep.timings["reconcile"] = time.perf_counter() - t
        total = api_failures + failures
        if total >= self.live.cycle.max_api_failures:
            rep.latch = rep.latch or f"{total} failed or unanswered API calls in the cycle"
        t = time.perf_counter()
        self._finish(hour, applied, rep)
        rep.timings["ledger"] = time.perf_counter() - t
        rep.timings["total"] = time.perf_counter() - t0
        return rep

    def _new_machine_from_ledger(self, hour: int) -> None:
        """Inputs ledgered but no snapshot after: the first hour crashed after its input batch; the
        portfolio's start is in the ledger (``portfolio_start``)."""
        from engine.risk.machine import RiskMachine

        starts = [e for e in self.ledger.entries(kind=Kind.EVENT) if e.code == "portfolio_start"]
        if not starts:
            raise IntegrityError(f"hour {hour}: inputs ledgered but no portfolio_start event")
        self.init_cash = Decimal(starts[-1].payload["init_cash"])
        self.fill_mark = int(starts[-1].seq)
        self.machine = RiskMachine(self.pairs, self._params(self.init_cash, hour - 1), self._instruments())

    # ---- inputs ----------------------------------------------------------------------------------

    def _recorded_inputs(self, hour: int):
        """The ledgered ``on_bar`` arguments of ``hour`` (a re-run after a crash), or None."""
        return recorded_inputs(self.ledger, hour, self.pairs)

    def _panel(self, hour: int):
        """The stored ``kraken`` bars of the last ``history_bars`` hours ending at ``hour``, every
        pair on one hourly grid (a pair with nothing stored is all missing)."""
        from engine.store.panel import Panel

        n = int(self.live.cycle.history_bars)
        lo, hi = (hour - n + 1) * HOUR, hour * HOUR
        stored = {i.pair for i in self.store.list_pairs("kraken")}
        have = [p for p in self.pairs if p in stored]
        m = len(self.pairs)
        ts = np.arange(lo, hi + HOUR, HOUR, dtype=np.int64)
        cols = {k: np.full((n, m), np.nan) for k in ("open", "high", "low", "close", "volume", "trades", "vwap")}
        valid = np.zeros((n, m), dtype=bool)
        if have:
            p = self.store.load_panel(have, "kraken", start=lo, end=hi)
            for jj, pair in enumerate(p.pairs):
                j = self.pairs.index(pair)
                for k in cols:
                    cols[k][:, j] = getattr(p, k)[:, jj]
                valid[:, j] = p.valid[:, jj]
        return Panel("kraken", self.pairs, ts, valid=valid, **cols)

    def _build(self, hour: int):
        """Data step, features, model, risk inputs; returns (on_bar args, ledger batch, API failures)."""
        from engine.backtest.runner import default_spread, make_inputs
        from engine.features.featureset import build_features
        from engine.risk.machine import bar_inputs
        from engine.universe import universe_mask
        from live_bridge.data import Behind, DataGap, FetchFailed, StoreRefused, update_bars, warmup_status

        now_ts = (hour + 1) * HOUR
        notes: list[rec.Record] = []
        step = update_bars(self.store, self.adapter, self.pairs, now_ts)
        api_failures = int(step.api_failures)
        for _ in range(int(self.live.cycle.behind_retries)):
            behind = [p for p, r in step.results.items() if isinstance(r, Behind)]
            if not behind:
                break
            self.sleep(float(self.live.cycle.behind_wait_s))
            again = update_bars(self.store, self.adapter, behind, now_ts)
            step.results.update(again.results)
            api_failures += int(again.api_failures)
        self.data_notes = []
        for pair, r in step.results.items():
            if isinstance(r, (DataGap, FetchFailed, StoreRefused, Behind)):
                self.data_notes.append(r.reason)  # its bar is missing this hour (R18 may latch)
                notes.append(
                    rec.event(
                        f"data_{type(r).__name__.lower()}", hour, pair, payload={"detail": str(r), "reason": r.reason}
                    )
                )
        panel = self._panel(hour)
        warm = warmup_status(self.store, self.pairs, now_ts, need=int(self.cfg.features.warmup_bars))
        ready = np.array([warm[p].ready for p in self.pairs], dtype=bool)
        ucfg = self.universe
        umask = universe_mask(panel, ucfg)
        feats = build_features(panel, self.cfg.features, umask)
        self.last_features = (hour, panel, feats)  # the shadow model reads the same panel (live_bridge/shadow.py)
        n, m = panel.close.shape
        p_up = np.full((n, m), np.nan)
        er = np.full((n, m), np.nan)
        th = int(self.model.bundle.trade_horizon)
        model_error = ""
        try:
            preds = self.model.predict(feats, panel, at=hour * HOUR)
            preds = preds[preds["horizon"] == th]
            for pair, pu, e in zip(preds["pair"], preds["p_up"], preds["exp_return"], strict=True):
                j = self.pairs.index(str(pair))
                p_up[-1, j], er[-1, j] = float(pu), float(e)
        except Exception as e:  # no prediction: no entry and no signal exit; stops still run
            p_up[-1], er[-1] = np.nan, np.nan
            model_error = f"model prediction failed: {type(e).__name__}: {str(e)[:200]}"
            log.error("hour %d: %s", hour, model_error)
            notes.append(rec.event("model_failed", hour, payload={"reason": model_error}))
        api = np.zeros(n, dtype=np.bool_)
        api[-1] = bool(self.latch_next) or bool(model_error) or api_failures >= int(self.live.cycle.max_api_failures)
        op_bits, op_rows = self._operator(hour)
        ops = np.zeros(n, dtype=np.int64)
        ops[-1] = op_bits
        tradable = umask & ready[None, :]
        # the spread input: the backtester's OHLC estimate, or Kraken's quoted spread at the close
        # when that is wider (a blow-out in the book reaches the spread kill switch, R19)
        spread = np.array(
            default_spread(panel.high, panel.low, panel.close, panel.valid, self.cfg.backtest.spread_window), copy=True
        )
        quoted, ticker_failed = self._quoted_spreads() if self.live.cycle.quoted_spread else ({}, 0)
        api_failures += ticker_failed
        for j, pair in enumerate(self.pairs):
            q = quoted.get(pair)
            if q is not None and (not np.isfinite(spread[-1, j]) or q > spread[-1, j]):
                spread[-1, j] = q
        # regime_thresholds = "model": the approved bundle's fitted rule (parity's backtest side calls the same)
        raw = strategy_raw_regime(self.cfg, self.model, panel)
        inp = make_inputs(
            panel, p_up, er, self.cfg, spread=spread, tradable=tradable, api_fault=api, operator=ops, raw_regime=raw
        )
        need = (
            self.cfg.strategy.lookback_bars
            if self.regime_rule is None
            else self.cfg.strategy.lookback_for(self.regime_rule.trend_bars, self.regime_rule.vol_bars)
        )
        if inp.strategy is not None and n < need:
            raise InputError(f"history_bars {n} < the {need} bars [strategy] needs")
        args = bar_inputs(inp, -1)
        if args[0] != hour:
            raise IntegrityError(f"inputs built for hour {args[0]}, expected {hour}")
        _, bars, pred, trd, blk, api_fault, op, exits = args
        fv = feats.values[-1]
        fhash = hashlib.sha256(
            "|".join(feats.names).encode() + np.ascontiguousarray(fv).tobytes() + feats.valid[-1].tobytes()
        ).hexdigest()
        batch: list[rec.Record] = [
            rec.cycle_start(
                hour,
                self.version,
                self.config_digest,
                payload={"pairs": self.pairs, "history_bars": int(n), "universe_sha256": self.universe_digest},
            ),
            *notes,
        ]
        for j, pair in enumerate(self.pairs):
            row: dict[str, Any] = {k: _dec(bars[j][k]) for k in BAR_FIELDS}
            row.update(ts=hour * HOUR, valid=bool(bars[j]["valid"]), cluster=int(bars[j]["cluster"]))
            wh = hashlib.sha256()
            for k in ("open", "high", "low", "close", "volume"):
                wh.update(np.ascontiguousarray(getattr(panel, k)[:, j]).tobytes())
            wh.update(panel.valid[:, j].tobytes())
            batch.append(
                rec.bars(
                    hour,
                    pair,
                    [row],
                    payload={
                        "tradable": bool(trd[j]),
                        "warm": bool(ready[j]),
                        "window_start": int(panel.ts[0]),
                        "window_bars": int(n),
                        "window_sha256": wh.hexdigest(),
                        "quoted_spread": _dec(quoted[pair]) if pair in quoted else None,
                        **({} if exits is None else {"exits": {k: _dec(exits[j][k]) for k in EXIT_FIELDS}}),
                    },
                )
            )
        batch.append(rec.features(hour, fhash, payload={"n_features": len(feats.names)}))
        batch.append(
            rec.model(hour, str(self.model.model), str(self.model.manifest_sha256), payload={"trade_horizon": th})
        )
        for j, pair in enumerate(self.pairs):
            if np.isfinite(pred[j]["p_up"]) and np.isfinite(pred[j]["exp_ret"]):
                batch.append(
                    rec.prediction(
                        hour,
                        pair,
                        {
                            "p_up": exact_decimal(float(pred[j]["p_up"])),
                            "exp_return": exact_decimal(float(pred[j]["exp_ret"])),
                        },
                        model_id=str(self.model.model),
                    )
                )
        if inp.strategy is not None:  # [strategy] enabled: the selector's choice, reason code naming the profile
            from engine.strategy import reason_code, selection_records

            for r in selection_records(inp.strategy, float(self.cfg.risk.p_up_entry), rows=[n - 1]):
                batch.append(
                    rec.event(
                        reason_code(int(r["profile"]), bool(r["candidate"])),
                        hour,
                        self.pairs[int(r["pair"])],
                        payload={
                            "regime": int(r["regime"]),
                            "profile": int(r["profile"]),
                            "candidate": bool(r["candidate"]),
                            "p_up": exact_decimal(float(r["p_up"])),
                        },
                    )
                )
        batch.append(rec.risk_snapshot(hour, "before", self.machine.snapshot()))
        batch.extend(op_rows)
        reasons = list(self.latch_next)
        if api_failures >= int(self.live.cycle.max_api_failures):
            reasons.append(f"{api_failures} failed API calls in the data step")
        if model_error:
            reasons.append(model_error)
        batch.append(
            rec.event(
                "risk_inputs",
                hour,
                payload={
                    "entry_block": bool(blk),
                    "api_fault": bool(api_fault),
                    "operator": int(op),
                    "api_fault_reasons": reasons,
                    "api_failures": api_failures,
                },
            )
        )
        return args, batch, api_failures

    def _quoted_spreads(self) -> tuple[dict[str, float], int]:
        """Kraken's quoted spread (ask - bid) / mid per pair from one Ticker call; ({}, 1) when the
        call fails (an API failure of the cycle)."""
        from engine.pairs import instrument

        def parse(r: Any) -> dict[str, float]:
            out = {}
            for name, t in dict(r).items():
                try:
                    pair = self.adapter.pair_of(str(name))
                    ask, bid = float(t["a"][0]), float(t["b"][0])
                except Exception:
                    continue
                mid = (ask + bid) / 2.0
                if pair in self.pairs and np.isfinite(mid) and mid > 0 and ask >= bid > 0:
                    out[pair] = (ask - bid) / mid
            return out

        res = self.adapter.public_query("Ticker", {"pair": ",".join(instrument(p).altname for p in self.pairs)}, parse)
        if not res.done or res.result is None:
            return {}, 1
        return dict(res.result), 0

    def _operator(self, hour: int) -> tuple[int, list[rec.Record]]:
        """Operator actions ledgered since the last close: the bits of this bar's operator input
        (reactivate, reset_halt, pause, resume, flatten) and their ``operator_applied`` rows (part
        of the input batch); a ``set_ceiling``'s row carries the new capital ceiling, set on the
        machine before ``on_bar`` (:meth:`_set_ceiling`)."""
        bits, rows = 0, []
        ceiling = None  # the operator-level ceiling as the set_ceiling rows of this close leave it
        for a in self.ledger.pending_operator_actions():
            code = str(a.code)
            if code in OP_BITS:
                bits |= OP_BITS[code]
                rows.append(rec.operator_applied(hour, int(a.seq)))
            elif code == "set_ceiling":
                ceiling, row = self._set_ceiling(hour, a, ceiling)
                rows.append(row)
            else:
                rows.append(
                    rec.operator_applied(
                        hour, int(a.seq), "refused", payload={"why": f"{code} is not supported by this daemon yet"}
                    )
                )
        return bits, rows

    def _set_ceiling(self, hour: int, a: Entry, prev: Any) -> tuple[Any, rec.Record]:
        """The ``operator_applied`` row of a ``set_ceiling`` (payload old, new and the risk
        parameter it sets, applied to the machine before ``on_bar`` by
        :func:`live_bridge.ceiling.apply_ledgered`), or a refusal of a malformed one."""
        from live_bridge.ceiling import ceiling_text, effective_ceiling, param_text, parse_ceiling

        try:
            new = parse_ceiling((a.payload.get("params") or {}).get("ceiling"), "set_ceiling")
        except InputError as err:
            return prev, rec.operator_applied(hour, int(a.seq), "refused", payload={"why": str(err)[:300]})
        old = effective_ceiling(self.ledger, self.live.capital_ceiling)[0] if prev is None else prev[0]
        p = float(live_params(self.cfg, self.init_cash or Decimal(1), new)[0]["capital_ceiling"])
        if not p > 0:  # parse_ceiling refuses such amounts; never let one stop the close
            why = f"set_ceiling: capital ceiling {p!r} is not a positive amount"
            return prev, rec.operator_applied(hour, int(a.seq), "refused", payload={"why": why})
        payload = {"old": ceiling_text(old), "new": ceiling_text(new), "param": param_text(p)}
        return (new,), rec.operator_applied(hour, int(a.seq), payload=payload)

    # ---- decisions and execution -----------------------------------------------------------------

    def _ledger_decisions(self, hour: int, res: Any, tag: str = "close") -> None:
        done = {(e.code, e.pair, e.payload.get("tag")) for e in self.ledger.entries(hour, Kind.DECISION)}
        if any(d[2] == tag for d in done):
            return  # a re-run: the same inputs gave these decisions already
        out = decision_records(hour, res, self.pairs, tag)
        if out:
            self.ledger.append(*out)

    def _fills_of(self, cids: Sequence[str]) -> list[Entry]:
        out: list[Entry] = []
        for cid in cids:
            out.extend(e for e in self.ledger.order_entries(cid) if e.kind == Kind.FILL and e.seq > self.fill_mark)
        return sorted(out, key=lambda e: e.seq)

    def _resolve_open(self, hour: int, rep: HourReport) -> int:
        """Intents of earlier attempts or hours without a final outcome (a crash, an unanswered
        lookup) are looked up first and settled (:func:`live_bridge.execution.resume`: sends
        nothing but cancels); their fills land in the ledger and reach the machine through the
        sweep. Returns the number still unresolved (API failures)."""
        if not self.ledger.open_intents():
            return 0
        from live_bridge.execution import resume

        rr = resume(
            self.ledger, self.adapter, self.executor.config, current_hour=hour, clock=self.clock, sleep=self.sleep
        )
        if rr.unresolved:
            rep.latch = rep.latch or f"{len(rr.unresolved)} earlier order(s) whose fate is still unknown"
        return len(rr.unresolved)

    def _execute(self, hour: int, res: Any, applied: dict[str, list[str]], rep: HourReport, *, catch_up: bool) -> int:
        """Execute the close's orders, book their fills as ledgered, settle the machine's book.
        Returns the number of orders whose fate is unknown."""
        from live_bridge.execution import cl_ord_id_for

        m = self.machine
        unknown = 0
        # exits first: a stop must not wait behind an entry's resting limit
        order = sorted(range(len(res.orders)), key=lambda i: int(res.orders[i]["side"]))
        for i in order:
            o, j = res.orders[i], res.order_pairs[i]
            pair = self.pairs[int(j)]
            intent = OrderIntent.from_pending(o, pair, int(o["bar"]))
            cid = intent.cl_ord_id
            # the market leg of a limit_first intent: a re-issued order comes back as "market" with
            # the original's id, so the fallback id is derived whatever the kind says
            fb = cl_ord_id_for(intent.hour, pair, intent.side, intent.reason, intent.n, leg="fallback")
            rep.orders += 1
            if catch_up and intent.side == "buy" and not self._requested(cid):
                m.on_cancel(pair)
                self.journal.append(["cancel", pair])
                self.ledger.append(
                    rec.decision(
                        hour, "NOT_SENT:STALE_ENTRY", pair, "buy", payload={"tag": "catch_up", "cl_ord_id": cid}
                    )
                )
                continue
            ex = self.executor_stale if catch_up and intent.side == "buy" else self.executor
            r = ex.execute(intent)
            for e in self._fills_of([cid, fb]):
                tid = str(e.trade_id)
                if tid in applied.setdefault("_all", []):
                    continue
                self._book(pair, e, self._how(e, fb))
                applied["_all"].append(tid)
                applied.setdefault(cid, []).append(tid)
                rep.fills += 1
            if r.unresolved:
                unknown += 1
                rep.latch = rep.latch or f"order {cid} ({pair} {intent.side}) could not be looked up: {r.reason}"
            if m.pending[int(j)]["active"]:
                # settled: filled as far as it went, cancelled, refused or of unknown fate. An order of
                # unknown fate stays an open intent: it is looked up every hour and any fill it gets
                # is booked as unexpected (with the kill switch asked for above)
                m.on_cancel(pair)
                self.journal.append(["cancel", pair])
        return unknown

    def _requested(self, cid: str) -> bool:
        return any(e.kind == Kind.ORDER_REQUEST for e in self.ledger.order_entries(cid))

    @staticmethod
    def _how(e: Entry, fallback_id: str) -> FillHow:
        if e.cl_ord_id == fallback_id:
            return FillHow.MARKET_CLOSE
        return FillHow.LIMIT if e.payload.get("ordertype") == "limit" else FillHow.MARKET_OPEN

    def _book(self, pair: str, e: Entry, how: FillHow) -> None:
        m = self.machine
        args = (pair, str(e.side), float(e.qty or 0), float(e.price or 0), float(e.fee or 0), int(how))
        j = self.pairs.index(pair)
        if m.pending[j]["active"] and int(m.pending[j]["side"]) == (1 if e.side == "buy" else -1):
            try:
                m.on_fill(*args)
                self.journal.append(["fill", str(e.trade_id), int(how)])
                return
            except InputError as err:
                log.warning("fill %s of %s is not what was ordered (%s): booked as unexpected", e.trade_id, pair, err)
        m.on_unexpected_fill(*args)
        self.journal.append(["unexpected", str(e.trade_id), int(how)])

    # ---- reconciliation and the end of the hour --------------------------------------------------

    def _reconcile(self, hour: int, applied: dict[str, list[str]], rep: HourReport) -> int:
        """Reconciliation; its recovered fills are ledgered as ours and booked by the sweep.
        Returns 1 when it could not compare (an API failure)."""
        from live_bridge.reconcile import reconcile

        rr = reconcile(self.ledger, self.adapter, hour=hour)
        rep.reconcile = rr.status
        if rr.latch:
            rep.latch = rep.latch or rr.reason
        elif rr.status == "incomplete":
            rep.notes.append(f"reconciliation incomplete: {rr.reason}")
            return 1
        return 0

    def _sweep(self, applied: dict[str, list[str]], rep: HourReport) -> None:
        """Book every own fill ledgered since the mark that this hour has not booked yet (found by
        resume or by reconciliation, or landing after its order was settled): as a fill of the
        pending order when it matches one, else as unexpected (which latches the kill switch)."""
        done = set(applied.get("_all", ()))
        for e in self.ledger.fills_since(self.fill_mark):
            if e.code != "own" or str(e.trade_id) in done or e.pair not in self.pairs:
                continue
            self._book(str(e.pair), e, FillHow.MARKET_OPEN if e.payload.get("ordertype") != "limit" else FillHow.LIMIT)
            applied.setdefault("_all", []).append(str(e.trade_id))
            applied.setdefault(str(e.cl_ord_id), []).append(str(e.trade_id))
            rep.fills += 1
            rep.notes.append(f"fill {e.trade_id} of {e.pair} booked outside its order's hour")

    def _finish(self, hour: int, applied: dict[str, list[str]], rep: HourReport) -> None:
        m = self.machine
        st = m.state[0]
        rep.equity, rep.cash = float(st["equity"]), float(st["cash"])
        rep.state = TradingState(int(st["trading_state"])).name
        rep.n_positions = int(st["n_positions"])
        latch = [rep.latch] if rep.latch else []
        mark = max([self.fill_mark] + [int(e.seq) for e in self.ledger.fills_since(self.fill_mark)])
        self.ledger.append(
            rec.risk_snapshot(
                hour,
                "after",
                m.snapshot(),
                payload={
                    "init_cash": self.init_cash,
                    "pairs": self.pairs,
                    "fill_mark": mark,
                    "applied": {k: sorted(v) for k, v in applied.items() if k != "_all"},
                    # every call made on the machine after on_bar, in order (replay applies it)
                    "journal": self.journal,
                },
            ),
            rec.cycle_end(
                hour,
                "completed",
                payload={
                    "latch_next": latch,
                    "equity": _dec(rep.equity),
                    "cash": _dec(rep.cash),
                    "state": rep.state,
                    "orders": rep.orders,
                    "fills": rep.fills,
                    "reconcile": rep.reconcile,
                    "resumed": rep.resumed,
                    "catch_up": rep.catch_up,
                },
            ),
        )
        self.fill_mark = mark
        self.latch_next = latch

    def fail(self, hour: int, reason: str, latch: bool = True) -> None:
        """Ledger a cycle that could not complete (a Kraken halt, a refused store ...): the next bar
        gets the kill-switch input when ``latch``."""
        self.ledger.append(
            rec.event("cycle_failed", hour, payload={"reason": reason[:500]}),
            rec.cycle_end(hour, "failed", payload={"latch_next": [reason[:500]] if latch else []}),
        )
