"""``kq walkforward``: purged walk-forward research over stored bars. The run is the library's
(:func:`research.pipeline.run`); this module parses the options, shows progress and prints."""

from __future__ import annotations

from contextlib import contextmanager

import typer


class _RichProgress:
    """Progress over (fold, horizon) steps and the base-model fits inside each, on stderr."""

    def __init__(self, prog) -> None:
        self.prog = prog
        self.steps = None
        self.fits = None
        self.per_step = 1

    def __call__(self, event: str, **kw) -> None:
        p = self.prog
        if event == "plan":
            n = kw["n_folds"] * len(kw["horizons"])
            self.per_step = len(kw["models"]) * (kw["inner_folds"] + 1)
            self.steps = p.add_task(f"walk-forward: {kw['n_folds']} folds x {len(kw['horizons'])} horizon(s)", total=n)
            self.fits = p.add_task("models", total=self.per_step)
        elif event == "step":
            p.reset(
                self.fits,
                total=self.per_step,
                description=f"fold {kw['fold']} {kw['horizon']}h: {kw['n_train']:,} training rows",
            )
        elif event == "fit" and kw["stage"] == "start":
            what = "refit on the window" if kw.get("final") else "inner fold"
            p.update(self.fits, description=f"fold {kw['fold']} {kw['horizon']}h: {kw['model']} ({what})")
        elif event == "fit":
            p.advance(self.fits)
        elif event == "fold_done":
            p.advance(self.steps)


class _FinalProgress:
    """Progress of the final model's fits (research.bundle.fit_final) on stderr."""

    def __init__(self, prog) -> None:
        self.prog = prog
        self.task = None

    def __call__(self, event: str, **kw) -> None:
        p = self.prog
        if event == "plan":
            n = len(kw["horizons"]) * len(kw["models"]) * (kw["inner_folds"] + 1)
            self.task = p.add_task(f"final model: {len(kw['horizons'])} horizon(s)", total=n)
        elif event == "step":
            p.update(self.task, description=f"final model {kw['horizon']}h: {kw['n_train']:,} training rows")
        elif event == "fit" and kw["stage"] == "start":
            what = "refit on the window" if kw.get("final") else "inner fold"
            p.update(self.task, description=f"final model {kw['horizon']}h: {kw['model']} ({what})")
        elif event == "fit":
            p.advance(self.task)


@contextmanager
def progress_hooks():
    """Rich progress bars on stderr for a research run: (walk-forward progress, final-fit progress).
    The display starts with the first event (training), so an early input error prints alone."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    started = []

    def lazy(hook):
        def call(event: str, **kw) -> None:
            if not started:
                prog.start()
                started.append(True)
            hook(event, **kw)

        return call

    try:
        yield lazy(_RichProgress(prog)), lazy(_FinalProgress(prog))
    finally:
        if started:
            prog.stop()


def report_tracking(o) -> None:
    """The lines printed after a tracked run: the MLflow run, then the candidate (``--register``)."""
    from research.tracking import redact_uri, resolve_tracking

    rc = o.spec.research
    if o.run_id is None:
        return
    typer.echo(
        f"MLflow run {o.run_id} ({redact_uri(resolve_tracking(rc.tracking)[0])}, experiment {rc.tracking.experiment!r})"
    )
    if o.candidate is not None:
        typer.echo(
            f"final model registered: bundle {o.candidate.path} (copy in {o.model_dir}/); {o.seconds:.1f} s in all"
        )
        typer.echo(f"candidate: {o.candidate.ref}")  # the last line, stable


def register(app: typer.Typer) -> None:
    @app.command("walkforward")
    def walkforward(
        config: str = typer.Option(
            ..., "--config", help="config TOML with a research table (configs/ci.toml, configs/research.toml)"
        ),
        out: str = typer.Option(
            ...,
            "--out",
            help="output folder: folds.json, predictions.parquet, regime.parquet, signals.parquet, metrics.json, "
            "report.html, backtest/",
        ),
        pairs: str = typer.Option(
            None, "--pairs", help="comma-separated pairs (default: research.pairs, else every stored pair of the venue)"
        ),
        venue: str = typer.Option(None, "--venue", help="venue (default: the config's data.venue)"),
        start: str = typer.Option(
            None, "--start", help="first bar trained on or predicted: unix seconds or ISO date (default research.start)"
        ),
        end: str = typer.Option(None, "--end", help="last bar, inclusive (default research.end)"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
        register: bool = typer.Option(
            False,
            "--register",
            help="then fit the final model on the most recent window, "
            "save it as OUT/model/, log it to the MLflow run and register it as a candidate",
        ),
        no_track: bool = typer.Option(
            False,
            "--no-track",
            help="do not log the run to MLflow (default: [research.tracking], embedded store data/mlflow/)",
        ),
    ) -> None:
        """Walk-forward research: purged folds, five base models + regime + stacking, out-of-sample
        predictions, and a backtest of the meta-learner's signals. Logged as an MLflow run (params,
        per-fold metrics, outputs); --register adds the final model as a registry candidate."""
        import logging
        import os
        import time

        from kq.data import parse_pairs
        from research.pipeline import load_spec, run, summary_line

        t_start = time.perf_counter()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        spec = load_spec(config)
        names = parse_pairs(pairs)
        spec = spec.with_data(
            store=store, venue=venue, pairs=tuple(names) if names is not None else None, start=start, end=end
        )
        lines: list[str] = []  # printed once the progress display is gone (also when tracking then fails)
        try:
            with progress_hooks() as (prog, final):
                o = run(
                    spec,
                    out,
                    track=not no_track,
                    register=register,
                    progress=prog,
                    final_progress=final,
                    on_outputs=lambda o: lines.append(summary_line(o, time.perf_counter() - t_start)),
                )
        finally:
            for line in lines:
                typer.echo(line)
        report_tracking(o)
