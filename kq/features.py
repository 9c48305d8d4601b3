"""``kq features``: build the causal feature set from the market store and write it as Parquet."""

from __future__ import annotations

import typer

from engine.errors import InputError

STORE_HELP = "market store file (default $KQ_STORE or data/market.duckdb)"


def check_out(out: str):
    from pathlib import Path

    p = Path(out)
    if p.suffix.lower() != ".parquet":
        raise InputError(f"--out {out}: must end in .parquet")
    if not p.parent.exists():
        raise InputError(f"--out {out}: folder {p.parent} does not exist")
    return p


def write_features_parquet(fs, out: str) -> int:
    """Write ``fs.to_long()`` to ``out`` atomically (temp file then rename); returns the row count."""
    import json
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    p = check_out(out)
    df = fs.to_long()
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {
        b"krakenquant.features": json.dumps(
            {
                "venue": fs.venue,
                "pairs": list(fs.pairs),
                "names": list(fs.names),
                "config": fs.config.model_dump(mode="json"),
                "content_hash": fs.content_hash,
            }
        ).encode()
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(df)


def register(app: typer.Typer) -> None:
    @app.command("features")
    def features(
        out: str = typer.Option(..., "--out", help="output FILE.parquet (long form: ts, pair, one column per feature)"),
        config: str = typer.Option(None, "--config", help="config TOML (default configs/default.toml)"),
        venue: str = typer.Option(None, "--venue", help="venue (default: the config's data.venue)"),
        pairs: str = typer.Option(None, "--pairs", help="comma-separated pairs (default: all pairs of the venue)"),
        start: str = typer.Option(None, "--start", help="first bar: unix seconds or ISO date/datetime (UTC)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive (a bare date includes that day)"),
        store: str = typer.Option(None, "--store", help=STORE_HELP),
        universe: str = typer.Option(
            None,
            "--universe",
            help="restrict breadth and clusters to the tradable "
            "universe of this universe TOML ('default' = configs/universe.toml); "
            "default: every pair of the panel",
        ),
    ) -> None:
        """Compute the causal feature set (bars <= t only) and write it as long-form Parquet.

        ``warmup_bars`` (config) of history before --start are loaded and used, not written, so the
        first rows written already have their full-history values.
        """
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from engine.config import load_config
        from engine.features.featureset import build_features
        from engine.store.market import MarketStore
        from kq.data import _console, parse_pairs, parse_time

        cfg = load_config(config)
        v = venue or cfg.data.venue
        t0, t1 = parse_time(start), parse_time(end, end=True)
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError("--end is before --start")
        names = parse_pairs(pairs)
        check_out(out)
        warm = cfg.features.warmup_bars * 3600
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            transient=False,
        ) as prog:  # progress on stderr
            task = prog.add_task("loading bars from the market store", total=3)
            with MarketStore(store or cfg.data.store, read_only=True) as s:
                if names is None:
                    names = [i.pair for i in s.list_pairs(v)]
                    if not names:
                        raise InputError(f"no pairs stored for venue {v!r}")
                # load warmup_bars of history before --start so the first rows are already final
                panel = s.load_panel(names, v, None if t0 is None else t0 - warm, t1)
            prog.update(
                task, advance=1, description=f"computing features ({panel.n_bars:,} bars x {panel.n_pairs} pairs)"
            )
            mask = None
            if universe is not None:
                from engine.universe import load_universe, universe_mask

                mask = universe_mask(panel, load_universe(None if universe == "default" else universe))
            fs = build_features(panel, cfg.features, universe_mask=mask)
            if t0 is not None:
                fs = fs.slice(start=t0)
            prog.update(task, advance=1, description=f"writing {out}")
            n = write_features_parquet(fs, out)
            prog.update(task, advance=1, description="done")
        typer.echo(
            f"wrote {n:,} rows x {len(fs.names)} features ({panel.venue}, {', '.join(panel.pairs)}) "
            f"to {out} (sha256 {fs.content_hash[:16]})"
        )
