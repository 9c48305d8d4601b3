"""Simulator settings: accounts, fees, rate limits, fill-model parameters (``configs/sim.toml``).

Secrets never live in a config file: an account names the *environment variables* holding its
API key and base64 secret (``key_env`` / ``secret_env``). The default account reads
``KRAKEN_API_KEY`` / ``KRAKEN_API_SECRET``, the names Kraken clients use.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from engine.config import Frozen
from engine.errors import ConfigError
from engine.execution.config import ExecutionConfig

from .numbers import MAX_AMOUNT, BadNumber, decimal_of

# The backtester's fill-model numbers are the simulator's defaults, so the two cannot drift apart.
_EXEC = ExecutionConfig()


class FeeTier(Frozen):
    taker: Decimal = Field(Decimal("0.004"), ge=0, le=Decimal("0.05"))
    maker: Decimal = Field(Decimal("0.004"), ge=0, le=Decimal("0.05"))


class AccountConfig(Frozen):
    name: str
    key_env: str = Field(description="environment variable holding the API key")
    secret_env: str = Field(description="environment variable holding the base64 API secret")
    balances: dict[str, Decimal] = Field(default_factory=dict, description="asset -> amount at creation")
    fee_tier: str | None = Field(None, description="name of a [fees.tiers] entry; default tier if unset")

    @field_validator("balances", mode="before")
    @classmethod
    def _amounts(cls, v: object) -> object:
        """Finite, 0..1e15, JSON/TOML numbers or ASCII decimal strings (no Unicode digits, no ``1_000``)."""
        if not isinstance(v, dict):
            return v
        try:
            return {k: decimal_of(x, f"balance {k}", 0, MAX_AMOUNT) for k, x in v.items()}
        except BadNumber as e:
            raise ValueError(str(e)) from None


class RateLimitConfig(Frozen):
    max_counter: float = Field(20.0, gt=0, description="REST counter ceiling (Kraken intermediate tier: 20)")
    decay_per_s: float = Field(0.5, ge=0, description="counter decay per wall second (intermediate: 0.5)")
    order_max_counter: float = Field(125.0, gt=0, description="matching-engine counter per pair")
    order_decay_per_s: float = Field(2.34, ge=0)
    lockout_after: int = Field(5, ge=1, description="bad nonces/keys/signatures within lockout_window_s")
    lockout_window_s: float = Field(60.0, gt=0)
    lockout_s: float = Field(60.0, ge=0, description="how long a key stays locked out")


class FillConfig(Frozen):
    default_spread: float = Field(
        0.001, ge=0, le=0.2, description="spread fraction used until/where the OHLC estimator has none"
    )
    use_estimator: bool = Field(True, description="use engine.features.spread.spread_estimate if present")
    spread_window: int = Field(24, ge=2)
    atr_window: int = Field(
        14,
        ge=2,
        description="Wilder ATR window; impact volatility = ATR / close (the backtester's features.atr_window)",
    )
    impact_coef: float = Field(_EXEC.impact_coef, ge=0, description="[execution] impact_coef by default")
    min_slip: float = Field(
        _EXEC.min_slippage_bps * 1e-4,
        ge=0,
        description="floor of a market fill's slippage ([execution] min_slippage_bps)",
    )
    impact_volume: Literal["execution_bar", "last_closed"] = Field(
        "execution_bar",
        description="quote volume the impact is measured against: the hour the order executes "
        "in (as the backtester) or the last closed bar",
    )
    participation_cap: float = Field(
        0.10, gt=0, le=1.0, description="a resting order fills at most this share of a bar's volume"
    )
    max_open_orders: int = Field(80, ge=1, description="open orders per account and pair")


class FeesSection(Frozen):
    default: FeeTier = FeeTier()
    tiers: dict[str, FeeTier] = Field(default_factory=dict)
    pairs: dict[str, FeeTier] = Field(default_factory=dict, description="per-pair override (any pair spelling)")


class SimConfig(Frozen):
    seed: int = 7
    fees: FeesSection = FeesSection()
    rate_limit: RateLimitConfig = RateLimitConfig()
    fills: FillConfig = FillConfig()
    accounts: list[AccountConfig] = Field(default_factory=list)

    @field_validator("accounts")
    @classmethod
    def _unique(cls, v: list[AccountConfig]) -> list[AccountConfig]:
        names = [a.name for a in v]
        if len(names) != len(set(names)):
            raise ValueError("account names must be unique")
        return v


def load_sim_config(path: str | Path | None) -> SimConfig:
    """Read a sim TOML file (or defaults when ``path`` is None); errors name the key."""
    if path is None:
        return SimConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such sim config file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return sim_config_from_dict(raw, source=str(p))


def sim_config_from_dict(raw: dict, source: str = "sim config") -> SimConfig:
    try:
        return SimConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{source}: {loc}: {err['msg']}") from None
