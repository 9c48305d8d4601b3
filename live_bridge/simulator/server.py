"""Assemble an exchange (market + clock + accounts + state file) and serve it with uvicorn.

:func:`build_exchange` is what ``kq sim serve``, the tests and the benchmark share;
:class:`SimServer` runs uvicorn in a background thread on a loopback port.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from engine.errors import InputError
from engine.store.panel import Panel

from .config import SimConfig
from .exchange import Exchange
from .market import Market, SimClock
from .store import SimStore, restore

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def build_exchange(
    panel: Panel,
    *,
    config: SimConfig | None = None,
    start: float | None = None,
    clock: str = "manual",
    speed: float = 60.0,
    state: str | Path | None = None,
    balances: dict[str, Decimal] | None = None,
    env: Mapping[str, str] | None = None,
    run_clock: bool = True,
) -> Exchange:
    """A ready exchange. A fresh state gets the env account (KRAKEN_API_KEY/SECRET) with ``balances``
    and the config's accounts; an existing state file is resumed as saved (balances untouched).
    ``run_clock=False`` leaves a realtime/accelerated clock paused until ``clock.resume()``
    (``SimServer.start`` resumes it), so loading time does not count as simulated time."""
    cfg = config or SimConfig()
    fc = cfg.fills
    market = Market(
        panel,
        default_spread=fc.default_spread,
        use_estimator=fc.use_estimator,
        spread_window=fc.spread_window,
        atr_window=fc.atr_window,
        impact_volume=fc.impact_volume,
    )
    t = float(start) if start is not None else float(panel.ts[0])
    if t < float(panel.ts[0]) or t > float(panel.ts[-1]) + 3600:
        raise InputError(f"start {int(t)} is outside the data ({int(panel.ts[0])}..{int(panel.ts[-1])})")
    sclock = SimClock(t, clock, speed, paused=True)  # runs from SimServer.start(), not while loading
    store = SimStore(state) if state else None
    try:
        ex = Exchange(market, sclock, cfg, store=None)
        resumed = restore(ex, store) if store is not None else False
        if store is not None and resumed:
            store.scrub()
        ex.store = store
        environ: Mapping[str, str] = os.environ if env is None else env
        # credentials come from this environment only (never from the state file): an account keeps
        # its books under its name; a new key (rotation) takes them over, a new secret replaces the old
        # (name, key, secret, balances, fee tier)
        wanted: list[tuple[str, str | None, str | None, dict[str, Decimal], str | None]] = [
            ("default", environ.get("KRAKEN_API_KEY"), environ.get("KRAKEN_API_SECRET"), balances or {}, None)
        ]
        wanted += [
            (a.name, environ.get(a.key_env), environ.get(a.secret_env), dict(a.balances), a.fee_tier)
            for a in cfg.accounts
        ]
        for name, key, secret, bal, tier in wanted:
            if not key or not secret:
                continue  # an account whose credentials are not in this environment is not served
            ex.set_credentials(name, key, secret, bal, tier)
        if not resumed:
            ex.processed = market.closed_count(sclock.now())
        ex.persist()
    except BaseException:
        if store is not None:
            store.close()  # releases the file (and its lock) for the next try
        raise
    if not run_clock:
        return ex
    sclock.resume()
    return ex


class SimServer:
    """uvicorn in a daemon thread, bound to loopback only. ``admin_token`` (KQ_SIM_ADMIN_TOKEN) opens
    the admin API to callers presenting it; None leaves the admin API off."""

    def __init__(self, ex: Exchange, host: str = "127.0.0.1", port: int = 0, admin_token: str | None = None) -> None:
        if host not in LOOPBACK:
            raise InputError(f"the simulator binds loopback only (127.0.0.1, ::1), not {host!r}")
        import uvicorn

        from .app import create_app

        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.exchange = ex
        self.app = create_app(ex, admin_token=admin_token)
        # log_config=None: uvicorn's default applies logging.config.dictConfig, which closes every
        # existing handler in the process (the daemon's, or pytest's capture handlers); the
        # simulator must not reconfigure global logging.
        cfg = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            log_config=None,
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name=f"kq-sim-{port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SimServer:
        self.exchange.clock.resume()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.exchange.store is not None:
            self.exchange.store.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
