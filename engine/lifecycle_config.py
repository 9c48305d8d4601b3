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

Paper before live: :data:`PROTECTED_MIN_PAPER_HOURS` is the least number of completed paper-trading
hours a model (the same manifest digest) needs before ``kq models promote --env live`` approves it;
``lifecycle.min_paper_hours`` may only raise it (:func:`required_paper_hours`). :class:`PaperRecord`
is what the live bridge reads from a paper ledger (``live_bridge/paper_record.py``) and hands to the
promote action in research (which never reads a ledger itself); :meth:`PaperRecord.problems` says
what is missing.

The scheduled retraining window is NOT here: it is ``risk.training_window_utc`` (the same window in
which the backtester and the live bridge open no new positions), so there is one clock rule.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from pydantic import Field

from engine.config_base import Frozen

__all__ = [
    "ENVIRONMENTS",
    "PROTECTED_GATE_THRESHOLDS",
    "PROTECTED_MIN_PAPER_HOURS",
    "PROTECTED_SOURCE",
    "STRICTER",
    "LifecycleConfig",
    "PaperRecord",
    "effective_thresholds",
    "fmt_hour",
    "looser_than",
    "protected_sha256",
    "protected_thresholds",
    "required_paper_hours",
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
# Paper before live: completed paper hours of the same manifest digest (30 days) a model needs before
# it may be approved for live. A reviewed code change to lower; a config can only raise it.
PROTECTED_MIN_PAPER_HOURS = 720


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
    # paper before live
    min_paper_hours: int = Field(
        PROTECTED_MIN_PAPER_HOURS,
        ge=1,
        le=100_000,
        description="completed paper-trading hours of the same manifest digest, without an unresolved "
        "reconciliation mismatch or a parity failure, before kq models promote --env live "
        f"(only a value above the protected {PROTECTED_MIN_PAPER_HOURS} has an effect)",
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


def required_paper_hours(lc: LifecycleConfig) -> tuple[int, list[str]]:
    """(hours, ignored): the paper hours a live approval needs, the larger of the protected
    :data:`PROTECTED_MIN_PAPER_HOURS` and ``lifecycle.min_paper_hours``; ``ignored`` names a config
    value that was lower and therefore not used."""
    c = int(lc.min_paper_hours)
    if c < PROTECTED_MIN_PAPER_HOURS:
        return PROTECTED_MIN_PAPER_HOURS, [
            f"lifecycle.min_paper_hours {c} is below the protected {PROTECTED_MIN_PAPER_HOURS}"
        ]
    return c, []


def fmt_hour(hour: int | None) -> str:
    """An hour index (unix seconds // 3600) as ``YYYY-MM-DD HH:00`` UTC."""
    if hour is None:
        return "an unknown hour"
    return datetime.fromtimestamp(int(hour) * 3600, UTC).strftime("%Y-%m-%d %H:00")


@dataclass(frozen=True)
class PaperRecord:
    """What a paper ledger says about one model (one manifest digest). ``hours``: completed hours
    (``cycle_end`` ``completed``) whose model row names ``manifest_sha256``; ``first_hour`` /
    ``last_hour`` their span (unix seconds // 3600); ``mismatches``: the hours of ``mismatch``
    reconciliations in that span not followed by an applied ``reactivate``; ``parity_failures``: the
    hours of ``parity_failed`` events in the span or naming this digest; ``ledger``: the ledger's
    DSN without password; ``head_seq`` / ``head_hash``: its verified chain head when it was read."""

    manifest_sha256: str
    hours: int
    first_hour: int | None = None
    last_hour: int | None = None
    mismatches: tuple[int | None, ...] = ()
    parity_failures: tuple[int | None, ...] = ()
    ledger: str = ""
    head_seq: int = 0
    head_hash: str = ""

    def problems(self, manifest_sha256: str, required_hours: int) -> list[str]:
        """What keeps this record from approving ``manifest_sha256`` for live (empty: nothing)."""
        m = manifest_sha256[:16]
        if self.manifest_sha256 != manifest_sha256:
            return [f"the paper record is for manifest {self.manifest_sha256[:16]}, not {m}"]
        out = []
        if self.hours < required_hours:
            out.append(f"{self.hours} of {required_hours} paper hours for manifest {m}")
        for one, many, hours in (
            ("unresolved reconciliation mismatch", "unresolved reconciliation mismatches", self.mismatches),
            ("parity failure", "parity failures", self.parity_failures),
        ):
            if hours:
                more = f" (and {len(hours) - 1} later)" if len(hours) > 1 else ""
                out.append(f"{len(hours)} {one if len(hours) == 1 else many} at {fmt_hour(hours[0])}{more}")
        return out

    def summary(self) -> dict:
        """What an approvals-log entry records about the paper evidence behind a live approval."""
        return {
            "manifest_sha256": self.manifest_sha256,
            "hours": self.hours,
            "first_hour_utc": None if self.first_hour is None else fmt_hour(self.first_hour),
            "last_hour_utc": None if self.last_hour is None else fmt_hour(self.last_hour),
            "ledger": self.ledger,
            "ledger_head_seq": self.head_seq,
            "ledger_head_hash": self.head_hash,
        }
