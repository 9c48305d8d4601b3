"""The ``[research]`` table of a config file: walk-forward folds, models, horizons, the trade horizon.

The engine must not import research, so the research settings are not a section of
:class:`engine.config.Config`. :func:`load_research_config` reads ONE TOML file (following
``extends``) with :func:`engine.config.read_toml`, pops its ``[research]`` table, validates it as a
:class:`ResearchConfig` and hands the rest to :func:`engine.config.config_from_dict`. Errors name the
key (``research.folds.train_bars: ...``) and are :class:`~engine.errors.ConfigError`.

Keys (all optional; defaults are the research-sized run)::

    [research]
    pairs = ["BTC/USDT", "ETH/USDT"]   # default: every stored pair of the venue
    start = "2024-01-01"              # first bar predicted/trained on (history before it warms features)
    end = "2024-06-30"                # last bar (a bare date includes the day)
    horizons = [1, 4, 24]             # label horizons modelled (default: [labels].horizons)
    trade_horizon = 24                # the meta-learner's horizon that becomes trade signals
    base_models = ["xgboost", ...]    # base models stacked (default: all five)
    tiny = false                      # TINY_PARAMS over the model sizes (tests, configs/ci.toml)
    label_with_cost = false           # up label = forward return above the round-trip cost
    use_universe = true               # train and trade only universe members (configs/universe.toml)
    leak_auc = 0.60                   # out-of-sample AUC above this is flagged as a suspected leak
    leak_min_effective_n = 500        # ... when labelled rows / horizon reach this (overlapping labels)
    n_trials = 1                      # configurations tried (for the deflated Sharpe ratio)
    warmup_bars = 768                 # history loaded before start (features, universe, regime)

    [research.folds]                  # bars = hours
    train_bars = 8760
    test_bars = 2190
    purge_bars = 24                   # >= the longest horizon (checked)
    embargo_bars = 24
    expanding = false
    inner_folds = 3                   # the meta-learner's inner purged folds

    [research.models.xgboost]         # research.models.base.ModelsConfig, one table per model
    n_estimators = 300

    [research.tracking]               # MLflow tracking and the model registry (research/tracking.py)
    enabled = true                    # kq walkforward logs every run (--no-track skips)
    uri = "http://host:5000"          # default: embedded sqlite store data/mlflow/mlflow.db
    experiment = "krakenquant-walkforward"
    registered_model = "krakenquant"  # candidates are versions of this registered model

    [research.fanout]                 # independent folds / sweep chunks in parallel (research/fanout.py)
    workers = 1                       # > 1: that many local worker processes (Dask LocalCluster)
    scheduler = "tcp://host:8786"     # a Dask scheduler: tasks run on its workers (default: none)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.config import Config, Frozen, _format_validation, config_from_dict, read_toml
from engine.errors import ConfigError
from research.models.base import BASE_MODEL_NAMES, ModelsConfig

__all__ = [
    "FanoutConfig",
    "FoldsConfig",
    "ResearchConfig",
    "TrackingConfig",
    "load_research_config",
    "research_from_dict",
    "research_to_json",
]


class FoldsConfig(Frozen):
    train_bars: int = Field(
        8760, ge=48, le=1_000_000, description="rolling training window (first window if expanding)"
    )
    test_bars: int = Field(2190, ge=1, le=1_000_000, description="test block length")
    purge_bars: int = Field(
        24, ge=0, le=100_000, description="gap between training end and test start (>= longest horizon)"
    )
    embargo_bars: int = Field(24, ge=0, le=100_000, description="bars after each test block left out of later training")
    expanding: bool = Field(False, description="anchored (expanding) instead of rolling windows")
    inner_folds: int = Field(3, ge=2, le=20, description="inner purged folds of the stacking meta-learner")


class TrackingConfig(Frozen):
    enabled: bool = Field(True, description="log kq walkforward runs to MLflow")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: embedded sqlite under the data dir "
        "(data/mlflow/mlflow.db); $KQ_TRACKING_URI overrides both",
    )
    experiment: str = Field("krakenquant-walkforward", min_length=1, max_length=200)
    registered_model: str = Field(
        "krakenquant",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="registered model whose versions are the candidates",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v):
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("must be a tracking URI (sqlite:///path.db, file:///dir, http(s)://host) or left out")
        return v


class FanoutConfig(Frozen):
    """Where independent tasks run; results do not depend on it (left out of research_to_json)."""

    workers: int = Field(1, ge=1, le=1024, description="local worker processes (1: serial, in-process)")
    scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786); its workers run the tasks"
    )

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v):
        if v is None:
            return v
        v = v.strip()
        if not v:
            return None
        if "://" not in v:
            raise ValueError("must be a Dask scheduler address like tcp://host:8786 (or left out)")
        return v


class ResearchConfig(Frozen):
    pairs: tuple[str, ...] | None = None
    start: str | int | None = None
    end: str | int | None = None
    horizons: tuple[int, ...] | None = Field(None, description="label horizons modelled; default [labels].horizons")
    trade_horizon: int = Field(24, ge=1, le=720, description="meta-learner horizon that becomes trade signals")
    base_models: tuple[str, ...] = BASE_MODEL_NAMES
    tiny: bool = False
    label_with_cost: bool = False
    use_universe: bool = True
    leak_auc: float = Field(0.60, gt=0.5, le=1.0)
    leak_min_effective_n: float = Field(
        500.0, ge=0.0, le=1e12, description="labelled rows / horizon needed to judge an AUC"
    )
    n_trials: int = Field(1, ge=1, le=1_000_000_000)
    warmup_bars: int = Field(768, ge=0, le=20000)
    folds: FoldsConfig = FoldsConfig()
    models: ModelsConfig = ModelsConfig()
    tracking: TrackingConfig = TrackingConfig()
    fanout: FanoutConfig = FanoutConfig()

    @field_validator("base_models")
    @classmethod
    def _models_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if x not in BASE_MODEL_NAMES]
        if bad:
            raise ValueError(f"unknown model(s) {', '.join(bad)}; known: {', '.join(BASE_MODEL_NAMES)}")
        if not v or len(set(v)) != len(v):
            raise ValueError("base_models must be a non-empty list without repeats")
        return v

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, v, info):
        """A time ``engine.timeutil.parse_utc`` reads (unix seconds or an ISO date/datetime, UTC),
        checked at load so a bad one names its key; the value is kept as written."""
        from engine.errors import InputError
        from engine.timeutil import parse_utc

        if v is None:
            return v
        if isinstance(v, (dt.date, dt.time)):  # a bare TOML date/datetime
            raise ValueError(f'write the time as a string: "{v.isoformat()}"')
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("must be a date (2024-01-31), a datetime (2024-01-31T13:00) or unix seconds")
        try:
            parse_utc(v, end=info.field_name == "end")
        except InputError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v):
        if v is None:
            return v
        from engine.pairs import normalize_pair

        try:
            return tuple(normalize_pair(str(p)) for p in v)
        except Exception as e:  # InputError with the offending spelling
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _check(self) -> ResearchConfig:
        h = self.horizons
        if h is not None and (not h or any(x < 1 or x > 720 for x in h) or list(h) != sorted(set(h))):
            raise ValueError("horizons must be strictly increasing whole numbers of bars in 1..720")
        if self.start is not None and self.end is not None:
            from engine.timeutil import parse_utc

            t0, t1 = parse_utc(self.start), parse_utc(self.end, end=True)
            if t0 is not None and t1 is not None and t1 < t0:
                raise ValueError(f"end {self.end!r} is before start {self.start!r}")
        return self

    def horizons_for(self, cfg: Config) -> tuple[int, ...]:
        return tuple(self.horizons) if self.horizons is not None else tuple(cfg.labels.horizons)


def research_from_dict(raw: dict | None, cfg: Config, source: str = "<dict>") -> ResearchConfig:
    """Validate a ``[research]`` table against the engine config it runs with."""
    try:
        rc = ResearchConfig(**(raw or {}))
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation(e, prefix='research')}") from None
    except TypeError as e:
        raise ConfigError(f"{source}: research: {e}") from None
    hs = rc.horizons_for(cfg)
    if rc.trade_horizon not in hs:
        raise ConfigError(f"{source}: research.trade_horizon: {rc.trade_horizon} is not one of the horizons {list(hs)}")
    if rc.folds.purge_bars < max(hs):
        raise ConfigError(
            f"{source}: research.folds.purge_bars: {rc.folds.purge_bars} is shorter than the "
            f"longest label horizon ({max(hs)} bars): training labels would read test bars"
        )
    return rc


def load_research_config(path: str | Path) -> tuple[Config, ResearchConfig]:
    """(engine Config, ResearchConfig) from one TOML file; the ``[research]`` table is optional."""
    p = Path(path)
    raw = read_toml(p)
    r = raw.pop("research", None)
    if r is not None and not isinstance(r, dict):
        raise ConfigError(f"{p}: research: must be a table")
    cfg = config_from_dict(raw, str(p))
    return cfg, research_from_dict(r, cfg, str(p))


def research_to_json(rc: ResearchConfig) -> dict[str, Any]:
    """The research table as JSON: what made a result. The ``tracking`` table (where results are
    logged, possibly a server URI with credentials) and the ``fanout`` table (where tasks run; results
    do not depend on it) are left out."""
    return rc.model_dump(mode="json", exclude={"tracking", "fanout"})
