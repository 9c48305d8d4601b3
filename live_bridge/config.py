"""The daemon's configuration: ``configs/paper.toml`` and ``configs/live.toml`` share this one typed
schema (:class:`LiveConfig`). An unknown key, a wrong type or an out-of-range value is a one-line
:class:`~engine.errors.ConfigError` naming the file and the key.

The engine configuration (features, universe rule, risk, fees, execution model) is NOT repeated
here: ``engine_config`` names it (relative to this file), so the daemon and the backtester read the
same numbers. Secrets never live in either file: the API key and secret come from the environment
(``KRAKEN_API_KEY`` / ``KRAKEN_API_SECRET``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from engine.config_base import Frozen
from engine.errors import ConfigError
from engine.pairs import normalize_pair

__all__ = ["LiveConfig", "live_config_from_dict", "load_live_config"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ExchangeSection(Frozen):
    url: str = Field("http://127.0.0.1:8765", description="Kraken REST base URL (paper: kq sim serve)")
    tier: Literal["starter", "intermediate", "pro"] = "starter"
    timeout_s: float = Field(10.0, gt=0, le=120)
    deadline_s: float = Field(
        15.0, ge=5, le=60, description="AddOrder deadline ahead of the send time (Kraken takes up to 60 s)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {v[:80]!r}")
        return v.rstrip("/")


class UniverseSection(Frozen):
    pairs: tuple[str, ...] = Field(min_length=1, max_length=50, description="Kraken pairs the daemon may trade")

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from engine.pairs import instrument

        out = []
        for p in v:
            try:
                n = normalize_pair(p)
                instrument(n)
            except Exception as e:
                raise ValueError(f"unknown pair {p!r}: {e}") from None
            out.append(n)
        if len(set(out)) != len(out):
            raise ValueError("a pair is listed twice")
        quotes = {x.split("/")[1] for x in out}
        if len(quotes) != 1:
            raise ValueError(f"all pairs must share one quote currency (got {', '.join(sorted(quotes))})")
        return tuple(out)


class CycleSection(Frozen):
    settle_delay_s: float = Field(30.0, ge=0, le=1800, description="wait after the bar close before the cycle")
    history_bars: int = Field(1000, ge=800, le=20000, description="bars of history fed to features and inputs")
    behind_retries: int = Field(
        8, ge=0, le=60, description="data step retries while Kraken lags a bar (a missing bar latches R18)"
    )
    behind_wait_s: float = Field(30.0, ge=0, le=600)
    max_api_failures: int = Field(
        3, ge=1, le=100, description="failed or unknown API calls within one cycle that latch the kill switch"
    )
    clock: Literal["local", "exchange"] = Field(
        "local", description="whose time decides the hour: this machine's, or the exchange's Time endpoint"
    )
    poll_s: float = Field(5.0, gt=0, le=600, description="the loop's wake-up interval while waiting")
    quoted_spread: bool = Field(
        True,
        description="raise the spread input to Kraken's quoted spread when wider (off only for kq parity: "
        "the backtester has no quotes)",
    )


class ExecutionSection(Frozen):
    limit_timeout_s: float = Field(300.0, ge=0, le=3000)
    poll_interval_s: float = Field(10.0, gt=0, le=600)
    lookup_attempts: int = Field(3, ge=1, le=100)
    lookup_interval_s: float = Field(2.0, ge=0, le=600)
    lookup_margin_s: float = Field(10.0, ge=0, le=600)
    track_attempts: int = Field(5, ge=1, le=100)
    market_buffer: Decimal = Field(Decimal("0.02"), ge=0, lt=1)
    market_fallback: bool = True


class PathsSection(Frozen):
    store: str = Field("data/market.duckdb", description="the market store (relative to the working directory)")
    state_dir: str = Field("data/live", description="nonce counter and other local state")
    ledger: str = Field("", description="ledger DSN; empty: KQ_LEDGER_DSN, else sqlite under data/")
    ledger_schema: str | None = Field(None, description="PostgreSQL schema of the ledger tables")


class AlertsSection(Frozen):
    """Alert events (:mod:`live_bridge.alerts`): every alert is a JSON log line; with a webhook, the
    ones at ``min_severity`` or above are also POSTed. The URL may carry a token: it is a secret
    (never logged, not in the config digest); prefer ``KQ_ALERT_WEBHOOK`` in the environment."""

    webhook_url: SecretStr = Field(
        SecretStr(""), description="alert webhook; empty: KQ_ALERT_WEBHOOK, else log lines only"
    )
    min_severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="the least severe alert POSTed (every alert is logged)"
    )
    timeout_s: float = Field(5.0, gt=0, le=30, description="one POST's timeout")
    retries: int = Field(3, ge=1, le=10, description="POST attempts per alert")
    retry_wait_s: float = Field(2.0, ge=0, le=30, description="wait between attempts")
    queue_size: int = Field(100, ge=1, le=10000, description="alerts waiting to be POSTed; more are dropped")

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: SecretStr) -> SecretStr:
        from live_bridge.alerts import check_webhook

        check_webhook(v.get_secret_value())  # its message never repeats the URL (a secret)
        return v

    @model_validator(mode="after")
    def _bounded(self) -> AlertsSection:
        worst = self.retries * self.timeout_s + (self.retries - 1) * self.retry_wait_s
        if worst > 30:
            raise ValueError(
                f"retries x timeout_s + waits is {worst:g} s: one alert's delivery must be bounded by 30 s"
            )
        return self


class RetrainSection(Frozen):
    """Retraining in the training window (:mod:`live_bridge.retrain`), off by default. The daemon
    starts one job per window in a separate process; the job registers and validates a CANDIDATE
    and never promotes (``kq models promote`` stays a manual, confirmed step)."""

    enabled: bool = False
    config: str = Field(
        "", description="the research config to retrain with (a [research] table; relative to this file)"
    )
    every_hours: int = Field(
        24, ge=1, le=8784, description="start only when the last job that produced a candidate began this long ago"
    )
    weekday: Literal["any", "mon", "tue", "wed", "thu", "fri", "sat", "sun"] = Field(
        "any", description="only windows opening on this UTC weekday"
    )
    span_hours: int = Field(
        8760, ge=48, le=200_000, description="bars trained on, ending with the last completed hour before the window"
    )
    timeout_s: float = Field(
        7200.0, ge=1, le=86_400, description="the job is killed after this (or at the end of its window, if earlier)"
    )
    out_root: str = Field(
        "data/runs", description="where each job's run folder goes (relative to the working directory)"
    )
    nice: int = Field(10, ge=0, le=19, description="the job's CPU niceness: the daemon's cycles come first")

    @model_validator(mode="after")
    def _needs_config(self) -> RetrainSection:
        if self.enabled and not self.config.strip():
            raise ValueError("retrain.enabled needs retrain.config (the research config to retrain with)")
        return self


class ShadowSection(Frozen):
    """A shadow model (:mod:`live_bridge.shadow`): a registered candidate that predicts beside the
    approved model every hour; a second risk machine decides what it would have done, ledgered and
    never traded (``kq live shadow-report``)."""

    model: str | None = Field(
        None, description='registry id "NAME/VERSION" of a registered candidate (any stage); none: no shadow'
    )

    @field_validator("model")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        import re

        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}/[1-9][0-9]{0,8}", v):
            raise ValueError(f"{v[:80]!r} is not a registry id NAME/VERSION (e.g. krakenquant/7)")
        return v


class LiveConfig(Frozen):
    mode: Literal["paper", "live"]
    engine_config: str = Field("default.toml", description="engine config, relative to this file")
    exchange: ExchangeSection = ExchangeSection()
    universe: UniverseSection
    cycle: CycleSection = CycleSection()
    execution: ExecutionSection = ExecutionSection()
    paths: PathsSection = PathsSection()
    capital_ceiling: Decimal | None = Field(
        None,
        gt=0,
        description="the most quote currency the daemon may commit: the risk step's exposure caps and "
        "sizes apply to min(equity, this) (risk.capital_ceiling; the lower of the two rules); "
        "None = off (the engine config's)",
    )
    # not in dumps nor in the digest: the webhook is a secret and alerts never change a decision
    alerts: AlertsSection = Field(AlertsSection(), exclude=True)
    # not in dumps nor in the digest: the shadow never changes a decision of the traded portfolio
    shadow: ShadowSection = Field(ShadowSection(), exclude=True)
    # not in dumps nor in the digest: retraining produces candidates only, never a decision
    retrain: RetrainSection = Field(RetrainSection(), exclude=True)
    source: str = Field("", exclude=True, description="the file this was read from (set by the loader)")

    @model_validator(mode="after")
    def _mode_rules(self) -> LiveConfig:
        host = urlsplit(self.exchange.url).hostname or ""
        if self.mode == "paper" and host not in LOOPBACK:
            raise ValueError(
                f"mode paper trades against the local simulator only; exchange.url {self.exchange.url!r} "
                "is not loopback"
            )
        worst = float(self.execution.limit_timeout_s) * len(self.universe.pairs)
        if worst > 2700:
            raise ValueError(
                f"execution.limit_timeout_s {self.execution.limit_timeout_s:g} x {len(self.universe.pairs)} pairs "
                "could keep one cycle's orders resting past 45 minutes of the hour; lower it"
            )
        if self.mode == "live" and host in LOOPBACK:
            raise ValueError(
                f"mode live needs Kraken's URL; exchange.url {self.exchange.url!r} is loopback (use mode = 'paper')"
            )
        if self.mode == "live" and not self.exchange.url.startswith("https://"):
            raise ValueError(f"mode live needs an https URL; exchange.url {self.exchange.url!r} is not")
        return self

    @property
    def env(self) -> str:
        """The model-approval environment (``live_bridge.models.load_approved``)."""
        return self.mode

    @property
    def quote(self) -> str:
        return self.universe.pairs[0].split("/")[1]

    def engine_path(self) -> Path:
        p = Path(self.engine_config)
        if not p.is_absolute() and self.source:
            p = Path(self.source).parent / p
        return p

    def retrain_config_path(self) -> Path:
        p = Path(self.retrain.config)
        if not p.is_absolute() and self.source:
            p = Path(self.source).parent / p
        return p

    def ledger_dsn(self, environ: dict[str, str] | None = None) -> str | None:
        """The configured DSN, else ``KQ_LEDGER_DSN``, else None (the ledger's SQLite default)."""
        import os

        env = os.environ if environ is None else environ
        return self.paths.ledger or env.get("KQ_LEDGER_DSN") or None

    def digest(self) -> str:
        """sha256 of the canonical JSON of this config (what the ledger's cycle rows name)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def live_config_from_dict(raw: dict, source: str = "live config") -> LiveConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: not a config table")
    if "source" in raw:
        raise ConfigError(f"{source}: source: unknown key")
    try:
        cfg = LiveConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{source}: {loc}: {msg}".replace("\n", " ")) from None
    return cfg.model_copy(update={"source": source})


def load_live_config(path: str | Path) -> LiveConfig:
    """Read ``configs/paper.toml`` / ``configs/live.toml`` (or another file of the same schema)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such live config file")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: invalid TOML: {str(e).splitlines()[0]}") from None
    cfg = live_config_from_dict(raw, str(p))
    if not cfg.engine_path().is_file():
        raise ConfigError(f"{p}: engine_config: no such file {cfg.engine_path()}")
    if cfg.retrain.enabled and not cfg.retrain_config_path().is_file():
        raise ConfigError(f"{p}: retrain.config: no such file {cfg.retrain_config_path()}")
    return cfg
