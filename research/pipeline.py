"""The research run as a library: a run specification -> :func:`run` -> outputs.

``kq walkforward`` and ``kq models retrain`` (through :func:`research.lifecycle.retrain.retrain`)
call it, and so will parameter studies. Nothing here calls back into the CLI, and nothing is kept
in module state: progress and the "outputs written" notice are callbacks passed to :func:`run`,
so two runs may go in parallel threads or processes (``tests/test_pipeline.py`` shows each gives
the outputs it gives alone).

Specification
-------------
:class:`RunSpec` = the engine :class:`~engine.config.Config` plus the ``[research]`` table
(:class:`~research.config.ResearchConfig`), both validated, plus a :class:`DataSelection` (store,
venue, pairs, start, end; unset fields fall back to the config). :func:`load_spec` reads a TOML file
(following ``extends``) and applies ``overrides`` first: a mapping of dotted keys
(``{"research.folds.train_bars": 720, "risk.base_risk": 0.01}``) or nested tables, merged into the
file's tables and validated by the same typed models, so a bad override is one
:class:`~engine.errors.ConfigError` line naming the key (``ci.toml + overrides:
research.folds.train_bars: Input should be greater than or equal to 48``).
:meth:`RunSpec.with_overrides` re-validates from the spec's own tables (a study's trial).

Run
---
:func:`run` loads the bars (history from ``warmup_bars`` before the start), builds the causal
features once, runs :func:`research.walkforward.run_walkforward` and, with ``out``, writes the
outputs (:func:`research.report.write_walkforward`, atomic). With tracking on (``track`` and
``[research.tracking] enabled``) it logs the run to MLflow; ``register`` then fits the final model
(:func:`research.bundle.fit_final`), saves it under ``OUT/model/`` and registers it as a
candidate. Every check that can fail on input (the output folder, the range, the tracking store)
runs before any training. Same spec and data -> bit-identical predictions, signals and backtest.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config, config_from_dict, read_toml
from engine.errors import ConfigError, InputError
from engine.timeutil import HOUR, parse_utc
from research.config import ResearchConfig, research_from_dict, research_to_json

__all__ = [
    "DataSelection",
    "RunOutputs",
    "RunSpec",
    "apply_overrides",
    "load_spec",
    "run",
    "spec_from_dict",
    "summary_line",
]


@dataclass(frozen=True)
class DataSelection:
    """Which bars a run reads; ``None`` = the config's choice (``data.store``/``data.venue``,
    ``research.pairs`` else every stored pair of the venue, ``research.start``/``end``).
    ``start``/``end``: unix seconds or ISO dates (UTC; a bare date as ``end`` includes that day)."""

    store: str | None = None
    venue: str | None = None
    pairs: tuple[str, ...] | None = None
    start: int | str | None = None
    end: int | str | None = None


@dataclass(frozen=True, eq=False)
class RunSpec:
    """A validated run specification (see the module doc). Build it with :func:`load_spec` or
    :func:`spec_from_dict`; ``raw`` keeps the merged tables the configs were validated from."""

    config: Config
    research: ResearchConfig
    data: DataSelection = field(default_factory=DataSelection)
    source: str = "<dict>"  # where the config came from (recorded as metrics meta "config")
    raw: Mapping = field(default_factory=dict, repr=False)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunSpec:
        """The same spec with ``overrides`` applied to its tables and validated again."""
        return spec_from_dict(self.raw, self.source, overrides, self.data)

    def with_data(self, **kw) -> RunSpec:
        """The same configs with other :class:`DataSelection` fields."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, **kw))


def apply_overrides(raw: Mapping, overrides: Mapping[str, Any] | None) -> dict:
    """``raw`` (config tables) with ``overrides`` merged in: dotted keys name nested tables
    (``"research.folds.train_bars"``); a dict value merges into the table of that name. Returns a
    new dict; ``raw`` is not changed."""
    out = copy.deepcopy(dict(raw))
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {key!r}: not a dotted config key (e.g. research.folds.train_bars)")
        *tables, last = key.split(".")
        node = out
        for t in tables:  # a table named on the way is created (or replaces a non-table value)
            if not isinstance(node.get(t), dict):
                node[t] = {}
            node = node[t]
        _merge_into(node, last, copy.deepcopy(value))
    return out


def _merge_into(node: dict, key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge_into(node[key], k, v)
    else:
        node[key] = value


def spec_from_dict(
    raw: Mapping, source: str = "<dict>", overrides: Mapping[str, Any] | None = None, data: DataSelection | None = None
) -> RunSpec:
    """Validate config tables (an engine config with an optional ``research`` table) plus
    ``overrides`` into a :class:`RunSpec`. Errors are one ConfigError line naming the key."""
    merged = apply_overrides(raw, overrides)
    label = f"{source} + overrides" if overrides else source
    tables = dict(merged)
    r = tables.pop("research", None)
    if r is not None and not isinstance(r, dict):
        raise ConfigError(f"{label}: research: must be a table")
    cfg = config_from_dict(tables, label)
    rc = research_from_dict(r, cfg, label)
    return RunSpec(config=cfg, research=rc, data=data or DataSelection(), source=source, raw=merged)


def load_spec(
    path: str | Path, overrides: Mapping[str, Any] | None = None, data: DataSelection | None = None
) -> RunSpec:
    """A :class:`RunSpec` from a TOML config file (``extends`` followed) and ``overrides``."""
    return spec_from_dict(read_toml(Path(path)), str(path), overrides, data)


@dataclass(eq=False)
class RunOutputs:
    """What :func:`run` produced. ``metrics`` is the metrics.json document (also without ``out``)."""

    spec: RunSpec
    result: Any  # research.walkforward.WalkForwardResult
    metrics: dict
    meta: dict
    panel: Any  # engine.store.panel.Panel (warm-up history included)
    out: Path | None = None
    run_id: str | None = None  # MLflow run (tracking on)
    candidate: Any = None  # research.tracking.Candidate (register)
    model_dir: Path | None = None  # OUT/model/ (register)
    seconds: float = 0.0


def _select(spec: RunSpec) -> tuple[str, int | None, int | None, list[str] | None]:
    rc, d = spec.research, spec.data
    v = d.venue or spec.config.data.venue
    t0 = parse_utc(d.start if d.start is not None else rc.start)
    t1 = parse_utc(d.end if d.end is not None else rc.end, end=True)
    if t0 is not None and t1 is not None and t1 < t0:
        raise InputError("--end is before --start")
    if t0 is not None and t0 % HOUR:
        t0 += HOUR - t0 % HOUR
    names = list(d.pairs) if d.pairs is not None else (list(rc.pairs) if rc.pairs else None)
    return v, t0, t1, names


def run(
    spec: RunSpec,
    out: str | Path | None = None,
    *,
    track: bool = True,
    register: bool = False,
    progress: Callable[..., None] | None = None,
    final_progress: Callable[..., None] | None = None,
    on_outputs: Callable[[RunOutputs], None] | None = None,
    max_folds: int | None = None,
) -> RunOutputs:
    """Run the walk-forward of ``spec`` (see the module doc).

    ``out``: output folder (None: nothing written, nothing tracked). ``track``: log to MLflow when
    ``[research.tracking] enabled`` (False = ``--no-track``). ``register``: fit, save and register
    the final model (needs tracking). ``progress``/``final_progress``: the walk-forward's and the
    final fit's ``progress(event, **info)`` callbacks. ``on_outputs(outputs)``: called once the
    outputs are on disk, before tracking (the CLI prints its summary there). ``max_folds``: only the
    first N folds (studies, benchmarks)."""
    t_start = time.perf_counter()
    cfg, rc = spec.config, spec.research
    if out is not None:
        from engine.paths import check_out_dir

        check_out_dir(out)  # before any training, so a bad --out never wastes a run
    track = bool(out is not None and rc.tracking.enabled and track)
    if register and not track:
        raise InputError(
            "--register needs MLflow tracking (drop --no-track / set [research.tracking] "
            "enabled = true): a candidate is a version in the model registry"
        )
    v, t0, t1, names = _select(spec)
    if track:
        from research.tracking import TrackingError, check_tracking

        try:
            check_tracking(rc.tracking)  # fail before hours of training, not after
        except TrackingError as e:
            raise TrackingError(f"{e}; nothing was run (use --no-track to run without MLflow)") from None
    from engine.store.market import MarketStore

    with MarketStore(spec.data.store or cfg.data.store, read_only=True) as s:
        if names is None:
            names = [i.pair for i in s.list_pairs(v)]
            if not names:
                raise InputError(f"no pairs stored for venue {v!r}")
        load_from = None if t0 is None else t0 - rc.warmup_bars * HOUR
        panel = s.load_panel(names, v, load_from, t1)
    if panel.n_bars < 2:
        raise InputError("fewer than 2 bars in the selected range")
    from engine.features.featureset import build_features, feature_schema_sha256
    from research.walkforward import run_walkforward

    member = None
    if rc.use_universe:
        from engine.universe import universe_mask

        member = universe_mask(panel)
    fs = build_features(panel, cfg.features, member)  # shared by the walk-forward and the final model
    res = run_walkforward(
        panel, cfg, rc, features=fs, member=member, start_ts=t0, progress=progress, max_folds=max_folds
    )
    meta = {
        "venue": panel.venue,
        "pairs": ",".join(panel.pairs),
        "bars_loaded": panel.n_bars,
        "start": t0 if t0 is not None else int(panel.ts[0]),
        "end": int(panel.ts[-1]),
        "config": spec.source,
        "config_sha256": cfg.content_hash(),
        "research": research_to_json(rc),
        "seed": cfg.seed,
        "data_sha256": fs.content_hash,
        "feature_schema_sha256": feature_schema_sha256(cfg.features),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
    }
    outputs = RunOutputs(
        spec=spec, result=res, metrics={}, meta=meta, panel=panel, out=None if out is None else Path(out)
    )
    if out is None:
        from research.report import build_metrics

        outputs.metrics = build_metrics(res, meta)
        outputs.seconds = time.perf_counter() - t_start
        return outputs
    from research.report import write_walkforward

    outputs.metrics = write_walkforward(res, out, cfg, meta, market=panel)
    outputs.seconds = time.perf_counter() - t_start
    model_dir = Path(out) / "model"
    if (model_dir / "manifest.json").is_file():  # a previous run's bundle must not sit next to new results
        import shutil

        shutil.rmtree(model_dir)
    if on_outputs is not None:
        on_outputs(outputs)
    if not track:
        return outputs
    from research.tracking import TrackingError, finish_run, log_walkforward_run

    saved = f"the walk-forward outputs are on disk in {out}/ (nothing lost)"
    try:
        outputs.run_id = log_walkforward_run(out, outputs.metrics, meta, cfg, rc, rc.tracking, end_run=not register)
    except TrackingError as e:
        raise TrackingError(f"{e}; {saved}") from None
    if register:
        from research.bundle import fit_final, save_bundle
        from research.tracking import register_candidate

        ok = False
        try:
            bundle = fit_final(panel, cfg, rc, features=fs, member=member, start_ts=t0, progress=final_progress)
            save_bundle(
                bundle, model_dir, extra={"walkforward_dir": str(Path(out).resolve()), "run_id": outputs.run_id}
            )
            outputs.candidate = register_candidate(model_dir, tracking=rc.tracking, run_id=outputs.run_id)
            outputs.model_dir = model_dir
            ok = True
        except TrackingError as e:
            raise TrackingError(f"{e}; {saved}") from None
        finally:
            try:
                finish_run(outputs.run_id, rc.tracking, "FINISHED" if ok else "FAILED")
            except TrackingError:
                if ok:
                    raise
    outputs.seconds = time.perf_counter() - t_start
    return outputs


def summary_line(o: RunOutputs, seconds: float) -> str:
    """The one-line result of a run (what ``kq walkforward`` prints once the outputs are written)."""
    res, panel = o.result, o.panel
    strat = o.metrics.get("strategy") or {}
    meta_auc = [r for r in res.model_metrics if r["model"] == "meta" and r["fold"] == "all"]
    aucs = ", ".join(f"{r['horizon']}h {r['auc']:.3f}" for r in meta_auc if r["auc"] is not None)
    where = f"wrote {o.out}/" if o.out is not None else "nothing written"
    return (
        f"{len(res.folds)} folds, {panel.venue} {', '.join(panel.pairs)}; meta out-of-sample AUC {aucs}; "
        f"strategy total return {strat.get('total_return', float('nan')):+.2%}, "
        f"max drawdown {strat.get('max_drawdown', float('nan')):.2%}, {strat.get('n_trades')} trades"
        f"{'; SUSPECTED LEAK (see metrics.json leak_flags)' if res.suspected_leak else ''}; "
        f"{seconds:.1f} s; {where}"
    )
