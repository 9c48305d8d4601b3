"""The daemon process of tests/test_live_crash.py: builds a paper daemon against a running
simulator (tests/live_harness.make_daemon), starts it (resume + reconciliation), runs the due
hours, then ``--hours - 1`` more, moving the simulator's clock one bar at a time through its admin
API. ``--kill-at POINT`` plants a SIGKILL at one named point of the cycle of hour ``--kill-hour``
(the process kills itself there: no ``finally``, no flush, no atexit; what the ledger and the
exchange hold is what a power cut would leave).

Points (each fires once, at its first occurrence in the kill hour):

* ``after_intent``: right after the batch holding an ``order_intent`` row is committed (the
  intent is in the ledger, its AddOrder not sent);
* ``after_request``: inside the adapter's ``add_order``, after the exchange answered, before the
  executor ledgers the response (the order exists on the exchange, the ledger shows a request);
* ``before_fill_row``: in ``Ledger.append``, before a batch holding an own ``fill`` row is
  committed (the exchange booked the fill, the ledger never will in this process);
* ``in_reconcile``: during the cycle's reconciliation, after it read the exchange (trades,
  balances) and before it asks for the open orders or writes anything.

Prints one JSON line per completed hour (``HourReport`` fields) and a last ``{"done": true}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POINTS = ("after_intent", "after_request", "before_fill_row", "in_reconcile")


def die(point: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"live_crash_child: SIGKILL at {point}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def plant(point: str, kill_hour: int) -> None:
    """Monkeypatch the kill point into this process only."""
    from live_bridge.kraken import KrakenAdapter
    from live_bridge.ledger import Kind, Ledger

    if point in ("after_intent", "before_fill_row"):
        real_append = Ledger.append

        @functools.wraps(real_append)
        def append(self: Any, *records: Any) -> Any:
            hit = lambda kind: any(  # noqa: E731
                r.kind == kind and r.hour == kill_hour and (kind != Kind.FILL or r.code == "own") for r in records
            )
            if point == "before_fill_row" and hit(Kind.FILL):
                die(point)
            out = real_append(self, *records)
            if point == "after_intent" and hit(Kind.ORDER_INTENT):
                die(point)
            return out

        Ledger.append = append  # type: ignore[method-assign]
    elif point == "after_request":
        from live_bridge.cycle import Cycle

        real_add = KrakenAdapter.add_order
        real_run = Cycle.run_hour
        running: dict[str, int | None] = {"hour": None}

        @functools.wraps(real_run)
        def run_hour(self: Any, hour: int, **kw: Any) -> Any:
            running["hour"] = int(hour)
            try:
                return real_run(self, hour, **kw)
            finally:
                running["hour"] = None

        @functools.wraps(real_add)  # keeps the signature the executor inspects (latest_deadline)
        def add_order(self: Any, *a: Any, **kw: Any) -> Any:
            res = real_add(self, *a, **kw)
            if res.done and running["hour"] == kill_hour:
                die(point)
            return res

        Cycle.run_hour = run_hour  # type: ignore[method-assign]
        KrakenAdapter.add_order = add_order  # type: ignore[method-assign]
    elif point == "in_reconcile":
        import live_bridge.reconcile as rc

        real_reconcile = rc.reconcile
        real_open = KrakenAdapter.open_orders
        armed = {"on": False}

        @functools.wraps(real_reconcile)
        def reconcile(ledger: Any, adapter: Any, *, hour: int | None = None, **kw: Any) -> Any:
            armed["on"] = hour == kill_hour
            try:
                return real_reconcile(ledger, adapter, hour=hour, **kw)
            finally:
                armed["on"] = False

        @functools.wraps(real_open)
        def open_orders(self: Any, *a: Any, **kw: Any) -> Any:
            if armed["on"]:
                die(point)
            return real_open(self, *a, **kw)

        rc.reconcile = reconcile
        KrakenAdapter.open_orders = open_orders  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r} (one of {', '.join(POINTS)})")


def advance_one_bar(url: str) -> None:
    import requests

    from live_bridge.simulator.testing import admin_headers

    r = requests.post(url + "/admin/clock/advance", json={"bars": 1}, headers=admin_headers(), timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"clock advance refused: {r.status_code} {r.text[:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--tmp", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--hours", type=int, default=1)
    ap.add_argument("--kill-at", choices=POINTS)
    ap.add_argument("--kill-hour", type=int)
    a = ap.parse_args(argv)
    if a.kill_at and a.kill_hour is None:
        ap.error("--kill-at needs --kill-hour")

    from tests.live_harness import BundleModel, make_daemon

    if a.kill_at:
        plant(a.kill_at, a.kill_hour)
    daemon = make_daemon(a.url, a.tmp, BundleModel(a.model))
    try:
        st = daemon.start()
        print(json.dumps({"start": {"resumed": st.resumed, "unresolved": st.unresolved, "latch": st.latch}}))
        for i in range(a.hours):
            if i:
                advance_one_bar(a.url)
            for r in daemon.run_once():
                print(
                    json.dumps(
                        {
                            "hour": r.hour,
                            "status": r.status,
                            "resumed": r.resumed,
                            "orders": r.orders,
                            "fills": r.fills,
                            "reconcile": r.reconcile,
                            "latch": r.latch,
                            "state": r.state,
                        }
                    ),
                    flush=True,
                )
    finally:
        daemon.close()
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
