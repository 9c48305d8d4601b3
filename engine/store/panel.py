"""The (bars x pairs) panel every consumer reads: features, backtester, simulator.

A panel covers a contiguous hourly grid ``ts`` (bar open times, UTC seconds, step 3600). A pair
with no bar at an hour has NaN prices and volume there and ``valid[t, j] = False``: prices are never
invented. ``trades`` and ``vwap`` are NaN where the source has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.pairs import normalize_pair
from engine.timeutil import HOUR

PRICE_FIELDS = ("open", "high", "low", "close")
FIELDS = ("open", "high", "low", "close", "volume", "trades", "vwap")


@dataclass(frozen=True, eq=False)
class Panel:
    venue: str
    pairs: tuple[str, ...]
    ts: np.ndarray  # int64 (n,), contiguous hourly grid
    open: np.ndarray  # float64 (n, m)
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trades: np.ndarray  # float64 (n, m); NaN where unknown
    vwap: np.ndarray  # float64 (n, m); NaN where unknown
    valid: np.ndarray  # bool (n, m): a real, validated bar exists at this hour

    @property
    def n_bars(self) -> int:
        return int(self.ts.shape[0])

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def column(self, pair: str) -> int:
        p = normalize_pair(pair)
        try:
            return self.pairs.index(p)
        except ValueError:
            raise InputError(f"pair {p!r} is not in this panel ({', '.join(self.pairs)})") from None

    def slice(self, start: int | None = None, end: int | None = None) -> Panel:
        """Bars with start <= ts <= end (bar-open seconds, inclusive)."""
        lo = 0 if start is None else int(np.searchsorted(self.ts, start, side="left"))
        hi = self.n_bars if end is None else int(np.searchsorted(self.ts, end, side="right"))
        return Panel(
            venue=self.venue,
            pairs=self.pairs,
            ts=self.ts[lo:hi].copy(),
            valid=self.valid[lo:hi].copy(),
            **{f: getattr(self, f)[lo:hi].copy() for f in FIELDS},
        )

    def to_long(self) -> pd.DataFrame:
        """Long form (ts, pair, open, ..., vwap) with valid rows only."""
        n, m = self.valid.shape
        rows, cols = np.nonzero(self.valid)
        out = {"ts": self.ts[rows], "pair": np.asarray(self.pairs, dtype=object)[cols]}
        for f in FIELDS:
            out[f] = getattr(self, f)[rows, cols]
        return pd.DataFrame(out)


def panel_from_frames(
    frames: dict[str, pd.DataFrame], venue: str, start: int | None = None, end: int | None = None
) -> Panel:
    """Align per-pair frames (columns ts, open, high, low, close, volume[, trades, vwap]) on one hourly grid.

    The grid runs from the earliest to the latest bar of any pair (clipped to [start, end]);
    hours a pair lacks are NaN with ``valid`` False.
    """
    if not frames:
        raise InputError("no pairs given")
    pairs = tuple(frames)
    lo = min(int(f["ts"].min()) for f in frames.values() if len(f)) if start is None else int(start)
    hi = max(int(f["ts"].max()) for f in frames.values() if len(f)) if end is None else int(end)
    lo = -(-lo // HOUR) * HOUR  # first grid hour >= lo
    hi = (hi // HOUR) * HOUR
    if hi < lo:
        raise InputError("empty time range")
    ts = np.arange(lo, hi + HOUR, HOUR, dtype=np.int64)
    n, m = ts.shape[0], len(pairs)
    arrays = {f: np.full((n, m), np.nan) for f in FIELDS}
    valid = np.zeros((n, m), dtype=bool)
    for j, p in enumerate(pairs):
        f = frames[p]
        t = f["ts"].to_numpy(dtype=np.int64)
        if t.size and np.any(t % HOUR):
            raise InputError(f"{p}: timestamps off the hourly grid")
        keep = (t >= lo) & (t <= hi)
        t = t[keep]
        idx = (t - lo) // HOUR
        for fld in FIELDS:
            if fld in f.columns:
                arrays[fld][idx, j] = f[fld].to_numpy(dtype=np.float64, na_value=np.nan)[keep]
        valid[idx, j] = True
    return Panel(venue=venue, pairs=pairs, ts=ts, valid=valid, **{f: arrays[f] for f in FIELDS})


def read_shared_parquet(path: str | Path) -> pd.DataFrame:
    """Read one file in the ../shared/data/ohlcv layout as a frame with FIELDS columns (vwap NaN)."""
    df = pd.read_parquet(path)
    out = pd.DataFrame({"ts": df["ts"].to_numpy(dtype=np.int64)})
    for f in ("open", "high", "low", "close", "volume"):
        out[f] = df[f].to_numpy(dtype=np.float64)
    out["trades"] = df["trades"].to_numpy(dtype=np.float64, na_value=np.nan) if "trades" in df else np.nan
    out["vwap"] = np.nan
    return out


def load_shared_panel(
    files: list[str], start: int | None = None, end: int | None = None, venue: str | None = None
) -> Panel:
    """Build a panel straight from shared parquet files, by stem (``binance_BTCUSDT_1h``, ``XBTUSD_1h``).

    For tests and benchmarks that need real data without a store. The market store's own panel
    loader returns the same Panel type from validated bars.
    """
    from engine.paths import shared_ohlcv_dir

    d = shared_ohlcv_dir()
    frames: dict[str, pd.DataFrame] = {}
    venues = set()
    for stem in files:
        p = d / (stem if stem.endswith(".parquet") else f"{stem}.parquet")
        if not p.exists():
            raise InputError(f"{p}: no such file (set KQ_SHARED to the shared folder)")
        name = p.stem.removesuffix("_1h")
        v = "binance" if name.startswith("binance_") else "kraken"
        venues.add(v)
        frames[normalize_pair(name.removeprefix("binance_"))] = read_shared_parquet(p)
    return panel_from_frames(frames, venue or "+".join(sorted(venues)), start, end)
