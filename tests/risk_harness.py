"""One bar-by-bar driver of the risk step for scenario tests (tests/test_risk_scenarios.py on real
bars, tests/test_risk_sizing.py on constructed bars): a subclass sets the price, signal and input
arrays and the params, then calls :meth:`StepHarness.init_books`; :meth:`step` runs ``step_nb``."""

from __future__ import annotations

import numpy as np

from engine.risk.enums import BX_N, EventCode, Reason, event_dt, trade_dt
from engine.risk.nb import C_RECORD, N_ACC, N_CNT, new_state, step_nb
from engine.risk.params import instrument_arrays


class StepHarness:
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    valid: np.ndarray
    atr: np.ndarray
    spread: np.ndarray
    p_up: np.ndarray
    exp_ret: np.ndarray
    cluster: np.ndarray
    params: np.ndarray

    def init_books(self, pairs) -> None:
        """Universe, window, fault and operator inputs (all neutral), the instrument rules of ``pairs``,
        a fresh portfolio and record buffers sized for every bar."""
        n, m = self.c.shape
        self.tradable = np.ones((n, m), dtype=np.bool_)
        self.entry_block = np.zeros(n, dtype=np.bool_)
        self.api = np.zeros(n, dtype=np.bool_)
        self.op = np.zeros(n, dtype=np.int64)
        self.rules = instrument_arrays(pairs)
        self.state, self.pos, self.pend = new_state(m, self.params[0]["init_cash"])
        self.trades = np.zeros(n * m, dtype=trade_dt)
        self.events = np.zeros(n * (2 * m + 6), dtype=event_dt)
        self.cnt = np.zeros(N_CNT, dtype=np.int64)
        self.cnt[C_RECORD] = 1
        self.acc = np.zeros(N_ACC)
        self.refusals = np.zeros(64, dtype=np.int64)
        self.marks = np.empty(m)
        self.order_buf = np.empty(m, dtype=np.int64)
        self.bx = np.zeros((0, m, BX_N))  # no per-bar exit parameters ([strategy] off)
        self.t = 0

    def step(self, upto: int) -> None:
        while self.t < upto:
            step_nb(
                self.t,
                self.state,
                self.pos,
                self.pend,
                self.o,
                self.h,
                self.l,
                self.c,
                self.v,
                self.valid,
                self.p_up,
                self.exp_ret,
                self.bx,
                self.atr,
                self.spread,
                self.cluster,
                self.tradable,
                self.entry_block,
                self.api,
                self.op,
                *self.rules,
                self.params[0],
                self.trades,
                self.events,
                self.cnt,
                self.acc,
                self.refusals,
                self.marks,
                self.order_buf,
            )
            self.t += 1

    def events_at(self, t):
        ev = self.events[: self.cnt[1]]
        return [(int(e["pair"]), EventCode(int(e["code"])), Reason(int(e["reason"]))) for e in ev if e["bar"] == t]

    @property
    def st(self):
        return self.state[0]

    def set_drawdown(self, dd: float) -> None:
        """Poke the peak so the next mark sees drawdown ``dd`` (equity unchanged: flat book)."""
        self.st["peak"] = self.st["equity"] / (1.0 - dd)
