"""Scheduled entry-block windows (rule R25 in docs/RISK_RULES.md): pure Python, shared by the
backtester and the live bridge so both apply the same clock rule.

A window is ``risk.training_window_utc``: ``[]`` (no window) or ``["HH:MM", "HH:MM"]`` in UTC
wall-clock time, start inclusive, end exclusive; equal start and end means no window; a start after
the end wraps midnight (``["23:00", "01:00"]`` covers 23:00-00:59). During the window no new
positions are opened (a maintenance / retraining window); exits are unaffected.

Convention (the same live and in the backtest): an entry is refused at decision time when the bar in
which its order would execute OPENS inside the window. Decisions are taken at the close of bar t and
execute in bar t+1, which opens at ``ts[t] + 3600``, so the backtester's per-bar input is
``entry_block[t] = in window(ts[t] + 3600)`` (:func:`entry_block_for_bars`); the live bridge asks
:func:`in_training_window` with the open time of the bar its order would execute in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DAY = 86_400
BAR_SECONDS = 3600


def _hhmm(s, which: str) -> int:
    if not isinstance(s, str):
        raise ValueError(f"{which} must be a string 'HH:MM', got {s!r}")
    parts = s.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"{which} must be 'HH:MM' (UTC, 24-hour), got {s!r}")
    h, m = int(parts[0]), int(parts[1])
    if h > 23 or m > 59:
        raise ValueError(f"{which} must be a time of day 00:00..23:59, got {s!r}")
    return (h * 60 + m) * 60


def parse_window(window: Sequence[str] | None) -> tuple[int, int] | None:
    """``(start_s, end_s)`` seconds after UTC midnight, or None when there is no window (None, an
    empty list, or equal start and end). Raises ValueError naming the problem otherwise."""
    if window is None:
        return None
    if isinstance(window, str):
        raise ValueError("must be a list of two 'HH:MM' strings (start, end) or an empty list")
    w = list(window)
    if len(w) == 0:
        return None
    if len(w) != 2:
        raise ValueError(f"must be [] or two 'HH:MM' strings (start, end), got {len(w)} items")
    a, b = _hhmm(w[0], "start"), _hhmm(w[1], "end")
    if a == b:
        return None
    return a, b


def training_window_mask(ts: np.ndarray, window: Sequence[str] | None) -> np.ndarray:
    """Bool array: ``ts`` (int64 unix seconds, UTC) falls inside the window (start inclusive, end
    exclusive, wrapping midnight when start > end). All False when there is no window."""
    ts = np.asarray(ts)
    if ts.dtype.kind not in "iu":
        raise ValueError(f"ts must be integer unix seconds, got dtype {ts.dtype}")
    w = parse_window(window)
    if w is None:
        return np.zeros(ts.shape, dtype=np.bool_)
    a, b = w
    sod = np.mod(ts.astype(np.int64), DAY)  # floor modulo: correct before 1970 too
    if a < b:
        return (sod >= a) & (sod < b)
    return (sod >= a) | (sod < b)


def in_training_window(ts_int: int, window: Sequence[str] | None) -> bool:
    """True when the instant ``ts_int`` (unix seconds, UTC) is inside the window (live bridge: pass the
    open time of the bar an entry order would execute in)."""
    w = parse_window(window)
    if w is None:
        return False
    a, b = w
    sod = int(ts_int) % DAY
    return (a <= sod < b) if a < b else (sod >= a or sod < b)


def entry_block_for_bars(ts: np.ndarray, window: Sequence[str] | None) -> np.ndarray:
    """The backtester's per-bar input: ``entry_block[t]`` = the execution bar of a decision at the close
    of bar t (it opens at ``ts[t] + 3600``) opens inside the window."""
    ts = np.asarray(ts, dtype=np.int64)
    return training_window_mask(ts + BAR_SECONDS, window)
