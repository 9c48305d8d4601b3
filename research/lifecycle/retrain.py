"""Scheduled retraining: when the training window (``risk.training_window_utc``) opens next, and
the retraining run itself.

The window is the same one in which the backtester and the live bridge open no new positions
(rule R25, ``engine.risk.schedule``). ``kq models retrain`` waits for it (``--wait``), runs
:func:`retrain` (the walk-forward + final fit + registration, through the research pipeline
library, never the CLI), validates the new candidate and stops: promotion is a separate, manual,
confirmed command.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from engine.risk.schedule import DAY, in_training_window, parse_window

__all__ = ["fmt_utc", "next_window_start", "retrain", "window_status"]


def retrain(
    config: str | Path,
    out: str | Path,
    *,
    store: str | None = None,
    progress=None,
    final_progress=None,
    on_outputs=None,
):
    """Run the walk-forward of ``config`` into ``out``, fit the final model and register it as a
    candidate (:func:`research.pipeline.run` with ``register=True``); returns the
    :class:`~research.pipeline.RunOutputs` (``.candidate`` is the new candidate). Callbacks as in
    :func:`research.pipeline.run`."""
    from research.pipeline import DataSelection, load_spec, run

    spec = load_spec(config, data=DataSelection(store=store))
    return run(spec, out, register=True, progress=progress, final_progress=final_progress, on_outputs=on_outputs)


def fmt_utc(ts: int) -> str:
    return _dt.datetime.fromtimestamp(int(ts), _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


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
