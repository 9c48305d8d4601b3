"""The market store on the REAL shared data: every file imported, matched against PROVENANCE.md."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared

from engine.store.market import MarketStore
from engine.store.panel import FIELDS, load_shared_panel

BINANCE10 = ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]
OVERLAP_START, OVERLAP_END = 1600754400, 1763247600  # 2020-09-22 06:00 .. 2025-11-15 23:00


def _ts(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp())


def provenance(shared: Path) -> dict[str, dict]:
    """Parse PROVENANCE.md: the summary table and each file's zero-volume count."""
    text = (shared / "PROVENANCE.md").read_text()
    out: dict[str, dict] = {}
    for m in re.finditer(
        r"^\| (\S+\.parquet) \| ([^|]+) \| ([^|]+) \| ([\d-]+ [\d:]+) \| ([\d-]+ [\d:]+) \| "
        r"([\d,]+) \| ([\d,]+) \|",
        text,
        re.M,
    ):
        name, venue, pair, first, last, rows, missing = m.groups()
        out[name] = {
            "venue": "binance" if venue.startswith("Binance") else "kraken",
            "pair": pair.strip(),
            "first": _ts(first),
            "last": _ts(last),
            "rows": int(rows.replace(",", "")),
            "missing": int(missing.replace(",", "")),
        }
    for m in re.finditer(r"^### (\S+\.parquet)\n(.*?)(?=^### |\Z)", text, re.M | re.S):
        z = re.search(r"^\| zero-volume bars \| (\d+) \|", m.group(2), re.M)
        if m.group(1) in out and z:
            out[m.group(1)]["zero_volume"] = int(z.group(1))
    return out


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    shared = require_shared()
    path = tmp_path_factory.mktemp("store") / "market.duckdb"
    with MarketStore(path) as s:
        rep = s.import_files([shared])
    return path, shared, rep


def test_every_shared_file_matches_provenance(shared_store):
    path, shared, rep = shared_store
    files = sorted(p.name for p in shared.glob("*.parquet"))
    prov = provenance(shared)
    assert sorted(prov) == files and len(files) == 15  # the summary table covers every file
    assert rep.imported == 15 and rep.new_bars == sum(p["rows"] for p in prov.values())
    by_file = {Path(r.label).name: r for r in rep.results}
    with MarketStore(path, read_only=True) as s:
        infos = {(i.venue, i.pair): i for i in s.list_pairs()}
        findings = s.integrity_findings()
    assert len(infos) == 15
    for name, exp in prov.items():
        r = by_file[name]
        assert r.venue == exp["venue"], name
        info = infos[(r.venue, r.pair)]
        got = (info.rows, info.first_ts, info.last_ts, info.missing_hours)
        assert got == (exp["rows"], exp["first"], exp["last"], exp["missing"]), name
        zv = findings[(findings.pair == r.pair) & (findings.venue == r.venue) & (findings.kind == "zero_volume")]
        assert len(zv) == exp["zero_volume"], name
        gaps = findings[(findings.pair == r.pair) & (findings.venue == r.venue) & (findings.kind == "gap")]
        assert int(gaps["value"].sum()) == exp["missing"], name
    # names as every --pairs accepts them: Kraken XBT is BTC
    assert ("kraken", "BTC/USD") in infos and ("binance", "DOGE/USDT") in infos


def test_link_bad_print_is_flagged_and_kept(shared_store):
    path, _, _ = shared_store
    bad_ts = _ts("2020-03-12 10:00")
    with MarketStore(path, read_only=True) as s:
        f = s.integrity_findings(venue="binance")
        bp = f[f.kind == "bad_print"]
        # the only bad print in the shared data: the 0.0001 low on LINK/USDT
        assert bp[["pair", "ts", "severity"]].values.tolist() == [["LINK/USDT", bad_ts, "warning"]]
        assert bp["value"].iloc[0] == 0.0001
        p = s.load_panel(["LINKUSDT"], "binance", bad_ts - 3600, bad_ts + 3600)
        assert p.valid[:, 0].tolist() == [True, True, True]  # kept, never deleted
        assert p.low[1, 0] == 0.0001 and p.close[1, 0] == 2.4693
        # the real 2025-10-10 21:00 crash wicks are NOT bad prints
        assert not (bp.ts == _ts("2025-10-10 21:00")).any()
        # a stored state of warnings only: nothing blocking
        assert s.check()["blocking"] == 0


def test_load_panel_equals_load_shared_panel_bit_identical(shared_store):
    path, _, _ = shared_store
    stems = [f"binance_{b}USDT_1h" for b in BINANCE10]
    ref = load_shared_panel(stems, OVERLAP_START, OVERLAP_END)
    with MarketStore(path, read_only=True) as s:
        got = s.load_panel([f"{b}USDT" for b in BINANCE10], "binance", OVERLAP_START, OVERLAP_END)
        kr = s.load_panel(["XBTUSD", "XETHZUSD", "SOL/USD"], "kraken")  # no range: the union of spans
    kref = load_shared_panel(["XBTUSD_1h", "ETHUSD_1h", "SOLUSD_1h"])
    for a, b in ((got, ref), (kr, kref)):
        assert a.pairs == b.pairs and a.venue == b.venue
        assert a.ts.dtype == np.int64 and np.array_equal(a.ts, b.ts)
        assert np.array_equal(a.valid, b.valid)
        for f in FIELDS:
            x, y = getattr(a, f), getattr(b, f)
            assert x.dtype == y.dtype == np.float64
            assert x.tobytes() == y.tobytes(), f  # bit-identical, NaN where missing
    assert got.n_bars == 45138 and int(got.valid[:, BINANCE10.index("AVAX")].sum()) == 45118
    assert np.isnan(kr.trades[:, 2]).all() and (kr.trades[kr.valid[:, 0], 0] > 0).all()


def test_reimport_is_a_noop(shared_store):
    path, shared, _ = shared_store
    with MarketStore(path) as s:
        before = s.content_digest()
        rep = s.import_files(sorted(shared.glob("*.parquet")))
        assert rep.unchanged == 15 and rep.imported == 0 and rep.new_bars == 0 and rep.noop
        assert s.content_digest() == before


def test_determinism_same_files_same_store(tmp_path, shared_dir):
    names = ["binance_LINKUSDT_1h.parquet", "LTCUSD_1h.parquet"]
    digests = []
    for k, order in enumerate((names, names[::-1])):
        with MarketStore(tmp_path / f"s{k}.duckdb") as s:
            s.import_files([shared_dir / n for n in order])
            digests.append(
                (
                    s.table_counts()["bars"],
                    s.integrity_findings().to_csv(index=False),
                    s.load_panel(["LINK/USDT"], "binance").close.tobytes(),
                )
            )
    assert digests[0] == digests[1]
