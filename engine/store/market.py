"""The market store: one DuckDB file holding raw imports, validated hourly bars and an integrity log.

Tables:

* ``files`` - one row per imported unit (a file, a zip member, one pair of a REST response, a
  frame): content sha256, name, kind, venue, pair, row counts, import time; unique per (sha256,
  member, venue, pair). Re-importing the same content AS the same venue and pair is a no-op
  reported as ``already imported``; the same content under another ``--pair`` or ``--venue`` is a
  new import (its bars go in under that venue and pair).
* ``raw_rows`` - every row as received (values before any transform), with its file and line/row.
* ``bars`` - validated bars, one per (venue, pair, ts): ts is the bar OPEN time in UTC seconds, a
  multiple of 3600; open, high, low, close, volume; trades and vwap nullable.
* ``integrity`` - findings per (venue, pair) (:mod:`engine.store.integrity`), refreshed on import.

Imports are transactional across all their inputs: every input is parsed and validated first,
then written in one transaction; any error rolls everything back and the store is exactly as it
was. A bar that overlaps a stored bar must be identical in open/high/low/close/volume (and trades,
vwap where both are known): then it is counted as already present; a conflicting value rejects the
whole import (docs/DECISIONS.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.pairs import normalize_pair
from engine.store import readers
from engine.store.integrity import BLOCKING, findings_sql
from engine.store.panel import FIELDS, HOUR, Panel
from engine.store.readers import Parsed, normalize_venue

#: Version 2 (2026-12-07): ``files`` is unique per (sha256, member, venue, pair), was (sha256, member);
#: a version-1 store is migrated when opened for writing (:meth:`MarketStore._migrate`).
SCHEMA_VERSION = "2"

_FILES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    file_id INTEGER PRIMARY KEY,
    sha256 VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    venue VARCHAR NOT NULL,
    pair VARCHAR NOT NULL,
    source_pair VARCHAR,
    rows BIGINT NOT NULL,
    new_bars BIGINT NOT NULL,
    meta VARCHAR,
    imported_at TIMESTAMP NOT NULL,
    UNIQUE (sha256, member, venue, pair)
);
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""
    + _FILES_TABLE.format(name="files")
    + """
CREATE TABLE IF NOT EXISTS raw_rows (
    file_id INTEGER NOT NULL,
    line BIGINT NOT NULL,
    ts DOUBLE, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE,
    trades DOUBLE, vwap DOUBLE,
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS bars (
    venue VARCHAR NOT NULL,
    pair VARCHAR NOT NULL,
    ts BIGINT NOT NULL,
    open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL, close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,
    trades BIGINT,
    vwap DOUBLE,
    file_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS integrity (
    venue VARCHAR NOT NULL, pair VARCHAR NOT NULL, ts BIGINT,
    kind VARCHAR NOT NULL, severity VARCHAR NOT NULL, value DOUBLE, detail VARCHAR
);
"""
)


def utc(ts: int | float | None) -> str:
    """Bar time as ``YYYY-MM-DD HH:MM`` UTC."""
    if ts is None or (isinstance(ts, float) and np.isnan(ts)):
        return "-"
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%d %H:%M")


@dataclass
class FileResult:
    label: str
    status: str  # imported | already imported | skipped
    kind: str = ""
    venue: str = ""
    pair: str = ""
    sha256: str = ""
    rows: int = 0  # rows read (raw layer)
    new_bars: int = 0  # bars added to the validated layer
    existing_bars: int = 0  # identical bars already stored (overlap)
    reason: str = ""


@dataclass
class ImportReport:
    results: list[FileResult] = field(default_factory=list)

    def _n(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def imported(self) -> int:
        return self._n("imported")

    @property
    def unchanged(self) -> int:
        return self._n("already imported")

    @property
    def skipped(self) -> int:
        return self._n("skipped")

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def new_bars(self) -> int:
        return sum(r.new_bars for r in self.results)

    @property
    def noop(self) -> bool:
        return self.new_bars == 0 and self.imported == 0

    def summary(self) -> str:
        return (
            f"{self.imported} imported, {self.unchanged} already imported, {self.skipped} skipped; "
            f"{self.rows:,} rows read, {self.new_bars:,} new bars"
        )


@dataclass(frozen=True)
class PairInfo:
    venue: str
    pair: str
    rows: int
    first_ts: int
    last_ts: int
    missing_hours: int


class MarketStore:
    """The DuckDB market store. ``MarketStore(path=None, read_only=False)``; also a context manager."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False) -> None:
        import duckdb

        from engine.paths import default_store_path

        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise InputError(f"no market store at {self.path} (run `kq data import` or `kq data synth` first)")
        what = readers.path_kind(self.path)
        if what is not None:  # a FIFO would block the open forever
            raise InputError(readers.one_line(f"market store {self.path}: {what}, not a regular file"))
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            raise InputError(f"cannot open market store {self.path}: {msg}") from None
        if not read_only:
            self.con.execute(_SCHEMA)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            self._migrate()
        else:
            have = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "bars" not in have:
                raise InputError(f"{self.path} is not a krakenquant market store")

    def _migrate(self) -> None:
        """Bring an older store up to :data:`SCHEMA_VERSION` in one transaction (all or nothing).

        1 -> 2: ``files`` was unique per (sha256, member), so the same file imported under another
        pair or venue was silently reported as ``already imported``; the table is rebuilt unique per
        (sha256, member, venue, pair) with every row and file id kept.
        """
        version = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
        if version == SCHEMA_VERSION:
            return
        if version != "1":
            self.close()
            raise InputError(
                f"market store {self.path} has schema version {version!r}; this krakenquant "
                f"writes version {SCHEMA_VERSION} (upgrade krakenquant to write to it)"
            )
        con = self.con
        con.begin()
        try:
            con.execute(_FILES_TABLE.format(name="files_v2"))
            con.execute("INSERT INTO files_v2 SELECT * FROM files ORDER BY file_id")
            con.execute("DROP TABLE files")
            con.execute("ALTER TABLE files_v2 RENAME TO files")
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION])
            con.commit()
        except BaseException:
            con.rollback()
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "con", None) is not None:
            self.con.close()
            self.con = None  # type: ignore[assignment]  # closed: any later use fails loudly

    def __enter__(self) -> MarketStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writable(self) -> None:
        if self.read_only:
            raise InputError(f"market store {self.path} is open read-only")

    # -- imports --------------------------------------------------------------------------------

    def _known(self) -> set[tuple[str, str, str, str]]:
        """The dedup keys of every stored unit: (sha256, member, venue, pair)."""
        return {tuple(r) for r in self.con.execute("SELECT sha256, member, venue, pair FROM files").fetchall()}

    @staticmethod
    def _key(u: Parsed) -> tuple[str, str, str, str]:
        return (u.sha256, u.member, u.venue, u.pair)

    @staticmethod
    def _already(u: Parsed) -> FileResult:
        return FileResult(
            u.label,
            "already imported",
            u.kind,
            u.venue,
            u.pair,
            u.sha256,
            reason=f"same content imported before as {u.venue} {u.pair}",
        )

    def import_files(
        self,
        paths: Sequence[str | Path],
        venue: str | None = None,
        pair: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ImportReport:
        """Import Kraken OHLCVT CSVs (also in zips), Kraken REST OHLC JSON and shared-layout parquet.

        ``venue``/``pair`` override what the file name and metadata say. All-or-nothing: any bad
        input raises InputError and leaves the store unchanged. ``progress`` is called per file.
        """
        try:
            return self._import_files(paths, venue, pair, progress)
        except InputError as e:  # one printable line, whatever a file name or field held
            raise InputError(readers.one_line(str(e)), exit_code=e.exit_code) from None

    def _import_files(self, paths, venue, pair, progress) -> ImportReport:
        self._writable()
        if venue is not None:
            try:
                venue = normalize_venue(venue)
            except InputError as e:
                raise InputError(f"--venue: {e}") from None
        if pair is not None:
            try:
                normalize_pair(pair)  # fail early on an unknown --pair
            except InputError as e:
                raise InputError(f"--pair: {e}") from None
        files = readers.expand_paths(paths)
        known = self._known()
        results: list[FileResult] = []

        def fresh(parsed: Iterable[Parsed]) -> Iterator[Parsed]:
            # Dedup on content AND the venue/pair it is imported as: the same bytes under another
            # --pair or --venue are new bars (known after parsing: name, metadata and options decide).
            for u in parsed:
                if self._key(u) in known:
                    results.append(self._already(u))
                else:
                    known.add(self._key(u))
                    yield u

        def units() -> Iterator[Parsed]:
            # Every input is read, parsed and validated before the transaction starts (a malformed
            # file fails fast, without touching the database); conflicts with stored bars are found
            # while writing and roll the whole transaction back.
            for p in files:
                label = str(p)
                if progress is not None:
                    progress(label)
                if p.suffix.lower() == ".zip":
                    with readers.open_input(p) as f:
                        members, skipped = readers.zip_members(f, label, pair_given=pair is not None)
                    results.extend(FileResult(s.label, "skipped", reason=s.reason) for s in skipped)
                    if not members and not skipped:
                        raise InputError(f"{label}: empty zip archive")
                    for mname, mdata in members:
                        mlabel = f"{label}:{mname}"
                        yield from fresh(readers.read_unit(mdata, mlabel, Path(mname).name, venue, pair))
                else:
                    if p.suffix.lower() not in readers.SUPPORTED_SUFFIXES:
                        raise InputError(f"{label}: unsupported file type (expected .csv, .zip, .json or .parquet)")
                    with readers.open_input(p) as f:
                        data = readers.read_capped(f, label)
                    yield from fresh(readers.read_unit(data, label, p.name, venue, pair))

        return self._write(list(units()), results)

    def import_bars(self, df: pd.DataFrame, venue: str, pair: str, source: str) -> ImportReport:
        """Import a frame (ts, open, high, low, close, volume[, trades, vwap]) with the file rules."""
        self._writable()
        unit = readers.parse_frame(df, venue, pair, source)
        if self._key(unit) in self._known():
            return ImportReport([self._already(unit)])
        return self._write([unit], [])

    def import_frames(self, frames: dict[str, pd.DataFrame], venue: str, source: str) -> ImportReport:
        """Import several pairs' frames in ONE transaction (what ``kq data synth`` uses)."""
        self._writable()
        known = self._known()
        units, results = [], []
        for pair, df in frames.items():
            unit = readers.parse_frame(df, venue, pair, source)
            if self._key(unit) in known:
                results.append(self._already(unit))
            else:
                known.add(self._key(unit))
                units.append(unit)
        return self._write(units, results)

    def import_rest_rows(
        self, rows: list, pair: str, venue: str = "kraken", last: int | None = None, source: str = "kraken-rest"
    ) -> ImportReport:
        """Import Kraken REST OHLC rows ``[time, open, high, low, close, vwap, volume, count]``.

        What the live backfill calls with ``result[pair]`` and ``result['last']``: rows newer than
        ``last`` (the forming candle) are recorded raw but not stored as bars. Always pass ``last``
        (or drop the forming candle): a stored bar never changes, so a partial hour stored now would
        make the complete hour conflict later (InputError). Re-sent committed bars that are
        identical are counted as ``existing_bars``.
        """
        self._writable()
        unit = readers.parse_rest_rows(
            rows, pair, label=f"{source}:{normalize_pair(pair)}", venue=venue, last=last, name=source
        )
        if self._key(unit) in self._known():
            return ImportReport([self._already(unit)])
        return self._write([unit], [])

    def _write(self, units: Iterable[Parsed], results: list[FileResult]) -> ImportReport:
        """Write units in ONE transaction; any exception (also while producing a unit) rolls back."""
        report = ImportReport(results)
        con = self.con
        con.begin()
        try:
            next_id = int(con.execute("SELECT coalesce(max(file_id), 0) + 1 FROM files").fetchall()[0][0])
            now = datetime.now(UTC).replace(tzinfo=None)
            affected: dict[tuple[str, str], None] = {}
            for k, u in enumerate(units):
                fid = next_id + k
                new, existing = self._insert_bars(u, fid)
                raw = u.raw
                raw.insert(0, "file_id", np.int32(fid))
                con.register("_kq_raw", raw)
                con.execute(
                    "INSERT INTO raw_rows SELECT file_id, line, ts, open, high, low, close, volume, "
                    "trades, vwap, note FROM _kq_raw"
                )
                con.unregister("_kq_raw")
                con.execute(
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        fid,
                        u.sha256,
                        u.member,
                        u.name,
                        u.label,
                        u.kind,
                        u.venue,
                        u.pair,
                        u.source_pair,
                        len(raw),
                        new,
                        json.dumps(u.meta, sort_keys=True, default=str),
                        now,
                    ],
                )
                affected[(u.venue, u.pair)] = None
                report.results.append(
                    FileResult(u.label, "imported", u.kind, u.venue, u.pair, u.sha256, len(raw), new, existing)
                )
            if not affected:
                con.rollback()  # nothing new: leave the store untouched
                return report
            self._refresh_integrity(list(affected))
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return report

    def _insert_bars(self, u: Parsed, fid: int) -> tuple[int, int]:
        con = self.con
        nb = u.bars
        con.register("_kq_new", nb)
        try:
            conflict = con.execute(
                """SELECT n.line, n.ts, f.label, n.open, n.high, n.low, n.close, n.volume,
                          b.open, b.high, b.low, b.close, b.volume
                   FROM _kq_new n JOIN bars b ON b.venue = ? AND b.pair = ? AND b.ts = n.ts
                   JOIN files f ON f.file_id = b.file_id
                   WHERE NOT (b.open = n.open AND b.high = n.high AND b.low = n.low AND b.close = n.close
                              AND b.volume = n.volume
                              AND (b.trades IS NULL OR n.trades IS NULL OR b.trades = n.trades)
                              AND (b.vwap IS NULL OR n.vwap IS NULL OR b.vwap = n.vwap))
                   ORDER BY n.line LIMIT 1""",
                [u.venue, u.pair],
            ).fetchall()
            if conflict:
                row = conflict[0]
                line, ts, other = row[0], row[1], row[2]
                unit = "line" if u.kind == "kraken-csv" else "row"
                new_ohlcv = "/".join(f"{x:g}" for x in row[3:8])
                old_ohlcv = "/".join(f"{x:g}" for x in row[8:13])
                raise InputError(
                    f"{u.label}: {unit} {line}: bar {u.venue} {u.pair} {utc(ts)} conflicts with the stored bar "
                    f"from {other} (OHLCV {new_ohlcv} vs {old_ohlcv}); overlapping bars must be identical"
                )
            new = int(
                con.execute(
                    """INSERT INTO bars SELECT ?, ?, n.ts, n.open, n.high, n.low, n.close, n.volume, n.trades, n.vwap, ?
                   FROM _kq_new n ANTI JOIN (SELECT ts FROM bars WHERE venue = ? AND pair = ?) b ON b.ts = n.ts
                   ORDER BY n.ts""",
                    [u.venue, u.pair, fid, u.venue, u.pair],
                ).fetchall()[0][0]
            )
        finally:
            con.unregister("_kq_new")
        return new, len(nb) - new

    def _refresh_integrity(self, keys: list[tuple[str, str]]) -> None:
        """Recompute the integrity log of these (venue, pair)s (inside the import transaction)."""
        k = [f"{v}|{p}" for v, p in keys]
        self.con.execute("DELETE FROM integrity WHERE list_contains($k, venue || '|' || pair)", {"k": k})
        self.con.execute("INSERT INTO integrity " + findings_sql("list_contains($k, venue || '|' || pair)"), {"k": k})

    # -- reading ---------------------------------------------------------------------------------

    def venues(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT DISTINCT venue FROM bars ORDER BY venue").fetchall()]

    def list_pairs(self, venue: str | None = None) -> list[PairInfo]:
        """Per (venue, pair): rows, first and last bar, missing hours inside the span."""
        q = (
            "SELECT venue, pair, count(*), min(ts), max(ts) FROM bars "
            + ("WHERE venue = ? " if venue else "")
            + "GROUP BY venue, pair ORDER BY venue, pair"
        )
        rows = self.con.execute(q, [normalize_venue(venue)] if venue else []).fetchall()
        return [PairInfo(v, p, int(n), int(a), int(b), int((b - a) // HOUR + 1 - n)) for v, p, n, a, b in rows]

    def load_panel(self, pairs: Sequence[str], venue: str, start: int | None = None, end: int | None = None) -> Panel:
        """A Panel of validated bars for ``pairs`` (any spelling) on ``venue``, start <= ts <= end.

        The grid runs from the earliest to the latest bar of any requested pair inside the range
        (or exactly [start, end] rounded to whole hours when given), as ``panel_from_frames``.
        """
        if isinstance(pairs, str):
            pairs = [pairs]
        if not pairs:
            raise InputError("no pairs given")
        venue = normalize_venue(venue)
        names = [normalize_pair(p) for p in pairs]
        if len(set(names)) != len(names):
            raise InputError(f"pair given twice in {', '.join(names)}")
        stored = {i.pair for i in self.list_pairs(venue)}
        missing = [p for p in names if p not in stored]
        if missing:
            have = ", ".join(sorted(stored)) or "none"
            raise InputError(f"no bars for {', '.join(missing)} on venue {venue!r} (stored pairs: {have})")
        cond: list[str] = ["venue = ?", "list_contains(?, pair)"]
        args: list[object] = [venue, names]
        if start is not None:
            cond.append("ts >= ?")
            args.append(int(start))
        if end is not None:
            cond.append("ts <= ?")
            args.append(int(end))
        res = self.con.execute(
            "SELECT list_position(?, pair) - 1 AS j, ts, open, high, low, close, volume, "
            "coalesce(CAST(trades AS DOUBLE), 'NaN'::DOUBLE) AS trades, coalesce(vwap, 'NaN'::DOUBLE) AS vwap "
            f"FROM bars WHERE {' AND '.join(cond)}",
            [names, *args],
        ).fetchnumpy()
        t = np.asarray(res["ts"], dtype=np.int64)
        if t.size == 0 and (start is None or end is None):
            raise InputError(f"no bars for {', '.join(names)} on venue {venue!r} in the requested range")
        lo = int(start) if start is not None else int(t.min())
        hi = int(end) if end is not None else int(t.max())
        lo = -(-lo // HOUR) * HOUR
        hi = (hi // HOUR) * HOUR
        if hi < lo:
            raise InputError("empty time range")
        grid = np.arange(lo, hi + HOUR, HOUR, dtype=np.int64)
        n, m = grid.shape[0], len(names)
        keep = (t >= lo) & (t <= hi)
        row = (t[keep] - lo) // HOUR
        col = np.asarray(res["j"], dtype=np.int64)[keep]
        arrays = {}
        for f in FIELDS:
            a = np.full((n, m), np.nan)
            a[row, col] = np.asarray(res[f], dtype=np.float64)[keep]
            arrays[f] = a
        valid = np.zeros((n, m), dtype=bool)
        valid[row, col] = True
        return Panel(venue=venue, pairs=tuple(names), ts=grid, valid=valid, **{f: arrays[f] for f in FIELDS})

    def export_parquet(
        self,
        path: str | Path,
        pairs: Sequence[str] | None = None,
        venue: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> int:
        """Write validated bars in long form (venue, pair, ts, open..vwap) to ``path``; returns rows.

        Written to a temporary file and renamed, so a failed export leaves nothing half-written.
        ``path`` being a folder, or not writable, is an InputError (one line).
        """
        try:
            return self._export_parquet(path, pairs, venue, start, end)
        except InputError as e:
            raise InputError(readers.one_line(str(e))) from None

    def _export_parquet(self, path, pairs, venue, start, end) -> int:
        cond: list[str] = []
        args: list[object] = []
        if venue:
            cond.append("venue = ?")
            args.append(normalize_venue(venue))
        if pairs:
            cond.append("list_contains(?, pair)")
            args.append([normalize_pair(p) for p in pairs])
        if start is not None:
            cond.append("ts >= ?")
            args.append(int(start))
        if end is not None:
            cond.append("ts <= ?")
            args.append(int(end))
        where = " AND ".join(cond) or "TRUE"
        n = int(self.con.execute(f"SELECT count(*) FROM bars WHERE {where}", args).fetchall()[0][0])
        if n == 0:
            raise InputError("nothing to export: no stored bars match the venue, pairs and range")
        out = Path(path)
        if out.is_dir():
            raise InputError(f"{out}: is a folder; the export writes one .parquet file (give its path)")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{out}: cannot create its folder ({e.strerror})") from None
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            tbl = self.con.sql(
                f"SELECT venue, pair, ts, open, high, low, close, volume, trades, vwap FROM bars WHERE {where} "
                "ORDER BY venue, pair, ts",
                params=args,
            ).to_arrow_table()
            import pyarrow.parquet as pq

            tbl = tbl.replace_schema_metadata(
                {
                    "ts": "unix seconds UTC, bar open time",
                    "interval": "1h",
                    "source": f"krakenquant market store {self.path.name}",
                }
            )
            pq.write_table(tbl, tmp)
            os.replace(tmp, out)
        except OSError as e:
            raise InputError(f"{out}: cannot write ({e.strerror or type(e).__name__})") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return n

    def integrity_findings(self, venue: str | None = None, pair: str | None = None, live: bool = False) -> pd.DataFrame:
        """Findings (venue, pair, ts, kind, severity, value, detail). ``live`` recomputes from bars
        instead of reading the log written at import (what ``kq data check`` does)."""
        cond: list[str] = []
        args: list[object] = []
        if venue:
            cond.append("venue = ?")
            args.append(normalize_venue(venue))
        if pair:
            cond.append("pair = ?")
            args.append(normalize_pair(pair))
        where = " AND ".join(cond) or "TRUE"
        if live:
            q = f"SELECT * FROM ({findings_sql(where)}) ORDER BY venue, pair, ts, kind"
        else:
            q = f"SELECT * FROM integrity WHERE {where} ORDER BY venue, pair, ts, kind"
        return self.con.execute(q, args).df()

    def check(self, venue: str | None = None) -> dict:
        """The data report: per pair rows, span, missing hours and findings counts (recomputed live)."""
        infos = self.list_pairs(venue)
        f = self.integrity_findings(venue, live=True)
        counts = f.groupby(["venue", "pair", "kind"]).size() if len(f) else pd.Series(dtype=int)
        out = []
        for i in infos:
            c = {k: int(v) for (vv, pp, k), v in counts.items() if vv == i.venue and pp == i.pair}
            blocking = f[(f["venue"] == i.venue) & (f["pair"] == i.pair) & (f["severity"] == BLOCKING)] if len(f) else f
            out.append(
                {
                    "venue": i.venue,
                    "pair": i.pair,
                    "rows": i.rows,
                    "first_ts": i.first_ts,
                    "first_bar": utc(i.first_ts),
                    "last_ts": i.last_ts,
                    "last_bar": utc(i.last_ts),
                    "missing_hours": i.missing_hours,
                    "findings": c,
                    "blocking": len(blocking),
                }
            )
        blocking = f[f["severity"] == BLOCKING] if len(f) else f
        return {
            "store": str(self.path),
            "pairs": out,
            "blocking": len(blocking),
            "blocking_findings": blocking.head(20).to_dict("records") if len(blocking) else [],
        }

    def content_digest(self) -> str:
        """sha256 over the contents of every table (import times excluded): equal digests = same store."""
        import hashlib

        h = hashlib.sha256()
        for t, cols in (
            ("files", "* EXCLUDE (imported_at)"),
            ("raw_rows", "*"),
            ("bars", "*"),
            ("integrity", "*"),
            ("meta", "*"),
        ):
            n, agg = self.con.execute(
                f"SELECT count(*), coalesce(sum(hash(x)::HUGEINT), 0)::VARCHAR FROM (SELECT {cols} FROM {t}) x"
            ).fetchall()[0]
            h.update(f"{t}:{n}:{agg};".encode())
        return h.hexdigest()

    def table_counts(self) -> dict[str, int]:
        return {
            t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
            for t in ("files", "raw_rows", "bars", "integrity")
        }
