"""Operator commands on a paper/live ledger (issue 17; ``kq live status``, ``kq live reactivate``,
``kq live reset-halt``, ``kq live pause``, ``kq live resume``, ``kq live flatten``; docs/LIVE.md, "Operator commands").

Everything here reads or appends to the ledger only: no exchange call, no model, no market store,
and never an edit of the risk state. :func:`status` decodes the portfolio from the ledger's last
``after`` snapshot (``RiskMachine.restore`` with the snapshot's own parameters) and the rows around
it. :func:`request` appends one ``operator_action`` row after checking the typed confirmation and
that there is something to reset; the daemon applies it at the next bar close through the risk
step's operator input (``live_bridge/cycle.py``, ``Cycle._operator``: ``reactivate`` ->
``OP_RESET_KILL``, ``reset_halt`` -> ``OP_RESET_HALT``, ``pause`` -> ``OP_PAUSE``, ``resume`` ->
``OP_RESUME``, ``flatten`` -> ``OP_FLATTEN``) and writes ``operator_applied``, so the
hour it is applied in replays from the ledger like any other (``live_bridge/replay.py``).
:func:`request_ceiling` (``kq live set-ceiling``) ledgers a ``set_ceiling`` with its value; the
daemon sets the machine's capital ceiling from it before that close's risk step
(``live_bridge/ceiling.py``), and :func:`status` shows the ceiling in force.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from engine.errors import InputError
from engine.timeutil import HOUR
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger import records as rec
from live_bridge.ledger.canonical import exact_decimal

__all__ = [
    "CONFIRM_WORDS",
    "LiveStatus",
    "Position",
    "Request",
    "default_actor",
    "hour_utc",
    "request",
    "request_ceiling",
    "status",
]

#: the word an operator types to confirm each supported action (the CLI's command names)
CONFIRM_WORDS = {
    "reactivate": "reactivate",
    "reset_halt": "reset-halt",
    "pause": "pause",
    "resume": "resume",
    "flatten": "flatten",
    "set_ceiling": "set-ceiling",
}


def hour_utc(hour: int | None) -> str:
    """``2022-06-02 05:00 UTC`` for the bar that opens at ``hour * 3600``; ``none`` for None."""
    if hour is None:
        return "none"
    return datetime.fromtimestamp(int(hour) * HOUR, UTC).strftime("%Y-%m-%d %H:00 UTC")


def default_actor(environ: dict[str, str] | None = None) -> str:
    """Who runs the command: ``KQ_OPERATOR`` from the environment, else the OS user name."""
    import getpass
    import os

    env = os.environ if environ is None else environ
    name = (env.get("KQ_OPERATOR") or "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a bare container)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _dec(x: Any) -> Decimal | None:
    """A finite float as its exact shortest Decimal; None for NaN/inf (no stop, no peak yet)."""
    x = float(x)
    return exact_decimal(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class Position:
    pair: str
    qty: Decimal
    entry_price: Decimal | None
    stop: Decimal | None  # None: no stop
    take_profit: Decimal | None  # None: no take-profit
    entry_hour: int | None
    mark: Decimal | None  # the last valid close
    value: Decimal | None  # qty x mark


@dataclass(frozen=True)
class LiveStatus:
    """A portfolio as its ledger holds it. ``portfolio`` False: no completed hour with a snapshot
    yet (the money fields are None). Amounts are exact Decimals of the machine's float64 values;
    ``drawdown`` and ``exposure_frac`` are fractions."""

    ledger: str
    head_seq: int
    portfolio: bool
    last_completed: int | None
    next_hour: int | None  # the bar whose close the daemon runs next (an operator action applies there)
    last_cycle: dict[str, Any] | None  # {"hour", "status", "seq"} of the newest cycle_end
    state: str | None  # TradingState name
    tier: int | None  # drawdown tier 0..2 (the halt is the latched tier 3)
    halted: bool
    kill_switch: bool
    paused: bool  # the operator pause is latched (no new entries)
    kill_reason: str | None  # KillReason name (NONE when not latched)
    latch_next: list[str]  # kill-switch reasons asked for the next bar (last cycle_end)
    snapshot_hour: int | None
    snapshot_seq: int | None
    init_cash: Decimal | None
    equity: Decimal | None
    cash: Decimal | None
    peak: Decimal | None
    drawdown: Decimal | None
    exposure: Decimal | None  # quote currency, at the last marks
    exposure_frac: Decimal | None  # exposure / equity
    positions: list[Position] = field(default_factory=list)
    model_id: str | None = None
    manifest_sha256: str | None = None
    model_hour: int | None = None
    pending_actions: list[dict[str, Any]] = field(default_factory=list)
    open_intents: list[dict[str, Any]] = field(default_factory=list)
    shadow: dict[str, Any] | None = None  # the shadow model's last state (live_bridge.shadow.shadow_summary)
    # the capital ceiling (R3b; live_bridge/ceiling.py): the machine's, from the snapshot ("off" or
    # a decimal: the lower of the operator-level ceiling and the engine config's), None without a
    # portfolio; cap_base = min(equity, ceiling), the equity the caps and sizes read
    capital_ceiling: str | None = None
    cap_base: Decimal | None = None
    ceiling_source: str | None = None  # "config" or "set_ceiling seq N (hour H)"
    ceiling_set: dict[str, Any] | None = None  # the newest applied set_ceiling: seq, action_seq, hour, old, new
    config_ceiling: str | None = None  # the live config's capital_ceiling, when the status was given it
    pending_ceiling: str | None = None  # the newest pending set_ceiling's value
    ceiling_warning: str | None = None  # the config's ceiling differs from the ledger's set_ceiling

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: Decimals as strings, hours as ints with their UTC labels."""

        def conv(v: Any) -> Any:
            if isinstance(v, Decimal):
                return str(v)
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        d = conv(asdict(self))
        for k in ("last_completed", "next_hour", "snapshot_hour", "model_hour"):
            d[f"{k}_utc"] = None if d[k] is None else hour_utc(d[k])
        return d


def _next_hour(ledger: Ledger, last: int | None) -> int | None:
    """As ``Daemon.next_hour``: the hour after the last completed one; before the first completes,
    the portfolio's first hour if it was begun; None for a new ledger."""
    if last is not None:
        return last + 1
    starts = [e.hour for e in ledger.entries(kind=Kind.EVENT) if e.code == "portfolio_start"]
    return int(starts[0]) if starts and starts[0] is not None else None


def _action_row(e: Entry) -> dict[str, Any]:
    p = e.payload
    row = {
        "seq": int(e.seq),
        "action": str(e.code),
        "reason": p.get("reason"),
        "actor": p.get("actor"),
        "recorded_utc": e.recorded_utc,
    }
    if e.code == "set_ceiling":
        row["ceiling"] = (p.get("params") or {}).get("ceiling")
    return row


def _ceiling_fields(ledger: Ledger, param: float | None, equity: float | None, config: Any) -> dict[str, Any]:
    """The status's capital-ceiling fields (see :class:`LiveStatus`); ``config``: a LiveConfig or None."""
    from live_bridge.ceiling import applied_ceilings, ceiling_text, param_text

    out: dict[str, Any] = {}
    applied = applied_ceilings(ledger)
    last = applied[-1] if applied else None
    pend = [e for e in ledger.pending_operator_actions() if e.code == "set_ceiling"]
    if pend:
        out["pending_ceiling"] = (pend[-1].payload.get("params") or {}).get("ceiling")
    if last is not None:
        out["ceiling_set"] = {
            "seq": last.seq,
            "action_seq": last.action_seq,
            "hour": last.hour,
            "old": ceiling_text(last.old),
            "new": ceiling_text(last.new),
        }
        out["ceiling_source"] = f"set_ceiling seq {last.action_seq} (applied at {hour_utc(last.hour)})"
    elif param is not None:
        out["ceiling_source"] = "config"
    if config is not None:
        cc = config.capital_ceiling
        out["config_ceiling"] = ceiling_text(cc)
        if last is not None and cc != last.new:
            out["ceiling_warning"] = (
                f"the live config's capital_ceiling ({ceiling_text(cc)}) differs from the ledger's "
                f"set_ceiling ({ceiling_text(last.new)}, seq {last.action_seq}): the ledger's is in force; "
                "edit the config to match, or kq live set-ceiling"
            )
    if param is not None:
        out["capital_ceiling"] = param_text(param)
        if equity is not None and math.isfinite(equity):
            out["cap_base"] = _dec(min(equity, param))
    return out


def _intent_row(e: Entry) -> dict[str, Any]:
    return {
        "seq": int(e.seq),
        "hour": e.hour,
        "cl_ord_id": e.cl_ord_id,
        "pair": e.pair,
        "side": e.side,
        "qty": e.qty,
        "price": e.price,
        "order_type": e.code,
    }


def status(ledger: Ledger, config: Any = None) -> LiveStatus:
    """The portfolio from the ledger alone (see :class:`LiveStatus`); nothing is written. ``config``
    (the daemon's LiveConfig, optional): its ``capital_ceiling`` is shown, and a warning when it
    differs from the ledger's newest applied ``set_ceiling`` (which is in force)."""
    from engine.risk.enums import KillReason, TradingState
    from engine.risk.machine import RiskMachine
    from live_bridge.shadow import shadow_summary

    head_seq, _ = ledger.head()
    last = ledger.last_completed_hour()
    nxt = _next_hour(ledger, last)
    ends = ledger.entries(kind=Kind.CYCLE_END)
    end = ends[-1] if ends else None
    latch = [str(x) for x in (end.payload.get("latch_next", []) if end is not None else [])]
    last_cycle = None if end is None else {"hour": end.hour, "status": end.code, "seq": int(end.seq)}
    pending = [_action_row(e) for e in ledger.pending_operator_actions()]
    intents = [_intent_row(e) for e in ledger.open_intents()]
    model_id = manifest = None
    model_hour = None
    if last is not None:
        rows = ledger.entries(hour=last, kind=Kind.MODEL)
        if rows:
            model_id, manifest, model_hour = rows[-1].code, rows[-1].digest, last
    common: dict[str, Any] = dict(
        ledger=ledger.dsn,
        head_seq=int(head_seq),
        last_completed=last,
        next_hour=nxt,
        last_cycle=last_cycle,
        latch_next=latch,
        model_id=model_id,
        manifest_sha256=manifest,
        model_hour=model_hour,
        pending_actions=pending,
        open_intents=intents,
        shadow=shadow_summary(ledger),
    )
    snap = ledger.last_risk_snapshot("after")
    if snap is None or snap.blob is None:
        return LiveStatus(
            portfolio=False,
            state=None,
            tier=None,
            halted=False,
            kill_switch=False,
            paused=False,
            kill_reason=None,
            snapshot_hour=None,
            snapshot_seq=None,
            init_cash=None,
            equity=None,
            cash=None,
            peak=None,
            drawdown=None,
            exposure=None,
            exposure_frac=None,
            **common,
            **_ceiling_fields(ledger, None, None, config),
        )
    m = RiskMachine.restore(snap.blob)  # the snapshot's own parameters: a read, not a restart
    st = m.state[0]
    equity, expo = float(st["equity"]), float(st["exposure"])
    positions = []
    for j, pair in enumerate(m.pairs):
        p = m.positions[j]
        q = float(p["qty"])
        if q <= 0.0:
            continue
        mark = float(p["mark"])
        positions.append(
            Position(
                pair=pair,
                qty=exact_decimal(q),
                entry_price=_dec(p["entry_price"]),
                stop=_dec(p["stop"]),
                take_profit=_dec(p["take_profit"]),
                entry_hour=int(p["entry_bar"]),
                mark=_dec(mark),
                value=_dec(q * mark),
            )
        )
    kr = int(st["kill_reason"])
    ic = snap.payload.get("init_cash")
    return LiveStatus(
        portfolio=True,
        state=TradingState(int(st["trading_state"])).name,
        tier=int(st["tier"]),
        halted=bool(int(st["halted"])),
        kill_switch=kr != 0,
        paused=bool(int(st["paused"])),
        kill_reason=KillReason(kr).name,
        snapshot_hour=snap.hour,
        snapshot_seq=int(snap.seq),
        init_cash=None if ic is None else Decimal(ic),
        equity=_dec(equity),
        cash=_dec(st["cash"]),
        peak=_dec(st["peak"]),
        drawdown=_dec(st["drawdown"]),
        exposure=_dec(expo),
        exposure_frac=_dec(expo / equity) if equity > 0 else None,
        positions=positions,
        **common,
        **_ceiling_fields(ledger, float(m.params[0]["capital_ceiling"]), equity, config),
    )


@dataclass(frozen=True)
class Request:
    """An operator action written to the ledger: its row, the hour whose close applies it, what the
    operator was shown, and warnings (e.g. a trigger still asked for: the switch latches again)."""

    entry: Entry
    action: str
    apply_hour: int | None
    seen: LiveStatus
    warnings: list[str] = field(default_factory=list)


def _apply_hour(ledger: Ledger, nxt: int | None) -> int | None:
    """The hour whose close reads pending actions: the next hour, unless its inputs are already
    ledgered (a cycle interrupted after its input batch re-runs on those inputs), then the one after."""
    if nxt is None:
        return None
    committed = any(e.code == "risk_inputs" for e in ledger.entries(hour=nxt, kind=Kind.EVENT))
    return nxt + 1 if committed else nxt


def _pct(d: Decimal | None) -> str:
    return "n/a" if d is None else f"{float(d) * 100:.2f}%"


def nothing_to_reset(action: str, s: LiveStatus) -> str | None:
    """Why ``action`` has nothing to reset in ``s`` (a one-line refusal), or None."""
    if not s.portfolio:
        return f"nothing to {CONFIRM_WORDS[action]}: the ledger holds no completed hour yet"
    if action == "reactivate" and not s.kill_switch:
        asked = f"; the next bar is asked to latch it ({s.latch_next[0]})" if s.latch_next else ""
        return f"the kill switch is not latched (state {s.state} at {hour_utc(s.snapshot_hour)}){asked}"
    if action == "reset_halt" and not s.halted:
        return (
            f"the drawdown halt is not latched (state {s.state}, drawdown {_pct(s.drawdown)} "
            f"from peak {s.peak} at {hour_utc(s.snapshot_hour)})"
        )
    if action == "pause" and s.paused:
        return f"trading is already paused (state {s.state} at {hour_utc(s.snapshot_hour)})"
    if action == "resume" and not s.paused:
        return f"trading is not paused (state {s.state} at {hour_utc(s.snapshot_hour)})"
    if action == "flatten" and not s.positions:
        return f"no open position to flatten (state {s.state} at {hour_utc(s.snapshot_hour)})"
    return None


def same_ceiling(new: Decimal | None, s: LiveStatus) -> str | None:
    """Why a ``set_ceiling`` to ``new`` (None: off) changes nothing in ``s`` (one line), or None."""
    cur = s.capital_ceiling
    if cur is None:
        return None
    same = (cur == "inf") if new is None else (cur != "inf" and Decimal(cur) == new)
    if not same:
        return None
    return f"the capital ceiling is already {'off' if new is None else cur} (at {hour_utc(s.snapshot_hour)})"


def request(
    ledger: Ledger,
    action: str,
    reason: str,
    actor: str,
    confirmation: str,
    *,
    force: bool = False,
) -> Request:
    """Append one ``operator_action`` row for ``action`` ("reactivate", "reset_halt", "pause",
    "resume" or "flatten"), applied by the daemon at the next bar close. Refused with InputError,
    nothing written: a confirmation other than the action's word (:data:`CONFIRM_WORDS`), an empty
    reason or actor, nothing to do (the kill switch / the halt not latched, already paused, not
    paused, no position to flatten) or the same action already pending, unless ``force``. The row's
    ``params.seen`` records what the operator was shown (state, kill reason, pause, positions,
    drawdown, peak, the snapshot's hour and seq)."""
    word = CONFIRM_WORDS.get(action)
    if action == "set_ceiling":
        raise InputError("set_ceiling carries a value: use request_ceiling (kq live set-ceiling)")
    if word is None:
        supported = ", ".join(CONFIRM_WORDS)
        raise InputError(f"operator action {action!r} is not supported by this command (supported: {supported})")
    if not isinstance(confirmation, str) or confirmation.strip() != word:
        raise InputError(f"confirmation {str(confirmation)[:40]!r} is not {word!r}: nothing written")
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("--reason is empty: say why (it is ledgered with the action)")
    if not isinstance(actor, str) or not actor.strip():
        raise InputError("no operator name: set KQ_OPERATOR")
    s = status(ledger)
    if not force:
        why = nothing_to_reset(action, s)
        if why is not None:
            raise InputError(f"{why}: nothing written (--force writes it anyway)")
        dup = [a for a in s.pending_actions if a["action"] == action]
        if dup:
            raise InputError(
                f"a {word} is already pending (seq {dup[0]['seq']}, by {dup[0]['actor']}): nothing written "
                "(--force writes another)"
            )
    seen: dict[str, Any] = {
        "state": s.state,
        "kill_reason": s.kill_reason,
        "paused": s.paused,
        "positions": [p.pair for p in s.positions],
        "drawdown": s.drawdown,
        "peak": s.peak,
        "equity": s.equity,
        "snapshot_hour": s.snapshot_hour,
        "snapshot_seq": s.snapshot_seq,
        "forced": bool(force),
    }
    (e,) = ledger.append(rec.operator_action(action, reason.strip(), actor.strip(), word, params={"seen": seen}))
    warnings = []
    if action == "reactivate" and s.latch_next:
        warnings.append(
            f"the last cycle asked the kill switch for the next bar ({s.latch_next[0]}): "
            "unless that cause is gone, the switch latches again at once"
        )
    return Request(entry=e, action=action, apply_hour=_apply_hour(ledger, s.next_hour), seen=s, warnings=warnings)


def _check_request(action: str, reason: str, actor: str, confirmation: str) -> str:
    word = CONFIRM_WORDS[action]
    if not isinstance(confirmation, str) or confirmation.strip() != word:
        raise InputError(f"confirmation {str(confirmation)[:40]!r} is not {word!r}: nothing written")
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("--reason is empty: say why (it is ledgered with the action)")
    if not isinstance(actor, str) or not actor.strip():
        raise InputError("no operator name: set KQ_OPERATOR")
    return word


def request_ceiling(
    ledger: Ledger,
    to: str,
    reason: str,
    actor: str,
    confirmation: str,
    *,
    force: bool = False,
) -> Request:
    """Append one ``set_ceiling`` ``operator_action`` (``params.ceiling``: the new capital ceiling
    as an exact decimal string in quote currency, or ``"off"``), applied by the daemon at the next
    bar close (``Cycle._operator``; live_bridge/ceiling.py). Lowering and raising alike. Refused
    with InputError, nothing written: ``to`` not a positive number nor ``off``, a confirmation
    other than ``set-ceiling``, an empty reason or actor, and unless ``force``: no portfolio yet,
    the same value as the ceiling in force, or a set_ceiling already pending."""
    from live_bridge.ceiling import ceiling_text, parse_ceiling

    new = parse_ceiling(to)
    word = _check_request("set_ceiling", reason, actor, confirmation)
    s = status(ledger)
    if not force:
        why = nothing_to_reset("set_ceiling", s) or same_ceiling(new, s)
        if why is not None:
            raise InputError(f"{why}: nothing written (--force writes it anyway)")
        dup = [a for a in s.pending_actions if a["action"] == "set_ceiling"]
        if dup:
            raise InputError(
                f"a set-ceiling to {dup[0].get('ceiling')} is already pending (seq {dup[0]['seq']}, by "
                f"{dup[0]['actor']}): nothing written (--force writes another; the newest wins)"
            )
    seen: dict[str, Any] = {
        "state": s.state,
        "capital_ceiling": s.capital_ceiling,
        "equity": s.equity,
        "cap_base": s.cap_base,
        "snapshot_hour": s.snapshot_hour,
        "snapshot_seq": s.snapshot_seq,
        "forced": bool(force),
    }
    params = {"ceiling": ceiling_text(new), "seen": seen}
    (e,) = ledger.append(rec.operator_action("set_ceiling", reason.strip(), actor.strip(), word, params=params))
    return Request(entry=e, action="set_ceiling", apply_hour=_apply_hour(ledger, s.next_hour), seen=s)
