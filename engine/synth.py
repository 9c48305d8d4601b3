"""A seeded SYNTHETIC multi-pair hourly market. NOT REAL DATA.

Everything here is invented by a random-number generator. It exists so a fresh machine without
``../shared`` can run the whole pipeline, and for property tests. Bars made here are stored under
the venue ``synthetic`` (:data:`SYNTH_VENUE`) and must never be mixed with, or mistaken for, the real
venues (``kraken``, ``binance``).

Model (all per hourly bar, log returns):

* **Regimes**: one market-wide Markov chain over :data:`REGIME_NAMES` (trend-up, range, high-vol,
  crash), each with its own drift and volatility multiplier; the chain starts in ``range``.
* **Volatility clustering**: the BTC market shock and every pair's idiosyncratic shock follow a
  GARCH(1,1) recursion (alpha 0.08, beta 0.90, unit unconditional variance) driven by Student-t(5)
  innovations scaled to unit variance.
* **Correlation to BTC**: ``r_alt = drift_mult * mu[regime] + beta * m + sigma_idio * vm[regime] * u``
  where ``m`` is BTC's market shock; the parameters give a correlation of 1h returns to BTC of about
  0.6-0.85 (:data:`PAIR_PARAMS`).
* **Intrabar OHLC**: the returns above move a *mid* price. Each pair has a constant quoted spread
  ``s`` (:data:`PAIR_PARAMS`): the bar's last trade (``close``) is at the ask ``mid (1 + s/2)`` or
  the bid ``mid (1 - s/2)`` with equal odds, and ``open`` is the previous ``close``. The mid's high
  and low are drawn from the exact distribution of the maximum / minimum of a Brownian bridge from 0
  to the bar's log return with the bar's volatility and trade at the ask / bid
  (``high = max_mid (1 + s/2)``, ``low = min_mid (1 - s/2)``), widened if needed to contain open and
  close, so ``low <= min(open, close) <= max(open, close) <= high`` always holds and the OHLC spread
  estimators have a known spread to find.
* **Volume** (base units): a per-pair quote-volume level times a factor growing with ``|return|`` and
  with the current volatility, an hour-of-day cycle and log-normal noise; ``trades`` is volume over a
  noisy average trade size (whole numbers, at least 1); ``vwap`` lies inside ``[low, high]``.

Random streams: the regime path comes from ``SeedSequence([seed, 0])``, BTC's market shock from
``SeedSequence([seed, 1])``, each pair's own draws from ``SeedSequence([seed, crc32(pair)])``, so a
pair's path does not depend on which other pairs were requested. Same seed -> bit-identical frames;
another seed -> another market.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.pairs import split_pair
from engine.timeutil import HOUR

SYNTH_VENUE = "synthetic"
#: 2022-01-01 00:00 UTC
DEFAULT_START_TS = 1640995200

DEFAULT_SYNTH_PAIRS: tuple[str, ...] = (
    "BTC/USD",
    "ETH/USD",
    "SOL/USD",
    "XRP/USD",
    "ADA/USD",
    "LTC/USD",
    "DOT/USD",
    "LINK/USD",
    "AVAX/USD",
    "DOGE/USD",
)

#: Regime ids used in the path returned with ``return_regimes=True``.
TREND_UP, RANGE, HIGH_VOL, CRASH = 0, 1, 2, 3
REGIME_NAMES: tuple[str, ...] = ("trend_up", "range", "high_vol", "crash")

#: Per-regime hourly drift (BTC units) and volatility multiplier.
REGIME_DRIFT = np.array([0.0004, 0.0, 0.0, -0.004])
REGIME_VOL = np.array([1.0, 0.7, 1.8, 2.5])

#: Hourly regime transition matrix (row = from). Expected stays: trend 200 h, range 250 h,
#: high-vol 100 h, crash about 29 h.
REGIME_TRANSITION = np.array(
    [
        [0.9950, 0.0030, 0.0015, 0.0005],
        [0.0020, 0.9960, 0.0015, 0.0005],
        [0.0040, 0.0040, 0.9900, 0.0020],
        [0.0050, 0.0100, 0.0200, 0.9650],
    ]
)

GARCH_ALPHA = 0.08
GARCH_BETA = 0.90
GARCH_OMEGA = 1.0 - GARCH_ALPHA - GARCH_BETA  # unit unconditional variance
T_DF = 5.0


@dataclass(frozen=True)
class PairParams:
    price0: float  # price at start (roughly the real level on 2022-01-01)
    beta: float  # loading on BTC's market shock (BTC itself: 1)
    sigma_idio: float  # hourly idiosyncratic volatility in a unit-volatility regime (BTC: 0)
    drift_mult: float  # multiple of the regime drift
    quote_volume: float  # typical hourly volume in quote units
    trade_size: float  # typical trade size in quote units
    spread: float  # quoted spread as a fraction of price, baked into high/low


#: BTC's market shock has hourly volatility SIGMA_BTC in a unit-volatility regime.
SIGMA_BTC = 0.006

PAIR_PARAMS: dict[str, PairParams] = {
    "BTC": PairParams(47000.0, 1.00, 0.0, 1.0, 3.0e6, 1500.0, 0.0004),
    "ETH": PairParams(3700.0, 1.15, 0.0045, 1.1, 2.0e6, 1000.0, 0.0005),
    "SOL": PairParams(170.0, 1.40, 0.0080, 1.3, 6.0e5, 500.0, 0.0010),
    "XRP": PairParams(0.83, 1.10, 0.0070, 1.0, 5.0e5, 400.0, 0.0010),
    "ADA": PairParams(1.37, 1.20, 0.0065, 1.1, 3.0e5, 300.0, 0.0012),
    "LTC": PairParams(147.0, 1.05, 0.0055, 0.9, 2.5e5, 300.0, 0.0012),
    "DOT": PairParams(27.0, 1.25, 0.0070, 1.1, 2.0e5, 250.0, 0.0015),
    "LINK": PairParams(20.0, 1.25, 0.0070, 1.1, 2.0e5, 250.0, 0.0015),
    "AVAX": PairParams(110.0, 1.40, 0.0085, 1.3, 2.0e5, 250.0, 0.0018),
    "DOGE": PairParams(0.17, 1.20, 0.0090, 1.0, 3.0e5, 200.0, 0.0015),
}


def _pair_stream(seed: int, pair: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(pair.encode())])))


def _t_unit(rng: np.random.Generator, size) -> np.ndarray:
    """Student-t(5) draws scaled to unit variance."""
    return rng.standard_t(T_DF, size=size) / np.sqrt(T_DF / (T_DF - 2.0))


def _garch(z: np.ndarray) -> np.ndarray:
    """GARCH(1,1) shocks eps_t = sqrt(h_t) z_t with h_t = w + a eps_{t-1}^2 + b h_{t-1}, h_0 = 1."""
    n = z.shape[0]
    eps = np.empty(n)
    h = 1.0
    prev = 0.0
    for t in range(n):
        if t:
            h = GARCH_OMEGA + GARCH_ALPHA * prev * prev + GARCH_BETA * h
        prev = np.sqrt(h) * z[t]
        eps[t] = prev
    return eps


def _garch_var(eps: np.ndarray) -> np.ndarray:
    """The conditional variances h_t belonging to shocks made by :func:`_garch`."""
    h = np.empty(eps.shape[0])
    if h.size:
        h[0] = 1.0
    for t in range(1, eps.shape[0]):
        h[t] = GARCH_OMEGA + GARCH_ALPHA * eps[t - 1] ** 2 + GARCH_BETA * h[t - 1]
    return h


def regime_path(n_bars: int, seed: int = 7) -> np.ndarray:
    """The market-wide regime id per bar (int8, values in 0..3, see :data:`REGIME_NAMES`)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0])))
    u = rng.random(n_bars)
    cum = np.cumsum(REGIME_TRANSITION, axis=1)
    out = np.empty(n_bars, dtype=np.int8)
    r = RANGE
    for t in range(n_bars):
        if t:
            r = int(min(np.searchsorted(cum[r], u[t], side="right"), 3))
        out[t] = r
    return out


def _market(n_bars: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(regimes, BTC market shock m_t, its conditional vol) from the market stream."""
    reg = regime_path(n_bars, seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))
    eps = _garch(_t_unit(rng, n_bars))
    vm = REGIME_VOL[reg]
    m = SIGMA_BTC * vm * eps
    m_vol = SIGMA_BTC * vm * np.sqrt(_garch_var(eps))
    return reg, m, m_vol


def _make_pair(
    pair: str, base: str, reg: np.ndarray, m: np.ndarray, m_vol: np.ndarray, start_ts: int, seed: int
) -> pd.DataFrame:
    p = PAIR_PARAMS[base]
    n = reg.shape[0]
    rng = _pair_stream(seed, pair)
    vm = REGIME_VOL[reg]
    if p.sigma_idio > 0:
        u = _garch(_t_unit(rng, n))
        idio = p.sigma_idio * vm * u
        idio_vol = p.sigma_idio * vm * np.sqrt(_garch_var(u))
    else:
        idio = np.zeros(n)
        idio_vol = np.zeros(n)
    r = p.drift_mult * REGIME_DRIFT[reg] + p.beta * m + idio
    sig = np.sqrt((p.beta * m_vol) ** 2 + idio_vol**2)  # this bar's conditional volatility

    # Mid price path; every traded price (open, close) is at the bid or the ask of that mid.
    log_mid = np.log(p.price0) + np.cumsum(r)
    side = np.where(rng.random(n) < 0.5, 1.0, -1.0)  # last trade of the bar hit the ask (+1) or bid
    close = np.exp(log_mid) * (1.0 + side * p.spread / 2.0)
    open_ = np.empty(n)
    open_[0] = p.price0
    open_[1:] = close[:-1]
    mid_open = np.exp(log_mid - r)

    # Brownian bridge of the mid from 0 to r with variance sig^2: exact max and min (inverse CDF);
    # the high trades at the ask, the low at the bid.
    u1 = rng.random(n)
    u2 = rng.random(n)
    up = 0.5 * (r + np.sqrt(r * r - 2.0 * sig * sig * np.log1p(-u1)))
    dn = 0.5 * (r - np.sqrt(r * r - 2.0 * sig * sig * np.log1p(-u2)))
    high = np.maximum(mid_open * np.exp(up) * (1.0 + p.spread / 2.0), np.maximum(open_, close))
    low = np.minimum(mid_open * np.exp(dn) * (1.0 - p.spread / 2.0), np.minimum(open_, close))

    hours = ((start_ts // HOUR) + np.arange(n)) % 24
    cycle = 1.0 + 0.3 * np.sin(2.0 * np.pi * (hours - 9) / 24.0)  # busiest in the US afternoon
    base_sig = np.hypot(p.beta * SIGMA_BTC, p.sigma_idio)
    surge = np.exp(0.35 * np.abs(r) / base_sig + 0.5 * (sig / base_sig - 1.0))
    qv = p.quote_volume * cycle * surge * np.exp(0.35 * rng.standard_normal(n) - 0.35**2 / 2)
    vwap_w = np.clip(0.5 + 0.25 * np.sign(r) + 0.1 * rng.standard_normal(n), 0.05, 0.95)
    vwap = low + (high - low) * vwap_w
    volume = qv / vwap
    trades = np.maximum(1.0, np.round(qv / (p.trade_size * np.exp(0.3 * rng.standard_normal(n)))))
    ts = start_ts + HOUR * np.arange(n, dtype=np.int64)
    return pd.DataFrame(
        {
            "ts": ts,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "trades": trades,
            "vwap": vwap,
        }
    )


def generate_market(
    pairs: Sequence[str] = DEFAULT_SYNTH_PAIRS,
    start_ts: int = DEFAULT_START_TS,
    n_bars: int = 8760,
    seed: int = 7,
    return_regimes: bool = False,
):
    """Generate a SYNTHETIC hourly market (invented data, venue ``synthetic``; never real).

    Returns ``{canonical pair: frame}`` with columns ts (int64 bar-open UTC seconds, hourly, no gaps),
    open, high, low, close, volume (base units), trades (float whole counts), vwap. With
    ``return_regimes=True`` returns ``(frames, regimes)`` where ``regimes`` is the int8 regime id per
    bar (:data:`REGIME_NAMES`), shared by every pair. Deterministic in ``seed``.
    """
    if n_bars < 1:
        raise InputError(f"n_bars must be at least 1, got {n_bars}")
    if int(start_ts) % HOUR:
        raise InputError(f"start_ts {start_ts} is not on the hourly grid")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    names: list[tuple[str, str]] = []
    for raw in pairs:
        base, quote = split_pair(raw)
        if base not in PAIR_PARAMS:
            raise InputError(f"no synthetic model for {raw!r} (bases: {', '.join(PAIR_PARAMS)})")
        name = f"{base}/{quote}"
        if name in (x for x, _ in names):
            raise InputError(f"pair {name} given twice")
        names.append((name, base))
    if not names:
        raise InputError("no pairs given")
    reg, m, m_vol = _market(int(n_bars), int(seed))
    frames = {name: _make_pair(name, base, reg, m, m_vol, int(start_ts), int(seed)) for name, base in names}
    return (frames, reg) if return_regimes else frames
