"""Readers for every bar format the market store imports, and the one validator they share.

Each reader turns one input (a file, a zip member, one pair of a REST response, a frame) into a
:class:`Parsed` unit: the rows as received (``raw``, with their line/row number) and the validated,
ts-sorted bars (``bars``). A malformed input raises :class:`~engine.errors.InputError` with one line
naming the file, the line (or row) and the rule broken; nothing is written before every input of an
import has parsed. Validation is vectorised (numpy/pandas); there is no per-row Python loop.

Formats:

* Kraken's official OHLCVT CSV: no header, ``time,open,high,low,close,volume,trades``, files named
  ``<PAIR>_<minutes>.csv`` (only ``_60`` files are hourly bars), also inside a ``.zip``.
* Kraken REST ``OHLC`` rows ``[time, open, high, low, close, vwap, volume, count]``: a JSON file
  holding the whole envelope (``{"error": [], "result": {...}}``) or just ``result``, or a Python list
  (:func:`parse_rest_rows`, what the live backfill calls). Rows newer than ``last`` (the still-forming
  candle) are kept in the raw layer but never become bars.
* The ``../shared/data/ohlcv`` parquet layout (``XBTUSD_1h.parquet``, ``binance_BTCUSDT_1h.parquet``),
  whose key-value metadata ``venue``/``pair`` is used when present.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.pairs import normalize_pair
from engine.store.integrity import MAX_TRADES
from engine.timeutil import HOUR

VALUE_FIELDS = ("open", "high", "low", "close", "volume", "trades", "vwap")
PRICE_FIELDS = ("open", "high", "low", "close")
#: Timestamps outside [2009-01-01, 2100-01-01) are not unix seconds (milliseconds, typos).
TS_MIN, TS_MAX = 1230768000, 4102444800
KRAKEN_CSV_COLUMNS = ("time", "open", "high", "low", "close", "volume", "trades")
REST_COLUMNS = ("time", "open", "high", "low", "close", "vwap", "volume", "count")
SUPPORTED_SUFFIXES = (".csv", ".zip", ".json", ".parquet")

# Resource limits (a hostile file must not exhaust memory or time; docs/DECISIONS.md 2026-12-07).
#: Most bytes one importable unit may hold, read or decompressed: a plain .csv/.json/.parquet file or
#: one zip member. 32 MiB is ~4.5x the largest real hourly file (Kraken XBTUSD_60.csv since 2013,
#: ~7 MB); parsing a 35 MiB CSV (700k rows) measured 13 s and +670 MiB peak memory.
MAX_UNIT_BYTES = 32 * 2**20
#: Most bytes the members read from one zip may decompress to, together (every member is parsed
#: before the one write transaction, so all are held at once).
MAX_ARCHIVE_BYTES = 256 * 2**20
#: Most entries a zip's directory may list (Kraken's complete OHLCVT archive lists ~9,000:
#: ~1,100 pairs x 8 intervals).
MAX_ZIP_ENTRIES = 50_000
#: Most hourly CSV members one zip may contribute (each is one import unit; this system knows
#: ~100 pairs, and each unit costs ~15 ms to write).
MAX_ZIP_MEMBERS = 500
#: Most rows one parquet file may declare (228 years of hourly bars), checked before reading.
MAX_PARQUET_ROWS = 2_000_000
_CHUNK = 1 << 20


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n:,} bytes"


#: The longest error message (an echoed field or name is cut before it gets there).
MAX_MESSAGE_CHARS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line: control characters (newlines too) escaped, cut at ``limit``."""
    out = _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _echo(value, limit: int = 40) -> str:
    """A value as an error message shows it: repr, one line, at most ``limit`` characters."""
    return one_line(repr(value), limit)


#: What a damaged zip or a member in an unsupported format can raise while it is opened or read.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    IndexError,
)

_KRAKEN_NAME = re.compile(r"^(?P<pair>[A-Za-z0-9]+)_(?P<minutes>\d+)$")
#: The venues bars may be stored under (a fixed set: a venue name is never taken from a file as typed).
VENUES = ("kraken", "binance", "coinbase", "synthetic")
_VENUE = re.compile(r"([a-z]+)(?: ?\(spot\))?")


@dataclass
class Parsed:
    """One importable unit: a file, a zip member, one pair of a REST response, or a frame."""

    label: str  # how messages name it: the path as given, ``a.zip:XBTUSD_60.csv``, ...
    name: str  # base file name (or source label for frames)
    member: str  # '' for a plain file, the pair key for a multi-pair JSON
    sha256: str  # content hash of the unit (a zip member's own bytes)
    kind: str  # kraken-csv | kraken-rest | parquet | frame
    venue: str
    pair: str  # canonical BASE/QUOTE
    source_pair: str  # the pair as the source spelled it
    raw: pd.DataFrame  # rows as received: line, ts, open..vwap, note
    bars: pd.DataFrame  # validated: ts (int64), open..volume (float64), trades (Int64), vwap (float64)
    meta: dict = field(default_factory=dict)


@dataclass
class Skipped:
    label: str
    reason: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalize_venue(venue: str, label: str | None = None) -> str:
    """``Binance (spot)`` -> ``binance``, ``Kraken`` -> ``kraken``: one of :data:`VENUES`, optionally
    followed by ``(spot)``; anything else is refused (never cut down to a known prefix)."""
    m = _VENUE.fullmatch(venue.strip(" ").lower()) if isinstance(venue, str) else None
    if m is None or m.group(1) not in VENUES:
        where = f"{label}: " if label else ""
        raise InputError(f"{where}unknown venue {_echo(venue)} (known: {', '.join(VENUES)})")
    return m.group(1)


def _pair(name: str, label: str) -> str:
    try:
        return normalize_pair(name)
    except InputError:
        raise InputError(f"{label}: unknown pair name {name!r} (pass --pair to name it)") from None


# --------------------------------------------------------------------------------------------
# validation (shared by every format)


def _fail(label: str, unit: str, lines: np.ndarray, mask: np.ndarray, rule: str, detail=None) -> None:
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        extra = f" ({detail(i)})" if detail is not None else ""
        raise InputError(f"{label}: {unit} {int(lines[i])}: {rule}{extra}")


def validate(label: str, frame: pd.DataFrame, lines: np.ndarray, unit: str = "line") -> pd.DataFrame:
    """Check one unit's rows and return them as sorted bars. ``frame`` holds float64 columns
    ts, open, high, low, close, volume, trades, vwap (NaN = absent for trades/vwap).

    Rules, each naming the first offending line: non-numeric or missing value, timestamp not in unix
    seconds, timestamp off the hourly grid, duplicate timestamp, non-positive price, high < low,
    open/close outside [low, high], negative volume, negative or fractional trade count, trade count
    above :data:`~engine.store.integrity.MAX_TRADES` (it would not fit the stored integer).
    """
    n = len(frame)
    if n == 0:
        raise InputError(f"{label}: empty file (no rows)")
    lines = np.asarray(lines, dtype=np.int64)
    cols = {f: frame[f].to_numpy(dtype=np.float64, na_value=np.nan) for f in ("ts", *VALUE_FIELDS)}
    for f in ("ts", *PRICE_FIELDS, "volume"):
        v = cols[f]
        _fail(label, unit, lines, ~np.isfinite(v), f"non-numeric or missing value in column '{f}'")
    for f in ("trades", "vwap"):
        v = cols[f]
        _fail(label, unit, lines, np.isinf(v), f"non-numeric value in column '{f}'")
    t = cols["ts"]
    _fail(
        label,
        unit,
        lines,
        t != np.floor(t),
        "timestamp is not a whole number of seconds",
        lambda i: f"time {float(t[i])!r}",
    )
    _fail(
        label,
        unit,
        lines,
        (t < TS_MIN) | (t >= TS_MAX),
        "timestamp not in unix seconds (2009..2100)",
        lambda i: f"time {t[i]:.0f}",
    )
    ts = t.astype(np.int64)
    _fail(
        label,
        unit,
        lines,
        ts % HOUR != 0,
        "timestamp off the hourly grid (not a multiple of 3600)",
        lambda i: f"time {ts[i]}",
    )
    order = np.argsort(ts, kind="stable")
    st = ts[order]
    dup_sorted = np.zeros(n, dtype=bool)
    dup_sorted[1:] = st[1:] == st[:-1]
    if dup_sorted.any():
        dup = np.zeros(n, dtype=bool)
        dup[order[dup_sorted]] = True
        # report the later occurrence in file order, and where the timestamp was first seen
        i = int(np.flatnonzero(dup)[0])
        first = int(lines[np.flatnonzero(ts == ts[i])[0]])
        raise InputError(f"{label}: {unit} {int(lines[i])}: duplicate timestamp {ts[i]} (first on {unit} {first})")
    o, h, lo, c = (cols[f] for f in PRICE_FIELDS)
    nonpos = (o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0)
    _fail(
        label,
        unit,
        lines,
        nonpos,
        "non-positive price",
        lambda i: f"open {float(o[i])!r} high {float(h[i])!r} low {float(lo[i])!r} close {float(c[i])!r}",
    )
    _fail(label, unit, lines, h < lo, "high < low", lambda i: f"high {float(h[i])!r} < low {float(lo[i])!r}")
    outside = (o > h) | (o < lo) | (c > h) | (c < lo)
    _fail(
        label,
        unit,
        lines,
        outside,
        "open/close outside [low, high]",
        lambda i: f"open {float(o[i])!r} high {float(h[i])!r} low {float(lo[i])!r} close {float(c[i])!r}",
    )
    vol = cols["volume"]
    _fail(label, unit, lines, vol < 0, "negative volume", lambda i: f"volume {float(vol[i])!r}")
    tr = cols["trades"]
    with np.errstate(invalid="ignore"):
        bad_tr = ~np.isnan(tr) & ((tr < 0) | (tr != np.floor(tr)))
    _fail(label, unit, lines, bad_tr, "trade count is not a whole number >= 0", lambda i: f"trades {float(tr[i])!r}")
    with np.errstate(invalid="ignore"):
        big_tr = ~np.isnan(tr) & (tr > MAX_TRADES)
    _fail(
        label,
        unit,
        lines,
        big_tr,
        f"trade count above {MAX_TRADES:.0e} (not a plausible hourly count)",
        lambda i: f"trades {float(tr[i])!r}",
    )
    vw = cols["vwap"]
    vw = np.where(vw > 0, vw, np.nan)  # Kraken sends vwap 0 for bars without trades: unknown
    trn = tr[order]
    trades = pd.arrays.IntegerArray(np.where(np.isnan(trn), 0, trn).astype(np.int64), np.isnan(trn))
    bars = pd.DataFrame(
        {
            "ts": st,
            **{f: cols[f][order] for f in ("open", "high", "low", "close", "volume")},
            "trades": trades,
            "vwap": vw[order],
            "line": lines[order],
        }
    )
    return bars


def _raw_frame(lines: np.ndarray, frame: pd.DataFrame, note=None) -> pd.DataFrame:
    data = {"line": np.asarray(lines, dtype=np.int64)}
    for f in ("ts", *VALUE_FIELDS):
        data[f] = frame[f].to_numpy(dtype=np.float64, na_value=np.nan)
    data["note"] = note if note is not None else np.full(len(data["line"]), None, dtype=object)
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------
# Kraken OHLCVT CSV


#: A number as text: ASCII digits only (no Unicode digits, no '_', no hex, no nan/inf words),
#: optional sign, fraction and exponent; surrounding spaces or tabs allowed.
_NUMBER = re.compile(r"[ \t]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t]*")


#: Every character a Kraken CSV of numbers may hold: when a file holds no other, each field is
#: already ASCII and pandas' parser decides the rest (the per-field grammar check is skipped).
_CSV_CHARS = b"0123456789+-.eE, \t\r\n"


def _numbers(s: pd.Series, plain_ascii: bool = False) -> np.ndarray:
    """float64 values of a column of Python values: str in the :data:`_NUMBER` grammar, int (not
    bool), float; anything else is NaN, refused by the caller as non-numeric. An int beyond float
    range becomes +-inf (refused too). ``plain_ascii``: every value is a str of :data:`_CSV_CHARS`."""
    if plain_ascii:
        return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    vals = s.to_numpy(dtype=object)
    kinds = [type(x) for x in vals]
    out = np.full(len(vals), np.nan)
    is_str = np.fromiter((k is str for k in kinds), dtype=bool, count=len(vals))
    if is_str.any():
        strs = pd.Series(vals[is_str], dtype=object)
        ok = strs.str.fullmatch(_NUMBER).to_numpy(dtype=bool)
        out[np.flatnonzero(is_str)[ok]] = pd.to_numeric(strs[ok], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    is_float = np.fromiter((k is float for k in kinds), dtype=bool, count=len(vals))
    out[is_float] = vals[is_float].astype(np.float64)
    # a bool is not a number here (True is not a volume of 1): type(True) is bool, not int
    is_int = np.fromiter((k is int for k in kinds), dtype=bool, count=len(vals))
    out[is_int] = [float(x) if abs(x) < 2**1000 else (math.inf if x > 0 else -math.inf) for x in vals[is_int]]
    return out


def _numeric_columns(
    label: str, table: pd.DataFrame, names: tuple[str, ...], lines: np.ndarray, unit: str, plain_ascii: bool = False
) -> pd.DataFrame:
    out = {}
    for k, name in enumerate(names):
        s = table[k]
        v = _numbers(s, plain_ascii)
        bad = np.isnan(v) | np.isinf(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{label}: {unit} {int(lines[i])}: non-numeric field '{name}' ({_echo(s.iloc[i])})")
        out[name] = v
    return pd.DataFrame(out)


def kraken_csv_name(name: str) -> tuple[str, int] | None:
    """``XBTUSD_60.csv`` -> (``XBTUSD``, 60); None when the name does not follow Kraken's pattern."""
    m = _KRAKEN_NAME.match(Path(name).stem)
    return (m.group("pair"), int(m.group("minutes"))) if m else None


def parse_kraken_csv(data: bytes, label: str, name: str, venue: str | None, pair: str | None) -> Parsed:
    """Kraken's official OHLCVT CSV: time, open, high, low, close, volume, trades (no header)."""
    parsed_name = kraken_csv_name(name)
    if parsed_name is not None and parsed_name[1] != 60:
        raise InputError(f"{label}: {parsed_name[1]}-minute bars; only hourly files (<PAIR>_60.csv) can be imported")
    if pair is None:
        if parsed_name is None:
            raise InputError(f"{label}: cannot infer the pair from the file name (expected <PAIR>_60.csv); pass --pair")
        pair = parsed_name[0]
    canon = _pair(pair, label)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a text file (UTF-8 expected)") from None
    lines_txt = text.splitlines()
    while lines_txt and not lines_txt[-1].strip():
        lines_txt.pop()
    if not lines_txt:
        raise InputError(f"{label}: empty file (no rows)")
    s = pd.Series(lines_txt, dtype=object)
    lines = np.arange(1, len(s) + 1, dtype=np.int64)
    counts = s.str.count(",").to_numpy() + 1
    ncol = len(KRAKEN_CSV_COLUMNS)
    wrong = counts != ncol
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise InputError(
            f"{label}: line {i + 1}: wrong column count ({counts[i]} fields, expected {ncol}: "
            f"{','.join(KRAKEN_CSV_COLUMNS)})"
        )
    table = s.str.split(",", expand=True)
    plain = text.isascii() and not text.encode("ascii").translate(None, _CSV_CHARS)
    num = _numeric_columns(label, table, KRAKEN_CSV_COLUMNS, lines, "line", plain)
    frame = num.rename(columns={"time": "ts"})
    frame["vwap"] = np.nan
    bars = validate(label, frame, lines, "line")
    return Parsed(
        label,
        name,
        "",
        sha256_bytes(data),
        "kraken-csv",
        normalize_venue(venue or "kraken", label),
        canon,
        pair,
        _raw_frame(lines, frame),
        bars,
    )


# --------------------------------------------------------------------------------------------
# Kraken REST OHLC rows


def parse_rest_rows(
    rows: list,
    pair: str,
    *,
    label: str = "kraken-rest",
    venue: str = "kraken",
    last: int | None = None,
    sha256: str | None = None,
    member: str = "",
    name: str | None = None,
) -> Parsed:
    """Kraken REST ``OHLC`` rows ``[time, open, high, low, close, vwap, volume, count]`` (prices as
    strings or numbers). Rows with ``time > last`` are the still-forming candle: kept raw, not stored."""
    canon = _pair(pair, label)
    if not isinstance(rows, list) or len(rows) == 0:
        raise InputError(f"{label}: empty file (no rows)")
    ncol = len(REST_COLUMNS)
    lens = np.fromiter((len(r) if isinstance(r, (list, tuple)) else -1 for r in rows), dtype=np.int64, count=len(rows))
    lines = np.arange(1, len(rows) + 1, dtype=np.int64)
    wrong = lens != ncol
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        got = "not a list" if lens[i] < 0 else f"{lens[i]} fields"
        raise InputError(f"{label}: row {i + 1}: wrong column count ({got}, expected {ncol}: {','.join(REST_COLUMNS)})")
    table = pd.DataFrame(rows, dtype=object)
    num = _numeric_columns(label, table, REST_COLUMNS, lines, "row")
    frame = num.rename(columns={"time": "ts", "count": "trades"})
    note = None
    keep = np.ones(len(frame), dtype=bool)
    if last is not None:
        keep = frame["ts"].to_numpy() <= float(last)
        note = np.where(keep, np.array(None, dtype=object), "forming candle (time > last): not stored").astype(object)
    raw = _raw_frame(lines, frame, note)
    if not keep.any():
        raise InputError(f"{label}: no committed rows (every row is newer than last={last})")
    bars = validate(label, frame[keep].reset_index(drop=True), lines[keep], "row")
    if sha256 is None:
        sha256 = sha256_bytes(json.dumps([canon, rows, last], sort_keys=True, default=str).encode())
    return Parsed(
        label,
        name or label,
        member,
        sha256,
        "kraken-rest",
        normalize_venue(venue, label),
        canon,
        pair,
        raw,
        bars,
        {"last": last},
    )


class _JSONConstant(ValueError):
    pass


def _no_constant(name: str):
    raise _JSONConstant(name)


def parse_rest_json(data: bytes, label: str, name: str, venue: str | None, pair: str | None) -> list[Parsed]:
    try:
        doc = json.loads(data.decode("utf-8-sig"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", 1)
        raise InputError(f"{label}: line {line}: not valid JSON") from None
    except _JSONConstant as e:
        raise InputError(f"{label}: {e.args[0]} is not a JSON number (strict JSON: finite numbers only)") from None
    except RecursionError:
        raise InputError(f"{label}: JSON nested too deeply") from None
    sha = sha256_bytes(data)
    if isinstance(doc, dict) and "result" in doc:
        if doc.get("error"):
            raise InputError(f"{label}: line 1: Kraken returned an error: {_echo(doc['error'], 200)}")
        doc = doc["result"]
    if isinstance(doc, list):
        if pair is None:
            raise InputError(f"{label}: a bare list of OHLC rows has no pair name; pass --pair")
        return [parse_rest_rows(doc, pair, label=label, venue=venue or "kraken", sha256=sha, name=name)]
    if not isinstance(doc, dict):
        raise InputError(f"{label}: line 1: expected a Kraken OHLC response ({{pair: rows, last}})")
    last = doc.get("last")
    if last is not None and (type(last) is not int or not 0 <= last < 2**62):
        raise InputError(f"{label}: 'last' is not a whole number of unix seconds ({_echo(last)})")
    keys = [k for k, v in doc.items() if k != "last" and isinstance(v, list)]
    if not keys:
        raise InputError(f"{label}: empty file (no OHLC rows)")
    if pair is not None and len(keys) > 1:
        raise InputError(f"{label}: --pair given but the response holds {len(keys)} pairs")
    out = []
    for k in keys:
        out.append(
            parse_rest_rows(
                doc[k],
                pair or k,
                label=f"{label}:{k}",
                venue=venue or "kraken",
                last=last,
                sha256=sha,
                member=k if len(keys) > 1 else "",
                name=name,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# shared parquet layout


def _meta_pair(value: str) -> list[str]:
    cands = [value]
    m = re.search(r"\(([^)]*)\)", value)
    if m:
        cands.append(m.group(1))
    cands.append(value.split("(")[0])
    return [c.strip() for c in cands if c.strip()]


def _parquet_numbers(label: str, table, name: str) -> np.ndarray:
    """A numeric parquet column as float64 (nulls NaN). Integer, floating and decimal columns only:
    strings, booleans, lists, structs, dictionaries, timestamps are refused with the column's type.
    Integers beyond 2^53 are rounded here and caught by the range rules (never wrapped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name)
    t = col.type
    optional = name in ("trades", "vwap")
    if not (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or (optional and pa.types.is_null(t))
    ):
        raise InputError(
            f"{label}: column '{name}' has type {_echo(str(t))}; numbers expected (integer or floating point)"
        )
    try:
        return np.asarray(pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise InputError(f"{label}: column '{name}' cannot be read as numbers ({type(e).__name__})") from None


def parse_parquet(data: bytes, label: str, name: str, venue: str | None, pair: str | None) -> Parsed:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        declared = pf.metadata.num_rows
    except Exception as e:  # pyarrow raises many kinds for a corrupt file
        raise InputError(f"{label}: not a readable parquet file ({type(e).__name__})") from None
    if declared > MAX_PARQUET_ROWS:
        raise InputError(
            f"{label}: {declared:,} rows declared; at most {MAX_PARQUET_ROWS:,} can be imported from one parquet file"
        )
    try:
        schema = pf.schema_arrow
    except Exception as e:  # pyarrow raises many kinds for a corrupt file
        raise InputError(f"{label}: not a readable parquet file ({type(e).__name__})") from None
    names = schema.names
    dup = sorted({c for c in names if names.count(c) > 1} & {"ts", *VALUE_FIELDS})
    if dup:
        raise InputError(f"{label}: column {dup[0]!r} appears more than once")
    try:  # only the columns this reader uses: a wide or string-heavy file is not decompressed whole
        table = pf.read(columns=[c for c in ("ts", *VALUE_FIELDS) if c in names])
    except Exception as e:  # pyarrow raises many kinds for a corrupt file
        raise InputError(f"{label}: not a readable parquet file ({type(e).__name__})") from None
    if table.num_rows != declared:
        raise InputError(f"{label}: not a readable parquet file ({table.num_rows} rows read, {declared} declared)")
    md = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in (schema.metadata or {}).items()
        if k != b"ARROW:schema" and k != b"pandas"
    }
    # file name: [<venue>_]<PAIR>[_<interval>], e.g. XBTUSD_1h, binance_BTCUSDT_1h
    parts = Path(name).stem.split("_")
    name_iv = parts.pop() if len(parts) > 1 and re.fullmatch(r"\d+[A-Za-z]*", parts[-1]) else None
    name_venue = parts[0] if len(parts) == 2 else None
    name_pair = parts[-1] if len(parts) in (1, 2) else Path(name).stem
    interval = md.get("interval") or name_iv
    if interval is not None and interval.lower() not in ("1h", "60m", "60"):
        raise InputError(f"{label}: {one_line(str(interval), 40)} bars; only hourly (1h) files can be imported")
    if venue is None:
        venue = md.get("venue") or name_venue or "kraken"
    if pair is None:
        cands = [*(_meta_pair(md["pair"]) if md.get("pair") else []), name_pair]
        for cnd in cands:
            try:
                canon = normalize_pair(cnd)
                pair = cnd
                break
            except InputError:
                continue
        else:
            raise InputError(f"{label}: unknown pair name {_echo(cands[0])} (pass --pair to name it)")
    else:
        canon = _pair(pair, label)
    cols = set(table.column_names)
    missing = [c for c in ("ts", "open", "high", "low", "close", "volume") if c not in cols]
    if missing:
        raise InputError(
            f"{label}: missing column {missing[0]!r} (expected ts, open, high, low, close, volume[, trades, vwap])"
        )
    n = table.num_rows
    if n == 0:
        raise InputError(f"{label}: empty file (no rows)")
    arrays = {}
    for f in ("ts", *VALUE_FIELDS):
        arrays[f] = _parquet_numbers(label, table, f) if f in cols else np.full(n, np.nan)
    frame = pd.DataFrame(arrays)
    ts_col = table.column("ts")
    if ts_col.null_count:
        i = int(np.flatnonzero(ts_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{label}: row {i + 1}: non-numeric or missing value in column 'ts'")
    lines = np.arange(1, n + 1, dtype=np.int64)
    bars = validate(label, frame, lines, "row")
    return Parsed(
        label,
        name,
        "",
        sha256_bytes(data),
        "parquet",
        normalize_venue(venue, label),
        canon,
        pair,
        _raw_frame(lines, frame),
        bars,
        md,
    )


# --------------------------------------------------------------------------------------------
# frames (synthetic market, future backfills)


def parse_frame(df: pd.DataFrame, venue: str, pair: str, source: str) -> Parsed:
    label = f"{source}:{normalize_pair(pair) if pair else pair}"
    canon = _pair(pair, label)
    missing = [c for c in ("ts", "open", "high", "low", "close", "volume") if c not in df.columns]
    if missing:
        raise InputError(f"{label}: missing column {missing[0]!r}")
    frame = pd.DataFrame({"ts": pd.to_numeric(df["ts"], errors="coerce").to_numpy(dtype=np.float64)})
    for f in VALUE_FIELDS:
        if f in df.columns:
            frame[f] = pd.to_numeric(df[f], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            frame[f] = np.nan
    lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    bars = validate(label, frame, lines, "row")
    h = hashlib.sha256()
    venue = normalize_venue(venue, label)
    h.update(f"{venue}|{canon}|{source}".encode())
    for f in ("ts", *VALUE_FIELDS):
        h.update(np.ascontiguousarray(frame[f].to_numpy(dtype=np.float64)).tobytes())
    return Parsed(label, source, "", h.hexdigest(), "frame", venue, canon, pair, _raw_frame(lines, frame), bars)


# --------------------------------------------------------------------------------------------
# dispatch


_KIND_OF_MODE = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _not_regular(mode: int) -> str | None:
    """None for a regular file, else what it is (refused before it is opened: a FIFO would block)."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KIND_OF_MODE if test(mode)), "not a regular file")


def path_kind(p: Path) -> str | None:
    """None when ``p`` is a regular file or does not exist, else what it is (a FIFO, a folder, ...)."""
    try:
        st = os.stat(p)
    except OSError:
        return None
    return _not_regular(st.st_mode)


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def _checked_file(p: Path, root: Path) -> Path:
    """``p`` if it is a regular file; a symbolic link only when it resolves inside ``root`` (the folder
    being imported, or the folder holding a file named directly). Never reads the file."""
    if p.is_symlink():
        try:
            target = p.resolve(strict=True)
        except (OSError, RuntimeError):
            raise InputError(f"{p}: broken or looping symbolic link") from None
        if not _inside(target, root.resolve()):
            # the target is neither named nor read: its path or content must not leak into messages
            raise InputError(
                f"{p}: symbolic link to a file outside the import folder; refused "
                f"(copy the file into the folder to import it)"
            )
    try:
        st = os.stat(p)
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    what = _not_regular(st.st_mode)
    if what is not None:
        raise InputError(f"{p}: {what}, not a regular file; refused")
    return p


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    try:
        return _expand_paths(paths)
    except InputError as e:  # a path may hold any character: the message stays one printable line
        raise InputError(one_line(str(e))) from None


def _expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Paths as given; a directory stands for its supported files (sorted, not recursive).

    Refused (InputError, before anything is opened): a FIFO, socket or device file, and a symbolic
    link that resolves outside the folder being imported (or, for a file named directly, outside the
    folder holding the link).
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = []
            for q in sorted(p.iterdir()):
                if q.suffix.lower() not in SUPPORTED_SUFFIXES or (q.is_dir() and not q.is_symlink()):
                    continue
                found.append(_checked_file(q, p))
            if not found:
                raise InputError(f"{p}: no importable files (.csv, .zip, .json, .parquet) in this folder")
            out.extend(found)
        elif not p.exists() and not p.is_symlink():
            raise InputError(f"{p}: no such file")
        else:
            out.append(_checked_file(p, p.parent))
    return out


def open_input(p: Path) -> BinaryIO:
    """Open a file for reading without blocking: re-checked as a regular file on the open descriptor
    (a FIFO swapped in after :func:`expand_paths` is refused, not waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    what = _not_regular(os.fstat(fd).st_mode)
    if what is not None:
        os.close(fd)
        raise InputError(f"{p}: {what}, not a regular file; refused")
    return os.fdopen(fd, "rb")


def read_capped(f: IO[bytes], label: str, limit: int = MAX_UNIT_BYTES, what: str | None = None) -> bytes:
    """At most ``limit`` bytes from ``f``; more is refused (never trusts a declared size)."""
    buf = io.BytesIO()
    while True:
        chunk = f.read(min(_CHUNK, limit + 1 - buf.tell()))
        if not chunk:
            return buf.getvalue()
        buf.write(chunk)
        if buf.tell() > limit:
            raise InputError(what or f"{label}: larger than {_size(MAX_UNIT_BYTES)}; refused (MAX_UNIT_BYTES)")


def read_unit(data: bytes, label: str, name: str, venue: str | None, pair: str | None) -> list[Parsed]:
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return [parse_kraken_csv(data, label, name, venue, pair)]
    if suffix == ".json":
        return parse_rest_json(data, label, name, venue, pair)
    if suffix == ".parquet":
        return [parse_parquet(data, label, name, venue, pair)]
    raise InputError(f"{label}: unsupported file type (expected .csv, .zip, .json or .parquet)")


def zip_members(
    data: bytes | BinaryIO, label: str, pair_given: bool = False
) -> tuple[list[tuple[str, bytes]], list[Skipped]]:
    """Hourly Kraken CSV members of a zip (``<PAIR>_60.csv``); every other member is skipped with a reason.

    Limits: at most :data:`MAX_ZIP_ENTRIES` entries and :data:`MAX_ZIP_MEMBERS` hourly members; each
    member read through a stream capped at :data:`MAX_UNIT_BYTES` (a header's declared size is
    checked first but not trusted) and all of them together at :data:`MAX_ARCHIVE_BYTES`.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except _ZIP_ERRORS:
        raise InputError(f"{label}: not a valid zip archive") from None
    take: list[tuple[str, bytes]] = []
    skipped: list[Skipped] = []
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise InputError(f"{label}: {len(infos):,} entries; at most {MAX_ZIP_ENTRIES:,} (MAX_ZIP_ENTRIES)")
        for info in sorted(infos, key=lambda i: i.filename):
            if info.is_dir():
                continue
            mname = info.filename
            base = Path(mname).name
            mlabel = f"{label}:{mname}"
            if Path(base).suffix.lower() != ".csv" or base.startswith("."):
                skipped.append(Skipped(mlabel, "not a CSV file"))
                continue
            kn = kraken_csv_name(base)
            if kn is None:
                skipped.append(Skipped(mlabel, "name is not <PAIR>_<minutes>.csv"))
                continue
            if kn[1] != 60:
                skipped.append(Skipped(mlabel, f"{kn[1]}-minute bars; only hourly (_60) files are imported"))
                continue
            if not pair_given:
                try:
                    normalize_pair(kn[0])
                except InputError:
                    skipped.append(Skipped(mlabel, f"unknown pair name {kn[0]!r}"))
                    continue
            if len(take) >= MAX_ZIP_MEMBERS:
                raise InputError(
                    f"{label}: more than {MAX_ZIP_MEMBERS:,} hourly CSV members; refused "
                    f"(MAX_ZIP_MEMBERS: split the archive)"
                )
            if info.file_size > MAX_UNIT_BYTES:
                raise InputError(
                    f"{mlabel}: declares {info.file_size:,} bytes uncompressed; larger than "
                    f"{_size(MAX_UNIT_BYTES)}, refused (MAX_UNIT_BYTES)"
                )
            budget = MAX_ARCHIVE_BYTES - total
            over_archive = (
                f"{label}: members decompress to more than {_size(MAX_ARCHIVE_BYTES)}; refused (MAX_ARCHIVE_BYTES)"
            )
            if info.file_size > budget:
                raise InputError(over_archive)
            if info.flag_bits & 0x1:
                raise InputError(f"{mlabel}: encrypted member; refused (unencrypted zips only)")
            try:
                with zf.open(info) as m:
                    body = read_capped(
                        m, mlabel, min(MAX_UNIT_BYTES, budget), None if budget >= MAX_UNIT_BYTES else over_archive
                    )
            except _ZIP_ERRORS as e:
                raise InputError(
                    f"{mlabel}: cannot be read from the archive ({type(e).__name__}: {_echo(str(e), 80)})"
                ) from None
            total += len(body)
            take.append((mname, body))
    return take, skipped
