"""The capital ceiling of a live portfolio, as the ledger holds it (R3b, docs/RISK_RULES.md;
``kq live set-ceiling``, docs/LIVE.md "Operator commands").

**The effective-ceiling rule** (docs/DECISIONS.md, 2026-12-07): the ceiling a portfolio trades under
is the newest ``set_ceiling`` the daemon APPLIED (an ``operator_applied`` row answering a
``set_ceiling`` ``operator_action``), else the live config's ``capital_ceiling``; either way the
lower of it and the engine config's ``risk.capital_ceiling`` (``live_bridge.cycle.live_params``).
A config edited after a ``set_ceiling`` does not change it (``kq live status`` warns).

The daemon applies a ``set_ceiling`` at a bar close through its operator input
(``Cycle._operator``): the ``operator_applied`` row carries ``{"old", "new", "param"}`` (the
operator-level ceilings before and after, ``"off"`` or a decimal string, and the risk parameter it
sets: ``min(engine ceiling, new)`` as the exact decimal of the float, ``"inf"`` when off) and sits
in the hour's input batch, after the snapshot ``before``. The cycle (and the replay) then set the
machine's ``capital_ceiling`` to ``param`` before that bar's ``on_bar``
(:func:`apply_ledgered`), so the snapshot ``after`` carries it and a restart restores under it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import InputError
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger.canonical import canonical_decimal, exact_decimal

__all__ = [
    "AppliedCeiling",
    "applied_ceilings",
    "apply_ledgered",
    "ceiling_text",
    "effective_ceiling",
    "param_text",
    "parse_ceiling",
]

OFF = "off"


def parse_ceiling(text: Any, what: str = "--to") -> Decimal | None:
    """``"off"`` -> None; a positive finite decimal (quote currency) -> its Decimal; else InputError."""
    s = str(text).strip()
    if s.lower() == OFF:
        return None
    try:
        d = Decimal(s)
    except (InvalidOperation, ValueError):
        raise InputError(f"{what} {s[:40]!r}: not a number (a positive amount in quote currency, or 'off')") from None
    if not d.is_finite() or d <= 0:
        raise InputError(f"{what} {s[:40]!r}: the ceiling must be a positive amount in quote currency (or 'off')")
    canonical_decimal(d, what)  # the ledger's digit limits
    # the risk step reads a float: an amount that underflows to 0 (or overflows to inf, which would
    # mean "off") must be refused here, not stop the daemon at the close that applies it
    f = float(d)
    if not (math.isfinite(f) and f >= 0.01):
        raise InputError(f"{what} {s[:40]!r}: out of range (from 0.01 to {sys.float_info.max:.3g}, or 'off')")
    return d


def ceiling_text(d: Decimal | None) -> str:
    """The ledger's text of an operator-level ceiling: ``"off"`` or the canonical decimal."""
    return OFF if d is None else canonical_decimal(d)


def _ceiling_of(text: Any) -> Decimal | None:
    return None if text is None or str(text) == OFF else Decimal(str(text))


def param_text(x: float) -> str:
    """The risk parameter as ledger text: ``"inf"`` (off) or the exact decimal of the float."""
    return "inf" if math.isinf(x) else canonical_decimal(exact_decimal(float(x)))


def _param_of(text: str) -> float:
    return math.inf if text == "inf" else float(Decimal(text))


@dataclass(frozen=True)
class AppliedCeiling:
    seq: int  # the operator_applied row
    action_seq: int
    hour: int
    old: Decimal | None
    new: Decimal | None  # None: off
    param: float  # the machine's capital_ceiling from this close on


def _set_ceiling_seqs(ledger: Ledger) -> set[int]:
    return {int(e.seq) for e in ledger.entries(kind=Kind.OPERATOR_ACTION) if e.code == "set_ceiling"}


def applied_ceilings(ledger: Ledger, upto_hour: int | None = None) -> list[AppliedCeiling]:
    """The applied ``set_ceiling`` actions in ledger order (those applied at a close of hour
    ``<= upto_hour`` when given)."""
    ids = _set_ceiling_seqs(ledger)
    if not ids:
        return []
    out = []
    for e in ledger.entries(kind=Kind.OPERATOR_APPLIED):
        if e.code != "applied" or e.ref_seq not in ids or e.hour is None:
            continue
        if upto_hour is not None and int(e.hour) > upto_hour:
            continue
        out.append(_applied(e, int(e.hour)))
    return out


def _applied(e: Entry, hour: int) -> AppliedCeiling:
    p = e.payload
    return AppliedCeiling(
        int(e.seq), int(e.ref_seq or 0), hour, _ceiling_of(p.get("old")), _ceiling_of(p["new"]), _param_of(p["param"])
    )


def effective_ceiling(
    ledger: Ledger, config_ceiling: Decimal | None, upto_hour: int | None = None
) -> tuple[Decimal | None, AppliedCeiling | None]:
    """The operator-level ceiling in force after the close of ``upto_hour`` (all applied when None):
    the newest applied ``set_ceiling``'s value (with that row), else ``config_ceiling`` (None)."""
    got = applied_ceilings(ledger, upto_hour)
    if got:
        return got[-1].new, got[-1]
    return config_ceiling, None


def apply_ledgered(machine: Any, rows: Sequence[Entry], hour: int) -> AppliedCeiling | None:
    """Set ``machine``'s capital ceiling from the ``set_ceiling`` applied in the hour's rows (the
    last one when several), as the cycle does before ``on_bar`` and the replay after it; None when
    the hour applied none. ``rows``: the hour's ledger entries."""
    last = None
    for e in rows:
        # only a set_ceiling's operator_applied row carries "param" (Cycle._operator)
        if e.kind != Kind.OPERATOR_APPLIED or e.code != "applied" or e.hour != hour or "param" not in e.payload:
            continue
        last = _applied(e, hour)
    if last is not None:
        machine.set_capital_ceiling(last.param)
    return last
