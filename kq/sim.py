"""``kq sim``: the local Kraken-compatible exchange simulator (paper trading, tests, parity)."""

from __future__ import annotations

import typer

from engine.errors import ConfigError, InputError


def parse_balances(items: list[str] | None) -> dict:
    """``USD=10000 BTC=0.5`` -> {asset: Decimal}; one-line errors for bad items."""
    from engine.pairs import normalize_asset
    from live_bridge.simulator.numbers import MAX_AMOUNT, BadNumber, OutOfRange, decimal_of

    out = {}
    for item in items or []:
        asset, sep, amount = item.partition("=")
        if not sep:
            raise InputError(f"--balance {item!r}: use ASSET=AMOUNT, e.g. USD=10000")
        try:
            a = normalize_asset(asset)
        except InputError:
            raise InputError(f"--balance {item!r}: unknown asset {asset!r}") from None
        try:
            v = decimal_of(amount, "amount", 0, MAX_AMOUNT)
        except OutOfRange:
            raise InputError(f"--balance {item!r}: amount must be >= 0 and <= {MAX_AMOUNT:,}") from None
        except BadNumber:
            raise InputError(f"--balance {item!r}: {amount!r} is not a number") from None
        out[a] = v
    return out


def load_market_panel(
    store: str | None, venue: str, pairs: list[str] | None, shared: str | None, start: int | None, end: int | None
):
    """The panel to replay: shared parquet stems (``--shared``) or the market store."""
    from engine.pairs import INSTRUMENTS, normalize_pair

    if shared:
        from engine.store.panel import load_shared_panel

        lo = None if start is None else start - 30 * 86400  # history for OHLC and the estimators
        panel = load_shared_panel([s.strip() for s in shared.split(",") if s.strip()], lo, end)
    else:
        from engine.store.market import MarketStore

        with MarketStore(store, read_only=True) as ms:
            listed = [i.pair for i in ms.list_pairs(venue)]
            if not listed:
                raise InputError(f"the market store has no bars for venue {venue!r}")
            wanted = [normalize_pair(p) for p in pairs] if pairs else listed
            lo = None if start is None else start - 30 * 86400
            panel = ms.load_panel(wanted, venue, lo, end)
    skipped = [p for p in panel.pairs if p not in INSTRUMENTS]
    if skipped:
        if len(skipped) == len(panel.pairs):
            raise InputError(f"none of {', '.join(panel.pairs)} is a Kraken pair the simulator knows")
        keep = [j for j, p in enumerate(panel.pairs) if p in INSTRUMENTS]
        from engine.store.panel import Panel

        panel = Panel(
            venue=panel.venue,
            pairs=tuple(panel.pairs[j] for j in keep),
            ts=panel.ts,
            open=panel.open[:, keep].copy(),
            high=panel.high[:, keep].copy(),
            low=panel.low[:, keep].copy(),
            close=panel.close[:, keep].copy(),
            volume=panel.volume[:, keep].copy(),
            trades=panel.trades[:, keep].copy(),
            vwap=panel.vwap[:, keep].copy(),
            valid=panel.valid[:, keep].copy(),
        )
        typer.echo(f"kq sim: no Kraken trading rules for {', '.join(skipped)}: not served", err=True)
    return panel


ADMIN_TOKEN_ENV = "KQ_SIM_ADMIN_TOKEN"


def register(app: typer.Typer) -> None:
    sim = typer.Typer(help="Kraken-compatible exchange simulator.", no_args_is_help=True)

    @sim.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="loopback address to bind (127.0.0.1 or ::1 only)"),
        port: int = typer.Option(8765, help="TCP port"),
        store: str = typer.Option(None, help="market store file (default $KQ_STORE or data/market.duckdb)"),
        venue: str = typer.Option("kraken", help="store venue whose bars are replayed (kraken, binance, synthetic)"),
        pairs: str = typer.Option(None, help="comma-separated pairs (default: every pair of the venue)"),
        shared: str = typer.Option(
            None, help="replay shared parquet files instead of the store, e.g. XBTUSD_1h,binance_ETHUSDT_1h"
        ),
        start: str = typer.Option(None, help="simulated start time (unix seconds or ISO date; default first bar)"),
        end: str = typer.Option(None, help="last bar to load (default: all)"),
        clock: str = typer.Option("manual", help="manual | realtime | accelerated"),
        speed: float = typer.Option(60.0, help="simulated seconds per wall second (accelerated clock)"),
        balance: list[str] = typer.Option(None, help="ASSET=AMOUNT for the KRAKEN_API_KEY account (repeatable)"),
        state: str = typer.Option(
            "", help="SQLite state file (resumed if it exists); default: sim_state.sqlite in the data folder"
        ),
        config: str = typer.Option(None, help="sim config TOML (default configs/sim.toml)"),
    ) -> None:
        """Serve Kraken's spot REST API (/0/public, /0/private) and /admin on loopback.

        The admin API needs the bearer token in KQ_SIM_ADMIN_TOKEN (16+ characters); the server
        refuses to start without it."""
        import base64
        import binascii
        import os
        from pathlib import Path

        from engine.paths import configs_dir, data_dir
        from kq.data import parse_pairs, parse_time
        from live_bridge.simulator.app import check_admin_token
        from live_bridge.simulator.config import load_sim_config
        from live_bridge.simulator.server import LOOPBACK, SimServer, build_exchange

        if host not in LOOPBACK:
            raise InputError(f"--host {host!r}: the simulator binds loopback only (127.0.0.1 or ::1)")
        admin_token = check_admin_token(os.environ.get(ADMIN_TOKEN_ENV))
        if admin_token in (os.environ.get("KRAKEN_API_KEY"), os.environ.get("KRAKEN_API_SECRET")):
            raise InputError(f"{ADMIN_TOKEN_ENV} must differ from the Kraken API key and secret")
        if clock not in ("manual", "realtime", "accelerated"):
            raise InputError(f"--clock {clock!r}: use manual, realtime or accelerated")
        if not 0 < port < 65536:
            raise InputError(f"--port {port}: out of range")
        bal = parse_balances(balance)
        cfg_path = config if config is not None else (configs_dir() / "sim.toml")
        cfg = load_sim_config(cfg_path if (config is not None or os.path.exists(cfg_path)) else None)
        secret = os.environ.get("KRAKEN_API_SECRET")
        if secret:
            try:
                base64.b64decode(secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("KRAKEN_API_SECRET is not valid base64") from None
        t0, t1 = parse_time(start), parse_time(end, end=True)
        panel = load_market_panel(store, venue, parse_pairs(pairs), shared, t0, t1)
        # a relative path is the user's, relative to where they run kq; the default lives in the data
        # folder (KQ_DATA; the checkout's data/), never beside the installed package
        if state:
            state_path = str(Path(state).expanduser().resolve())
        else:
            data_dir().mkdir(parents=True, exist_ok=True)
            state_path = str(data_dir() / "sim_state.sqlite")
        ex = build_exchange(
            panel, config=cfg, start=t0, clock=clock, speed=speed, state=state_path, balances=bal, run_clock=False
        )
        srv = SimServer(ex, host=host, port=port, admin_token=admin_token)
        names = ", ".join(f"{i.kraken_id} ({p})" for p, i in ex.market.instruments.items())
        typer.echo(f"kq sim: {srv.url}  venue {panel.venue}  pairs {names}")
        typer.echo(
            f"kq sim: clock {clock} at {int(ex.now())}  state {state_path}  "
            f"accounts {', '.join(a.name for a in ex.accounts.values()) or 'none (set KRAKEN_API_KEY/SECRET)'}  "
            f"spread {ex.market.spread_source}"
        )
        ex.clock.resume()
        srv.server.run()  # foreground; Ctrl-C stops it
        if ex.store is not None:
            ex.store.close()

    url_opt = typer.Option("http://127.0.0.1:8765", "--url", help="a running simulator")

    @sim.command("advance")
    def advance(
        url: str = url_opt,
        bars: float = typer.Option(0.0, help="hours to move the simulated clock"),
        seconds: float = typer.Option(0.0, help="seconds to move it"),
        to: str = typer.Option(None, help="move to this time (unix seconds or ISO)"),
    ) -> None:
        """Move a running simulator's clock forward (fills, expiries and candles follow)."""
        import math

        from kq.data import parse_time

        if not (math.isfinite(bars) and math.isfinite(seconds) and bars >= 0 and seconds >= 0):
            raise InputError("--bars and --seconds must be finite and >= 0 (the simulated clock never goes back)")
        body = {"to": parse_time(to)} if to else {"bars": bars, "seconds": seconds}
        typer.echo(f"now {int(_admin(url, 'POST', '/admin/clock/advance', body)['now'])}")

    @sim.command("fault")
    def fault(
        spec: str = typer.Argument(
            ...,
            help='JSON fault, e.g. \'{"kind": "error", "endpoint": "AddOrder", '
            '"message": "EService:Busy"}\', or "clear"',
        ),
        url: str = url_opt,
    ) -> None:
        """Inject a fault into a running simulator (or clear them all)."""
        import json

        if spec == "clear":
            _admin(url, "DELETE", "/admin/faults", None)
            typer.echo("faults cleared")
            return
        try:
            body = json.loads(spec)
        except ValueError as e:
            raise InputError(f"fault is not JSON: {e}") from None
        typer.echo(json.dumps(_admin(url, "POST", "/admin/faults", body), indent=1))

    @sim.command("state")
    def state_(url: str = url_opt) -> None:
        """Print a running simulator's full state as JSON (no secrets)."""
        import json

        typer.echo(json.dumps(_admin(url, "GET", "/admin/state", None), indent=1))

    app.add_typer(sim, name="sim")


def _admin(url: str, method: str, path: str, body):
    """One admin call with the bearer token from KQ_SIM_ADMIN_TOKEN; one-line errors."""
    import os
    from urllib.parse import urlparse

    import requests

    from live_bridge.simulator.server import LOOPBACK

    try:
        host = urlparse(url).hostname or ""
    except ValueError:
        host = ""
    if host not in LOOPBACK:
        raise InputError(f"--url {url!r}: the simulator's admin API is on loopback only")
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise InputError(f"{ADMIN_TOKEN_ENV} is not set: the admin API needs the token the simulator was started with")
    try:
        r = requests.request(
            method, url.rstrip("/") + path, json=body, timeout=15, headers={"Authorization": f"Bearer {token}"}
        )
    except (requests.RequestException, UnicodeError) as e:
        raise InputError(f"no simulator at {url}: {type(e).__name__}") from None
    try:
        data = r.json()
    except ValueError:
        raise InputError(f"no simulator at {url}: HTTP {r.status_code} without a JSON answer") from None
    if r.status_code != 200:
        raise InputError(
            f"simulator refused (HTTP {r.status_code}): {data.get('error', data) if isinstance(data, dict) else data}"
        )
    return data
