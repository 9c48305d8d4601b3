"""``kq data``: import bars into the market store, check them, export them, make a synthetic market."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from engine.errors import InputError, IntegrityError

STORE_HELP = "market store file (default $KQ_STORE or data/market.duckdb)"


def parse_time(value: str | None, *, end: bool = False) -> int | None:
    """CLI time: unix seconds, or an ISO date/datetime in UTC (naive = UTC); a bare date as ``end``
    means the whole day. One parser for the CLI and the library: :func:`engine.timeutil.parse_utc`."""
    from engine.timeutil import parse_utc

    return parse_utc(value, end=end)


def parse_pairs(value: str | None) -> list[str] | None:
    """``BTC/USD,ETH/USD`` (any spelling) -> canonical names; None when not given."""
    if value is None:
        return None
    from engine.pairs import normalize_pair

    out = [normalize_pair(p) for p in value.replace(" ", ",").split(",") if p.strip()]
    if not out:
        raise InputError("--pairs is empty")
    return out


def _console(stderr: bool = False):
    """Rich console; wide when output is not a terminal so tables never wrap in logs and tests."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width)


def print_report(report: dict, console=None) -> None:
    """The data report table (``kq data check`` and ``make demo``)."""
    from rich.table import Table

    from engine.store.integrity import KINDS

    console = console or _console()
    pairs = report["pairs"]
    if not pairs:
        console.print(f"market store {report['store']}: empty (no bars). Run `kq data import` or `kq data synth`.")
        return
    kinds = [k for k in KINDS if any(k in p["findings"] for p in pairs)]
    t = Table(title=f"market store {report['store']}", title_justify="left")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("venue", "left"),
        ("pair", "left"),
        ("rows", "right"),
        ("first bar (UTC)", "left"),
        ("last bar (UTC)", "left"),
        ("missing h", "right"),
    )
    for col, just in columns:
        t.add_column(col, justify=just)
    for k in kinds:
        t.add_column(k.replace("_", " ") + (" (!)" if KINDS[k] == "blocking" else ""), justify="right")
    for p in pairs:
        t.add_row(
            p["venue"],
            p["pair"],
            f"{p['rows']:,}",
            p["first_bar"],
            p["last_bar"],
            f"{p['missing_hours']:,}",
            *(f"{p['findings'].get(k, 0):,}" for k in kinds),
        )
    console.print(t)
    if report["blocking"]:
        console.print(f"[bold red]{report['blocking']} BLOCKING integrity finding(s):[/]")
        for f in report["blocking_findings"]:
            from engine.store.market import utc

            console.print(f"  {f['venue']} {f['pair']} {utc(f['ts'])}: {f['kind']}: {f['detail']}")
    else:
        console.print(
            "no blocking integrity problems (gaps, zero-volume filler bars and bad prints are "
            "warnings: bars kept, flagged)"
        )


def run_check(store_path: str | None, venue: str | None, as_json: bool) -> dict:
    from engine.store.market import MarketStore

    with MarketStore(store_path, read_only=True) as s:
        report = s.check(venue)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return report


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Market data: import, check, export, synthetic market.", no_args_is_help=True)

    @data.command("import")
    def import_(
        paths: list[str] = typer.Argument(
            ...,
            help="files or folders: Kraken OHLCVT CSV (<PAIR>_60.csv), "
            ".zip of them, Kraken REST OHLC .json, shared-layout .parquet",
        ),
        venue: str = typer.Option(None, "--venue", help="venue to record (default: from file name/metadata)"),
        pair: str = typer.Option(None, "--pair", help="pair (any spelling) when the file name does not say"),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Import bar files; all-or-nothing (a bad file rejects the whole import, exit 2)."""
        from rich.markup import escape
        from rich.table import Table

        from engine.store.market import MarketStore
        from engine.store.readers import expand_paths, one_line

        files = expand_paths(paths)
        con = _console()
        with MarketStore(store) as s:
            if len(files) > 1:
                from kq.progress import progress_bar

                with progress_bar("importing", detail=True, console=_console(stderr=True)) as prog:
                    task = prog.add_task("", total=len(files))
                    done = {"n": 0}

                    def tick(label: str) -> None:
                        if done["n"]:
                            prog.advance(task)
                        done["n"] += 1
                        prog.update(task, description=escape(one_line(Path(label).name, 80)))

                    rep = s.import_files(files, venue=venue, pair=pair, progress=tick)
                    prog.advance(task)
            else:
                rep = s.import_files(files, venue=venue, pair=pair)
            path = s.path
        t = Table(title=escape(f"import into {path}"), title_justify="left")
        for c in ("file", "status", "venue", "pair", "rows", "new bars", "note"):
            t.add_column(c, justify="right" if c in ("rows", "new bars") else "left")
        for r in rep.results:
            note = r.reason or (f"{r.existing_bars:,} identical bars already stored" if r.existing_bars else "")
            # file and member names come from the input: shown as text (escaped), never as markup
            name = one_line(r.label.replace("\\", "/").rsplit("/", 1)[-1], 120)
            t.add_row(
                escape(name),
                r.status,
                r.venue,
                r.pair,
                f"{r.rows:,}" if r.rows else "",
                f"{r.new_bars:,}" if r.status == "imported" else "",
                escape(one_line(note, 200)),
            )
        con.print(t)
        con.print(rep.summary())

    @data.command("check")
    def check(
        venue: str = typer.Option(None, "--venue", help="only this venue"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Per pair: rows, first/last bar, missing hours, integrity findings; exit 1 on a blocking problem."""
        report = run_check(store, venue, as_json)
        if report["blocking"]:
            raise IntegrityError(f"{report['blocking']} blocking integrity problem(s) in {report['store']}")

    @data.command("export")
    def export(
        out: str = typer.Option(..., "--out", help="output .parquet file (long form)"),
        pairs: str = typer.Option(None, "--pairs", help="comma-separated pairs (default: all)"),
        venue: str = typer.Option(None, "--venue", help="only this venue (default: all)"),
        start: str = typer.Option(None, "--start", help="first bar: unix seconds or ISO date/datetime (UTC)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive (a bare date includes that day)"),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Export validated bars to Parquet (venue, pair, ts, open, high, low, close, volume, trades, vwap)."""
        from engine.store.market import MarketStore

        with MarketStore(store, read_only=True) as s:
            n = s.export_parquet(out, parse_pairs(pairs), venue, parse_time(start), parse_time(end, end=True))
        typer.echo(f"wrote {n:,} bars to {out}")

    @data.command("synth")
    def synth(
        pairs: str = typer.Option(
            None, "--pairs", help="comma-separated pairs (default: the 10 universe bases vs USD)"
        ),
        start: str = typer.Option(None, "--start", help="first bar (default 2022-01-01)"),
        bars: int = typer.Option(8760, "--bars", min=1, help="bars per pair"),
        seed: int = typer.Option(7, "--seed", min=0, help="random seed"),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Generate a SYNTHETIC market (invented data) and store it under venue `synthetic`."""
        rep, path = synth_into_store(store, parse_pairs(pairs), parse_time(start), bars, seed)
        typer.echo(f"SYNTHETIC market (venue synthetic, seed {seed}) in {path}: {rep.summary()}")

    app.add_typer(data, name="data")


def synth_into_store(store, pairs, start_ts, n_bars: int, seed: int):
    """Generate B's synthetic market and store it under venue ``synthetic`` in one transaction."""
    from engine import synth as synth_mod
    from engine.store.market import MarketStore

    st = synth_mod.DEFAULT_START_TS if start_ts is None else int(start_ts)
    frames = synth_mod.generate_market(
        tuple(pairs) if pairs else synth_mod.DEFAULT_SYNTH_PAIRS, st, int(n_bars), int(seed)
    )
    with MarketStore(store) as s:
        rep = s.import_frames(frames, synth_mod.SYNTH_VENUE, f"synth(seed={seed},start={st},bars={n_bars})")
        return rep, s.path
