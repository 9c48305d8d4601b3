"""[lifecycle] config section and the PROTECTED promotion-gate thresholds.

Read by ``research/lifecycle`` (``kq models validate|promote|rollback|audit``) and by the live
bridge's model loader (``live_bridge/models.py``), which is why it is an engine module: the live
bridge reads engine config only. docs/MODEL_LIFECYCLE.md explains every gate.

Where the gate thresholds come from: :data:`PROTECTED_GATE_THRESHOLDS`, per environment (paper,
live), in this committed file, is the one protected source. The ``[lifecycle]`` section of a user's
``--config`` may only make a threshold STRICTER: :func:`effective_thresholds` takes, key by key,
the stricter of the config's value and the protected one, and reports the config values it
ignored as looser. A verdict records the thresholds it was judged under and
:func:`protected_sha256` (the digest of the protected table); ``kq models promote`` and the loader
refuse a verdict judged under thresholds looser than the protected ones of the environment.

The scheduled retraining window is NOT here: it is ``risk.training_window_utc`` (the same window in
which the backtester and the live bridge open no new positions), so there is one clock rule.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from types import MappingProxyType

from pydantic import Field

from engine.config_base import Frozen

__all__ = [
    "ENVIRONMENTS",
    "PROTECTED_GATE_THRESHOLDS",
    "PROTECTED_SOURCE",
    "STRICTER",
    "LifecycleConfig",
    "effective_thresholds",
    "looser_than",
    "protected_sha256",
    "protected_thresholds",
]

ENVIRONMENTS = ("paper", "live")

# For each threshold, which way is stricter: "higher" (a minimum) or "lower" (a maximum).
STRICTER: Mapping[str, str] = MappingProxyType(
    {"min_sharpe": "higher", "max_drawdown": "lower", "max_daily_turnover": "lower", "exposure_tolerance": "lower"}
)

_GATES = MappingProxyType(
    {"min_sharpe": 0.5, "max_drawdown": 0.15, "max_daily_turnover": 2.0, "exposure_tolerance": 0.05}
)
# The floor every paper or live approval must meet. Paper rehearses live with the same model, so it
# has the same floor (docs/DECISIONS.md 2026-12-07). Changing a number here is a reviewed code change;
# a config file can only tighten them.
PROTECTED_GATE_THRESHOLDS: Mapping[str, Mapping[str, float]] = MappingProxyType({"paper": _GATES, "live": _GATES})
PROTECTED_SOURCE = "engine.lifecycle_config.PROTECTED_GATE_THRESHOLDS"


class LifecycleConfig(Frozen):
    # gate 3: out-of-sample quality of the candidate's walk-forward backtest
    min_sharpe: float = Field(
        _GATES["min_sharpe"],
        ge=-10.0,
        le=20.0,
        description="gate 3: annualised Sharpe of the OOS meta strategy must be >= this "
        "(only a value above the protected one has an effect)",
    )
    max_drawdown: float = Field(
        _GATES["max_drawdown"],
        gt=0.0,
        le=1.0,
        description="gate 3: max drawdown (fraction of peak equity) must be <= this "
        "(only a value below the protected one has an effect)",
    )
    # gate 4: risk
    max_daily_turnover: float = Field(
        _GATES["max_daily_turnover"],
        gt=0.0,
        le=1000.0,
        description="gate 4: traded notional (buys + sells) / mean equity PER DAY must be <= this "
        "(metrics.json 'turnover' is the same ratio per year: divide by 365); only a value below "
        "the protected one has an effect",
    )
    exposure_tolerance: float = Field(
        _GATES["exposure_tolerance"],
        ge=0.0,
        le=0.5,
        description="gate 4 audit: relative slack on the exposure cap at the close of an entry's bar "
        "(prices move between the fill and the close); 0.05 = 20% cap checked at 21%; only a value "
        "below the protected one has an effect",
    )
    # where approvals live
    approvals_dir: str | None = Field(
        None,
        description="approvals store (state per environment + hash-chained approvals.log); "
        "default data/approvals; a relative path is relative to the working directory",
    )


def _stricter(key: str, a: float, b: float) -> float:
    return max(a, b) if STRICTER[key] == "higher" else min(a, b)


def protected_thresholds(env: str | None = None) -> dict[str, float]:
    """The protected thresholds of ``env``; ``None``: the strictest over every environment (what a
    verdict, which is not tied to an environment, is judged under)."""
    table = PROTECTED_GATE_THRESHOLDS
    if env is not None:
        if env not in table:
            raise KeyError(f"unknown environment {env!r}")
        return dict(table[env])
    out: dict[str, float] = {}
    for t in table.values():
        for k, v in t.items():
            out[k] = _stricter(k, out[k], v) if k in out else float(v)
    return out


def protected_sha256() -> str:
    """SHA-256 of the canonical JSON of the protected table (what a verdict and an approval name)."""
    blob = json.dumps(
        {e: dict(t) for e, t in PROTECTED_GATE_THRESHOLDS.items()},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def effective_thresholds(lc: LifecycleConfig, env: str | None = None) -> tuple[dict[str, float], list[str]]:
    """(thresholds, ignored): key by key the stricter of the config's ``[lifecycle]`` value and the
    protected one of ``env`` (``None``: of every environment); ``ignored`` names each config value
    that was looser and therefore not used."""
    floor = protected_thresholds(env)
    out, ignored = {}, []
    for k, p in floor.items():
        c = float(getattr(lc, k))
        out[k] = _stricter(k, c, p)
        if out[k] != c:
            ignored.append(f"lifecycle.{k} {c:g} is looser than the protected {p:g}")
    return out, ignored


def looser_than(thresholds: object, required: Mapping[str, float]) -> list[str]:
    """``"key got vs required"`` for every threshold in ``thresholds`` (a verdict's record) that is
    missing, not a finite number, or looser than ``required``; empty when it is at least as strict."""
    t = thresholds if isinstance(thresholds, Mapping) else {}
    out = []
    for k, req in required.items():
        got = t.get(k)
        ok = False
        if isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(got):
            ok = got >= req if STRICTER[k] == "higher" else got <= req
        if not ok:
            out.append(f"{k} {got} vs {req}")
    return out
