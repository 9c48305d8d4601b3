"""Replay an hour of the daemon from its ledger alone (issue 16; ``kq replay``).

The cycle (:mod:`live_bridge.cycle`) ledgers, for each completed hour ``h``, everything its risk
step used and did: the machine's snapshot ``before`` (``RiskMachine.snapshot()`` bytes), the exact
``on_bar`` arguments (``bars`` rows with each pair's risk record, ``prediction`` rows, the
``risk_inputs`` flags), the ``decision`` rows of the result, every fill as the exchange reported
it, and the snapshot ``after`` whose ``journal`` lists, in order, every machine call made after
``on_bar`` (``fill`` / ``unexpected`` with the fill's trade id, ``cancel``, ``finish_bar``).

:func:`replay_hour` rebuilds that hour with no network, no exchange, no market store and no model:

1. the ledger's hash chain is verified first (a row edited after the fact is reported, never
   replayed: the report names the first broken seq);
2. the machine is restored from the ``before`` bytes alone (its parameters and instrument rules
   are the snapshot's), and the ``before`` must equal the previous hour's ``after`` (no state
   entered the machine between two closes; only Kraken's instrument rules, which the daemon takes
   fresh at each restore, may differ, and that is noted in the details);
3. an operator's ``set_ceiling`` applied at that close (its ``operator_applied`` row, in the input
   batch) sets the machine's capital ceiling first (:func:`live_bridge.ceiling.apply_ledgered`,
   as the cycle does); then ``on_bar`` runs on the decoded arguments (:func:`live_bridge.cycle.recorded_inputs`, the
   decoding a crash re-run uses); its decision rows (:func:`live_bridge.cycle.decision_records`,
   the cycle's own formatter) must equal the ledgered ones: codes, pairs, sides, quantities and
   prices as exact Decimal strings, and payloads;
4. the journal is applied (fills from the ledger's fill rows by trade id, as the cycle booked
   them), ``finish_bar`` where the close waited for fills (its decisions compared the same way);
5. the machine's snapshot must equal the ledgered ``after`` bytes. On a difference both snapshots
   are decoded and the first differing record field is named with both values, e.g.
   ``positions[BTC/USD].qty: replayed 0.0123 != ledger 0.0124``.

:func:`replay_window` does this for every hour of a window (one chain verification);
:func:`manifest` lists everything an hour used, with hashes, for an auditor to check piece by piece.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.timeutil import HOUR
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger.canonical import canonical_decimal

__all__ = ["ReplayResult", "WindowSummary", "hour_label", "manifest", "replay_hour", "replay_window"]

_PER_PAIR = ("instruments", "positions", "pending", "bar", "pred", "tradable")


def hour_label(hour: int) -> str:
    return datetime.fromtimestamp(int(hour) * HOUR, UTC).strftime("%Y-%m-%dT%H:00Z")


@dataclass(frozen=True)
class ReplayResult:
    """One hour's replay. ``ok``: the decisions and the snapshot after were reproduced exactly.
    ``first_diff``: the first difference (or why the hour was not replayed), None when ok.
    ``replayed``: False when the hour could not be replayed at all (a broken chain, missing rows).
    ``details``: what was compared (counts, digests, the chain head)."""

    ok: bool
    hour: int
    first_diff: str | None
    details: dict[str, Any] = field(default_factory=dict)
    replayed: bool = True

    @property
    def status(self) -> str:
        return "reproduced" if self.ok else ("differs" if self.replayed else "not replayed")

    def line(self) -> str:
        if self.ok:
            d = self.details
            return (
                f"{hour_label(self.hour)}: reproduced ({d.get('decisions', 0)} decisions, "
                f"{d.get('journal', 0)} journal calls, snapshot after {str(d.get('after_digest', ''))[:16]})"
            )
        return f"{hour_label(self.hour)}: {self.status}: {self.first_diff}"


@dataclass(frozen=True)
class WindowSummary:
    start_hour: int
    end_hour: int
    results: list[ReplayResult]
    skipped: list[int]  # hours of the window without a completed cycle in the ledger
    chain: str  # the chain verification message

    @property
    def replayed(self) -> int:
        return sum(1 for r in self.results if r.replayed)

    @property
    def reproduced(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def first_failure(self) -> ReplayResult | None:
        return next((r for r in self.results if not r.ok), None)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)


class _Differs(Exception):
    def __init__(self, what: str, replayed: bool = True) -> None:
        super().__init__(what)
        self.what = what
        self.replayed = replayed


# ---- formatting ------------------------------------------------------------------------------------


def _dec_text(d: Decimal | None) -> str:
    return "none" if d is None else canonical_decimal(d)


def _val(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _ne(where: str, mine: Any, theirs: Any) -> str:
    return f"{where}: replayed {mine} != ledger {theirs}"


# ---- the ledger rows of an hour ------------------------------------------------------------------


def _completed(rows: Sequence[Entry]) -> bool:
    return any(e.kind == Kind.CYCLE_END and e.code == "completed" for e in rows)


def _snapshots(rows: Sequence[Entry], hour: int) -> tuple[Entry, Entry, Entry]:
    """(risk_inputs event, before snapshot of that batch, after snapshot) of a completed hour."""
    flags = [e for e in rows if e.kind == Kind.EVENT and e.code == "risk_inputs"]
    if not flags:
        raise _Differs(f"hour {hour_label(hour)} completed without a risk_inputs event: not replayable", False)
    f = flags[-1]
    before = [e for e in rows if e.kind == Kind.RISK_SNAPSHOT and e.code == "before" and e.seq < f.seq]
    after = [e for e in rows if e.kind == Kind.RISK_SNAPSHOT and e.code == "after"]
    if not before or before[-1].blob is None:
        raise _Differs(f"hour {hour_label(hour)}: no snapshot before its inputs: not replayable", False)
    if not after or after[-1].blob is None:
        raise _Differs(f"hour {hour_label(hour)}: no snapshot after: not replayable", False)
    if "journal" not in after[-1].payload:
        raise _Differs(
            f"hour {hour_label(hour)}: the snapshot after (seq {after[-1].seq}) has no journal of machine calls "
            "(written by a daemon before replay existed): not replayable",
            False,
        )
    return f, before[-1], after[-1]


def _fill_index(ledger: Ledger) -> dict[str, Entry]:
    return {str(e.trade_id): e for e in ledger.entries(kind=Kind.FILL) if e.trade_id is not None}


# ---- comparisons -----------------------------------------------------------------------------------


def _compare_decisions(mine: Sequence[Any], ledgered: Sequence[Entry], tag: str) -> str | None:
    """The first difference between the replayed decision records and the ledgered rows."""
    for i, (r, e) in enumerate(zip(mine, ledgered, strict=False)):
        where = f"decision[{tag}][{i}] {e.code}" + (f" {e.pair}" if e.pair else "")
        for col in ("code", "pair", "side"):
            if getattr(r, col) != getattr(e, col):
                return _ne(f"{where} {col}", getattr(r, col), getattr(e, col))
        for col in ("qty", "price"):
            a, b = _dec_text(getattr(r, col)), _dec_text(getattr(e, col))
            if a != b:
                return _ne(f"{where} {col}", a, b)
        pm = json.loads(r.payload)
        for k in sorted(set(pm) | set(e.payload)):
            if pm.get(k) != e.payload.get(k):
                return _ne(f"{where} payload.{k}", pm.get(k), e.payload.get(k))
    if len(mine) != len(ledgered):
        n = min(len(mine), len(ledgered))
        if len(mine) > n:
            x = mine[n]
            extra = f"first extra replayed: {x.code}" + (f" {x.pair}" if x.pair else "")
        else:
            y = ledgered[n]
            extra = f"first missing: {y.code}" + (f" {y.pair}" if y.pair else "") + f" (seq {y.seq})"
        return f"decision[{tag}]: replayed {len(mine)} rows != ledger {len(ledgered)} rows; {extra}"
    return None


def _labels(name: str, a: np.ndarray, pairs: Sequence[str]) -> list[str]:
    if a.ndim == 1 and name in _PER_PAIR and len(a) == len(pairs):
        return [f"[{p}]" for p in pairs]
    if a.ndim == 1 and a.dtype.names is not None and len(a) == 1:
        return [""]
    if name == "refusals":
        from engine.risk.enums import Reason

        known = {int(r) for r in Reason}
        return [f"[{Reason(i).name}]" if i in known else f"[{i}]" for i in range(len(a))]
    return [f"[{i}]" for i in range(len(a))]


def snapshot_diff(mine: bytes, theirs: bytes, ignore: Sequence[str] = ()) -> str | None:
    """None when the two snapshots are the same bytes; else the first differing record field
    (``positions[BTC/USD].qty: replayed 0.0123 != ledger 0.0124``). Records named in ``ignore``
    are not compared (None if only they differ)."""
    from engine.risk.machine import RiskMachine, SnapshotError

    if mine == theirs:
        return None
    try:
        theirs_m = RiskMachine.restore(theirs)
    except SnapshotError as e:
        return f"snapshot after: the ledgered bytes do not restore: {e}"
    mine_m = RiskMachine.restore(mine)
    if mine_m.pairs != theirs_m.pairs:
        return _ne("snapshot after pairs", list(mine_m.pairs), list(theirs_m.pairs))
    ta = theirs_m._arrays()
    for name, a in mine_m._arrays().items():
        b = ta[name]
        if name in ignore:
            continue
        if a.dtype != b.dtype or a.shape != b.shape:
            return _ne(f"{name} layout", f"{a.dtype} {a.shape}", f"{b.dtype} {b.shape}")
        if np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes():
            continue
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        labels = _labels(name, a, mine_m.pairs) if a.ndim == 1 else [f"[{i}]" for i in range(flat_a.size)]
        for lab, x, y in zip(labels, flat_a, flat_b, strict=True):
            if np.asarray(x).tobytes() == np.asarray(y).tobytes():
                continue
            if a.dtype.names:
                for f in a.dtype.names:
                    if np.asarray(x[f]).tobytes() != np.asarray(y[f]).tobytes():
                        return _ne(f"{name}{lab}.{f}", _val(x[f]), _val(y[f]))
            return _ne(f"{name}{lab}", _val(x), _val(y))
    if ignore:
        return None
    return "snapshot after: the bytes differ outside the records (header or layout)"


# ---- one hour --------------------------------------------------------------------------------------


def _apply(m: Any, call: Sequence[Any], k: int, fills: dict[str, Entry]) -> None:
    """Apply one journal call as the cycle made it (``Cycle._book`` / ``on_cancel``)."""
    what = str(call[0]) if call else ""
    where = f"journal[{k}] {what}"
    try:
        if what in ("fill", "unexpected"):
            tid, how = str(call[1]), int(call[2])
            e = fills.get(tid)
            if e is None:
                raise _Differs(f"{where} {tid}: no fill with that trade id in the ledger", False)
            args = (str(e.pair), str(e.side), float(e.qty or 0), float(e.price or 0), float(e.fee or 0), how)
            (m.on_fill if what == "fill" else m.on_unexpected_fill)(*args)
        elif what == "cancel":
            m.on_cancel(str(call[1]))
        elif what == "finish_bar":
            raise _Differs(f"{where}: the ledger finished a close that the replayed machine had complete")
        else:
            raise _Differs(f"{where}: unknown journal call {list(call)!r}", False)
    except InputError as err:
        raise _Differs(
            f"{where} {' '.join(str(x) for x in call[1:])}: the replayed machine refused it ({err})"
        ) from None


def _previous_after(ledger: Ledger, hour: int) -> Entry | None:
    rows = [e for e in ledger.entries(hour=hour - 1, kind=Kind.RISK_SNAPSHOT) if e.code == "after"]
    return rows[-1] if rows else None


def _replay_rows(ledger: Ledger, hour: int, rows: list[Entry], fills: dict[str, Entry]) -> ReplayResult:
    from engine.risk.machine import RiskMachine, SnapshotError
    from live_bridge.cycle import decision_records, recorded_inputs

    details: dict[str, Any] = {"rows": len(rows)}
    try:
        flags, before, after = _snapshots(rows, hour)
        details.update(before_seq=before.seq, before_digest=before.digest, after_seq=after.seq)
        details.update(after_digest=after.digest)
        try:
            m = RiskMachine.restore(before.blob or b"")  # params and instruments: the snapshot's own
        except SnapshotError as e:
            raise _Differs(f"snapshot before (seq {before.seq}) does not restore: {e}", False) from None
        pairs = m.pairs
        if tuple(after.payload.get("pairs", pairs)) != pairs:
            raise _Differs(_ne("snapshot after payload pairs", list(pairs), after.payload.get("pairs")), False)
        prev = _previous_after(ledger, hour)
        if prev is not None and prev.blob is not None and prev.blob != before.blob:
            d = snapshot_diff(before.blob or b"", prev.blob, ignore=("instruments",))
            if d is not None:
                raise _Differs(f"snapshot before is not the previous hour's snapshot after: {d}")
            details["note"] = "Kraken's instrument rules changed since the previous hour"
        got = recorded_inputs(ledger, hour, pairs, rows=rows)
        if got is None:  # _snapshots found the event: cannot happen
            raise _Differs(f"hour {hour_label(hour)}: no recorded inputs", False)
        args, _ = got
        decisions = [e for e in rows if e.kind == Kind.DECISION]

        def ledgered(tag: str) -> list[Entry]:
            return [e for e in decisions if e.payload.get("tag") == tag]

        journal = [list(c) for c in after.payload.get("journal", [])]
        details["journal"] = len(journal)
        # an operator's set_ceiling applied at this close (in its input batch): the machine's
        # capital ceiling changes before on_bar, as the cycle did (live_bridge/ceiling.py)
        from live_bridge.ceiling import apply_ledgered, ceiling_text, param_text

        got_c = apply_ledgered(m, [e for e in rows if e.seq < flags.seq], hour)
        if got_c is not None:
            details["capital_ceiling"] = {
                "old": ceiling_text(got_c.old),
                "new": ceiling_text(got_c.new),
                "param": param_text(got_c.param),
            }
        res = m.on_bar(*args)
        n_dec = 0
        k0 = 0
        if not res.complete:
            mine = decision_records(hour, res, pairs, "carry")
            n_dec += len(mine)
            d = _compare_decisions(mine, ledgered("carry"), "carry")
            if d is not None:
                raise _Differs(d)
            stop = next((i for i, c in enumerate(journal) if c and c[0] == "finish_bar"), None)
            if stop is None:
                raise _Differs("the replayed close waits for fills but the ledger's journal never finishes it")
            for k in range(stop):
                _apply(m, journal[k], k, fills)
            try:
                res = m.finish_bar()
            except InputError as err:
                raise _Differs(f"journal[{stop}] finish_bar: the replayed machine refused it ({err})") from None
            k0 = stop + 1
        elif ledgered("carry"):
            raise _Differs(_ne("decision[carry]", "none (the close was complete)", f"{len(ledgered('carry'))} rows"))
        mine = decision_records(hour, res, pairs, "close")
        n_dec += len(mine)
        d = _compare_decisions(mine, ledgered("close"), "close")
        if d is not None:
            raise _Differs(d)
        details["decisions"] = n_dec
        for k in range(k0, len(journal)):
            _apply(m, journal[k], k, fills)
        d = snapshot_diff(m.snapshot(), after.blob or b"")
        if d is not None:
            raise _Differs(d)
    except _Differs as x:
        return ReplayResult(False, hour, x.what, details, replayed=x.replayed)
    return ReplayResult(True, hour, None, details)


def _chain_failure(ledger: Ledger, hour: int) -> ReplayResult | str:
    """The chain's verification message when it verifies, else the hour's not-replayed result."""
    rep = ledger.verify()
    if rep.ok:
        return rep.message
    return ReplayResult(
        False,
        hour,
        f"not replayed: {rep.message}",
        {"chain": rep.message, "broken_seq": rep.broken_seq, "field": rep.field},
        replayed=False,
    )


def _hour_rows(ledger: Ledger, hour: int) -> list[Entry]:
    rows = ledger.entries(hour=hour)
    if not _completed(rows):
        what = "nothing" if not rows else f"{len(rows)} rows but no completed cycle"
        raise InputError(f"hour {hour_label(hour)}: the ledger holds {what} for it: nothing to replay")
    return rows


def replay_hour(ledger: Ledger, hour: int, *, verify: bool = True) -> ReplayResult:
    """Replay the completed hour ``hour`` (unix seconds // 3600) from ``ledger`` alone (module
    docstring). The chain is verified first (``verify``): a broken chain is reported, not replayed.
    InputError: the ledger holds no completed cycle for that hour."""
    hour = int(hour)
    chain = "not verified"
    if verify:
        got = _chain_failure(ledger, hour)
        if isinstance(got, ReplayResult):
            return got
        chain = got
    rows = _hour_rows(ledger, hour)
    r = _replay_rows(ledger, hour, rows, _fill_index(ledger))
    r.details["chain"] = chain
    return r


def replay_window(
    ledger: Ledger,
    start_hour: int,
    end_hour: int,
    *,
    progress: Callable[[int, int, ReplayResult | None], None] | None = None,
) -> WindowSummary:
    """Replay every completed hour from ``start_hour`` through ``end_hour`` (inclusive); hours of
    the window without a completed cycle are listed as skipped. ``progress(done, total, result)``
    is called after each hour (result None for a skipped one). The chain is verified once first:
    a broken chain replays nothing (every hour is reported not replayed)."""
    start_hour, end_hour = int(start_hour), int(end_hour)
    if end_hour < start_hour:
        raise InputError(f"the window ends ({hour_label(end_hour)}) before it starts ({hour_label(start_hour)})")
    rep = ledger.verify()
    hours = list(range(start_hour, end_hour + 1))
    if not rep.ok:
        res = [
            ReplayResult(False, h, f"not replayed: {rep.message}", {"chain": rep.message}, replayed=False)
            for h in hours
        ]
        return WindowSummary(start_hour, end_hour, res, [], rep.message)
    fills = _fill_index(ledger)
    results: list[ReplayResult] = []
    skipped: list[int] = []
    for i, h in enumerate(hours):
        rows = ledger.entries(hour=h)
        r: ReplayResult | None = None
        if _completed(rows):
            r = _replay_rows(ledger, h, rows, fills)
            results.append(r)
        else:
            skipped.append(h)
        if progress is not None:
            progress(i + 1, len(hours), r)
    return WindowSummary(start_hour, end_hour, results, skipped, rep.message)


# ---- manifest --------------------------------------------------------------------------------------


def manifest(ledger: Ledger, hour: int, *, verify: bool = True) -> dict[str, Any]:
    """Everything hour ``hour`` used, with hashes, as a JSON-ready dict: the input bars of each
    pair (digest of the ledgered risk record, and the sha256 of the whole history window the
    features were computed from), the feature hash, the model id and bundle manifest digest, the
    predictions, the risk inputs, the code version, config and universe digests, the snapshots'
    digests, and the hour's ledger rows (seq range, the chain hash at its last row)."""
    hour = int(hour)
    rows = _hour_rows(ledger, hour)

    def one(kind: Kind, code: str | None = None) -> Entry | None:
        xs = [e for e in rows if e.kind == kind and (code is None or e.code == code)]
        return xs[-1] if xs else None

    start = one(Kind.CYCLE_START)
    feats = one(Kind.FEATURES)
    model = one(Kind.MODEL)
    flags = one(Kind.EVENT, "risk_inputs")
    before, after, end = one(Kind.RISK_SNAPSHOT, "before"), one(Kind.RISK_SNAPSHOT, "after"), one(Kind.CYCLE_END)
    bars = {}
    for e in rows:
        if e.kind == Kind.BARS and e.pair is not None:
            p = e.payload
            bars[e.pair] = {
                "digest": e.digest,
                "seq": e.seq,
                "window_sha256": p.get("window_sha256"),
                "window_start": p.get("window_start"),
                "window_bars": p.get("window_bars"),
                "tradable": p.get("tradable"),
                "warm": p.get("warm"),
                "bar": (p.get("bars") or [None])[0],
            }
    preds = {e.pair: e.payload.get("values") for e in rows if e.kind == Kind.PREDICTION and e.pair is not None}
    last = rows[-1]
    out: dict[str, Any] = {
        "hour": hour,
        "utc": hour_label(hour),
        "code_version": start.code if start else None,
        "config_digest": start.digest if start else None,
        "universe_sha256": start.payload.get("universe_sha256") if start else None,
        "pairs": start.payload.get("pairs") if start else None,
        "history_bars": start.payload.get("history_bars") if start else None,
        "bars": bars,
        "features": {
            "hash": feats.digest if feats else None,
            "n_features": feats.payload.get("n_features") if feats else None,
        },
        "model": {
            "id": model.code if model else None,
            "manifest_sha256": model.digest if model else None,
            "trade_horizon": model.payload.get("trade_horizon") if model else None,
        },
        "predictions": preds,
        "risk_inputs": None
        if flags is None
        else {k: flags.payload.get(k) for k in ("entry_block", "api_fault", "operator", "api_fault_reasons")},
        "snapshots": {
            "before": None if before is None else {"seq": before.seq, "sha256": before.digest},
            "after": None if after is None else {"seq": after.seq, "sha256": after.digest},
        },
        "fills": [
            {
                "trade_id": e.trade_id,
                "pair": e.pair,
                "side": e.side,
                "qty": _dec_text(e.qty),
                "price": _dec_text(e.price),
                "fee": _dec_text(e.fee),
                "seq": e.seq,
            }
            for e in rows
            if e.kind == Kind.FILL
        ],
        "cycle_end": None if end is None else {"status": end.code, "seq": end.seq},
        "ledger": {
            "first_seq": rows[0].seq,
            "last_seq": last.seq,
            "rows": len(rows),
            "head_hash": last.hash,  # the chain's hash at the hour's last row
        },
    }
    if verify:
        rep = ledger.verify()
        out["ledger"]["chain"] = rep.message
        out["ledger"]["chain_ok"] = rep.ok
    return out
