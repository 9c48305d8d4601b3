"""``kq models``: the model lifecycle - validate candidates through four gates, promote one per
environment with an explicit confirmation, roll back, audit the hash-chained approvals log, and
retrain in the scheduled window. docs/MODEL_LIFECYCLE.md describes it."""

from __future__ import annotations

import typer

from engine.errors import InputError, KQError

DEFAULT_CONFIG = "configs/default.toml"
_CONFIG_HELP = (
    "config TOML: [lifecycle] approvals_dir and thresholds (these can only tighten the protected "
    "gate thresholds), [features] (the current input schema), [research.tracking] (the registry)"
)


def _configs(config: str):
    from research.lifecycle.registry import load_configs

    return load_configs(config)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s[:16] if len(s) == 64 and all(ch in "0123456789abcdef" for ch in s) else s  # sha256: 16 hex


_OPS = {"min_sharpe": ">=", "max_drawdown": "<=", "max_daily_turnover": "<=", "exposure_tolerance": "<="}


def _fmt_thresholds(t: dict) -> str:
    return ", ".join(f"{k} {_OPS.get(k, '')} {_fmt(v)}" for k, v in (t or {}).items())


def _echo_thresholds(v) -> None:
    """Which thresholds the verdict was judged under and where they came from."""
    src = v.thresholds_source
    for w in src.get("ignored_as_looser", []):
        typer.echo(f"warning: {w}: the protected value is used (a config may only tighten the gates)", err=True)
    tight = src.get("tightened_by_config") or []
    typer.echo(
        f"thresholds: {_fmt_thresholds(v.thresholds)} (protected {src.get('protected_sha256', '')[:16]}"
        f"{'; tightened by the config: ' + ', '.join(tight) if tight else ''})"
    )


def register(app: typer.Typer) -> None:
    models = typer.Typer(
        help="Model lifecycle: candidates, four validation gates, promotion, rollback, audit.", no_args_is_help=True
    )

    @models.command("validate")
    def validate(
        model: str = typer.Argument(..., help="candidate NAME/VERSION or VERSION (kq models list)"),
        config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP),
        no_load: bool = typer.Option(False, "--no-load", help="skip loading the models in the schema gate"),
    ) -> None:
        """Run the four gates (integrity, schema, out-of-sample quality, risk) and write verdict.json
        beside the candidate (and validation=passed|failed on the model version). Exit 1 if any
        gate fails."""
        from research.lifecycle.actions import validate as _validate
        from research.lifecycle.registry import resolve, tag_verdict

        cfg, tracking = _configs(config)
        cand = resolve(model, tracking)
        v, path = _validate(cand, cfg, load=not no_load, config_source=config)
        _echo_thresholds(v)
        for i, g in enumerate(v.gates, start=1):
            typer.echo(f"gate {i} {g.message}")
            for c in g.checks:
                if c.op is not None and c.passed:
                    typer.echo(f"    {c.name}: {_fmt(c.measured)} {c.op} {_fmt(c.threshold)}")
        warn = tag_verdict(cand, v, tracking)
        if warn:
            typer.echo(f"warning: {warn}", err=True)
        typer.echo(f"{cand.ref}: validation {'PASSED' if v.passed else 'FAILED'}; verdict {path}")
        if not v.passed:
            raise typer.Exit(1)

    @models.command("promote")
    def promote(
        model: str = typer.Argument(..., help="validated candidate NAME/VERSION or VERSION"),
        env: str = typer.Option(..., "--env", help="paper | live"),
        reason: str = typer.Option(..., "--reason", help="why (goes into the approvals log)"),
        confirm: str = typer.Option(None, "--confirm", help="must be exactly yes-promote"),
        config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP),
        paper_ledger: str = typer.Option(
            None,
            "--paper-ledger",
            help="--env live: the paper ledger DSN or SQLite path whose paper hours the model needs "
            "(default $KQ_PAPER_LEDGER_DSN, else the ledger of configs/paper.toml)",
        ),
    ) -> None:
        """Approve a validated candidate for an environment; the model it replaces is kept as the
        rollback target. Live also needs 720 completed paper hours of the same manifest in the paper
        ledger, with no unresolved reconciliation mismatch and no parity failure. Nothing changes
        without --confirm yes-promote."""
        from research.lifecycle.actions import PROMOTE_WORD
        from research.lifecycle.actions import promote as _promote
        from research.lifecycle.registry import resolve

        if confirm != PROMOTE_WORD:  # before touching the registry: nothing to look up, nothing changes
            raise InputError(
                f"promote refused: pass --confirm {PROMOTE_WORD} to promote {model} to {env} (nothing changed)"
            )
        cfg, tracking = _configs(config)
        cand = resolve(model, tracking)
        e, st = _promote(cand, env, reason, confirm, cfg, paper_record=_paper_reader(paper_ledger))
        prev = f"; rollback target {st['previous'][-1]['model']}" if st["previous"] else "; no rollback target"
        typer.echo(f"promoted {cand.ref} to {env} (log entry {e['seq']}, hash {e['hash']}){prev}")
        typer.echo(
            f"  judged under {_fmt_thresholds(e['thresholds'])}; {env} requires "
            f"{_fmt_thresholds(e['thresholds_required'])} (protected {e['thresholds_protected_sha256'][:16]})"
        )
        if "paper_record" in e:
            p = e["paper_record"]
            typer.echo(
                f"  paper record: {p['hours']} hours (>= {p['hours_required']}) from {p['first_hour_utc']} to "
                f"{p['last_hour_utc']} UTC in {p['ledger']}"
            )

    @models.command("rollback")
    def rollback(
        env: str = typer.Option(..., "--env", help="paper | live"),
        confirm: str = typer.Option(None, "--confirm", help="must be exactly yes-rollback"),
        reason: str = typer.Option("rollback", "--reason", help="why (goes into the approvals log)"),
        config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP),
    ) -> None:
        """Restore the previous approved model of an environment. Nothing changes without
        --confirm yes-rollback."""
        from research.lifecycle.actions import rollback as _rollback

        e, st = _rollback(env, confirm, _configs(config)[0], reason=reason)
        typer.echo(
            f"rolled {env} back to {e['model']} (replacing {e['replaced']}; log entry {e['seq']}, hash {e['hash']})"
        )

    @models.command("audit")
    def audit(
        config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP),
        rebuild_state: bool = typer.Option(
            False, "--rebuild-state", help="rewrite state.json files from a log whose chain verifies"
        ),
        confirm: str = typer.Option(None, "--confirm", help="with --rebuild-state: must be exactly yes-rebuild"),
    ) -> None:
        """Verify the approvals log's hash chain and that replaying it reproduces each environment's
        state.json. Exit 1 when anything was edited, deleted or reordered."""
        from engine.errors import IntegrityError
        from research.lifecycle.actions import store_for

        store = store_for(_configs(config)[0])
        if rebuild_state:
            if confirm != "yes-rebuild":
                raise InputError("rebuild refused: pass --confirm yes-rebuild (nothing changed)")
            with store.locked():
                done = store.rebuild_states()
            typer.echo(f"state rebuilt from the log for: {', '.join(done) or 'nothing (already consistent)'}")
        with store.locked(shared=True):
            rep = store.audit()
        if not rep.ok:
            raise IntegrityError(rep.message)
        typer.echo(f"{rep.message} ({store.root})")
        for env, st in rep.states.items():
            cur = st["current"]["model"] if st["current"] else "none"
            typer.echo(f"  {env}: current {cur}; rollback stack {[p['model'] for p in st['previous']] or 'empty'}")

    @models.command("list")
    def list_(config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP)) -> None:
        """Candidates with their verdicts, and what is approved per environment."""
        from research.lifecycle.actions import describe_state, store_for, verdict_summary
        from research.lifecycle.gates import read_manifest
        from research.lifecycle.registry import list_all

        cfg, tracking = _configs(config)
        st = describe_state(store_for(cfg))
        where: dict[str, list[str]] = {}
        for env, s in st.items():
            if s["current"]:
                where.setdefault(s["current"]["model"], []).append(f"{env} (current)")
            for p in s["previous"]:
                where.setdefault(p["model"], []).append(f"{env} (rollback)")
        cands = list_all(tracking)
        typer.echo(f"{'candidate':<22} {'train end (UTC)':<20} {'verdict':<34} approved")
        for c in cands:
            try:
                m = read_manifest(c.path)
                from research.lifecycle.retrain import fmt_utc

                end = fmt_utc(m["data"]["train_end"])
            except KQError:
                end = "?"
            typer.echo(f"{c.ref:<22} {end:<20} {verdict_summary(c.path):<34} {', '.join(where.get(c.ref, [])) or '-'}")
        if not cands:
            typer.echo("(no candidates registered: kq walkforward --register or kq models retrain)")
        for env, s in st.items():
            typer.echo(
                f"{env}: {s['current']['model'] if s['current'] else 'nothing approved'}"
                f"{' (rollback to ' + s['previous'][-1]['model'] + ')' if s['previous'] else ''}"
            )

    @models.command("show")
    def show(
        model: str = typer.Argument(..., help="candidate NAME/VERSION or VERSION"),
        config: str = typer.Option(DEFAULT_CONFIG, "--config", help=_CONFIG_HELP),
    ) -> None:
        """One candidate: provenance from its manifest, its verdict gate by gate, its approvals."""
        import json

        from research.lifecycle.actions import describe_state, store_for, verdict_summary
        from research.lifecycle.gates import read_manifest, read_verdict
        from research.lifecycle.retrain import fmt_utc

        cfg, tracking = _configs(config)
        from research.lifecycle.registry import resolve

        c = resolve(model, tracking)
        m = read_manifest(c.path)
        d = m.get("data", {})
        typer.echo(f"{c.ref}  run {c.run_id}  path {c.path}")
        typer.echo(
            f"  created {m.get('created_utc')}  git {m.get('git_commit')}{' (dirty)' if m.get('git_dirty') else ''}"
            f"  config {str(m.get('config_sha256'))[:16]}  manifest {m['manifest_sha256'][:16]}"
        )
        typer.echo(
            f"  data {d.get('venue')} {', '.join(d.get('pairs', []))}  train {fmt_utc(d['train_start'])} .. "
            f"{fmt_utc(d['train_end'])}"
        )
        typer.echo(
            f"  inputs {len(m['features']['names'])} features, schema {m['features']['schema_sha256'][:16]}; "
            f"outputs {m.get('outputs')} for horizons {m.get('horizons')} (trades {m.get('trade_horizon')} h)"
        )
        s = (m.get("walkforward") or {}).get("strategy") or {}
        if s:
            typer.echo(
                f"  out-of-sample: Sharpe {_fmt(s.get('sharpe'))}, max drawdown {_fmt(s.get('max_drawdown'))}, "
                f"turnover {_fmt(s.get('turnover'))}/year, {s.get('n_trades')} trades"
            )
        typer.echo(f"  verdict: {verdict_summary(c.path)}")
        v = read_verdict(c.path)
        for g in (v or {}).get("gates", []):
            typer.echo(f"    {g['message']}")
        for env, st in describe_state(store_for(cfg)).items():
            if st["current"] and st["current"]["model"] == c.ref:
                typer.echo(f"  approved for {env} since {st['current']['approved_utc']} by {st['current']['who']}")
            elif any(p["model"] == c.ref for p in st["previous"]):
                typer.echo(f"  rollback target in {env}")
        if c.tags:
            typer.echo("  tags " + json.dumps(c.tags, sort_keys=True))

    @models.command("retrain")
    def retrain(
        config: str = typer.Option(..., "--config", help="config TOML with a research table (configs/research.toml)"),
        wait: bool = typer.Option(False, "--wait", help="sleep until the training window opens, then run"),
        now: bool = typer.Option(False, "--now", help="run now even outside the training window"),
        out_root: str = typer.Option(None, "--out-root", help="where the run folder goes (default data/runs)"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
    ) -> None:
        """Scheduled retraining: in the window risk.training_window_utc (default 03:00-05:00 UTC,
        when the live bridge opens no new positions) run the walk-forward, fit the final model,
        register it as a candidate and validate it. Never promotes."""
        run_retrain(config, wait=wait, now=now, out_root=out_root, store=store)

    app.add_typer(models, name="models")


def paper_ledger_dsn(option: str | None) -> str:
    """--paper-ledger, else KQ_PAPER_LEDGER_DSN, else the ledger of configs/paper.toml."""
    import os

    if option:
        return option
    if os.environ.get("KQ_PAPER_LEDGER_DSN"):
        return os.environ["KQ_PAPER_LEDGER_DSN"]
    from engine.paths import configs_dir
    from live_bridge.config import load_live_config

    dsn = load_live_config(configs_dir() / "paper.toml").ledger_dsn()
    if not dsn:
        raise InputError("promote refused: no paper ledger configured: give --paper-ledger DSN (nothing changed)")
    return dsn


def _paper_reader(option: str | None):
    """What promote calls with the checked candidate's manifest digest (for --env live only): its
    paper record read from the paper ledger."""

    def read(manifest_sha256: str):
        from live_bridge.paper_record import read_paper_record

        return read_paper_record(paper_ledger_dsn(option), manifest_sha256)

    return read


# indirections the tests replace (a fake clock; no real sleeping)
def _clock() -> float:
    import time

    return time.time()


def _sleep(s: float) -> None:
    import time

    time.sleep(s)


def run_retrain(
    config: str, *, wait: bool = False, now: bool = False, out_root: str | None = None, store: str | None = None
) -> str:
    """The body of ``kq models retrain``; returns the new candidate's ref."""
    from pathlib import Path

    from engine.paths import data_dir
    from research.lifecycle.retrain import fmt_utc, window_status

    cfg, tracking = _configs(config)
    window = tuple(cfg.risk.training_window_utc)
    root = Path(out_root) if out_root else data_dir() / "runs"
    if not root.is_dir():
        raise InputError(f"--out-root {root}: folder does not exist")
    t = int(_clock())
    inside, nxt = window_status(t, window)
    if not now and not inside:
        if nxt is None:
            raise InputError(f"{config}: risk.training_window_utc is empty: no training window (use --now)")
        if not wait:
            raise InputError(
                f"outside the training window {window[0]}-{window[1]} UTC (next opens "
                f"{fmt_utc(nxt)}): use --wait to wait for it or --now to run anyway"
            )
        typer.echo(
            f"waiting for the training window {window[0]}-{window[1]} UTC: opens {fmt_utc(nxt)} "
            f"(in {(nxt - t) / 3600:.1f} h)"
        )
        while True:
            t = int(_clock())
            if t >= nxt:
                break
            _sleep(min(60.0, nxt - t))
    import datetime as _dt

    stamp = _dt.datetime.fromtimestamp(int(_clock()), _dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = root / f"retrain-{stamp}"
    typer.echo(f"retraining at {fmt_utc(int(_clock()))}: kq walkforward --config {config} --register -> {out}")
    import time

    from kq.research import progress_hooks, report_tracking
    from research.lifecycle import retrain as _lib  # the research pipeline as a library, no CLI re-entry
    from research.pipeline import summary_line

    t0 = time.perf_counter()
    lines: list[str] = []
    try:
        with progress_hooks() as (prog, final):
            o = _lib.retrain(
                config,
                out,
                store=store,
                progress=prog,
                final_progress=final,
                on_outputs=lambda o: lines.append(summary_line(o, time.perf_counter() - t0)),
            )
    except KQError as e:
        raise KQError(f"retraining failed ({e}); nothing was registered or promoted", exit_code=1) from None
    finally:
        for line in lines:
            typer.echo(line)
    report_tracking(o)
    ref = _find_candidate(out, tracking)
    from research.lifecycle.actions import validate as _validate
    from research.lifecycle.registry import resolve, tag_verdict

    cand = resolve(ref, tracking)
    v, path = _validate(cand, cfg, config_source=config)
    warn = tag_verdict(cand, v, tracking)
    if warn:
        typer.echo(f"warning: {warn}", err=True)
    typer.echo(
        f"new candidate {ref}: validation {'PASSED' if v.passed else 'FAILED'} "
        f"({'; '.join(g.message for g in v.failed_gates) or 'all four gates'}); promotion stays manual: "
        f"kq models promote {ref} --env paper|live --reason ... --confirm yes-promote"
    )
    return ref


def _find_candidate(out, tracking) -> str:
    """The candidate registered from the walk-forward folder ``out`` (its manifest names it)."""
    from pathlib import Path

    from research.lifecycle.gates import read_manifest
    from research.lifecycle.registry import list_all

    want = str(Path(out))
    hits = []
    for c in list_all(tracking):
        try:
            m = read_manifest(c.path)
        except KQError:
            continue
        od = (m.get("walkforward") or {}).get("out_dir")
        if od and (od == want or str(Path(od).resolve()) == str(Path(want).resolve())):
            hits.append(c.ref)
    if not hits:
        raise KQError(f"retraining ran but no registered candidate points at {out}", exit_code=1)
    return hits[-1]
