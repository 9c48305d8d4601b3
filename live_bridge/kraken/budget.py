"""Client-side rate budget: Kraken's REST call counter and the per-pair matching-engine counter,
modelled so the adapter waits instead of provoking ``EAPI:Rate limit exceeded`` or
``EOrder:Rate limit exceeded``.

Kraken's REST counter (per key) rises by 1 per private call (2 for the history calls; AddOrder
and CancelOrder are not counted there) and decays at a constant rate per second; a call that would
take it above the tier's maximum is refused. The trading counter (per key and pair) rises by 1 per
AddOrder and by a penalty per CancelOrder that depends on the order's age (8 under 5 s, down to 0
after 300 s). The budget keeps both counters locally, with a safety margin, and before a call
sleeps until the call fits. Clock and sleep are injectable (tests use a fake clock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import KQError


class RateBudgetExceeded(KQError, RuntimeError):
    """A call would have to wait longer than the budget's ``max_wait_s``: nothing was sent (one
    line; a RuntimeError too, for callers written before it had its own type)."""


@dataclass(frozen=True)
class RateTier:
    rest_max: float
    rest_decay_per_s: float
    order_max: float
    order_decay_per_s: float


#: Kraken's published tiers (REST counter max / decay, trading counter max / decay).
TIERS: dict[str, RateTier] = {
    "starter": RateTier(15.0, 0.33, 60.0, 1.0),
    "intermediate": RateTier(20.0, 0.5, 125.0, 2.34),
    "pro": RateTier(20.0, 1.0, 180.0, 3.75),
}

HISTORY_CALLS = frozenset({"ClosedOrders", "TradesHistory", "QueryTrades", "Ledgers", "QueryLedgers"})
ORDER_CALLS = frozenset({"AddOrder", "CancelOrder", "AddOrderBatch", "CancelOrderBatch", "EditOrder", "AmendOrder"})

# CancelOrder penalty by the order's age in seconds: (age below, penalty).
CANCEL_PENALTY: tuple[tuple[float, float], ...] = ((5, 8), (10, 6), (15, 5), (45, 4), (90, 2), (300, 1))


def rest_cost(endpoint: str) -> float:
    if endpoint in ORDER_CALLS:
        return 0.0
    return 2.0 if endpoint in HISTORY_CALLS else 1.0


def cancel_penalty(age_s: float | None) -> float:
    """Trading-counter cost of cancelling an order placed ``age_s`` seconds ago (None: unknown age,
    assume the worst)."""
    if age_s is None:
        return CANCEL_PENALTY[0][1]
    for below, pen in CANCEL_PENALTY:
        if age_s < below:
            return float(pen)
    return 0.0


class _Counter:
    def __init__(self, limit: float, decay: float, now: float) -> None:
        self.limit, self.decay = limit, decay
        self.level, self.t = 0.0, now

    def at(self, now: float) -> float:
        return max(0.0, self.level - max(0.0, now - self.t) * self.decay)

    def wait_for(self, cost: float, now: float) -> float:
        over = self.at(now) + cost - self.limit
        return 0.0 if over <= 1e-12 else over / self.decay

    def charge(self, cost: float, now: float) -> None:
        self.level, self.t = self.at(now) + cost, now


class RateBudget:
    """Both counters for one key. ``margin`` is kept free below each maximum (calls made outside the
    adapter, decay measured by the exchange's clock, not ours)."""

    def __init__(
        self,
        tier: str | RateTier = "starter",
        *,
        margin: float = 2.0,
        order_margin: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float = 300.0,
    ) -> None:
        t = TIERS[tier] if isinstance(tier, str) else tier
        if t.rest_decay_per_s <= 0 or t.order_decay_per_s <= 0:
            raise ValueError("rate tier decay must be > 0")
        if t.rest_max - margin < 2 or t.order_max - order_margin < 8:
            raise ValueError("rate tier maximum too small for its margin")
        self.tier = t
        self.clock, self.sleep, self.max_wait_s = clock, sleep, max_wait_s
        now = clock()
        self.rest = _Counter(t.rest_max - margin, t.rest_decay_per_s, now)
        self._order_limit = (t.order_max - order_margin, t.order_decay_per_s)
        self.orders: dict[str, _Counter] = {}
        self.waited_s = 0.0
        self._lock = threading.Lock()

    def _take(self, counter: _Counter, cost: float) -> float:
        if cost <= 0:
            return 0.0
        if cost > counter.limit:
            raise ValueError(f"a call costing {cost} can never fit a counter of {counter.limit}")
        waited = 0.0
        with self._lock:
            while True:
                now = self.clock()
                w = counter.wait_for(cost, now)
                if w <= 0:
                    counter.charge(cost, now)
                    self.waited_s += waited
                    return waited
                if waited + w > self.max_wait_s:
                    raise RateBudgetExceeded(
                        f"rate budget: this call would have to wait {waited + w:.0f} s, over the "
                        f"{self.max_wait_s:.0f} s allowed; nothing was sent"
                    )
                self.sleep(w)
                waited += w

    def acquire_rest(self, endpoint: str) -> float:
        """Wait until a private call to ``endpoint`` fits the REST counter, then charge it."""
        return self._take(self.rest, rest_cost(endpoint))

    def _order_counter(self, pair: str) -> _Counter:
        c = self.orders.get(pair)
        if c is None:
            c = self.orders[pair] = _Counter(*self._order_limit, self.clock())
        return c

    def acquire_order(self, pair: str, cost: float = 1.0) -> float:
        """Wait until an order call on ``pair`` costing ``cost`` fits the trading counter."""
        return self._take(self._order_counter(pair), cost)

    def saturate_rest(self) -> None:
        """The exchange said rate limit exceeded: treat the REST counter as full."""
        with self._lock:
            self.rest.level, self.rest.t = self.rest.limit, self.clock()

    def saturate_order(self, pair: str) -> None:
        with self._lock:
            c = self._order_counter(pair)
            c.level, c.t = c.limit, self.clock()

    def rest_level(self) -> float:
        return self.rest.at(self.clock())
