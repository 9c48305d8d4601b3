"""Hostile market-data files (issue 21 items 5, 6, 7, 10, 11): generated Kraken OHLCVT CSVs, zips,
parquet files and Kraken REST OHLC JSON fed to :meth:`MarketStore.import_files`, the function
``kq data import`` calls (after the same :func:`~engine.store.readers.expand_paths`), in-process.

Files: valid bars with hostile fields spliced in (empty, nan/inf words, 1e23 and 2^63 trade counts,
booleans, Unicode digits, hex, '_' separators, 400-digit numbers, control characters), shuffled and
duplicated rows, odd line endings, a BOM, random bytes; zips with nested folders, traversal and
control-character names, nested zips, other intervals, the encrypted flag, stored/deflate/bzip2/
lzma members, flipped bytes, and bombs and floods scaled down by patching the limits; parquet with
wrong dtypes (string, bool, list, struct, timestamp, dictionary, null, decimal, unsigned), NaN/inf,
extreme ints, missing or duplicated columns, hostile venue/pair metadata, truncation; REST JSON with
deep nesting, NaN/Infinity tokens, wrong types in rows, odd ``last`` values and error envelopes.
Venue and pair options are drawn too (valid, other spellings, SQL-ish).

Each case must end in exactly one of:
* an :class:`~engine.errors.InputError` (exit code 2) whose message is one printable line, and the
  store's content digest unchanged (all-or-nothing);
* an import, after which every stored venue is one of ``VENUES`` and the store has no blocking
  integrity finding (what the validator admits is never what ``kq data check`` calls damage); a
  hostile ``--venue`` or ``--pair`` is never accepted; a file the generator knows must be refused
  (a field that is not a number by an oracle written apart from the importer, a trade count above
  1e12, a column of a non-numeric type, an encrypted member or one over the patched zip limits) is
  never imported.
Any other exception (a traceback in the CLI) fails the case.

Every test is parametrized by one attack (plus ``clean``) so each attack runs in the short form
(~60 cases per format in all; ``count_case("import-<format>")`` counts them); the generator may add
one more attack. ``make fuzz`` runs the long campaign. ``KQ_FUZZ_OUTCOMES=1`` (with ``-s``) prints
imported/refused counts per format, ``KQ_FUZZ_REASONS=1`` the commonest refusal messages.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
import zipfile
from collections import Counter
from contextlib import ExitStack
from unittest import mock

import numpy as np
import pytest
from fuzzing import CAMPAIGN_EXAMPLES, SHORT_EXAMPLES, count_case, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InputError
from engine.store import readers
from engine.store.market import MarketStore

T0 = 1_700_000_000 // 3600 * 3600

HOSTILE = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "-1",
    "0",
    "-0",
    "1e23",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "1000000000001",
    "True",
    "false",
    "null",
    "١٠٥",
    "１２３",
    "²",
    "0x10",
    "1_000",
    " 5 ",
    "9" * 400,
    "1e-400",
    "1e400",
    "\x00",
    "abc",
    '"1"',
    "1.5.5",
    "+.5",
    "1.",
    "\u2028",
    "\x85",
    "1e",
    "--1",
    "3600.5",
    "kraken'; DROP TABLE bars; --",
]
GOOD_VENUES = [None, "kraken", "Binance (spot)", "COINBASE", "synthetic"]
BAD_VENUES = ["kraken'; DROP TABLE bars; --", "krakenx", "", "kraken\n", "Kraken (futures)"]
GOOD_PAIRS = [None, "XBTUSD", "eth/usd", "XXBTZUSD", "SOLUSDT"]
BAD_PAIRS = ["FOO/BAR", "", "XBT/USD'--", "XBT\nUSD"]


def attacks(first: str, kinds: tuple[str, ...]):
    """The attacks one case applies: ``first`` (the test's parameter: each attack runs in every short
    run) plus at most one more of ``kinds``; ``clean`` alone is a valid file."""
    if first == "clean":
        return st.just(set())
    return st.sets(st.sampled_from(kinds), max_size=1).map(lambda extra: {first, *extra})


def per_attack(kinds: tuple[str, ...]):
    """fuzz_settings for one attack of a target: ~60 cases per target in the short run."""
    n = len(kinds) + 1
    return fuzz_settings(short=max(SHORT_EXAMPLES // n, 3), campaign=max(CAMPAIGN_EXAMPLES // n, 50))


def options(draw, atk: set[str], good_pairs=GOOD_PAIRS) -> tuple[str | None, str | None]:
    """--venue and --pair for a case: hostile ones only under the ``venue`` / ``pair`` attacks."""
    venue = draw(st.sampled_from(BAD_VENUES if "venue" in atk else GOOD_VENUES))
    pair = draw(st.sampled_from(BAD_PAIRS if "pair" in atk else good_pairs))
    return venue, pair


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_import")
    good = d / "ETHUSD_60.csv"
    good.write_text(
        "".join(f"{T0 + 3600 * i},{100 + i},{102 + i},{99 + i},{101 + i},{1.5 + i},{10 + i}\n" for i in range(24))
    )
    with MarketStore(d / "market.duckdb") as s:
        s.import_files([good])
        yield s, d


#: Outcomes per target (imported / refused), printed with KQ_FUZZ_OUTCOMES=1 to check the
#: generators reach both ends.
OUTCOMES: Counter[str] = Counter()
REASONS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _outcomes():
    yield
    if os.environ.get("KQ_FUZZ_OUTCOMES"):
        print("\nimport fuzz outcomes:", dict(sorted(OUTCOMES.items())))
        for k, v in REASONS.most_common(40):
            print(v, k)


_NUMBER_TEXT = re.compile(r"[ \t]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*")


def is_number(value) -> bool:
    """The oracle (written apart from the importer): a JSON number that is not a boolean and is
    finite, or text of ASCII digits with optional sign, fraction and exponent and a finite value."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**1000
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and bool(_NUMBER_TEXT.fullmatch(value)) and math.isfinite(float(value))


def zip_within_limits(path, rep) -> bool:
    """Whether the members an import took obey the (patched) limits and none is encrypted."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        taken = {r.label.split(":", 1)[1] for r in rep.results if r.status != "skipped" and ":" in r.label}
        sizes = [i.file_size for i in infos if i.filename in taken]
        if any(i.flag_bits & 0x1 for i in infos if i.filename in taken):
            return False
    return (
        len(infos) <= readers.MAX_ZIP_ENTRIES
        and len(sizes) <= readers.MAX_ZIP_MEMBERS
        and all(x <= readers.MAX_UNIT_BYTES for x in sizes)
        and sum(sizes) <= readers.MAX_ARCHIVE_BYTES
    )


def run_case(store, path, venue=None, pair=None, limits=None, must_refuse: str = "") -> None:
    """Import ``path``; assert the outcome is an import or a clean refusal (see the module doc).
    ``must_refuse`` names why the generator knows this file must be refused ('' = either way)."""
    s, _ = store
    before = s.content_digest()
    with ExitStack() as stack:
        for name, value in (limits or {}).items():
            stack.enter_context(mock.patch.object(readers, name, value))
        try:
            rep = s.import_files([path], venue=venue, pair=pair)
        except InputError as e:
            msg = str(e)
            assert e.exit_code == 2
            assert msg and "\n" not in msg and msg.isprintable(), repr(msg)
            assert len(msg) <= readers.MAX_MESSAGE_CHARS + 200
            assert s.content_digest() == before, f"store changed by a refused import: {msg}"
            OUTCOMES[f"{path.suffix[1:]} refused"] += 1
            if os.environ.get("KQ_FUZZ_REASONS"):
                REASONS[path.suffix[1:] + ": " + msg.replace(str(path), "").split(":")[-1][:50]] += 1
            return
        if path.suffix == ".zip":  # under the same (patched) limits
            assert zip_within_limits(path, rep), "a zip over the (patched) limits was imported"
    assert not must_refuse, f"accepted a file that must be refused: {must_refuse}"
    assert venue not in BAD_VENUES, f"accepted the venue {venue!r}"
    assert pair not in BAD_PAIRS or rep.imported == 0, f"accepted the pair {pair!r}"
    for r in rep.results:
        assert r.status in ("imported", "already imported", "skipped")
    stored = {v for (v,) in s.con.execute("SELECT DISTINCT venue FROM bars").fetchall()}
    assert stored <= set(readers.VENUES)
    rep_check = s.check()
    assert rep_check["blocking"] == 0, rep_check["blocking_findings"]
    if rep.new_bars == 0 and rep.imported == 0:
        assert s.content_digest() == before
    OUTCOMES[f"{path.suffix[1:]} imported {min(rep.new_bars, 1)}+ bars"] += 1


# ---- Kraken OHLCVT CSV ------------------------------------------------------------------------


def good_rows(draw, n: int) -> list[list[str]]:
    t0 = T0 + 3600 * draw(st.integers(-3, 50_000))  # wide: few overlaps with what earlier cases stored
    px = draw(st.sampled_from([0.5, 100.0, 30000.0, 1e-8]))
    return [
        [
            str(t0 + 3600 * i),
            repr(px),
            repr(px * 1.02),
            repr(px * 0.98),
            repr(px * 1.01),
            repr(draw(st.sampled_from([0.0, 1.5, 1e6]))),
            str(draw(st.integers(0, 10**6))),
        ]
        for i in range(n)
    ]


CSV_ATTACKS = (
    "field",
    "fields",
    "big_trades",
    "shuffle",
    "duplicate",
    "width",
    "binary",
    "bom",
    "eol",
    "empty",
    "name",
    "venue",
    "pair",
)


@st.composite
def csv_case(draw, first="clean"):
    """(file bytes, file name, venue, pair, must_refuse)."""
    atk = draw(attacks(first, CSV_ATTACKS))
    rows = good_rows(draw, 0 if "empty" in atk else draw(st.integers(1, 12)))
    for _ in range(
        {"field": 1, "fields": 3}.get(next((a for a in atk if a in ("field", "fields")), ""), 0) if rows else 0
    ):
        rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, 6))] = draw(
            st.sampled_from(HOSTILE) | st.text(max_size=8)
        )
    if "big_trades" in atk and rows:
        rows[draw(st.integers(0, len(rows) - 1))][6] = draw(
            st.sampled_from(["1e23", "9223372036854775808", "1000000000001", "1e300"])
        )
    if "shuffle" in atk:
        rows = draw(st.permutations(rows))
    if "duplicate" in atk and rows:
        rows.insert(draw(st.integers(0, len(rows))), list(rows[draw(st.integers(0, len(rows) - 1))]))
    if "width" in atk and rows:
        k = draw(st.integers(0, len(rows) - 1))
        rows[k] = rows[k][: draw(st.integers(0, 7))] + ["1"] * draw(st.integers(0, 2))
    eol = draw(st.sampled_from(["\r\n", "\r", "\n\n", "\x85", "\u2028"])) if "eol" in atk else "\n"
    data = (eol.join(",".join(r) for r in rows) + eol).encode("utf-8", errors="surrogatepass")
    if "binary" in atk:
        data = draw(st.binary(max_size=200))
    if "bom" in atk:
        data = b"\xef\xbb\xbf" + data
    name = draw(
        st.sampled_from(
            ["XBTUSD_15.csv", "FOO_60.csv", "export.csv", "X_60.csv.csv", "_60.csv"]
            if "name" in atk
            else ["XBTUSD_60.csv", "XXBTZUSD_60.csv", "SOLUSDT_60.csv", "LTCUSD_60.csv", "XDGUSD_60.csv"]
        )
    )
    must = ""
    if "binary" not in atk:
        if any(not is_number(f) for r in rows for f in r):
            must = "a field that is not a number"
        elif any(len(r) == 7 and float(r[6]) > 1e12 for r in rows):
            must = "a trade count above 1e12"
    return (data, name, *options(draw, atk), must)


@pytest.mark.parametrize("attack", ("clean", *CSV_ATTACKS))
@given(data=st.data())
@per_attack(CSV_ATTACKS)
def test_fuzz_kraken_csv(store, attack, data):
    case = data.draw(csv_case(attack))
    count_case("import-csv")
    data, name, venue, pair, must = case
    p = store[1] / "csv" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    run_case(store, p, venue, pair, must_refuse=must)


# ---- zip ----------------------------------------------------------------------------------------

GOOD_MEMBERS = [
    "XBTUSD_60.csv",
    "ETHUSD_60.csv",
    "XRPUSD_60.csv",
    "ADAUSD_60.csv",
    "a/b/SOLUSD_60.csv",
    "XBTUSD_15.csv",
    "readme.txt",
    "dir/",
]
BAD_MEMBERS = [
    "../../LTCUSD_60.csv",
    "/abs/XRPUSD_60.csv",
    "FOO_60.csv",
    ".hidden_60.csv",
    "XBT\nUSD_60.csv",
    "inner.zip",
    "XBTUSD_60.CSV",
    "x" * 300 + "_60.csv",
    "ünï_60.csv",
    "C:\\x\\DOTUSD_60.csv",
]
COMPRESSION = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
LIMITS = [
    {"MAX_UNIT_BYTES": 300},
    {"MAX_ARCHIVE_BYTES": 700},
    {"MAX_ZIP_MEMBERS": 2},
    {"MAX_ZIP_ENTRIES": 3},
    {"MAX_UNIT_BYTES": 5000, "MAX_ARCHIVE_BYTES": 6000},
]


ZIP_ATTACKS = ("names", "members", "flood", "bomb", "encrypt", "flip", "truncate", "limits", "venue", "pair", "empty")


@st.composite
def zip_case(draw, first="clean"):
    """(zip bytes, limits to patch, venue, pair)."""
    atk = draw(attacks(first, ZIP_ATTACKS))
    buf = io.BytesIO()
    n = 0 if "empty" in atk else draw(st.integers(1, 12 if "flood" in atk else 4))
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate member names are part of the attack
        for i in range(n):
            name = draw(st.sampled_from(BAD_MEMBERS if "names" in atk else GOOD_MEMBERS))
            if "flood" in atk:
                name = f"d{i}/{name.lstrip('./')}"  # many members with one pair name
            if name.endswith("/"):
                z.writestr(zipfile.ZipInfo(name), b"")
                continue
            if name == "inner.zip":
                inner = io.BytesIO()
                with zipfile.ZipFile(inner, "w") as iz:
                    iz.writestr("XBTUSD_60.csv", "\n".join(",".join(r) for r in good_rows(draw, 3)))
                body = inner.getvalue()
            elif "bomb" in atk:  # valid bars, far more than the patched limits
                body = ("\n".join(",".join(r) for r in good_rows(draw, draw(st.integers(50, 3000)))) + "\n").encode()
            elif "members" in atk:
                body = draw(csv_case(draw(st.sampled_from(CSV_ATTACKS))))[0]
            else:
                body = ("\n".join(",".join(r) for r in good_rows(draw, draw(st.integers(1, 6)))) + "\n").encode()
            z.writestr(zipfile.ZipInfo(name), body, compress_type=draw(st.sampled_from(COMPRESSION)))
    data = bytearray(buf.getvalue())
    if "encrypt" in atk:  # the encrypted flag on every header
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = data.find(sig)
            while i >= 0:
                data[i + off] |= 0x1
                i = data.find(sig, i + 4)
    if "flip" in atk:
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    if "truncate" in atk:
        data = data[: draw(st.integers(0, len(data)))]
    limits = {}
    if "limits" in atk or "flood" in atk:
        limits = draw(st.sampled_from(LIMITS))
    if "bomb" in atk:
        limits = draw(st.sampled_from([{"MAX_UNIT_BYTES": 300}, {"MAX_UNIT_BYTES": 5000, "MAX_ARCHIVE_BYTES": 6000}]))
    return (bytes(data), limits, *options(draw, atk, GOOD_PAIRS[:1] * 4 + GOOD_PAIRS[1:3]))


@pytest.mark.parametrize("attack", ("clean", *ZIP_ATTACKS))
@given(data=st.data())
@per_attack(ZIP_ATTACKS)
def test_fuzz_zip(store, attack, data):
    case = data.draw(zip_case(attack))
    count_case("import-zip")
    data, limits, venue, pair = case
    p = store[1] / "zip" / "Kraken_OHLCVT.zip"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    run_case(store, p, venue, pair, limits)


# ---- parquet --------------------------------------------------------------------------------------

EXTREME_INTS = [2**63 - 1, -(2**63), 0, -1, 10**12 + 1, 2**53 + 1]


def _parquet_column(draw, name: str, n: int, ts: np.ndarray, kind: str):
    import pyarrow as pa

    good = (
        ts
        if name == "ts"
        else np.full(
            n,
            {"open": 100.0, "high": 102.0, "low": 98.0, "close": 101.0, "volume": 2.5, "trades": 7.0, "vwap": 100.5}[
                name
            ],
        )
    )
    if kind == "good":
        return pa.array(good.astype(np.int64) if name in ("ts", "trades") else good)
    if kind == "float32":
        return pa.array(good.astype(np.float32))
    if kind == "int32":
        return pa.array(np.clip(good, -(2**31), 2**31 - 1).astype(np.int32))
    if kind == "uint64":
        return pa.array(np.abs(good).astype(np.uint64))
    if kind == "string":
        return pa.array([str(x) for x in good])
    if kind == "bool":
        return pa.array([bool(i % 2) for i in range(n)])
    if kind == "list":
        return pa.array([[float(x)] for x in good])
    if kind == "struct":
        return pa.array([{"v": float(x)} for x in good])
    if kind == "timestamp":
        return pa.array(good.astype("int64") * 1_000_000_000, pa.timestamp("ns"))
    if kind == "dictionary":
        return pa.array([str(x) for x in good]).dictionary_encode()
    if kind == "null":
        return pa.nulls(n)
    if kind == "decimal":
        from decimal import Decimal

        return pa.array([Decimal(str(float(x))) for x in good], pa.decimal128(38, 8))
    if kind == "extreme":
        return pa.array([draw(st.sampled_from(EXTREME_INTS)) for _ in range(n)], pa.int64())
    vals = good.astype(np.float64).copy()
    if n:
        vals[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]))
    return pa.array(vals, from_pandas=False)


BAD_KINDS = [
    "float32",
    "int32",
    "uint64",
    "string",
    "bool",
    "list",
    "struct",
    "timestamp",
    "dictionary",
    "null",
    "decimal",
    "extreme",
    "nonfinite",
]
PARQUET_ATTACKS = (
    *(f"dtype-{k}" for k in BAD_KINDS),
    "dtypes",
    "big_trades",
    "missing",
    "duplicate",
    "extra",
    "metadata",
    "truncate",
    "empty",
    "name",
    "venue",
    "pair",
)


@st.composite
def parquet_case(draw, first="clean"):
    """(parquet bytes, file name, venue, pair, must_refuse)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    atk = draw(attacks(first, PARQUET_ATTACKS))
    n = 0 if "empty" in atk else draw(st.integers(1, 6))
    ts = T0 + 3600 * (np.arange(n, dtype=np.int64) + draw(st.integers(0, 50_000)))
    names = ["ts", "open", "high", "low", "close", "volume"] + [c for c in ("trades", "vwap") if draw(st.booleans())]
    hostile = set()
    if "big_trades" in atk and "trades" not in names:
        names.append("trades")
    one = next((a[6:] for a in atk if a.startswith("dtype-")), None)
    if one or "dtypes" in atk:
        hostile = set(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3 if "dtypes" in atk else 1)))
    if "missing" in atk:
        names.remove(draw(st.sampled_from(names)))
    if "duplicate" in atk:
        names.append(draw(st.sampled_from(names)))
    if "extra" in atk:
        names.append("note")
    kinds = {c: one or draw(st.sampled_from(BAD_KINDS)) for c in sorted(hostile)}
    if "big_trades" in atk:
        kinds["trades"] = "extreme"
    arrays = [
        pa.array(["x" * 50] * n) if c == "note" else _parquet_column(draw, c, n, ts, kinds.get(c, "good"))
        for c in names
    ]
    must = ""
    if n and any(k in ("string", "bool", "list", "struct", "timestamp", "dictionary") for k in kinds.values()):
        must = f"a column of type {sorted(kinds.values())}"
    if n and kinds.get("trades") == "extreme" and any(v != 0 for v in arrays[names.index("trades")].to_pylist()):
        must = "trade counts outside [0, 1e12]"
    table = pa.Table.from_arrays(arrays, names=names)
    md = {}
    if draw(st.booleans()):
        md["venue"] = draw(
            st.sampled_from(
                ["kraken'; DROP TABLE bars; --", "mars", "", "\x00"]
                if "metadata" in atk
                else ["Kraken", "Binance (spot)", "Coinbase (spot)"]
            )
        )
    if draw(st.booleans()):
        md["pair"] = draw(
            st.sampled_from(
                ["NOPE/USD", "(", "\n", "))(("]
                if "metadata" in atk
                else ["XBT/USD (BTC/USD)", "ETH/USD", "BTC/USDT", "SOL/USD"]
            )
        )
    if "metadata" in atk and draw(st.booleans()):
        md["interval"] = draw(st.sampled_from(["15m", "\x00", "", "1d"]))
    if md:
        table = table.replace_schema_metadata(md)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    if "truncate" in atk:
        data = data[: draw(st.integers(0, len(data)))]
    name = draw(
        st.sampled_from(
            ["evil_BTCUSDT_1h.parquet", "XBTUSD_15m.parquet", "x_y_z_1h.parquet"]
            if "name" in atk
            else ["XBTUSD_1h.parquet", "binance_BTCUSDT_1h.parquet", "LTCUSD.parquet", "XRPUSD_1h.parquet"]
        )
    )
    return (data, name, *options(draw, atk), must)


@pytest.mark.parametrize("attack", ("clean", *PARQUET_ATTACKS))
@given(data=st.data())
@per_attack(PARQUET_ATTACKS)
def test_fuzz_parquet(store, attack, data):
    case = data.draw(parquet_case(attack))
    count_case("import-parquet")
    data, name, venue, pair, must = case
    p = store[1] / "parquet" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    run_case(store, p, venue, pair, must_refuse=must)


# ---- Kraken REST OHLC JSON -------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.integers(10**300, 10**310),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE),
    st.text(max_size=6),
)
JSON_VALUES = (
    JSON_SCALARS | st.lists(JSON_SCALARS, max_size=2) | st.dictionaries(st.text(max_size=2), JSON_SCALARS, max_size=2)
)


JSON_ATTACKS = (
    "field",
    "fields",
    "bool",
    "big_count",
    "row",
    "width",
    "last",
    "shape",
    "deep",
    "error",
    "key",
    "truncate",
    "venue",
    "pair",
    "empty",
)


@st.composite
def json_case(draw, first="clean"):
    """(JSON bytes, venue, pair, must_refuse)."""
    atk = draw(attacks(first, JSON_ATTACKS))
    n = 0 if "empty" in atk else draw(st.integers(1, 8))
    t0 = T0 + 3600 * draw(st.integers(0, 50_000))
    rows = [[t0 + 3600 * i, "10.0", "12.0", "9.0", "11.0", "10.5", "2.5", 7] for i in range(n)]
    for _ in range(
        {"field": 1, "fields": 3}.get(next((a for a in atk if a in ("field", "fields")), ""), 0) if n else 0
    ):
        rows[draw(st.integers(0, n - 1))][draw(st.integers(0, 7))] = draw(JSON_VALUES)
    if "bool" in atk and n:
        rows[draw(st.integers(0, n - 1))][draw(st.integers(0, 7))] = draw(st.booleans())
    if "big_count" in atk and n:
        rows[draw(st.integers(0, n - 1))][7] = draw(st.sampled_from([10**23, 2**63, 10**12 + 1, "1e23"]))
    if "width" in atk and n:
        k = draw(st.integers(0, n - 1))
        rows[k] = rows[k][: draw(st.integers(0, 7))] + [draw(JSON_SCALARS)] * draw(st.integers(0, 2))
    if "row" in atk and n:
        rows[draw(st.integers(0, n - 1))] = draw(JSON_VALUES)  # a row that is not a list
    last = t0 + 3600 * max(n - 2, 0)
    if "last" in atk:
        last = draw(st.sampled_from(["soon", math.nan, math.inf, True, -1, 2**70, 1.5, None, [last]]))
    key = draw(
        st.sampled_from(
            ["NOPEUSD", "last", "", "XBT\nUSD"] if "key" in atk else ["XXBTZUSD", "XETHZUSD", "SOLUSD", "XXRPZUSD"]
        )
    )
    result = {key: rows, "last": last}
    doc = {"error": [], "result": result}
    if "shape" in atk:
        doc = draw(
            st.sampled_from(
                [
                    result,
                    rows,
                    {"XXBTZUSD": rows, "XETHZUSD": rows, "last": last},
                    {"result": result},
                    {"error": None, "result": rows},
                    "text",
                    5,
                ]
            )
        )
    if "error" in atk:
        doc = {
            "error": draw(
                st.sampled_from([["EQuery:Unknown asset pair"], "line\nbreak", [["x"] * 3], 5, {"a": "\x00" * 3}])
            ),
            "result": result,
        }
    if "deep" in atk:
        depth = draw(st.sampled_from([60, 2_000, 50_000]))
        return (("[" * depth + "]" * depth).encode(), *options(draw, atk, [None]), "nested lists")
    must = ""
    if any(not is_number(v) for r in rows if isinstance(r, list) for v in r):
        must = "a row value that is not a number"
    elif any(
        isinstance(r, list) and len(r) == 8 and float(r[7]) > 1e12 and (type(last) is not int or r[0] <= last)
        for r in rows
    ):  # the forming candle is not stored
        must = "a trade count above 1e12"
    try:
        text = json.dumps(doc, allow_nan=True)
    except ValueError:  # an integer too long for str() in this Python: still hostile, write it another way
        text = "[" + "9" * 5000 + "]"
    if "truncate" in atk:
        text = text[: draw(st.integers(0, len(text)))]
    return (text.encode(), *options(draw, atk, [None] * 4 + ["XBTUSD"]), must)


@pytest.mark.parametrize("attack", ("clean", *JSON_ATTACKS))
@given(data=st.data())
@per_attack(JSON_ATTACKS)
def test_fuzz_rest_json(store, attack, data):
    case = data.draw(json_case(attack))
    count_case("import-rest-json")
    data, venue, pair, must = case
    p = store[1] / "json" / "ohlc.json"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    run_case(store, p, venue, pair, must_refuse=must)
