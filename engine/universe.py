"""The tradable universe: which pair may be traded at which bar, decided from past data only.

Configured in ``configs/universe.toml`` (:class:`UniverseConfig`). A pair is tradable at bar t when

1. **membership** (static): its base is a candidate, its base is on no exclusion list (stablecoins,
   meme coins: an exclusion wins over candidacy), and its quote is the configured quote of the panel's
   venue (USD on kraken / synthetic, USDT on binance);
2. its bar at t is valid;
3. **liquidity**, from bars <= t only:

   * daily quote volume ``D_t`` = sum of ``close * volume`` over the 24 bars t-23 .. t. A missing
     hour after the pair's first bar counts as zero volume (the conservative reading: Kraken omits
     hours without trades); before the pair's first bar in the panel ``D`` is undefined (NaN).
     The trailing median of ``D`` over the last ``volume_days * 24`` bars (all 24-hour windows ending
     in the last 30 days) must be >= ``min_median_daily_quote_volume``; every one of those windows
     must exist, so a pair can join at the earliest ``23 + volume_days * 24 - 1`` bars after its
     first bar in the panel: at least **743 bars (about 31 days) of history, that bar included**,
     with the defaults;
   * the estimated spread (:func:`engine.features.spread.spread_estimate`, ``spread_window`` bars,
     ``spread_method``) has a trailing median over the last ``volume_days * 24`` bars
     <= ``max_spread``, taken over the estimates that exist (at least ``spread_min_fraction`` of
     them). The current estimate must exist: after a missing hour the pair is out until
     ``spread_window + 1`` contiguous bars are back (25 h by default).

So a newly listed pair joins from the first bar at which its own past qualifies it, never earlier,
and a value at t never changes when later bars change. The mask says where a pair may be *entered*;
what happens to a position in a pair that leaves the universe is the backtester's / risk rule.

The rolling medians and means come from :mod:`engine.features.nb` (``rolling_median_nb``,
``rolling_mean_nb``: exact per window, NaN at t when the input at t is NaN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator

from engine.config import Frozen, _format_validation, read_toml
from engine.errors import ConfigError, InputError
from engine.pairs import KNOWN_ASSETS, split_pair
from engine.store.panel import Panel

HOURS_PER_DAY = 24


def _codes(v: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(str(x).strip().upper() for x in v)
    if any(not x or not x.isalnum() for x in out):
        raise ValueError("asset codes must be non-empty letters/digits")
    if len(set(out)) != len(out):
        raise ValueError("duplicate asset code")
    return out


class ExclusionConfig(Frozen):
    stablecoins: tuple[str, ...] = Field(
        ("USDT", "USDC", "DAI", "BUSD", "TUSD", "USDP", "FDUSD", "PYUSD", "USDD", "EURT"),
        description="stablecoins: never traded as a base asset",
    )
    meme: tuple[str, ...] = Field(
        ("DOGE", "SHIB", "PEPE", "FLOKI", "BONK", "WIF", "MEME", "BOME"),
        description="meme coins: kept out of trading even where their bars are in the data",
    )

    _norm = field_validator("stablecoins", "meme")(classmethod(lambda cls, v: _codes(v)))

    @property
    def all(self) -> frozenset[str]:
        return frozenset(self.stablecoins) | frozenset(self.meme)


class LiquidityConfig(Frozen):
    min_median_daily_quote_volume: float = Field(
        1_000_000.0, ge=0.0, description="minimum trailing median of 24h quote volume (quote units)"
    )
    volume_days: int = Field(30, ge=1, le=365, description="trailing days for both medians")
    max_spread: float = Field(0.008, gt=0.0, le=0.2, description="maximum trailing median estimated spread (fraction)")
    spread_window: int = Field(24, ge=1, le=720, description="bars averaged by the spread estimate")
    spread_method: Literal["corwin_schultz", "abdi_ranaldo"] = "corwin_schultz"
    spread_min_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="share of the trailing spread estimates that must exist"
    )


class UniverseConfig(Frozen):
    candidates: tuple[str, ...] = Field(
        ("BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX"), description="base assets that may be traded"
    )
    quotes: dict[str, str] = Field(
        {"kraken": "USD", "synthetic": "USD", "binance": "USDT"}, description="the quote currency traded on each venue"
    )
    exclude: ExclusionConfig = ExclusionConfig()
    liquidity: LiquidityConfig = LiquidityConfig()

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = _codes(v)
        unknown = [x for x in out if x not in KNOWN_ASSETS]
        if unknown:
            raise ValueError(f"unknown asset(s) {', '.join(unknown)}")
        return out

    @field_validator("quotes")
    @classmethod
    def _known_quotes(cls, v: dict[str, str]) -> dict[str, str]:
        out = {str(k).strip().lower(): str(q).strip().upper() for k, q in v.items()}
        bad = [q for q in out.values() if q not in KNOWN_ASSETS]
        if bad:
            raise ValueError(f"unknown quote asset(s) {', '.join(bad)}")
        return out

    def is_member(self, pair: str, venue: str) -> bool:
        """Static membership: candidate base, not excluded, quote of (one of) the panel's venue(s)."""
        base, quote = split_pair(pair)
        return base in self.candidates and base not in self.exclude.all and quote in self.venue_quotes(venue)

    def venue_quotes(self, venue: str) -> frozenset[str]:
        """Quotes allowed for a panel venue; a mixed panel (``binance+kraken``) allows each venue's."""
        out = set()
        for v in venue.split("+"):
            q = self.quotes.get(v.strip().lower())
            if q is None:
                raise InputError(
                    f"venue {v!r} has no quote in the universe config (quotes: {', '.join(sorted(self.quotes))})"
                )
            out.add(q)
        return frozenset(out)


def universe_from_dict(raw: dict, source: str = "<dict>") -> UniverseConfig:
    try:
        return UniverseConfig(**raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation(e)}") from None


def load_universe(path: str | Path | None = None) -> UniverseConfig:
    """Load ``configs/universe.toml`` (or ``path``). Unknown keys and bad values name the key."""
    from engine.paths import configs_dir

    p = Path(path) if path is not None else configs_dir() / "universe.toml"
    return universe_from_dict(read_toml(p), str(p))


def member_mask(panel: Panel, cfg: UniverseConfig) -> np.ndarray:
    """(n_pairs,) bool: static membership of each panel pair."""
    return np.array([cfg.is_member(p, panel.venue) for p in panel.pairs], dtype=bool)


def daily_quote_volume(panel: Panel) -> np.ndarray:
    """(n, m) 24-bar quote volume ending at t (missing hours after the first bar count as 0)."""
    from engine.features.nb import rolling_mean_nb

    qv = panel.close * panel.volume
    qv = np.where(panel.valid & np.isfinite(qv), qv, 0.0)
    started = np.cumsum(panel.valid, axis=0) > 0
    qv = np.where(started, qv, np.nan)
    return rolling_mean_nb(np.ascontiguousarray(qv), HOURS_PER_DAY, HOURS_PER_DAY) * HOURS_PER_DAY


def liquidity_stats(panel: Panel, cfg: UniverseConfig) -> tuple[np.ndarray, np.ndarray]:
    """(median daily quote volume, median estimated spread), each (n, m), causal."""
    from engine.features.nb import rolling_median_nb
    from engine.features.spread import spread_estimate

    liq = cfg.liquidity
    w = liq.volume_days * HOURS_PER_DAY
    vol_med = rolling_median_nb(daily_quote_volume(panel), w, w)
    spread = spread_estimate(panel, liq.spread_window, liq.spread_method)
    need = max(1, int(np.ceil(liq.spread_min_fraction * w)))
    spread_med = rolling_median_nb(np.ascontiguousarray(spread), w, need)
    return vol_med, spread_med


def liquidity_mask(panel: Panel, cfg: UniverseConfig) -> np.ndarray:
    """(n, m) bool: bar valid and past data meets the liquidity filters (membership ignored)."""
    vol_med, spread_med = liquidity_stats(panel, cfg)
    liq = cfg.liquidity
    with np.errstate(invalid="ignore"):
        ok = (vol_med >= liq.min_median_daily_quote_volume) & (spread_med <= liq.max_spread)
    return panel.valid & ok  # NaN compares False: no history, no entry


def universe_mask(panel: Panel, cfg: UniverseConfig | None = None) -> np.ndarray:
    """(n, m) bool: pair j is tradable at bar t (see the module docstring for the rule)."""
    cfg = cfg if cfg is not None else load_universe()
    members = member_mask(panel, cfg)
    if not members.any():
        return np.zeros(panel.valid.shape, dtype=bool)
    return liquidity_mask(panel, cfg) & members[None, :]
