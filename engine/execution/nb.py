"""Fill-model kernels shared by the backtester and the exchange simulator.

One function per assumption, so the backtest and the simulator cannot disagree:

* :func:`slippage_frac_nb` - adverse price move of a market order, as a fraction of the reference
  price: half the estimated spread plus an impact term ``impact_coef * vol * sqrt(participation)``
  where participation is the order's notional against the bar's quote volume (capped at 1), floored
  at ``min_slip``.
* :func:`market_fill_price_nb` - the reference price moved against the taker by that fraction.
* :func:`limit_touched_nb` - a resting limit order fills in a bar only if the bar trades *through*
  its price (buy: low < limit; sell: high > limit); touching the price exactly does not fill.
* :func:`taker_tick_nb` - a market fill price on the pair's tick, against the taker: a buy rounds UP
  to ``decimals`` places, a sell DOWN (the price Kraken books; the pair's price decimals).
* :func:`fee_nb` - the fee on one fill: ``notional * fee_rate`` (0.4% by default), on every fill,
  rounded UP to ``decimals`` places (the quote currency's decimals; ``decimals < 0``: unrounded).

Both roundings snap near-ties first (:func:`_quantise_nb`): the simulator rounds the Decimal of the
float's shortest repr while the backtester rounds float products, and a product that is a tie in
decimal (``1000 * 0.004 = 4``, ``30000.1``) can land a few ulps off it in binary; within a relative
``1e-9`` (at most a hundredth of the last place) of a multiple of ``10**-decimals`` that multiple is
taken. Both sides call these kernels on the same floats, so they book the same value. The scale
``10**decimals`` is read from a table of the exact powers (:func:`pow10_nb`), the very doubles
numba's ``10.0**decimals`` computes, without its loop.

docs/MODEL_ASSUMPTIONS.md states these assumptions in words.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

BUY = 1
SELL = -1


@njit(cache=True)
def slippage_frac_nb(
    spread_frac: float,
    vol_frac: float,
    order_notional: float,
    bar_quote_volume: float,
    impact_coef: float,
    min_slip: float,
) -> float:
    half_spread = 0.5 * spread_frac if (spread_frac == spread_frac and spread_frac > 0.0) else 0.0
    if bar_quote_volume == bar_quote_volume and bar_quote_volume > 0.0:
        part = order_notional / bar_quote_volume
        if part > 1.0:
            part = 1.0
    else:
        part = 1.0
    vol = vol_frac if (vol_frac == vol_frac and vol_frac > 0.0) else 0.0
    slip = half_spread + impact_coef * vol * math.sqrt(part)
    return slip if slip > min_slip else min_slip


@njit(cache=True)
def market_fill_price_nb(side: int, ref_price: float, slip_frac: float) -> float:
    if side == BUY:
        return ref_price * (1.0 + slip_frac)
    return ref_price * (1.0 - slip_frac)


@njit(cache=True)
def limit_touched_nb(side: int, limit_price: float, bar_low: float, bar_high: float) -> bool:
    if side == BUY:
        return bar_low < limit_price
    return bar_high > limit_price


#: relative distance to a multiple of 10**-decimals within which a value counts as on it ...
SNAP_REL = 1e-9
#: ... but never more than a hundredth of the last place (beyond |k| = 1e7, e.g. a USDT fee above
#: 0.1 at 8 decimals, 1e-9 relative would round a growing share of fees to nearest, not up)
SNAP_MAX = 0.01


#: ``10.0**k`` for k = 0..22: every power of ten up to 1e22 is a double, and numba's ``10.0**k``
#: (exponentiation by squaring: products of exact powers, each exact) is that double, so a table
#: read returns the very float the loop computed (tests/test_execution_model.py checks it) ...
POW10 = np.array([float(10**k) for k in range(23)])
#: ... and ``10.0**-k``, which numba computes as ``1.0 / 10.0**k``
NEG_POW10 = 1.0 / POW10


@njit(cache=True, inline="always")
def pow10_nb(k: int) -> float:
    """``10.0**k`` bit for bit: a table read for 0 <= k <= 22 (the decimals of every pair), else the
    power itself."""
    if 0 <= k < POW10.shape[0]:
        return POW10[k]
    return 10.0**k


@njit(cache=True, inline="always")
def neg_pow10_nb(k: int) -> float:
    """``10.0**-k`` bit for bit (the table of :data:`NEG_POW10` for 0 <= k <= 22)."""
    if 0 <= k < NEG_POW10.shape[0]:
        return NEG_POW10[k]
    return 10.0**-k


@njit(cache=True)
def _quantise_nb(x: float, decimals: int, up: bool) -> float:
    """``x`` on a multiple of ``10**-decimals``. With ``k = x * 10**decimals``: ``round(k)`` if
    ``|k - round(k)| <= min(SNAP_REL * max(1, |k|), SNAP_MAX)`` (a near-tie), else ``ceil(k)``
    (``up``) or ``floor(k)``; returned as ``k / 10**decimals`` (the float nearest that decimal).
    ``decimals < 0``: ``x`` unchanged. NaN stays NaN."""
    if decimals < 0:
        return x
    s = pow10_nb(decimals)
    k = x * s
    r = np.floor(k + 0.5)
    if abs(k - r) <= min(SNAP_REL * max(1.0, abs(k)), SNAP_MAX):
        return r / s
    if up:
        return np.ceil(k) / s
    return np.floor(k) / s


@njit(cache=True)
def taker_tick_nb(side: int, price: float, decimals: int) -> float:
    """A market fill price on the tick ``10**-decimals``, against the taker: buy up, sell down."""
    return _quantise_nb(price, decimals, side == BUY)


@njit(cache=True)
def fee_nb(notional: float, fee_rate: float, decimals: int) -> float:
    """The fee of one fill, ``notional * fee_rate``, rounded UP to ``decimals`` places (< 0: unrounded)."""
    return _quantise_nb(notional * fee_rate, decimals, True)
