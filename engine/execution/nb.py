"""Fill-model kernels shared by the backtester and the exchange simulator.

One function per assumption, so the backtest and the simulator cannot disagree:

* :func:`slippage_frac_nb` - adverse price move of a market order, as a fraction of the reference
  price: half the estimated spread plus an impact term ``impact_coef * vol * sqrt(participation)``
  where participation is the order's notional against the bar's quote volume (capped at 1), floored
  at ``min_slip``.
* :func:`market_fill_price_nb` - the reference price moved against the taker by that fraction.
* :func:`limit_touched_nb` - a resting limit order fills in a bar only if the bar trades *through*
  its price (buy: low < limit; sell: high > limit); touching the price exactly does not fill.
* :func:`fee_nb` - the fee on one fill: ``notional * fee_rate`` (0.4% by default), on every fill.

docs/MODEL_ASSUMPTIONS.md states these assumptions in words.
"""

from __future__ import annotations

import math

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


@njit(cache=True)
def fee_nb(notional: float, fee_rate: float) -> float:
    return notional * fee_rate
