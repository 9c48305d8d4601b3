"""AddOrder + QueryOrders round trips per second through the unmodified python-kraken-sdk against a
local simulator (HTTP on loopback, signing, SQLite write-through), with the in-process exchange
core (no HTTP, no signing) as the reference the ratio is taken against.

    python benchmarks/bench_sim.py [--n 500] [--no-state]

Run on demand; figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from decimal import Decimal
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="round trips")
    ap.add_argument("--no-state", action="store_true", help="no SQLite state file")
    args = ap.parse_args()

    from live_bridge.simulator.exchange import Exchange
    from live_bridge.simulator.market import Market, SimClock
    from live_bridge.simulator.testing import T0, flat_panel, sim_test_config, start_sim

    panel = flat_panel(200)
    with tempfile.TemporaryDirectory() as d:
        state = None if args.no_state else str(Path(d) / "bench.sqlite")
        sim = start_sim(
            panel,
            start=T0 + 50 * 3600,
            state=state,
            balances={"USD": "1e12"},
            config=sim_test_config(fills={"max_open_orders": 10**6}),
        )
        try:
            for _ in range(20):  # warm up
                t = sim.trade.create_order(ordertype="limit", side="buy", pair="XBTUSD", volume="0.001", price="19000")[
                    "txid"
                ][0]
                sim.user.get_orders_info(txid=t)
            t0 = time.perf_counter()
            for i in range(args.n):
                t = sim.trade.create_order(
                    ordertype="limit", side="buy", pair="XBTUSD", volume="0.001", price="19000", userref=i
                )["txid"][0]
                assert sim.user.get_orders_info(txid=t)[t]["status"] == "open"
            http = args.n / (time.perf_counter() - t0)
        finally:
            sim.stop()

    ex = Exchange(
        Market(panel, use_estimator=False), SimClock(T0 + 50 * 3600), sim_test_config(fills={"max_open_orders": 10**6})
    )
    acct = ex.add_account("a", "k", "c2VjcmV0", {"USD": Decimal("1e12")})
    t0 = time.perf_counter()
    for _ in range(args.n):
        t = ex.add_order(
            acct, {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.001", "price": "19000"}
        )["txid"][0]
        ex.query_orders(acct, {"txid": t})
    core = args.n / (time.perf_counter() - t0)
    print(
        f"AddOrder+QueryOrders round trips via python-kraken-sdk: {http:,.0f}/s "
        f"({'no state file' if args.no_state else 'SQLite write-through'}, n={args.n})"
    )
    print(f"in-process exchange core (reference):                  {core:,.0f}/s  ratio sdk/core = {http / core:.3f}")


if __name__ == "__main__":
    main()
