"""``kq walkforward``: purged walk-forward research over stored bars (research/walkforward.py)."""

from __future__ import annotations

import typer

from engine.errors import InputError


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
            p.reset(self.fits, total=self.per_step,
                    description=f"fold {kw['fold']} {kw['horizon']}h: {kw['n_train']:,} training rows")
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


def _time(v, end: bool = False):
    from kq.data import parse_time

    if v is None:
        return None
    return parse_time(str(v), end=end)


def register(app: typer.Typer) -> None:
    @app.command("walkforward")
    def walkforward(
        config: str = typer.Option(..., "--config", help="config TOML with a research table (configs/ci.toml, configs/research.toml)"),
        out: str = typer.Option(..., "--out", help="output folder: folds.json, predictions.parquet, regime.parquet, signals.parquet, metrics.json, report.html, backtest/"),
        pairs: str = typer.Option(None, "--pairs", help="comma-separated pairs (default: research.pairs, else every stored pair of the venue)"),
        venue: str = typer.Option(None, "--venue", help="venue (default: the config's data.venue)"),
        start: str = typer.Option(None, "--start", help="first bar trained on or predicted: unix seconds or ISO date (default research.start)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive (default research.end)"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
        register: bool = typer.Option(False, "--register", help="then fit the final model on the most recent window, "
                                      "save it as OUT/model/, log it to the MLflow run and register it as a candidate"),
        no_track: bool = typer.Option(False, "--no-track", help="do not log the run to MLflow "
                                      "(default: [research.tracking], embedded store data/mlflow/)"),
    ) -> None:
        """Walk-forward research: purged folds, five base models + regime + stacking, out-of-sample
        predictions, and a backtest of the meta-learner's signals. Logged as an MLflow run (params,
        per-fold metrics, outputs); --register adds the final model as a registry candidate."""
        import logging
        import os
        import time

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from engine.store.market import MarketStore
        from kq.data import parse_pairs
        from research.config import load_research_config, research_to_json
        from research.report import write_walkforward
        from research.walkforward import run_walkforward

        t_start = time.perf_counter()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        cfg, rc = load_research_config(config)
        from engine.paths import check_out_dir

        check_out_dir(out)  # before any training, so a bad --out never wastes a run
        track = rc.tracking.enabled and not no_track
        if register and not track:
            raise InputError("--register needs MLflow tracking (drop --no-track / set [research.tracking] "
                             "enabled = true): a candidate is a version in the model registry")
        v = venue or cfg.data.venue
        t0 = _time(start if start is not None else rc.start)
        t1 = _time(end if end is not None else rc.end, end=True)
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError("--end is before --start")
        if t0 is not None and t0 % 3600:
            t0 += 3600 - t0 % 3600
        names = parse_pairs(pairs) if pairs is not None else (list(rc.pairs) if rc.pairs else None)
        if track:
            from research.tracking import TrackingError, check_tracking

            try:
                check_tracking(rc.tracking)  # fail before hours of training, not after
            except TrackingError as e:
                raise TrackingError(f"{e}; nothing was run (use --no-track to run without MLflow)") from None
        with MarketStore(store or cfg.data.store, read_only=True) as s:
            if names is None:
                names = [i.pair for i in s.list_pairs(v)]
                if not names:
                    raise InputError(f"no pairs stored for venue {v!r}")
            load_from = None if t0 is None else t0 - rc.warmup_bars * 3600
            panel = s.load_panel(names, v, load_from, t1)
        if panel.n_bars < 2:
            raise InputError("fewer than 2 bars in the selected range")
        from engine.features.featureset import build_features, feature_schema_sha256

        member = None
        if rc.use_universe:
            from engine.universe import universe_mask

            member = universe_mask(panel)
        fs = build_features(panel, cfg.features, member)  # shared by the walk-forward and the final model
        console = Console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as prog:
            res = run_walkforward(panel, cfg, rc, features=fs, member=member, start_ts=t0,
                                  progress=_RichProgress(prog))
        meta = {"venue": panel.venue, "pairs": ",".join(panel.pairs), "bars_loaded": panel.n_bars,
                "start": t0 if t0 is not None else int(panel.ts[0]), "end": int(panel.ts[-1]),
                "config": config, "config_sha256": cfg.content_hash(), "research": research_to_json(rc),
                "seed": cfg.seed, "data_sha256": fs.content_hash,
                "feature_schema_sha256": feature_schema_sha256(cfg.features),
                "wall_seconds": round(time.perf_counter() - t_start, 2)}
        m = write_walkforward(res, out, cfg, meta)
        strat = m.get("strategy") or {}
        meta_auc = [r for r in res.model_metrics if r["model"] == "meta" and r["fold"] == "all"]
        aucs = ", ".join(f"{r['horizon']}h {r['auc']:.3f}" for r in meta_auc if r["auc"] is not None)
        typer.echo(f"{len(res.folds)} folds, {panel.venue} {', '.join(panel.pairs)}; meta out-of-sample AUC {aucs}; "
                   f"strategy total return {strat.get('total_return', float('nan')):+.2%}, "
                   f"max drawdown {strat.get('max_drawdown', float('nan')):.2%}, {strat.get('n_trades')} trades"
                   f"{'; SUSPECTED LEAK (see metrics.json leak_flags)' if res.suspected_leak else ''}; "
                   f"{time.perf_counter() - t_start:.1f} s; wrote {out}/")
        from pathlib import Path

        model_dir = Path(out) / "model"
        if (model_dir / "manifest.json").is_file():  # a previous run's bundle must not sit next to new results
            import shutil

            shutil.rmtree(model_dir)
        run_id = cand = None
        if track:
            from research.tracking import TrackingError, finish_run, log_walkforward_run, redact_uri, resolve_tracking

            saved = f"the walk-forward outputs are on disk in {out}/ (nothing lost)"
            try:
                run_id = log_walkforward_run(out, m, meta, cfg, rc, rc.tracking, end_run=not register)
            except TrackingError as e:
                raise TrackingError(f"{e}; {saved}") from None
            if register:
                from research.bundle import fit_final, save_bundle
                from research.tracking import register_candidate

                ok = False
                try:
                    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console) as prog:
                        bundle = fit_final(panel, cfg, rc, features=fs, member=member, start_ts=t0,
                                           progress=_FinalProgress(prog))
                    save_bundle(bundle, model_dir, extra={"walkforward_dir": str(Path(out).resolve()),
                                                          "run_id": run_id})
                    cand = register_candidate(model_dir, tracking=rc.tracking, run_id=run_id)
                    ok = True
                except TrackingError as e:
                    raise TrackingError(f"{e}; {saved}") from None
                finally:
                    try:
                        finish_run(run_id, rc.tracking, "FINISHED" if ok else "FAILED")
                    except TrackingError:
                        if ok:
                            raise
            typer.echo(f"MLflow run {run_id} ({redact_uri(resolve_tracking(rc.tracking)[0])}, "
                       f"experiment {rc.tracking.experiment!r})")
            if cand is not None:
                typer.echo(f"final model registered: bundle {cand.path} (copy in {model_dir}/); "
                           f"{time.perf_counter() - t_start:.1f} s in all")
                typer.echo(f"candidate: {cand.ref}")  # the last line, stable: kq models retrain parses it
