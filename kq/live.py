"""``kq live``: the hourly paper/live daemon (``run``), the check of its ledger (``verify``) and the
operator commands (``status``, ``reactivate``, ``reset-halt``, ``pause``, ``resume``, ``flatten``,
``set-ceiling``:
:mod:`live_bridge.operator`).
``shadow-report`` compares a shadow model with the approved one (:mod:`live_bridge.shadow`).
docs/LIVE.md, "Daemon", describes them. Errors are one line: a bad config, missing credentials,
no approved model or ``--live`` with a paper config exit 2 before anything is sent; a Kraken halt
stops the daemon with exit 3."""

from __future__ import annotations

import typer

from engine.errors import InputError, IntegrityError


def _when(hour: int | None) -> str:
    from datetime import UTC, datetime

    if hour is None:
        return "none (a new portfolio starts at the newest closed bar)"
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00 UTC")


def start_lines(daemon, rep) -> list[str]:
    """The StartReport as two lines: what runs, then what recovery found (with the ledger head)."""
    live = daemon.live
    seq, h = daemon.ledger.head()
    first = (
        f"kq live: {live.mode}  exchange {live.exchange.url}  pairs {', '.join(live.universe.pairs)}  "
        f"model {daemon.model.model} (manifest {str(daemon.model.manifest_sha256)[:16]})  ledger {daemon.ledger.dsn}"
    )
    second = (
        f"kq live: last completed bar {_when(rep.last_completed)}; resumed {rep.resumed} order(s), "
        f"{rep.unresolved} unresolved; reconcile {rep.reconcile or 'n/a'}; ledger head seq {seq} hash {h[:16]}"
    )
    if rep.latch:
        second += f"; kill switch asked at the next bar: {rep.latch}"
    return [first, second, *(f"kq live: warning: {n}" for n in rep.notes)]


def _ledger_target(config: str | None, dsn: str | None) -> tuple[str | None, str | None]:
    """(DSN, PostgreSQL schema) to verify: ``--dsn``, else the config's ledger, else None (the
    ledger's default: KQ_LEDGER_DSN, else data/ledger.sqlite)."""
    if config and dsn:
        raise InputError("give --config or --dsn, not both")
    if dsn is not None:
        if not dsn.strip():
            raise InputError("--dsn is empty")
        return dsn, None
    if config:
        from live_bridge.config import load_live_config

        cfg = load_live_config(config)
        return cfg.ledger_dsn(), cfg.paths.ledger_schema
    return None, None


def _parse_anchor(anchor: str | None) -> tuple[int, str] | None:
    if anchor is None:
        return None
    seq, sep, h = anchor.partition(":")
    ok = sep and seq.isdigit() and int(seq) > 0 and len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    if not ok:
        raise InputError(f"--anchor {anchor[:90]!r}: use SEQ:HASH as printed by kq live verify (64 hex characters)")
    return int(seq), h


def register(app: typer.Typer) -> None:
    live = typer.Typer(help="Paper/live trading daemon and its ledger.", no_args_is_help=True)

    @live.command("run")
    def run(
        config: str = typer.Option(..., "--config", help="configs/paper.toml or configs/live.toml"),
        allow_live: bool = typer.Option(False, "--live", help="trade real money (needs a config with mode = 'live')"),
        once: bool = typer.Option(False, "--once", help="run the hours that are due, then exit"),
    ) -> None:
        """Run the hourly cycle: recover at start (open orders looked up, reconciliation), then one
        cycle per closed bar. Credentials come from KRAKEN_API_KEY / KRAKEN_API_SECRET; the model is
        the one approved for the config's mode. SIGTERM / Ctrl-C finish the current hour first."""
        from live_bridge.config import load_live_config
        from live_bridge.daemon import Daemon

        cfg = load_live_config(config)
        daemon = Daemon.from_config(cfg, allow_live=allow_live)
        try:
            rep = daemon.start()
            for line in start_lines(daemon, rep):
                typer.echo(line)
            if once:
                for r in daemon.run_once():
                    typer.echo(r.line())
                return
            daemon.run_forever(on_hour=lambda r: typer.echo(r.line()))
            typer.echo("kq live: stopped")
        finally:
            daemon.close()

    @live.command("shadow-report")
    def shadow_report_cmd(
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to read"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """The shadow model's last run against the approved model over the same hours, from the ledger
        alone: hours covered, agreement per hour and pair (entries and exits: both, neither, one side
        only), trades and fees each side, PnL after fees (the shadow's hypothetical, the approved
        model's traded) and final equity. Exit 2 when the ledger holds no shadow run."""
        import json

        from live_bridge.shadow import shadow_report

        with _open_ledger(config, dsn) as led:
            r = shadow_report(led)
        if as_json:
            typer.echo(json.dumps(r.to_json(), sort_keys=True, allow_nan=False))
            return
        for line in r.lines():
            typer.echo(line)

    @live.command("verify")
    def verify(
        config: str = typer.Option(None, "--config", help="verify the ledger this daemon config writes"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        anchor: str = typer.Option(None, "--anchor", help="SEQ:HASH printed by an earlier verify: must still hold"),
    ) -> None:
        """Walk the ledger's hash chain from its first row; print the head (seq, hash) to keep as an
        anchor elsewhere. Exit 1 naming the first broken row. Nothing is written."""
        from pathlib import Path

        from live_bridge.ledger import Ledger
        from live_bridge.ledger.migrate import redacted, resolve_url

        target, schema = _ledger_target(config, dsn)
        anc = _parse_anchor(anchor)
        url = resolve_url(target)
        if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
            raise InputError(f"no ledger at {redacted(url)}")
        with Ledger.open(target, schema=schema, migrate=False) as led:
            rep = led.verify(anchor=anc)
        if not rep.ok:
            raise IntegrityError(f"{rep.message} (rows 1..{rep.head_seq} verify; last good hash {rep.head_hash})")
        typer.echo(rep.message)
        typer.echo(f"anchor {rep.head_seq}:{rep.head_hash}")

    @live.command("status")
    def status_cmd(
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to read"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """The portfolio from the ledger alone (no exchange call): last and next hour, trading state,
        drawdown tier, kill reason and the latch reasons asked, equity, cash, peak, drawdown,
        positions, exposure, the model of the last hour, pending operator actions, open orders."""
        import json

        from live_bridge.config import load_live_config
        from live_bridge.operator import status

        with _open_ledger(config, dsn) as led:
            s = status(led, load_live_config(config) if config else None)
        if as_json:
            typer.echo(json.dumps(s.to_json(), sort_keys=True, allow_nan=False))
            return
        _print_status(s)

    def _request(action: str, reason: str, config: str | None, dsn: str | None, confirm: str | None, force: bool):
        from live_bridge.operator import CONFIRM_WORDS, default_actor, nothing_to_reset, request, status

        word = CONFIRM_WORDS[action]
        actor = default_actor()
        with _open_ledger(config, dsn) as led:
            s = status(led)
            typer.echo(_seen_line(action, s))
            if not force:  # refuse before asking for a confirmation that could not be used
                why = nothing_to_reset(action, s)
                if why is not None:
                    raise InputError(f"{why}: nothing written (--force writes it anyway)")
            if confirm is None:
                try:
                    confirm = typer.prompt(f"type {word!r} to confirm ({actor})", default="", show_default=False)
                except (typer.Abort, EOFError, KeyboardInterrupt):
                    raise InputError("no confirmation typed: nothing written") from None
            r = request(led, action, reason, actor, str(confirm), force=force)
        for w in r.warnings:
            typer.echo(f"warning: {w}")
        typer.echo(
            f"kq live: {word} ledgered (seq {r.entry.seq}, by {actor}); applied at the next bar close "
            f"(hour {_when_short(r.apply_hour)}) through the risk step's operator input"
        )

    @live.command("reactivate")
    def reactivate(
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        yes: bool = typer.Option(False, "--yes-reactivate", help="confirm without the prompt"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('reactivate')"),
        force: bool = typer.Option(False, "--force", help="write it even when the kill switch is not latched"),
    ) -> None:
        """Release the latched kill switch at the next bar close (ledgered ``operator_action``;
        the actor is KQ_OPERATOR, else the OS user). Asks to type 'reactivate' unless
        --yes-reactivate or --confirm reactivate. Exit 2, nothing written, when the kill switch is
        not latched (unless --force) or the confirmation is not the word."""
        _request("reactivate", reason, config, dsn, "reactivate" if yes else confirm, force)

    @live.command("reset-halt")
    def reset_halt(
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        yes: bool = typer.Option(False, "--yes-reset-halt", help="confirm without the prompt"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('reset-halt')"),
        force: bool = typer.Option(False, "--force", help="write it even when the drawdown halt is not latched"),
    ) -> None:
        """Lift the latched drawdown halt at the next bar close: the peak restarts at the equity of
        that close (ledgered ``operator_action``). Shows the drawdown and the peak it resets from,
        then asks to type 'reset-halt' unless --yes-reset-halt or --confirm reset-halt. Exit 2,
        nothing written, when the halt is not latched (unless --force) or the confirmation differs."""
        _request("reset_halt", reason, config, dsn, "reset-halt" if yes else confirm, force)

    @live.command("pause")
    def pause(
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('pause')"),
        force: bool = typer.Option(False, "--force", help="write it even when trading is already paused"),
    ) -> None:
        """Pause new entries from the next bar close until a resume (exits, stops and take-profits
        still fire; ledgered ``operator_action``). Asks to type 'pause' unless --confirm pause.
        Exit 2, nothing written, when already paused (unless --force) or the confirmation differs."""
        _request("pause", reason, config, dsn, confirm, force)

    @live.command("resume")
    def resume(
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('resume')"),
        force: bool = typer.Option(False, "--force", help="write it even when trading is not paused"),
    ) -> None:
        """Lift the operator pause at the next bar close (ledgered ``operator_action``). Asks to
        type 'resume' unless --confirm resume. Exit 2, nothing written, when not paused (unless
        --force) or the confirmation differs."""
        _request("resume", reason, config, dsn, confirm, force)

    @live.command("flatten")
    def flatten(
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('flatten')"),
        force: bool = typer.Option(False, "--force", help="write it even when no position is open"),
    ) -> None:
        """Close every open position at market at the next bar close, through the normal execution
        path (exit reason EXIT_OPERATOR; no entry is decided at that close; ledgered
        ``operator_action``). Asks to type 'flatten' unless --confirm flatten. Exit 2, nothing
        written, when no position is open (unless --force) or the confirmation differs."""
        _request("flatten", reason, config, dsn, confirm, force)

    @live.command("set-ceiling")
    def set_ceiling(
        to: str = typer.Option(..., "--to", help="the new capital ceiling in quote currency, or 'off'"),
        reason: str = typer.Option(..., "--reason", help="why (ledgered with the action)"),
        config: str = typer.Option(None, "--config", help="the daemon config whose ledger to write"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        confirm: str = typer.Option(None, "--confirm", help="the confirmation word, non-interactive ('set-ceiling')"),
        force: bool = typer.Option(False, "--force", help="write it even when it is the ceiling in force"),
    ) -> None:
        """Change the capital ceiling (R3b: caps and sizes read min(equity, ceiling)) at the next bar
        close, lowering or raising it (ledgered ``operator_action`` set_ceiling; from then on it wins
        over the config's ``capital_ceiling``). Shows the ceiling in force, the equity and the new
        value, then asks to type 'set-ceiling' unless --confirm set-ceiling. Exit 2, nothing
        written: --to not a positive amount nor 'off', the same value as now (unless --force), a
        set-ceiling already pending (unless --force), or the confirmation differs."""
        from live_bridge.ceiling import ceiling_text, parse_ceiling
        from live_bridge.operator import (
            default_actor,
            nothing_to_reset,
            request_ceiling,
            same_ceiling,
            status,
        )

        new = parse_ceiling(to)
        actor = default_actor()
        with _open_ledger(config, dsn) as led:
            s = status(led)
            typer.echo(_ceiling_line(s, ceiling_text(new)))
            if not force:  # refuse before asking for a confirmation that could not be used
                why = nothing_to_reset("set_ceiling", s) or same_ceiling(new, s)
                if why is not None:
                    raise InputError(f"{why}: nothing written (--force writes it anyway)")
            if confirm is None:
                try:
                    confirm = typer.prompt(
                        "type 'set-ceiling' to confirm (" + actor + ")", default="", show_default=False
                    )
                except (typer.Abort, EOFError, KeyboardInterrupt):
                    raise InputError("no confirmation typed: nothing written") from None
            r = request_ceiling(led, to, reason, actor, str(confirm), force=force)
        typer.echo(
            f"kq live: set-ceiling to {ceiling_text(new)} ledgered (seq {r.entry.seq}, by {actor}); applied at "
            f"the next bar close (hour {_when_short(r.apply_hour)}) before its risk step"
        )

    app.add_typer(live, name="live")


def _shadow_line(sh) -> str:
    """The shadow model's line of ``kq live status`` (live_bridge.shadow.shadow_summary)."""
    from live_bridge.operator import hour_utc

    if sh is None:
        return "none"
    out = f"{sh['model']} (never trades)"
    if sh.get("last_hour") is not None:
        out += f": since {hour_utc(sh['first_hour'])}, equity {_money(sh['equity'])} at {hour_utc(sh['last_hour'])}"
    if sh.get("failed"):
        f = sh["failed"]
        out += f"; last failure at {hour_utc(f['hour'])} ({f['stage']}): {f['reason']}"
    return out


def _open_ledger(config: str | None, dsn: str | None):
    """The ledger of ``--config`` / ``--dsn`` (as ``verify``), never created or migrated here."""
    from pathlib import Path

    from live_bridge.ledger import Ledger
    from live_bridge.ledger.migrate import redacted, resolve_url

    target, schema = _ledger_target(config, dsn)
    url = resolve_url(target)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
        raise InputError(f"no ledger at {redacted(url)}")
    return Ledger.open(target, schema=schema, migrate=False)


def _when_short(hour: int | None) -> str:
    from live_bridge.operator import hour_utc

    if hour is None:
        return "the portfolio's first hour"
    return f"{hour_utc(hour)}, run after {hour_utc(hour + 1)[11:]}"


def _pct(d) -> str:
    return "n/a" if d is None else f"{float(d) * 100:.2f}%"


def _money(d) -> str:
    return "n/a" if d is None else f"{float(d):,.2f}"


def _ceiling(c: str | None) -> str:
    return "n/a" if c is None else ("off" if c == "inf" else _money(c))


def _ceiling_line(s, new: str) -> str:
    """What a set-ceiling acts on, printed before the confirmation."""
    from live_bridge.operator import hour_utc

    if not s.portfolio:
        return f"kq live: no completed hour in the ledger yet; new capital ceiling {new}"
    return (
        f"kq live: {s.state} at the close of {hour_utc(s.snapshot_hour)}: "
        f"capital ceiling {_ceiling(s.capital_ceiling)} "
        f"({s.ceiling_source}), equity {_money(s.equity)}, cap base {_money(s.cap_base)}; "
        f"new capital ceiling {new if new == 'off' else _money(new)}"
    )


def _seen_line(action: str, s) -> str:
    """What the operator acts on, printed before the confirmation."""
    from live_bridge.operator import hour_utc

    if not s.portfolio:
        return "kq live: no completed hour in the ledger yet"
    at = f"at the close of {hour_utc(s.snapshot_hour)}"
    if action == "reset_halt":
        return (
            f"kq live: {s.state} {at}: drawdown {_pct(s.drawdown)} from peak {_money(s.peak)} "
            f"(equity {_money(s.equity)}); the reset restarts the peak at the equity when it is applied"
        )
    if action in ("pause", "resume"):
        return f"kq live: {s.state} {at}: {'paused' if s.paused else 'not paused'}"
    if action == "flatten":
        held = ", ".join(f"{p.pair} {p.qty}" for p in s.positions) or "none"
        return f"kq live: {s.state} {at}: open positions: {held}; exposure {_money(s.exposure)}"
    latch = f"; asked for the next bar: {'; '.join(s.latch_next)}" if s.latch_next else ""
    return f"kq live: {s.state} {at}: kill reason {s.kill_reason}{latch}"


def _print_status(s) -> None:
    from rich.markup import escape
    from rich.table import Table

    from kq.data import _console
    from live_bridge.operator import hour_utc

    con = _console()
    t = Table(title=f"kq live status: {escape(s.ledger)}", title_justify="left", show_header=False)
    t.add_column("field")
    t.add_column("value")
    cyc = s.last_cycle
    rows = [
        ("last completed hour", hour_utc(s.last_completed) if s.last_completed is not None else "none"),
        ("next hour", _when_short(s.next_hour) if s.next_hour is not None else "none (a new portfolio)"),
        ("last cycle", "none" if cyc is None else f"{hour_utc(cyc['hour'])} {cyc['status']} (seq {cyc['seq']})"),
    ]
    if s.portfolio:
        rows += [
            ("state", f"{s.state} (drawdown tier {s.tier})"),
            ("kill switch", f"latched: {s.kill_reason}" if s.kill_switch else "not latched"),
            ("drawdown halt", "latched" if s.halted else "not latched"),
            ("operator pause", "paused (no new entries)" if s.paused else "not paused"),
            ("equity", _money(s.equity)),
            ("cash", _money(s.cash)),
            ("peak", _money(s.peak)),
            ("drawdown", _pct(s.drawdown)),
            ("exposure", f"{_money(s.exposure)} ({_pct(s.exposure_frac)} of equity)"),
            ("capital ceiling", f"{_ceiling(s.capital_ceiling)} ({s.ceiling_source})"),
            ("cap base", f"{_money(s.cap_base)} (min(equity, ceiling): what the caps and sizes read)"),
        ]
        if s.config_ceiling is not None and s.ceiling_set is not None and s.config_ceiling != s.ceiling_set["new"]:
            rows.append(("config's capital ceiling", f"{s.config_ceiling} (not in force)"))
        if s.pending_ceiling is not None:
            rows.append(("pending set-ceiling", f"{s.pending_ceiling} (applied at the next bar close)"))
    else:
        rows.append(("portfolio", "none yet (no completed hour with a risk snapshot)"))
    rows += [
        ("kill switch asked next bar", "; ".join(s.latch_next) if s.latch_next else "no"),
        ("model", "none" if s.model_id is None else f"{s.model_id} (manifest {str(s.manifest_sha256)[:16]})"),
        ("shadow model", _shadow_line(s.shadow)),
        ("ledger head seq", str(s.head_seq)),
    ]
    for k, v in rows:
        t.add_row(k, escape(v))
    con.print(t)
    if s.ceiling_warning:
        con.print(f"warning: {escape(s.ceiling_warning)}")
    if s.positions:
        p = Table(title="positions", title_justify="left")
        for c in ("pair", "qty", "entry price", "entry hour", "stop", "take-profit", "mark", "value"):
            p.add_column(c, justify="left" if c in ("pair", "entry hour") else "right")
        for x in s.positions:
            p.add_row(
                x.pair,
                str(x.qty),
                str(x.entry_price),
                hour_utc(x.entry_hour),
                "none" if x.stop is None else str(x.stop),
                "none" if x.take_profit is None else str(x.take_profit),
                str(x.mark),
                _money(x.value),
            )
        con.print(p)
    else:
        con.print("positions: none")
    if s.pending_actions:
        a = Table(title="pending operator actions (applied at the next bar close)", title_justify="left")
        for c in ("seq", "action", "actor", "reason", "recorded (UTC)"):
            a.add_column(c)
        for x in s.pending_actions:
            a.add_row(str(x["seq"]), x["action"], escape(str(x["actor"])), escape(str(x["reason"])), x["recorded_utc"])
        con.print(a)
    else:
        con.print("pending operator actions: none")
    if s.open_intents:
        o = Table(title="open order intents (looked up at the next start or hour)", title_justify="left")
        for c in ("seq", "hour", "cl_ord_id", "pair", "side", "qty", "limit"):
            o.add_column(c)
        for x in s.open_intents:
            o.add_row(
                str(x["seq"]),
                hour_utc(x["hour"]),
                x["cl_ord_id"],
                str(x["pair"]),
                str(x["side"]),
                str(x["qty"]),
                "market" if x["price"] is None else str(x["price"]),
            )
        con.print(o)
    else:
        con.print("open order intents: none")
