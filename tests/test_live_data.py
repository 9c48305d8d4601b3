"""The live data step against the simulator serving real Kraken bars (XBTUSD, ETHUSD 2022): new closed
bars land in the store exactly as Kraken's history has them, the forming bar never does, a re-run
stores nothing, gaps beyond OHLC's 720 rows and API failures come back typed with nothing stored."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from engine.errors import InputError
from engine.store.market import MarketStore
from live_bridge.data import (
    HOUR,
    Behind,
    DataGap,
    FetchFailed,
    PairUpdate,
    update_bars,
    warmup_status,
)
from live_bridge.kraken import Credentials, KrakenAdapter, Outcome
from live_bridge.simulator.testing import KEY, SECRET, start_sim

P0 = 1_654_041_600  # 2022-06-01 00:00 UTC: the simulator's start; both pairs have every hour around it
FIRST = P0 - 1000 * HOUR  # the simulator's first bar
FILES = {"BTC/USD": "XBTUSD_1h", "ETH/USD": "ETHUSD_1h"}
PAIRS = list(FILES)
COLS = ["ts", "open", "high", "low", "close", "volume", "trades"]


@pytest.fixture(scope="module")
def shared() -> dict[str, pd.DataFrame]:
    from tests.conftest import require_shared

    d = require_shared()
    out = {}
    for pair, stem in FILES.items():
        df = pd.read_parquet(d / f"{stem}.parquet", columns=COLS)
        out[pair] = df[(df.ts >= FIRST) & (df.ts < P0 + 48 * HOUR)].reset_index(drop=True)
        assert (out[pair].ts.diff().dropna() == HOUR).all()  # contiguous window
    return out


@pytest.fixture(scope="module")
def panel(shared):
    from engine.store.panel import load_shared_panel

    return load_shared_panel(list(FILES.values()), start=FIRST, end=P0 + 47 * HOUR)


@pytest.fixture
def sim(panel):
    s = start_sim(panel, start=P0)
    yield s
    s.stop()


@pytest.fixture
def at(sim):
    """Move the simulator clock forward to a time."""

    def go(t: int) -> None:
        sim.ex.advance(to=float(t))

    return go


def adapter(sim, tmp_path: Path) -> KrakenAdapter:
    return KrakenAdapter(Credentials(KEY, SECRET), state_dir=tmp_path / "state", url=sim.url)


def store_upto(tmp_path: Path, shared, upto: int, name: str = "m.duckdb", since: int = FIRST) -> MarketStore:
    """A store holding the shared bars since..upto (inclusive), imported as venue kraken."""
    s = MarketStore(tmp_path / name)
    for pair, df in shared.items():
        s.import_bars(df[(df.ts >= since) & (df.ts <= upto)], "kraken", pair, f"shared-{pair}")
    return s


def stored(s: MarketStore, pair: str, lo: int) -> pd.DataFrame:
    return s.con.execute(
        "SELECT ts, open, high, low, close, volume, trades FROM bars WHERE venue = 'kraken' AND pair = ? "
        "AND ts >= ? ORDER BY ts",
        [pair, lo],
    ).df()


def test_new_bars_equal_history_forming_bar_not_stored_and_rerun_is_noop(sim, at, shared, tmp_path):
    at(P0)
    s = store_upto(tmp_path, shared, P0 - HOUR)
    a = adapter(sim, tmp_path)
    assert not any(w.ready for w in warmup_status(s, PAIRS, P0 + 3 * HOUR).values())
    at(P0 + 3 * HOUR + 120)  # three bars closed since; the fourth (P0+3h) is forming
    step = update_bars(s, a, PAIRS, P0 + 3 * HOUR)
    assert step.ok and step.new_bars == 6 and step.api_failures == 0
    for pair in PAIRS:
        r = step.results[pair]
        assert isinstance(r, PairUpdate) and r.fetched and r.new_bars == 3 and r.last_ts == P0 + 2 * HOUR
        got = stored(s, pair, P0)
        want = shared[pair][(shared[pair].ts >= P0) & (shared[pair].ts < P0 + 3 * HOUR)].reset_index(drop=True)
        assert got.ts.tolist() == [P0, P0 + HOUR, P0 + 2 * HOUR]  # the forming P0+3h is not a bar
        pd.testing.assert_frame_equal(got.astype("float64"), want.astype("float64"), check_exact=True)
    # the forming row is kept in the raw layer only, marked as such
    notes = s.con.execute("SELECT ts, note FROM raw_rows WHERE note IS NOT NULL").fetchall()
    assert sorted(notes) == [(float(P0 + 3 * HOUR), "forming candle (time > last): not stored")] * 2
    assert s.integrity_findings(venue="kraken", live=False).query("severity == 'blocking'").empty
    assert all(w.ready for w in warmup_status(s, PAIRS, P0 + 3 * HOUR).values())
    # the same hour again: no call, nothing stored
    before, sent = s.content_digest(), a.sent["OHLC"]
    again = update_bars(s, a, PAIRS, P0 + 3 * HOUR)
    assert again.ok and again.new_bars == 0 and a.sent["OHLC"] == sent
    assert all(isinstance(r, PairUpdate) and not r.fetched for r in again.results.values())
    assert s.content_digest() == before
    # an hour later: one more bar each
    at(P0 + 4 * HOUR + 60)
    nxt = update_bars(s, a, PAIRS, P0 + 4 * HOUR)
    assert nxt.new_bars == 2 and stored(s, "BTC/USD", P0).ts.max() == P0 + 3 * HOUR
    s.close()


def test_gap_beyond_ohlc_window_is_a_typed_data_gap(sim, at, shared, tmp_path):
    at(P0 + 2 * HOUR)
    # OHLC's 720 rows at P0+2h: the forming P0+2h and 719 closed bars P0-717h .. P0+1h
    s = store_upto(tmp_path, shared, P0 - 719 * HOUR)  # 720 hours missing up to P0+1h: one too many
    a = adapter(sim, tmp_path)
    before = s.content_digest()
    step = update_bars(s, a, ["BTC/USD"], P0 + 2 * HOUR)
    r = step.results["BTC/USD"]
    assert isinstance(r, DataGap) and r.from_ts == r.to_ts == P0 - 718 * HOUR
    assert "older than the 720 rows" in r.reason and not step.ok
    assert s.content_digest() == before and a.sent["OHLC"] == 0
    # 719 missing hours fit: fetched, all stored
    s2 = store_upto(tmp_path, shared, P0 - 718 * HOUR, "m2.duckdb")
    step2 = update_bars(s2, a, ["BTC/USD"], P0 + 2 * HOUR)
    r2 = step2.results["BTC/USD"]
    assert isinstance(r2, PairUpdate) and r2.new_bars == 719 and r2.last_ts == P0 + HOUR
    want = shared["BTC/USD"][shared["BTC/USD"].ts > P0 - 718 * HOUR].iloc[:719].reset_index(drop=True)
    got = stored(s2, "BTC/USD", P0 - 717 * HOUR)
    pd.testing.assert_frame_equal(got.astype("float64"), want.astype("float64"), check_exact=True)
    # an empty store: a cold start, not something OHLC can fill
    s3 = MarketStore(tmp_path / "empty.duckdb")
    r3 = update_bars(s3, a, ["ETH/USD"], P0 + 2 * HOUR).results["ETH/USD"]
    assert isinstance(r3, DataGap) and r3.from_ts is None and "kq data import" in r3.reason
    for x in (s, s2, s3):
        x.close()


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "endpoint": "OHLC", "message": "EService:Busy"},
        {"kind": "error", "endpoint": "OHLC", "message": "EQuery:Unknown asset pair"},
        {"kind": "http_error", "endpoint": "OHLC", "status": 502},
    ],
)
def test_api_failure_is_typed_and_stores_nothing(sim, at, shared, tmp_path, fault):
    at(P0 + 2 * HOUR)
    s = store_upto(tmp_path, shared, P0 - HOUR)
    a = adapter(sim, tmp_path)
    code, _ = sim.admin("/admin/faults", fault)
    assert code == 200
    before = s.content_digest()
    step = update_bars(s, a, ["BTC/USD"], P0 + 2 * HOUR)
    r = step.results["BTC/USD"]
    want = Outcome.REJECTED if "Unknown asset" in str(fault) else Outcome.UNKNOWN
    assert isinstance(r, FetchFailed) and r.outcome is want and step.api_failures == 1 and not step.ok
    assert s.content_digest() == before
    s.close()


def test_bar_not_committed_yet_is_behind(sim, at, shared, tmp_path):
    s = store_upto(tmp_path, shared, P0 - HOUR)
    code, _ = sim.admin("/admin/faults", {"kind": "late_candle", "delay": 600, "count": None})
    assert code == 200
    at(P0 + 2 * HOUR + 60)  # P0+1h closed a minute ago, Kraken commits it 10 minutes after
    r = update_bars(s, adapter(sim, tmp_path), ["BTC/USD"], P0 + 2 * HOUR).results["BTC/USD"]
    assert isinstance(r, Behind) and r.exchange_last == P0 and r.expected == P0 + HOUR
    assert stored(s, "BTC/USD", P0).empty  # P0 is committed but the step waits for the whole hour
    s.close()


def test_malformed_answer_is_typed(sim, at, shared, tmp_path):
    at(P0 + 2 * HOUR)
    s = store_upto(tmp_path, shared, P0 - HOUR)
    a = adapter(sim, tmp_path)

    class Garbled:
        def request(self, **kw):
            return {"error": [], "result": {"XXBTZUSD": [[P0, "1", "1", "1"]], "last": P0}}

    a._sdk.market = Garbled()
    r = update_bars(s, a, ["BTC/USD"], P0 + 2 * HOUR).results["BTC/USD"]
    assert isinstance(r, FetchFailed) and r.outcome is Outcome.UNKNOWN and "malformed" in r.reason
    assert stored(s, "BTC/USD", P0).empty
    s.close()


def test_warmup_status(shared, tmp_path):
    s = store_upto(tmp_path, shared, P0 - HOUR, since=P0 - 768 * HOUR)
    w = warmup_status(s, PAIRS, P0)
    assert all(x.ready and x.have == 768 for x in w.values())
    assert not warmup_status(s, PAIRS, P0, need=769)["BTC/USD"].ready  # one bar short
    late = warmup_status(s, ["BTC/USD"], P0 + HOUR)["BTC/USD"]  # the newest hour is missing
    assert not late.ready and late.have == 0 and late.first_missing == P0
    s.con.execute("DELETE FROM bars WHERE pair = 'ETH/USD' AND ts = ?", [P0 - 10 * HOUR])  # a hole
    e = warmup_status(s, ["ETH/USD"], P0)["ETH/USD"]
    assert not e.ready and e.have == 9 and e.first_missing == P0 - 10 * HOUR
    with pytest.raises(InputError):
        warmup_status(s, PAIRS, P0 + 5)
    s.close()
