"""The dashboard API (``kq serve``, issue 20; docs/DASHBOARD.md): :func:`create_app`."""

from live_bridge.api.app import create_app

__all__ = ["create_app"]
