"""Time constants of the hourly grid (UTC unix seconds), defined once for every module."""

from __future__ import annotations

__all__ = ["HOUR"]

#: one bar of the hourly grid, in seconds
HOUR = 3600
