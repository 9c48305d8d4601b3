"""Frozen, typed configuration loaded from TOML in ``configs/``.

Every section is a frozen pydantic model (:class:`engine.config_base.Frozen`) with
``extra="forbid"`` and finite floats, and :class:`Config` types every section: an unknown key, a
section of the wrong shape (``risk = 5``, ``[[risk]]``), ``nan``/``inf`` or an out-of-range value is
a :class:`~engine.errors.ConfigError` of one line that names the key
(``risk.max_positions: Input should be less than or equal to 50``).

A config file may start with ``extends = "default.toml"`` (a path relative to the file): the
named file is loaded first and this file's tables are merged over it, key by key.

Sections live next to the code that reads them (``engine/risk/config.py`` and so on) and are
assembled here.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.backtest.config import BacktestConfig
from engine.config_base import Frozen
from engine.errors import ConfigError, one_line
from engine.execution.config import ExecutionConfig
from engine.features.config import FeaturesConfig
from engine.lifecycle_config import LifecycleConfig
from engine.risk.config import RiskConfig
from engine.strategy.config import StrategyConfig

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "Config",
    "DataConfig",
    "FeesConfig",
    "Frozen",
    "LabelsConfig",
    "config_from_dict",
    "load_config",
    "read_toml",
]

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kB; anything above 1 MiB is refused unread
MAX_DEPTH = 16  # tables/arrays nested deeper than this are refused (the deepest real key has 3)
MAX_EXTENDS = 8  # length of an ``extends`` chain


class DataConfig(Frozen):
    store: str | None = Field(None, description="market store path; default data/market.duckdb or $KQ_STORE")
    venue: str = Field("kraken", description="venue whose bars research reads: kraken, binance, synthetic")
    bar_seconds: Literal[3600] = 3600

    @field_validator("venue")
    @classmethod
    def _venue(cls, v: str) -> str:
        from engine.store.readers import VENUES

        if v not in VENUES:
            raise ValueError(f"unknown venue {v[:40]!r} (known: {', '.join(VENUES)})")
        return v


class FeesConfig(Frozen):
    fee_rate: float = Field(0.004, ge=0.0, le=0.05, description="fee as a fraction of notional, every fill")
    slippage_bps: float = Field(5.0, ge=0.0, le=500.0, description="expected slippage per fill in basis points")

    @property
    def round_trip_cost(self) -> float:
        """Two fees plus two expected slippages: what an entry's expected return must clear."""
        return 2.0 * self.fee_rate + 2.0 * self.slippage_bps * 1e-4


class LabelsConfig(Frozen):
    horizons: tuple[int, ...] = Field((1, 4, 24), description="label horizons in bars (hours)")

    @model_validator(mode="after")
    def _check(self) -> LabelsConfig:
        if not self.horizons or any(h < 1 or h > 24 * 30 for h in self.horizons):
            raise ValueError("horizons must be 1..720 bars")
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError("horizons must be strictly increasing")
        return self


class Config(Frozen):
    seed: int = Field(7, ge=0, le=2**32 - 1, description="seed for everything random (numpy/sklearn: < 2**32)")
    data: DataConfig = DataConfig()
    fees: FeesConfig = FeesConfig()
    labels: LabelsConfig = LabelsConfig()
    features: FeaturesConfig = FeaturesConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    backtest: BacktestConfig = BacktestConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    strategy: StrategyConfig = StrategyConfig()

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of this config (what made a result). A [strategy] section
        left at its defaults (the layer off) is not hashed, so configs from before the section keep
        their hashes; nor is ``regime_thresholds`` at its default "config" (hashes from before the key)."""
        d = self.model_dump(mode="json")
        if self.strategy == StrategyConfig():
            d.pop("strategy")
        elif self.strategy.regime_thresholds == "config":
            d["strategy"].pop("regime_thresholds")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def _format_validation(e: ValidationError, prefix: str = "", max_errors: int = 5) -> str:
    msgs = []
    errs = e.errors()
    for err in errs[:max_errors]:
        loc = ".".join(str(x) for x in err["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msgs.append(f"{key}: {msg}")
    more = f" (+{len(errs) - max_errors} more)" if len(errs) > max_errors else ""
    return one_line("; ".join(msgs) + more)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _depth(v: object) -> int:
    """Nesting depth of tables and arrays (a scalar is 0), without recursion."""
    best, stack = 0, [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = list(x.values())
        if isinstance(x, list):
            best = max(best, d + 1)
            if best > MAX_DEPTH:
                return best
            stack.extend((y, d + 1) for y in x)
    return best


def _read_text(p: Path) -> str:
    """The file's text: a regular file of at most MAX_CONFIG_BYTES, UTF-8 (a leading BOM is dropped)."""
    try:
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, not a config file")
        if not p.is_file():
            raise ConfigError(f"{p}: not a regular file")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {size} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})")
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as e:  # permission, name too long, embedded NUL byte, ...
        raise ConfigError(
            f"{p}: cannot be read ({e.strerror if isinstance(e, OSError) and e.strerror else e})"
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: too large for a config file (at most {MAX_CONFIG_BYTES} bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def read_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a TOML file, following ``extends``. Errors name the file and are one line."""
    p = Path(path)
    text = _read_text(p)
    rp = p.resolve()
    if rp in _seen:
        raise ConfigError(f"{p}: 'extends' loops back to itself")
    if len(_seen) >= MAX_EXTENDS:
        raise ConfigError(f"{p}: 'extends' chain longer than {MAX_EXTENDS} files")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(one_line(f"{p}: not valid TOML: {e}")) from None
    except RecursionError:
        raise ConfigError(f"{p}: not a config: tables or arrays nested too deeply") from None
    if _depth(raw) > MAX_DEPTH:
        raise ConfigError(f"{p}: not a config: tables or arrays nested more than {MAX_DEPTH} levels deep")
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"{p}: extends: must be a file name")
        raw = _merge(read_toml(p.parent / parent, _seen + (rp,)), raw)
    return raw


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate a config table (``read_toml``'s result, or a resolved config's JSON)."""
    if not isinstance(raw, dict):
        raise ConfigError(one_line(f"{source}: not a config table"))
    if _depth(raw) > MAX_DEPTH:
        raise ConfigError(one_line(f"{source}: not a config: tables or arrays nested more than {MAX_DEPTH} levels"))
    try:
        return Config.model_validate(raw)
    except ConfigError as e:
        raise ConfigError(one_line(f"{source}: {e}")) from None
    except ValidationError as e:
        raise ConfigError(one_line(f"{source}: {_format_validation(e)}")) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load a config file (default ``configs/default.toml``)."""
    from engine.paths import configs_dir

    p = Path(path) if path is not None else configs_dir() / "default.toml"
    return config_from_dict(read_toml(p), str(p))
