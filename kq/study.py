"""``kq study``: an Optuna study over sweeps or walk-forward runs (the library is
:mod:`research.study`). This module parses the options, creates the study once, starts the local
worker processes, shows progress and writes the report."""

from __future__ import annotations

import typer


def _worker_entry(args, errq) -> None:  # module level: a spawned process imports it
    """A worker process: errors become one line on ``errq`` and the exit code."""
    import sys

    from engine.errors import KQError, one_line
    from research.study import worker_main

    try:
        worker_main(args)
    except KQError as e:
        errq.put(f"worker {args.worker}: {one_line(str(e))}")
        sys.exit(e.exit_code)
    except Exception as e:
        errq.put(f"worker {args.worker}: {type(e).__name__}: {one_line(str(e))[:500]}")
        sys.exit(1)


def run_study(
    config: str,
    trials: int,
    workers: int,
    out: str,
    *,
    study_file: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    store: str | None = None,
    track: bool = True,
    progress: bool = True,
    evaluate=None,
) -> dict:
    """The whole command as a function (tests call it): returns the study.json document."""
    import multiprocessing as mp
    import queue
    import time

    from engine.errors import InputError
    from engine.paths import check_out_dir
    from research.pipeline import DataSelection
    from research.study import (
        WorkerArgs,
        default_storage,
        fail_orphans,
        load_study_spec,
        make_storage,
        open_study,
        prepare_signals,
        run_worker,
        write_report,
    )

    if trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    if not 1 <= workers <= 256:
        raise InputError(f"--workers must be in [1, 256], got {workers}")
    data = DataSelection(store=store)
    ss = load_study_spec(config, study_file, None, data)
    name = study_name or ss.name
    check_out_dir(out)
    url = storage or default_storage(name, workers)
    if track and ss.base.research.tracking.enabled:
        from research.tracking import check_tracking

        check_tracking(ss.base.research.tracking)
    st = make_storage(url, ss)  # an unreachable server fails here, before any work
    sig = prepare_signals(ss, f"{out}/signals.parquet")
    study = open_study(ss, st, trials, name)  # created ONCE here, before any worker loads it
    fail_orphans(study, ss)  # a previous run's dead workers on this host: their trials fail and retry
    ctx = mp.get_context("spawn")
    errq = ctx.Queue()
    procs = []
    for k in range(workers):
        a = WorkerArgs(
            config=str(config),
            study_file=None if study_file is None else str(study_file),
            overrides={},
            data=data,
            storage=url,
            study_name=name,
            worker=k,
            signals_path=None if sig is None else str(sig),
            track=track,
            evaluate=evaluate,
        )
        p = ctx.Process(target=_worker_entry, args=(a, errq), name=f"kq-study-{k}")
        p.start()
        procs.append(p)
    _watch(study, procs, progress)
    errors = []
    while True:
        try:
            errors.append(errq.get_nowait())
        except queue.Empty:
            break
    from optuna.trial import TrialState

    left = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if left and errors and all(p.exitcode != 0 for p in procs):
        raise InputError(f"every worker failed: {errors[0]}")
    if left:  # a worker died (killed): its trials go stale; finish the study here
        run_worker(ss, url, name, workers, signals_path=sig, track=track, evaluate=evaluate)
    t0 = time.perf_counter()
    label = _label(url)
    doc = write_report(ss, study, out, signals_path=sig, track=track, storage_label=label)
    doc["report_seconds"] = round(time.perf_counter() - t0, 2)
    doc["worker_errors"] = errors
    return doc


def _label(url: str) -> str:
    from research.tracking import redact_uri

    return redact_uri(url)


def _watch(study, procs, progress: bool) -> None:
    """Wait for the workers; a progress bar of finished/requested trials on stderr."""
    import time

    from optuna.trial import TrialState

    def done() -> tuple[int, int]:
        ts = study.get_trials(deepcopy=False)
        fin = sum(1 for t in ts if t.state.is_finished())
        return fin, max(len(ts), 1)

    if not progress:
        for p in procs:
            p.join()
        return
    from kq.progress import progress_bar

    with progress_bar("{task.description}") as prog:
        task = prog.add_task(f"study {study.study_name}: {len(procs)} worker(s)", total=done()[1])
        while any(p.is_alive() for p in procs):
            fin, tot = done()
            pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
            prog.update(task, completed=fin, total=tot, description=f"study {study.study_name}: {pruned} pruned")
            time.sleep(1.0)
        for p in procs:
            p.join()


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study(
        config: str = typer.Option(..., "--config", help="TOML config (with a study table, or see --study)"),
        trials: int = typer.Option(..., "--trials", help="trials the study holds in total (all machines)"),
        workers: int = typer.Option(1, "--workers", help="local worker processes"),
        out: str = typer.Option(..., "--out", help="output folder: trials.parquet, study.json, report.html"),
        study_file: str = typer.Option(None, "--study", help="a TOML file with the study table"),
        storage: str = typer.Option(
            None,
            "--storage",
            help="sqlite:///PATH, journal:PATH or postgresql://... (default: data/optuna/, sqlite for one "
            "worker, a journal file for several)",
        ),
        study_name: str = typer.Option(None, "--study-name", help="default: study.name or the config's stem"),
        store: str = typer.Option(None, "--store", help="market store (default: the config's)"),
        no_track: bool = typer.Option(False, "--no-track", help="no MLflow run per trial"),
    ) -> None:
        """An Optuna study: TPE (NSGA-II for several objectives) over strategy/risk parameters
        (sweep mode) or model/feature parameters (walk-forward mode); the best trial is re-run on
        an untouched hold-out and reported with its deflated Sharpe ratio and PBO."""
        import time

        t0 = time.perf_counter()
        doc = run_study(
            config,
            trials,
            workers,
            out,
            study_file=study_file,
            storage=storage,
            study_name=study_name,
            store=store,
            track=not no_track,
        )
        typer.echo(summary(doc, time.perf_counter() - t0, out))


def summary(doc: dict, seconds: float, out: str) -> str:
    """The result lines: never the best trial without its DSR, PBO and the count of trials."""
    c = doc["counts"]
    lines = [
        f"study {doc['study']}: {c['configurations']} configurations tried "
        f"({', '.join(f'{k.lower()} {v}' for k, v in c['by_state'].items() if v)}); {seconds:.1f} s; wrote {out}/"
    ]
    for e in doc.get("worker_errors") or []:
        lines.append(f"warning: {e}")
    b = doc.get("best")
    if not b:
        lines.append("no complete trial: nothing to report")
        return "\n".join(lines)
    io, ho = b["in_study_overfitting"], b["holdout_overfitting"]
    ins, hos = b.get("in_study") or {}, b.get("holdout") or {}

    def f(v, pct=False):
        if v is None:
            return "n/a"
        return f"{v:+.2%}" if pct else f"{v:.3f}"

    vals = ", ".join(f"{k} {v:.4g}" for k, v in b["values"].items())
    lines.append(f"best trial #{b['number']} ({vals}): {b['params']}")
    lines.append(
        f"  study span: return {f(ins.get('total_return'), True)}, max drawdown {f(ins.get('max_drawdown'), True)}, "
        f"DSR {f(io.get('dsr'))} (n_trials {io['n_trials']}), PBO {f(io.get('pbo'))}"
    )
    lines.append(
        f"  hold-out:   return {f(hos.get('total_return'), True)}, max drawdown {f(hos.get('max_drawdown'), True)}, "
        f"DSR {f(ho.get('dsr'))} (n_trials {ho.get('n_trials')}), {hos.get('n_trades')} trades"
    )
    return "\n".join(lines)
