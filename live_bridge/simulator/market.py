"""Replayed market: bars from a :class:`~engine.store.panel.Panel` seen through a simulated clock.

Time rules (no lookahead):

* The *forming* bar at simulated time ``now`` is the bar with ``ts <= now < ts + 3600``. Only its
  **open** is known; OHLC shows it as ``o = h = l = c = open`` with zero volume.
* A bar is *closed* (and shown in full by OHLC, usable for limit fills) once ``now >= ts + 3600``
  (later under the ``late_candle`` fault).
* Ticker and Depth are built around a mid = the forming bar's open (else the last closed close),
  with a spread = the OHLC spread estimate of the last closed bar (a documented fixed spread until
  ``engine.features.spread`` exists or where it has no value), times any ``spread_blowup`` factor.

Market faults (price gaps, missing candles, late candles, spread blow-ups) are applied here.
"""

from __future__ import annotations

import math
import time
from decimal import ROUND_DOWN, ROUND_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow

import numpy as np

from engine.errors import InputError
from engine.pairs import Instrument, instrument, normalize_pair
from engine.store.panel import HOUR, Panel

from .numbers import MAX_TIME

MAX_SPEED = 1e6  # simulated seconds per wall second


class SimClock:
    """Simulated time. ``manual``: moves only when advanced; ``realtime``/``accelerated``: follows the
    wall clock (times ``speed``) from an anchor, and can also be advanced by hand."""

    MODES = ("manual", "realtime", "accelerated")

    def __init__(self, start: float, mode: str = "manual", speed: float = 60.0, paused: bool = False) -> None:
        if mode not in self.MODES:
            raise InputError(f"clock must be one of {', '.join(self.MODES)}, not {mode!r}")
        if not 0 < speed <= MAX_SPEED:  # NaN fails too
            raise InputError(f"clock speed must be > 0 and <= {MAX_SPEED:g}, not {speed}")
        if not 0 <= start <= MAX_TIME:
            raise InputError(f"clock start must be a finite time before 2100, not {start}")
        self.mode = mode
        self.speed = 1.0 if mode == "realtime" else float(speed)
        self.paused = paused
        self._anchor_sim = float(start)
        self._anchor_wall = time.monotonic()

    def now(self) -> float:
        if self.mode == "manual" or self.paused:
            return self._anchor_sim
        return self._anchor_sim + (time.monotonic() - self._anchor_wall) * self.speed

    def resume(self) -> None:
        """Start a paused realtime/accelerated clock from where it stands (when serving begins)."""
        if self.paused:
            self.paused = False
            self._anchor_wall = time.monotonic()

    def set(self, t: float) -> None:
        t = float(t)
        if not math.isfinite(t) or t > MAX_TIME:  # NaN compares false with everything: test it first
            raise InputError(f"the simulated clock takes finite times before 2100, not {t}")
        if t < self.now():
            raise InputError("the simulated clock never goes back")
        self._anchor_sim = float(t)
        self._anchor_wall = time.monotonic()

    def advance(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise InputError("the simulated clock never goes back")
        self.set(self.now() + seconds)


def _dec(x: float, places: int, rounding=None) -> Decimal:
    q = Decimal(1).scaleb(-places)
    d = Decimal(repr(float(x)))
    return d.quantize(q, rounding=rounding) if rounding else d.quantize(q)


def fmt(d: Decimal | float, places: int) -> str:
    """A decimal string with exactly ``places`` decimals (Kraken's number format)."""
    if not isinstance(d, Decimal):
        d = Decimal(repr(float(d)))
    return f"{d.quantize(Decimal(1).scaleb(-places), context=_WIDE):f}"


_WIDE = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])  # no overflow at 10 decimals


def spread_array(panel: Panel, *, use_estimator: bool, window: int) -> tuple[np.ndarray, str]:
    """(n, m) spread fractions from the features' OHLC estimator, or NaN (fixed default applies)."""
    if use_estimator:
        try:
            from engine.features.spread import spread_estimate  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            s = np.asarray(spread_estimate(panel, window=window, method="corwin_schultz"), dtype=np.float64)
            if s.shape != (panel.n_bars, panel.n_pairs):
                raise InputError(f"spread_estimate returned shape {s.shape}, expected {(panel.n_bars, panel.n_pairs)}")
            return s, "corwin_schultz"
    return np.full((panel.n_bars, panel.n_pairs), np.nan), "fixed"


def atr_frac(panel: Panel, window: int) -> np.ndarray:
    """Wilder ATR / close per (bar, pair), causal: the backtester's impact volatility."""
    from engine.features.nb import wilder_atr_nb

    atr = wilder_atr_nb(
        np.ascontiguousarray(panel.high),
        np.ascontiguousarray(panel.low),
        np.ascontiguousarray(panel.close),
        int(window),
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return atr / panel.close


class Market:
    """Bars of a panel, the spread and volatility arrays, and the market faults in force."""

    def __init__(
        self,
        panel: Panel,
        *,
        default_spread: float = 0.001,
        use_estimator: bool = True,
        spread_window: int = 24,
        atr_window: int = 14,
        impact_volume: str = "execution_bar",
    ) -> None:
        if panel.n_bars == 0:
            raise InputError("the simulator needs at least one bar")
        self.panel = panel
        self.instruments: dict[str, Instrument] = {}
        for p in panel.pairs:
            self.instruments[p] = instrument(p)
        self.by_alias: dict[str, str] = {}
        for p, inst in self.instruments.items():
            for alias in (p, inst.kraken_id, inst.altname, inst.wsname):
                self.by_alias[alias.upper()] = p
        self.default_spread = float(default_spread)
        self.spread, self.spread_source = spread_array(panel, use_estimator=use_estimator, window=spread_window)
        self.vol = atr_frac(panel, atr_window)
        self.impact_volume = impact_volume
        self.t0 = int(panel.ts[0])
        # market faults, set by the fault plan: (pair or None, from_ts, factor)
        self.gaps: list[tuple[str | None, float, float]] = []
        self.missing: set[tuple[str, int]] = set()
        self.spread_blowups: list[tuple[str | None, float, float, float]] = []  # pair, from, until, factor
        self.late: list[tuple[float, float, float]] = []  # from, until, delay seconds
        self.empty_book: list[tuple[str | None, float, float]] = []
        self.stale: list[tuple[str | None, float, float]] = []  # ticker frozen at `from`
        self.skew: list[tuple[float, float, float]] = []  # Time endpoint off by seconds
        self.delisted: set[str] = set()
        self.base_instruments: dict[str, Instrument] = dict(self.instruments)

    # ---- names -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """Canonical pair for any Kraken or common spelling, or None if the simulator does not list it."""
        if not name:
            return None
        p = self.by_alias.get(name.strip().upper())
        if p is None:
            try:
                p = normalize_pair(name)
            except InputError:
                return None
        return p if p in self.instruments and p not in self.delisted else None

    def listed(self) -> list[str]:
        return [p for p in self.instruments if p not in self.delisted]

    @staticmethod
    def _active(items, pair: str | None, now: float) -> tuple | None:
        for it in items:
            if (it[0] is None or it[0] == pair) and it[1] <= now < it[2]:
                return it
        return None

    def time_skew(self, now: float) -> float:
        return sum(d for (a, b, d) in self.skew if a <= now < b)

    # ---- time ---------------------------------------------------------------------------------
    def forming_index(self, now: float) -> int:
        """Row of the bar forming at ``now`` (may be < 0 before the data or >= n after it)."""
        return math.floor((now - self.t0) / HOUR)

    def committed_end(self, now: float) -> float:
        """Bars with ts + 3600 <= this are committed (closed and published)."""
        delay = max((d for (a, b, d) in self.late if a <= now < b), default=0.0)
        return now - delay

    def closed_count(self, now: float) -> int:
        """Number of rows closed (published) at ``now``: rows 0..k-1."""
        k = math.floor((self.committed_end(now) - self.t0) / HOUR)  # rows with ts+3600 <= end
        return max(0, min(k, self.panel.n_bars))

    # ---- bars ---------------------------------------------------------------------------------
    def _factor(self, pair: str, ts: float) -> float:
        f = 1.0
        for p, start, k in self.gaps:
            if (p is None or p == pair) and ts >= start:
                f *= k
        return f

    def valid(self, i: int, j: int) -> bool:
        pair = self.panel.pairs[j]
        return (
            0 <= i < self.panel.n_bars
            and bool(self.panel.valid[i, j])
            and (pair, int(self.panel.ts[i])) not in self.missing
        )

    def bar(self, i: int, j: int) -> tuple[float, float, float, float, float, float, float] | None:
        """(open, high, low, close, volume, vwap, trades) of row i, with faults applied; None if absent."""
        if not self.valid(i, j):
            return None
        P = self.panel
        f = self._factor(P.pairs[j], float(P.ts[i]))
        o, h, lo, c = (
            float(P.open[i, j]) * f,
            float(P.high[i, j]) * f,
            float(P.low[i, j]) * f,
            float(P.close[i, j]) * f,
        )
        vw = float(P.vwap[i, j])
        vw = vw * f if vw == vw else (h + lo + c) / 3.0
        tr = float(P.trades[i, j])
        return o, h, lo, c, float(P.volume[i, j]), vw, (tr if tr == tr else 0.0)

    def last_close(self, j: int, before: int) -> float | None:
        for i in range(min(before, self.panel.n_bars) - 1, -1, -1):
            b = self.bar(i, j)
            if b is not None:
                return b[3]
        return None

    def mid(self, pair: str, now: float) -> float | None:
        """The price known at ``now``: the forming bar's open, else the last committed close."""
        j = self.panel.column(pair)
        k = self.forming_index(now)
        if 0 <= k < self.panel.n_bars:
            b = self.bar(k, j)
            if b is not None:
                return b[0]
        return self.last_close(j, self.closed_count(now))

    def spread_frac(self, pair: str, now: float) -> float:
        j = self.panel.column(pair)
        i = self.closed_count(now) - 1
        s = float(self.spread[i, j]) if i >= 0 else float("nan")
        if not (s == s and s > 0):
            s = self.default_spread
        for p, a, b, k in self.spread_blowups:
            if (p is None or p == pair) and a <= now < b:
                s *= k
        return s

    def vol_frac(self, pair: str, now: float) -> float:
        j = self.panel.column(pair)
        i = self.closed_count(now) - 1
        return float(self.vol[i, j]) if i >= 0 else float("nan")

    def quote_volume(self, pair: str, now: float) -> float:
        """Quote volume (volume x close) a market order's impact is measured against: the hour it
        executes in (``execution_bar``, as the backtester; the exchange knows its own liquidity, the
        client never sees it) or the last closed bar (``last_closed``)."""
        j = self.panel.column(pair)
        k = self.forming_index(now)
        if self.impact_volume == "execution_bar" and 0 <= k < self.panel.n_bars:
            b = self.bar(k, j)
            if b is not None:
                return b[4] * b[3]
        i = self.closed_count(now) - 1
        b = self.bar(i, j) if i >= 0 else None
        return b[4] * b[3] if b is not None else float("nan")

    def quotes(self, pair: str, now: float) -> tuple[Decimal, Decimal, float] | None:
        """(bid, ask, mid) rounded outward to the tick; None when no price is known yet."""
        m = self.mid(pair, now)
        if m is None:
            return None
        inst = self.instruments[pair]
        s = self.spread_frac(pair, now)
        bid = _dec(m * (1 - s / 2), inst.pair_decimals, ROUND_DOWN)
        ask = _dec(m * (1 + s / 2), inst.pair_decimals, ROUND_UP)
        if ask <= bid:
            ask = bid + inst.tick_size
        return bid, ask, m

    # ---- public endpoint payloads ---------------------------------------------------------------
    def ohlc(self, pair: str, now: float, since: float | None) -> tuple[list[list], int]:
        """Rows (closed bars after ``since`` then the forming one), at most 720, and ``last``."""
        inst = self.instruments[pair]
        j = self.panel.column(pair)
        pd_ = inst.pair_decimals
        nclosed = self.closed_count(now)
        rows: list[list] = []
        lo = max(0, nclosed - 719)
        last = int(self.panel.ts[nclosed - 1]) if nclosed > 0 else 0
        for i in range(lo, nclosed):
            ts = int(self.panel.ts[i])
            if since is not None and ts <= since:
                continue
            b = self.bar(i, j)
            if b is None:
                continue
            o, h, l_, c, v, vw, tr = b
            rows.append([ts, fmt(o, pd_), fmt(h, pd_), fmt(l_, pd_), fmt(c, pd_), fmt(vw, pd_), fmt(v, 8), int(tr)])
        # the forming candle: only its open is known
        fts = int(self.t0 + nclosed * HOUR)
        fo = None
        if nclosed < self.panel.n_bars and fts <= now:
            b = self.bar(nclosed, j)
            fo = b[0] if b is not None else None
        if fo is None:
            fo = self.last_close(j, nclosed)
        if fo is not None:
            p = fmt(fo, pd_)
            rows.append([fts, p, p, p, p, p, fmt(0, 8), 0])
        return rows[-720:], last

    def ticker(self, pair: str, now: float) -> dict | None:
        st = self._active(self.stale, pair, now)
        if st is not None:
            now = max(st[1], float(self.t0))  # a stale ticker: frozen at the fault's start
        q = self.quotes(pair, now)
        if q is None:
            return None
        bid, ask, m = q
        inst = self.instruments[pair]
        pd_ = inst.pair_decimals
        j = self.panel.column(pair)
        nclosed = self.closed_count(now)
        day0 = (int(now) // 86400) * 86400
        bars = []  # (bar open, bar) of the last 24 closed hours that have a bar
        for i in range(max(0, nclosed - 24), nclosed):
            bar = self.bar(i, j)
            if bar is not None:
                bars.append((int(self.panel.ts[i]), bar))
        today = [b for t, b in bars if t >= day0]

        def agg(bs):
            if not bs:
                return "0.00000000", fmt(m, pd_), 0, fmt(m, pd_), fmt(m, pd_)
            v = sum(b[4] for b in bs)
            vw = sum(b[5] * b[4] for b in bs) / v if v > 0 else bs[-1][3]
            return (
                fmt(v, 8),
                fmt(vw, pd_),
                int(sum(b[6] for b in bs)),
                fmt(min(b[2] for b in bs), pd_),
                fmt(max(b[1] for b in bs), pd_),
            )

        vt, pt, tt, lt, ht = agg(today)
        v24, p24, t24, l24, h24 = agg([b for _, b in bars])
        o = fmt(today[0][0], pd_) if today else fmt(m, pd_)
        return {
            "a": [fmt(ask, pd_), "1", "1.000"],
            "b": [fmt(bid, pd_), "1", "1.000"],
            "c": [fmt(m, pd_), "0.00000000"],
            "v": [vt, v24],
            "p": [pt, p24],
            "t": [tt, t24],
            "l": [lt, l24],
            "h": [ht, h24],
            "o": o,
        }

    def depth(self, pair: str, now: float, count: int) -> dict | None:
        """A synthetic book: ``count`` levels a tick-rounded quarter-spread apart, each holding 1% of
        the last closed bar's volume (at least ordermin)."""
        q = self.quotes(pair, now)
        if q is None or self._active(self.empty_book, pair, now) is not None:
            return {"asks": [], "bids": []}
        bid, ask, m = q
        inst = self.instruments[pair]
        j = self.panel.column(pair)
        i = self.closed_count(now) - 1
        b = self.bar(i, j) if i >= 0 else None
        lvl = max(float(inst.ordermin), (b[4] if b else 0.0) * 0.01)
        step = max(inst.tick_size, _dec(m * self.spread_frac(pair, now) / 4, inst.pair_decimals, ROUND_UP))
        ts = int(now)
        asks = [[fmt(ask + step * n, inst.pair_decimals), fmt(lvl, inst.lot_decimals), ts] for n in range(count)]
        bids = [
            [fmt(bid - step * n, inst.pair_decimals), fmt(lvl, inst.lot_decimals), ts]
            for n in range(count)
            if bid - step * n > 0
        ]
        return {"asks": asks, "bids": bids}
