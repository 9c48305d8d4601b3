"""The order in which phases 1 and 3 execute pending orders (engine.risk.nb.execute_open_nb,
execute_close_nb): sells before buys, each side in column order, every active order visited once,
beyond the 64 pairs one word of ``side_bits_nb`` covers (the backtests elsewhere have 10 pairs)."""

from __future__ import annotations

import numpy as np

from engine.config import load_config
from engine.risk.enums import KIND, N_REASONS, REASON, event_dt, trade_dt
from engine.risk.nb import C_RECORD, N_ACC, N_CNT, execute_close_nb, execute_open_nb, new_state
from engine.risk.params import params_from_config

M = 150  # three words of bits
PRICE = 100.0


def _setup(seed: int):
    rng = np.random.default_rng(seed)
    params = params_from_config(load_config())
    state, positions, pending = new_state(M, 1e9)
    role = rng.integers(0, 4, size=M)  # 0 none, 1 sell (held), 2 buy (flat), 3 neither side
    kind = np.where(rng.random(M) < 0.3, KIND.LIMIT_FIRST, KIND.MARKET)
    for j in range(M):
        if role[j] == 1:
            positions[j]["qty"] = 2.0
            positions[j]["entry_price"] = PRICE
            positions[j]["entry_cost"] = 2.0 * PRICE
            positions[j]["mark"] = PRICE
            state[0]["n_positions"] += 1
        if role[j] == 0:
            continue
        o = pending[j]
        o["active"] = 1
        o["side"] = {1: -1, 2: 1, 3: 0}[int(role[j])]
        o["kind"] = kind[j]
        o["reason"] = REASON.ENTRY if role[j] == 2 else REASON.EXIT_SIGNAL
        o["qty"] = 1.0
        # a limit the bar does not trade through (high = low = PRICE): left for the close
        o["limit_price"] = PRICE if kind[j] == KIND.LIMIT_FIRST else np.nan
        o["ref_price"] = PRICE
        o["atr"] = 1.0
        o["spread"] = 0.001
    one = np.full((1, M), PRICE)
    bars = {
        "open_": one,
        "high": one.copy(),
        "low": one.copy(),
        "close": one.copy(),
        "volume": np.full((1, M), 1e9),
        "valid": np.ones((1, M), dtype=np.bool_),
        "cluster": np.full((1, M), -1, dtype=np.int64),
    }
    # ordermin, costmin, lot, price and quote decimals
    rules = (np.zeros(M), np.zeros(M), np.full(M, 8, dtype=np.int64), np.full(M, 2, dtype=np.int64))
    rules = (*rules, np.full(M, 8, dtype=np.int64))
    cnt = np.zeros(N_CNT, dtype=np.int64)
    cnt[C_RECORD] = 1
    rec = (np.zeros(4 * M, dtype=trade_dt), np.zeros(4 * M, dtype=event_dt), cnt, np.zeros(N_ACC))
    return role, kind, params, state, positions, pending, bars, rules, rec


def _expected(role, kind, want_kind):
    sells = [j for j in range(M) if role[j] == 1 and kind[j] == want_kind]
    buys = [j for j in range(M) if role[j] == 2 and kind[j] == want_kind]
    return sells + buys, [-1] * len(sells) + [1] * len(buys)


def test_sells_then_buys_in_column_order_past_one_word():
    for seed in range(5):
        role, kind, params, state, positions, pending, b, rules, rec = _setup(seed)
        ordermin, costmin, lot_dec, price_dec, quote_dec = rules
        trades, events, cnt, acc = rec
        refusals = np.zeros(N_REASONS, dtype=np.int64)
        marks = np.empty(M)
        args = (ordermin, costmin, lot_dec, price_dec, quote_dec, params[0], trades, events, cnt, acc, refusals, marks)
        left = execute_open_nb(
            0, 0, state, positions, pending, b["open_"], b["high"], b["low"], b["close"], b["volume"], b["valid"],
            b["cluster"], *args,
        )  # fmt: skip
        n_open = cnt[0]
        pairs, sides = _expected(role, kind, KIND.MARKET)
        assert list(trades["pair"][:n_open]) == pairs
        assert list(trades["side"][:n_open]) == sides
        # left for the close: the untouched limits (an order of neither side stays, but no phase runs it)
        waiting = [j for j in range(M) if role[j] in (1, 2) and kind[j] == KIND.LIMIT_FIRST]
        assert left == len(waiting)
        assert [j for j in range(M) if pending[j]["active"] and role[j] != 3] == waiting
        execute_close_nb(
            0, 0, state, positions, pending, b["close"], b["volume"], b["valid"], b["cluster"], *args
        )  # fmt: skip
        pairs, sides = _expected(role, kind, KIND.LIMIT_FIRST)
        assert list(trades["pair"][n_open : cnt[0]]) == pairs
        assert list(trades["side"][n_open : cnt[0]]) == sides
        assert [j for j in range(M) if pending[j]["active"]] == [j for j in range(M) if role[j] == 3]
        assert state[0]["n_positions"] == int(np.sum(role == 2))
