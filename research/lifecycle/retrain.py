"""Scheduled retraining: when the training window (``risk.training_window_utc``) opens next.

The window is the same one in which the backtester and the live bridge open no new positions
(rule R25, ``engine.risk.schedule``). ``kq models retrain`` waits for it (``--wait``), runs the
walk-forward + final fit + registration, validates the new candidate and stops: promotion is a
separate, manual, confirmed command.
"""

from __future__ import annotations

import datetime as _dt

from engine.risk.schedule import DAY, in_training_window, parse_window

__all__ = ["window_status", "next_window_start", "fmt_utc"]


def fmt_utc(ts: int) -> str:
    return _dt.datetime.fromtimestamp(int(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def next_window_start(now: int, window) -> int | None:
    """Unix time at which the window next opens strictly after ``now`` (None: no window)."""
    w = parse_window(window)
    if w is None:
        return None
    a, _ = w
    day0 = int(now) - int(now) % DAY
    t = day0 + a
    return t if t > now else t + DAY


def window_status(now: int, window) -> tuple[bool, int | None]:
    """(inside the window now, next opening after now)."""
    return in_training_window(int(now), window), next_window_start(int(now), window)
