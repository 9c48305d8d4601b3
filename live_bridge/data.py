"""The hourly data step of the live daemon: top up the market store with newly closed Kraken bars.

:func:`update_bars` asks Kraken's public ``OHLC`` endpoint (interval 60) through the adapter's own
call path (same SDK ``Market`` client, URL, outcome classification, halt latch and request counts),
drops every row not yet closed at ``now_hour`` (Kraken's ``last`` semantics: rows newer than
``last`` are the still-forming candle), and writes the rest through the market store's REST OHLC
import (:meth:`engine.store.market.MarketStore.import_rest_rows`, venue ``kraken``), so the raw
layer, validation, the identical-overlap rule and the integrity log all apply as for a file import.

Every per-pair result is typed; nothing here raises for an exchange answer:

* :class:`PairUpdate`  the pair is current up to ``now_hour - 1h`` (``new_bars`` added, 0 on a re-run).
* :class:`FetchFailed` the OHLC call was UNKNOWN / REJECTED or its answer malformed: nothing stored;
  the daemon counts these toward the API-instability kill switch (:attr:`DataStep.api_failures`).
* :class:`DataGap`     the missing hours reach further back than OHLC's 720 rows (or the store holds
  no bars for the pair): nothing stored; rebuilding from the Trades endpoint is planned, not built.
* :class:`Behind`      Kraken has not committed the bar of ``now_hour - 1h`` yet: retry later.
* :class:`StoreRefused` the import refused the bars (a conflict with a stored bar, an invalid bar).

A :class:`~live_bridge.kraken.outcome.KrakenHalt` from the adapter (lockout, credentials) is not
caught: it is the adapter's stop signal and reaches the daemon as it does from every other call.

:func:`warmup_status` says per pair whether the store holds the features' warm-up history
(``features.warmup_bars`` contiguous hourly bars ending at ``now_hour - 1h``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InputError
from engine.pairs import instrument, normalize_pair
from engine.store.market import MarketStore, utc

from .kraken.adapter import KrakenAdapter
from .kraken.outcome import Outcome
from .kraken.rules import MalformedResult

HOUR = 3600
#: Kraken's OHLC answers at most this many rows (the newest ones, the forming candle included).
OHLC_ROWS = 720
VENUE = "kraken"
SOURCE = "kraken-ohlc"


@dataclass(frozen=True)
class PairUpdate:
    """The pair's stored bars now reach ``last_ts`` (``now_hour - 1h`` unless Kraken has no bar there)."""

    pair: str
    new_bars: int
    last_ts: int
    fetched: bool  # False: already current, no call made

    @property
    def reason(self) -> str:
        return f"{self.pair}: {self.new_bars} new bar(s), last {utc(self.last_ts)}"


@dataclass(frozen=True)
class FetchFailed:
    """The OHLC call did not give a usable answer (counts toward the API-instability kill switch)."""

    pair: str
    outcome: Outcome  # UNKNOWN (incl. a malformed answer) or REJECTED
    errors: tuple[str, ...]
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.pair}: OHLC {self.outcome.value}: {self.detail or '; '.join(self.errors)}"


@dataclass(frozen=True)
class DataGap:
    """Bars ``from_ts`` .. ``to_ts`` (bar open times, inclusive) cannot be fetched from OHLC.

    ``from_ts`` is None when the store holds no bar of the pair at all (cold start)."""

    pair: str
    from_ts: int | None
    to_ts: int

    @property
    def reason(self) -> str:
        if self.from_ts is None:
            return (
                f"{self.pair}: no stored {VENUE} bars; import Kraken's OHLCVT files with `kq data import` "
                "first (the data step only tops up)"
            )
        n = (self.to_ts - self.from_ts) // HOUR + 1
        return (
            f"{self.pair}: {n} missing hour(s) {utc(self.from_ts)} .. {utc(self.to_ts)} are older than the "
            f"{OHLC_ROWS} rows OHLC returns; import them (Kraken OHLCVT files) before the data step can resume"
        )


@dataclass(frozen=True)
class Behind:
    """Kraken's last committed bar (``exchange_last``) is older than the bar this hour needs."""

    pair: str
    exchange_last: int
    expected: int

    @property
    def reason(self) -> str:
        return (
            f"{self.pair}: Kraken's last committed bar is {utc(self.exchange_last)}, "
            f"{utc(self.expected)} not closed there yet"
        )


@dataclass(frozen=True)
class StoreRefused:
    """The market store refused the fetched bars (nothing stored): an integrity problem, not the API's."""

    pair: str
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.pair}: store refused the bars: {self.detail}"


PairResult = PairUpdate | FetchFailed | DataGap | Behind | StoreRefused


@dataclass(frozen=True)
class DataStep:
    """The data step of one hour: a typed result per pair (canonical name)."""

    now_hour: int
    results: dict[str, PairResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(isinstance(r, PairUpdate) for r in self.results.values())

    @property
    def new_bars(self) -> int:
        return sum(r.new_bars for r in self.results.values() if isinstance(r, PairUpdate))

    @property
    def api_failures(self) -> int:
        """OHLC calls that were UNKNOWN, REJECTED or malformed (the kill switch's input)."""
        return sum(isinstance(r, FetchFailed) for r in self.results.values())

    @property
    def failures(self) -> list[PairResult]:
        return [r for r in self.results.values() if not isinstance(r, PairUpdate)]


def _check_hour(now_hour: int) -> int:
    if isinstance(now_hour, bool) or not isinstance(now_hour, int) or now_hour <= 0 or now_hour % HOUR:
        raise InputError(f"now_hour must be whole-hour unix seconds (got {now_hour!r})")
    return now_hour


def _pairs(pairs: Sequence[str]) -> list[str]:
    if isinstance(pairs, str):
        pairs = [pairs]
    names = [normalize_pair(p) for p in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"pair given twice in {', '.join(names)}")
    return names


def _last_stored(store: MarketStore, pair: str, before: int) -> int | None:
    row = store.con.execute(
        "SELECT max(ts) FROM bars WHERE venue = ? AND pair = ? AND ts < ?", [VENUE, pair, before]
    ).fetchall()
    v = row[0][0] if row else None
    return None if v is None else int(v)


def parse_ohlc(result: Any) -> tuple[list[list[Any]], int]:
    """OHLC result ``{<kraken pair id>: rows, "last": int}`` -> (rows sorted by time, last)."""
    if not isinstance(result, dict):
        raise MalformedResult("OHLC: result is not an object")
    last = result.get("last")
    if type(last) is not int or last < 0:
        raise MalformedResult(f"OHLC: 'last' is not whole unix seconds ({last!r:.40})")
    keys = [k for k in result if k != "last"]
    if len(keys) != 1 or not isinstance(result[keys[0]], list):
        raise MalformedResult(f"OHLC: expected one pair's rows, got keys {keys[:5]!r:.80}")
    rows = result[keys[0]]
    for r in rows:
        if not isinstance(r, list) or len(r) != 8 or type(r[0]) is not int or r[0] % HOUR:
            raise MalformedResult(f"OHLC: malformed row {r!r:.80}")
    times = [r[0] for r in rows]
    if times != sorted(set(times)):
        raise MalformedResult("OHLC: row times not strictly increasing")
    return rows, last


def fetch_ohlc(adapter: KrakenAdapter, pair: str, since: int | None = None):
    """One public OHLC call (interval 60) through the adapter's call path -> CallResult[(rows, last)]."""
    params: dict[str, Any] = {"pair": instrument(pair).altname, "interval": 60}
    if since is not None:
        params["since"] = since
    return adapter.public_query("OHLC", params, parse_ohlc)


def _update_pair(store: MarketStore, adapter: KrakenAdapter, pair: str, now_hour: int) -> PairResult:
    want = now_hour - HOUR  # the last bar closed at now_hour
    stored = _last_stored(store, pair, now_hour)
    if stored is None:
        return DataGap(pair, None, want)
    if stored >= want:  # current: idempotent, no call
        return PairUpdate(pair, 0, stored, False)
    first = stored + HOUR
    oldest = now_hour - (OHLC_ROWS - 1) * HOUR  # the forming candle takes one of the 720 rows
    if first < oldest:
        return DataGap(pair, first, oldest - HOUR)
    res = fetch_ohlc(adapter, pair, since=stored)
    if not res.done or res.result is None:
        outcome = Outcome.UNKNOWN if res.outcome is Outcome.DONE else res.outcome
        return FetchFailed(pair, outcome, res.errors, res.reason)
    rows, last = res.result
    if rows and len(rows) >= OHLC_ROWS and rows[0][0] > first:
        return DataGap(pair, first, rows[0][0] - HOUR)
    if last < want:
        return Behind(pair, last, want)
    cap = min(last, want)  # a bar at or after now_hour waits for its own hour
    new = [r for r in rows if r[0] > stored]
    if not any(r[0] <= cap for r in new):  # Kraken has no bar in these hours (no trades): nothing to add
        return PairUpdate(pair, 0, stored, True)
    try:
        rep = store.import_rest_rows(new, pair, venue=VENUE, last=cap, source=SOURCE)
    except InputError as e:
        return StoreRefused(pair, str(e))
    after = _last_stored(store, pair, now_hour)
    return PairUpdate(pair, rep.new_bars, after if after is not None else stored, True)


def update_bars(store: MarketStore, adapter: KrakenAdapter, pairs: Sequence[str], now_hour: int) -> DataStep:
    """Store every hourly bar closed by ``now_hour`` (whole-hour unix seconds) that the store lacks.

    One OHLC call per pair that is behind (none for a pair already current: a re-run stores and
    sends nothing). Bad arguments (unknown pair, ``now_hour`` not on the hour) raise InputError;
    everything the exchange or the store answers comes back typed in :class:`DataStep`."""
    now_hour = _check_hour(now_hour)
    step = DataStep(now_hour)
    for pair in _pairs(pairs):
        step.results[pair] = _update_pair(store, adapter, pair, now_hour)
    return step


@dataclass(frozen=True)
class Warmup:
    """``have`` contiguous bars end at ``now_hour - 1h`` (counted back to the first hole, at most ``need``)."""

    pair: str
    have: int
    need: int
    first_missing: int | None  # the newest missing hour inside the window, None when ready

    @property
    def ready(self) -> bool:
        return self.have >= self.need

    @property
    def reason(self) -> str:
        if self.ready:
            return f"{self.pair}: warm-up ready ({self.need} bars)"
        return (
            f"{self.pair}: {self.have} of {self.need} warm-up bars contiguous up to now; "
            f"missing {utc(self.first_missing)}"
        )


def warmup_status(store: MarketStore, pairs: Sequence[str], now_hour: int, need: int = 768) -> dict[str, Warmup]:
    """Per pair: does the store hold ``need`` contiguous ``kraken`` bars ending at ``now_hour - 1h``?

    ``need`` is the features' ``warmup_bars`` (768 in configs/default.toml); the daemon trades a
    pair only when this is ready."""
    now_hour = _check_hour(now_hour)
    if isinstance(need, bool) or not isinstance(need, int) or need < 1:
        raise InputError(f"need must be a positive whole number of bars (got {need!r})")
    out: dict[str, Warmup] = {}
    lo = now_hour - need * HOUR
    for pair in _pairs(pairs):
        have_ts = {
            int(r[0])
            for r in store.con.execute(
                "SELECT ts FROM bars WHERE venue = ? AND pair = ? AND ts >= ? AND ts < ?",
                [VENUE, pair, lo, now_hour],
            ).fetchall()
        }
        have, t = 0, now_hour - HOUR
        while t >= lo and t in have_ts:
            have, t = have + 1, t - HOUR
        out[pair] = Warmup(pair, have, need, None if have >= need else t)
    return out
