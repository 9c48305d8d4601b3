"""``kq replay``: rebuild daemon hours from the ledger alone (:mod:`live_bridge.replay`, issue 16).
Nothing is written, nothing reaches the network.

Exit codes: 0 every hour replayed reproduces its decisions and its snapshot after; 1 a difference
(the first differing field is printed) or a ledger that does not verify (reported, not replayed);
2 bad input (a time that is not an hour, an hour the ledger does not hold, no ledger), one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from engine.errors import InputError

_DSN_HELP = "ledger DSN or SQLite path (default: --config's ledger, else KQ_LEDGER_DSN, else data/ledger.sqlite)"
_CONFIG_HELP = "daemon config (configs/paper.toml): replay the ledger it writes"


def _hour(value: str, what: str, *, end: bool = False) -> int:
    from engine.timeutil import HOUR, parse_utc

    ts = parse_utc(value, end=end)
    if ts is None:  # pragma: no cover - typer gives a string
        raise InputError(f"{what} is required")
    if end and len(value.strip()) == 10 and not value.strip().isdigit():
        ts -= HOUR - 1  # a bare end date: through its 23:00 bar
    if ts % HOUR:
        raise InputError(f"{what} {value!r} is not on the hour (bars open at HH:00 UTC)")
    return ts // HOUR


@contextmanager
def _open(dsn: str | None, config: str | None) -> Iterator[Any]:
    """The ledger, read only: ``--dsn``, else the config's (its DSN, else KQ_LEDGER_DSN), else the
    default (KQ_LEDGER_DSN, else data/ledger.sqlite)."""
    from pathlib import Path

    from live_bridge.ledger import Ledger
    from live_bridge.ledger.migrate import redacted, resolve_url

    schema = None
    target = None
    if dsn is not None:
        if not dsn.strip():
            raise InputError("--dsn is empty")
        target = dsn
    elif config:
        from live_bridge.config import load_live_config

        cfg = load_live_config(config)
        target, schema = cfg.ledger_dsn(), cfg.paths.ledger_schema
    url = resolve_url(target)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
        raise InputError(f"no ledger at {redacted(url)}")
    led = Ledger.open(target, schema=schema, migrate=False)
    try:
        yield led
    finally:
        led.close()


def register(app: typer.Typer) -> None:
    rp = typer.Typer(help="Replay daemon hours from the ledger alone (no network, no exchange).", no_args_is_help=True)

    @rp.command("hour")
    def hour(
        at: str = typer.Option(..., "--hour", help="the bar's open, UTC: 2022-06-02T05:00 or unix seconds"),
        dsn: str = typer.Option(None, "--dsn", help=_DSN_HELP),
        config: str = typer.Option(None, "--config", help=_CONFIG_HELP),
    ) -> int:
        """Verify the ledger's chain, restore the risk machine from the hour's snapshot before, run
        its recorded inputs, apply its recorded fills and compare the decisions and the snapshot
        after with the ledger's, byte for byte. Exit 0 reproduced, 1 differs (first field named)."""
        from live_bridge.replay import replay_hour

        h = _hour(at, "--hour")
        with _open(dsn, config) as led:
            r = replay_hour(led, h)
        typer.echo(r.line())
        if r.replayed:
            typer.echo(r.details.get("chain", ""))
        return 0 if r.ok else 1

    @rp.command("window")
    def window(
        start: str = typer.Option(..., "--start", help="first bar's open, UTC (ISO or unix seconds)"),
        end: str = typer.Option(..., "--end", help="last bar's open, UTC, inclusive (a bare date: its 23:00 bar)"),
        dsn: str = typer.Option(None, "--dsn", help=_DSN_HELP),
        config: str = typer.Option(None, "--config", help=_CONFIG_HELP),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    ) -> int:
        """Replay every completed hour of the window (progress on stderr), then a summary table:
        hours replayed, reproduced, skipped (no completed cycle), the first failure. Exit 0 only
        if every hour replayed reproduces."""
        from live_bridge.replay import hour_label, replay_window

        h0, h1 = _hour(start, "--start"), _hour(end, "--end", end=True)
        if h1 < h0:
            raise InputError(f"--end {end!r} is before --start {start!r}")
        with _open(dsn, config) as led:
            if quiet:
                s = replay_window(led, h0, h1)
            else:
                from kq.progress import progress_bar

                with progress_bar("replay", detail=True) as prog:
                    task = prog.add_task("", total=h1 - h0 + 1)

                    def tick(done: int, total: int, r: Any) -> None:
                        bad = "" if r is None or r.ok else f"differs at {hour_label(r.hour)}"
                        prog.update(task, completed=done, description=bad)

                    s = replay_window(led, h0, h1, progress=tick)
        first = s.first_failure
        rows = [
            ("window", f"{hour_label(h0)} .. {hour_label(h1)} ({h1 - h0 + 1} hours)"),
            ("ledger", s.chain),
            ("replayed", str(s.replayed)),
            ("reproduced", str(s.reproduced)),
            ("differ", str(sum(1 for r in s.results if r.replayed and not r.ok))),
            ("not replayed", str(sum(1 for r in s.results if not r.replayed))),
            ("skipped", f"{len(s.skipped)} (no completed cycle)"),
            ("first failure", "none" if first is None else f"{hour_label(first.hour)}: {first.first_diff}"),
        ]
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            typer.echo(f"{k:<{w}}  {v}")
        if not s.results:
            raise InputError(f"the ledger holds no completed hour from {hour_label(h0)} to {hour_label(h1)}")
        return 0 if s.ok else 1

    @rp.command("manifest")
    def manifest_cmd(
        at: str = typer.Option(..., "--hour", help="the bar's open, UTC: 2022-06-02T05:00 or unix seconds"),
        dsn: str = typer.Option(None, "--dsn", help=_DSN_HELP),
        config: str = typer.Option(None, "--config", help=_CONFIG_HELP),
        as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
    ) -> int:
        """Everything the hour used, with hashes: bars per pair (and their history window), features,
        model and bundle manifest, predictions, risk inputs, config, code version, universe, the
        snapshots, fills, and the hour's ledger rows with the chain hash at its last row."""
        from live_bridge.replay import manifest

        h = _hour(at, "--hour")
        with _open(dsn, config) as led:
            m = manifest(led, h)
        if as_json:
            typer.echo(json.dumps(m, indent=2, sort_keys=True))
        else:
            typer.echo(f"hour            {m['utc']} ({m['hour']})")
            typer.echo(f"code version    {m['code_version']}")
            typer.echo(f"config          {m['config_digest']}")
            typer.echo(f"universe        {m['universe_sha256']}")
            mo = m["model"]
            typer.echo(f"model           {mo['id']} manifest {mo['manifest_sha256']} (horizon {mo['trade_horizon']})")
            typer.echo(f"features        {m['features']['hash']} ({m['features']['n_features']} features)")
            for pair, b in m["bars"].items():
                typer.echo(f"bars {pair:<10} {b['digest']} window {b['window_sha256']} ({b['window_bars']} bars)")
            for pair, v in m["predictions"].items():
                typer.echo(f"prediction {pair:<4} p_up {v.get('p_up')} exp_return {v.get('exp_return')}")
            sn = m["snapshots"]
            for ph in ("before", "after"):
                s = sn[ph]
                typer.echo(f"snapshot {ph:<6} {'none' if s is None else s['sha256'] + ' (seq ' + str(s['seq']) + ')'}")
            for f in m["fills"]:
                typer.echo(
                    f"fill            {f['trade_id']} {f['pair']} {f['side']} {f['qty']} @ {f['price']} fee {f['fee']}"
                )
            lg = m["ledger"]
            span = f"seq {lg['first_seq']}..{lg['last_seq']} ({lg['rows']} rows)"
            typer.echo(f"ledger rows     {span}, hash at {lg['last_seq']} {lg['head_hash']}")
            typer.echo(f"chain           {lg.get('chain', 'not verified')}")
        return 0 if m["ledger"].get("chain_ok", True) else 1

    app.add_typer(rp, name="replay")
