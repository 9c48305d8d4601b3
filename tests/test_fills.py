import math

from engine.execution.nb import BUY, SELL, fee_nb, limit_touched_nb, market_fill_price_nb, slippage_frac_nb


def test_slippage_is_half_spread_plus_impact():
    s = slippage_frac_nb(0.002, 0.01, 10_000.0, 1_000_000.0, 0.5, 0.0)
    assert math.isclose(s, 0.001 + 0.5 * 0.01 * math.sqrt(0.01), rel_tol=1e-15)


def test_slippage_floor_and_missing_inputs():
    assert slippage_frac_nb(float("nan"), float("nan"), 1.0, float("nan"), 0.5, 0.0003) == 0.0003
    # participation is capped at the whole bar
    assert slippage_frac_nb(0.0, 0.02, 1e9, 1.0, 1.0, 0.0) == 0.02


def test_fill_price_moves_against_the_taker():
    assert market_fill_price_nb(BUY, 100.0, 0.01) > 100.0 > market_fill_price_nb(SELL, 100.0, 0.01)


def test_limit_needs_trade_through():
    assert not limit_touched_nb(BUY, 99.0, 99.0, 101.0)
    assert limit_touched_nb(BUY, 99.0, 98.99, 101.0)
    assert not limit_touched_nb(SELL, 101.0, 99.0, 101.0)
    assert limit_touched_nb(SELL, 101.0, 99.0, 101.01)


def test_fee_on_every_fill():
    assert fee_nb(1000.0, 0.004, -1) == 1000.0 * 0.004  # decimals < 0: unrounded
    assert fee_nb(1000.0, 0.004, 4) == 4.0
    assert fee_nb(1000.01, 0.004, 4) == 4.0001  # 4.00004 rounded UP to the quote's 4 decimals
