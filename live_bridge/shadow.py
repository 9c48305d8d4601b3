"""Shadow models (issue 17; docs/LIVE.md, "Shadow models"): a registered candidate predicts beside the
approved model every hour and a second :class:`~engine.risk.machine.RiskMachine` decides what it
would have done. Everything is ledgered; nothing is ever sent: this module never creates an
``order_intent`` row, never calls the exchange adapter and never touches the trading machine.

**What the shadow is fed.** After the primary cycle completed hour ``h`` (the daemon calls
:meth:`Shadow.catch_up`), the shadow reads the hour's ledgered ``on_bar`` arguments
(:func:`live_bridge.cycle.recorded_inputs`: bars with ATR, spread and cluster, the tradable mask,
the entry block, the API-fault input and the operator bits) and replaces the predictions with the
candidate's, computed on the SAME feature panel the primary used (the cycle's, kept from its data
step; after a restart recomputed from the store and checked against the hour's ledgered feature
hash). So the shadow follows the operator (a reactivate, reset-halt, pause, resume or flatten
applies to both) and the primary's kill-switch input; it does not follow a ``set_ceiling``: a
shadow run keeps the parameters it started with (``live_params`` of the engine config, the
live config's ``capital_ceiling`` and its starting cash). A candidate whose prediction fails gets
NaN predictions that hour (no entry, no signal exit; stops still run) and a ``shadow_failed`` row;
unlike the primary's, its failure does not raise the API-fault input.

**Fills.** The shadow machine runs ``on_bar(..., simulate_fills=True)``: the orders of its last
close execute in this bar by the backtester's fill model (at the open, market fallback at the
close), which is bit-identical to ``engine.backtest.runner.run_backtest`` over the same inputs
(tests/test_risk_machine.py). A shadow run over hours ``a..b`` is therefore exactly a backtest of
the candidate's ledgered predictions over the ledgered bars of those hours (tests/test_shadow.py).

**Ledger rows** (one append per shadow hour, so a crash leaves the hour whole or absent):

======================  ===========================================================================
row                     meaning
======================  ===========================================================================
event shadow_start      a shadow run begins (model, manifest, first hour, starting cash, params)
event shadow_prediction the candidate's prediction of a pair (values p_up, exp_return)
event shadow_decision   one of its decisions (``decision_records``: ORDER/STATE/events, tag close)
event shadow_fill       one simulated fill (side, qty, price, fee, notional, pnl, reason, how)
event shadow_failed     the shadow could not load, predict or step (stage, reason); trading goes on
risk_snapshot shadow    the shadow machine after the hour (restored from it on the next hour)
======================  ===========================================================================

A run starts at the first hour a shadow model is configured, with the primary's equity at the
close before (the portfolio's starting cash for its first hour), flat. It restarts (a new
``shadow_start``) when the model, its manifest, the pairs or the parameters change, or after a gap
of more than :data:`MAX_FILL_HOURS` hours; shorter gaps (hours the shadow failed to step) are
filled in order from the ledgered inputs. ``kq live shadow-report`` (:func:`shadow_report`)
compares the last run with what the primary did over the same hours.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, InputError, IntegrityError
from engine.timeutil import HOUR
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger import records as rec
from live_bridge.ledger.canonical import exact_decimal

__all__ = [
    "MAX_FILL_HOURS",
    "Shadow",
    "ShadowModel",
    "ShadowReport",
    "load_shadow",
    "make_shadow",
    "shadow_report",
    "shadow_summary",
]

log = logging.getLogger("live_bridge.shadow")

#: hours the shadow fills in after a gap (its own failures); a longer gap restarts the run
MAX_FILL_HOURS = 168
PHASE = "shadow"  # the risk_snapshot code of the shadow machine


@dataclass(frozen=True, eq=False)
class ShadowModel:
    """A registered candidate loaded for the shadow (the face of ``ApprovedModel``)."""

    model: str  # registry ref "NAME/VERSION"
    path: Path
    manifest_sha256: str
    bundle: Any  # research.bundle.ModelBundle
    tags: dict = field(default_factory=dict)

    def predict(self, features, panel, at: int | None = None):
        return self.bundle.predict(features, panel, at)


def load_shadow(ref: str, cfg: Any, tracking: Any, *, approved: Any = None) -> ShadowModel:
    """The registered candidate ``ref`` ("NAME/VERSION", any stage), checked: the registry knows it,
    its manifest verifies and every artifact's sha256 matches it (and the registry's
    ``manifest_sha256`` tag when set), it reads the current feature set and holds a model for each
    declared horizon. ``approved``: the approved model; the same ref or manifest is a ConfigError
    (a shadow of itself compares nothing)."""
    from engine.features.featureset import feature_names, feature_schema_sha256
    from research.bundle import load_bundle
    from research.lifecycle.gates import check_files, read_manifest
    from research.lifecycle.registry import resolve

    what = f"shadow model {ref}"
    if approved is not None and str(ref) == str(approved.model):
        raise ConfigError(f"{what} is the approved model itself: a shadow must be another candidate")
    cand = resolve(ref, tracking)
    path = Path(cand.path)
    man = read_manifest(path)
    probs = check_files(path, man)
    if probs:
        raise IntegrityError(f"{what}: {path}: {probs[0]}")
    digest = str(man["manifest_sha256"])
    tag = (cand.tags or {}).get("manifest_sha256")
    if tag and tag != digest:
        raise IntegrityError(f"{what}: the registry says manifest {tag[:16]}, the bundle is {digest[:16]}")
    if approved is not None and digest == str(approved.manifest_sha256):
        raise ConfigError(f"{what} is the approved model's bundle (manifest {digest[:16]}): nothing to compare")
    try:
        bundle = load_bundle(path)  # every file hashed again before any pickle is read
    except IntegrityError as e:
        raise IntegrityError(f"{what}: {e}") from None
    if bundle.manifest.get("manifest_sha256") != digest:
        raise IntegrityError(f"{what}: {path} changed while loading")
    want = feature_schema_sha256(cfg.features)
    if tuple(bundle.feature_names) != tuple(feature_names(cfg.features)) or bundle.feature_schema_sha256 != want:
        raise ConfigError(
            f"{what} reads features {bundle.feature_schema_sha256[:16]}, the current feature set is {want[:16]}"
        )
    if sorted(bundle.metas) != sorted(bundle.horizons) or bundle.trade_horizon not in bundle.horizons:
        raise IntegrityError(f"{what} does not hold a model for every declared horizon")
    return ShadowModel(ref, path, digest, bundle, dict(cand.tags or {}))


def make_shadow(daemon: Any, model: Any = None) -> Shadow | None:
    """The daemon's shadow from its config (``[shadow] model``), or None. ``model`` replaces the
    registry load (tests). A shadow that cannot run never keeps the daemon from starting (open
    positions must still be managed): the approved model named as its own shadow (say, after the
    candidate was promoted), a copy of its bundle, another feature set, an unreachable registry —
    each leaves the shadow unloaded, ledgered as ``shadow_failed`` with the reason every hour (and
    a warning alert), and the load is tried again each hour. ``kq doctor`` names it before a start."""
    live = daemon.live
    ref = live.shadow.model
    if not ref:
        return None
    approved = daemon.model

    def loader() -> Any:
        from research.lifecycle.registry import load_configs

        if str(ref) == str(approved.model):
            raise ConfigError(f"shadow.model {ref} is the approved model itself: name another candidate")
        _, tracking = load_configs(live.engine_path())
        return load_shadow(str(ref), daemon.cfg, tracking, approved=approved)

    sh = Shadow(daemon.cycle, str(ref), model=None, loader=loader)
    if model is not None:
        if str(ref) == str(approved.model):
            sh.loader, sh.load_error = None, f"shadow.model {ref} is the approved model itself: name another candidate"
        elif str(getattr(model, "manifest_sha256", "")) == str(approved.manifest_sha256):
            sh.loader, sh.load_error = None, f"shadow.model {ref} is the approved model's bundle: nothing to compare"
        else:
            sh.model = model
    else:
        try:
            sh.model = loader()
        except Exception as e:  # the primary trades regardless; the reason is ledgered each hour
            sh.load_error = _why(e)
    if sh.model is None:
        log.warning("%s: shadow model %s not loaded: %s", live.source or "live config", ref, sh.load_error)
    return sh


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _dec(x: float) -> Decimal | None:
    x = float(x)
    return exact_decimal(x) if np.isfinite(x) else None


def feature_hash(feats: Any) -> str:
    """The digest of a feature set's last row, as the cycle ledgers it (``features`` rows)."""
    fv = feats.values[-1]
    return hashlib.sha256(
        "|".join(feats.names).encode() + np.ascontiguousarray(fv).tobytes() + feats.valid[-1].tobytes()
    ).hexdigest()


def _params_digest(p: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest()


class Shadow:
    """The shadow of one daemon: ``cycle`` (its :class:`~live_bridge.cycle.Cycle`: ledger, store,
    pairs, config, the hour's feature panel) and the candidate ``ref``. ``model``: a loaded
    :class:`ShadowModel` (or anything with ``model``, ``manifest_sha256``, ``bundle.trade_horizon``
    and ``predict``); ``loader``: how to (re)load it when it is None."""

    def __init__(self, cycle: Any, ref: str, *, model: Any = None, loader: Any = None) -> None:
        self.cycle = cycle
        self.ref = str(ref)
        self.model = model
        self.loader = loader
        self.load_error = ""

    @property
    def ledger(self) -> Ledger:
        return self.cycle.ledger

    @property
    def pairs(self) -> tuple[str, ...]:
        return tuple(self.cycle.pairs)

    # ---- the hourly step -------------------------------------------------------------------------

    def after_hour(self, hour: int) -> list[Any]:
        """The daemon's hook once hour ``hour`` completed: :meth:`catch_up`, then one warning alert
        (kind ``shadow_failed``) per failure. Never raises."""
        from live_bridge.alerts import Alert

        notes = self.catch_up(hour)
        return [
            Alert(
                "warning", "shadow_failed", f"shadow model {self.ref}: {n}"[:1000], int(hour), None, {"model": self.ref}
            )
            for n in notes
        ]

    def catch_up(self, upto: int) -> list[str]:
        """Step every completed hour up to ``upto`` that the current shadow run lacks. Never raises:
        a failure is ledgered (``shadow_failed``) and returned as a reason (for an alert)."""
        notes: list[str] = []
        try:
            self._catch_up(int(upto), notes)
        except Exception as e:
            reason = _why(e)
            log.error("shadow %s, hour %s: %s", self.ref, upto, reason)
            notes.append(reason)
            self._failed(int(upto), "step", reason)
        return notes

    def _failed(self, hour: int, stage: str, reason: str) -> None:
        try:
            self.ledger.append(self._failed_row(hour, stage, reason))
        except Exception as e:  # the ledger refused even that: logged, the primary goes on
            log.error("shadow_failed row not written: %s", _why(e))

    def _failed_row(self, hour: int, stage: str, reason: str) -> rec.Record:
        return rec.event("shadow_failed", hour, payload={"model": self.ref, "stage": stage, "reason": reason[:500]})

    def _model(self, hour: int, notes: list[str]) -> Any:
        if self.model is None and self.loader is not None:
            try:
                self.model = self.loader()
                self.load_error = ""
            except Exception as e:
                self.load_error = _why(e)
        if self.model is None:
            reason = f"not loaded: {self.load_error or 'no loader'}"
            notes.append(reason)
            self._failed(hour, "load", reason)
        return self.model

    def _catch_up(self, upto: int, notes: list[str]) -> None:
        last = self.ledger.last_completed_hour()
        if last is None:
            return
        upto = min(upto, last)
        model = self._model(upto, notes)
        if model is None:
            return
        snap = self.ledger.last_risk_snapshot(PHASE)
        why = "first run"
        if snap is not None:
            run: dict[str, Any] = dict(snap.payload)
            done = int(snap.hour or 0)
            if run.get("model") != self.ref or run.get("manifest_sha256") != str(model.manifest_sha256):
                why = f"model changed (was {run.get('model')})"
            elif tuple(run.get("pairs", ())) != self.pairs:
                why = "pairs changed"
            elif run.get("params_sha256") != _params_digest(self._params(Decimal(run["init_cash"]))):
                why = "parameters changed"
            elif done >= upto:
                return  # stepped already
            elif upto - done > MAX_FILL_HOURS:
                why = f"gap of {upto - done} hours"
            else:
                for g in range(done + 1, upto + 1):  # oldest first; a gap is filled from the ledger
                    self._step(g, model, run, snap, None, notes)
                    snap = self.ledger.last_risk_snapshot(PHASE)
                return
        init_cash = self._start_cash(upto)
        params = self._params(init_cash)
        run = {
            "model": self.ref,
            "manifest_sha256": str(model.manifest_sha256),
            "first_hour": upto,
            "init_cash": init_cash,
            "pairs": list(self.pairs),
            "params_sha256": _params_digest(params),
        }
        start = rec.event("shadow_start", upto, payload={**run, "reason": why})
        self._step(upto, model, run, None, start, notes)

    def _params(self, init_cash: Decimal) -> np.ndarray:
        from live_bridge.cycle import live_params

        return live_params(self.cycle.cfg, init_cash, self.cycle.live.capital_ceiling)

    def _start_cash(self, hour: int) -> Decimal:
        """The primary's equity at the close before ``hour``; its starting cash at its first hour."""
        ends = [e for e in self.ledger.entries(hour - 1, Kind.CYCLE_END) if e.code == "completed"]
        if ends and ends[-1].payload.get("equity") is not None:
            return Decimal(ends[-1].payload["equity"])
        starts = [e for e in self.ledger.entries(kind=Kind.EVENT) if e.code == "portfolio_start"]
        if not starts:
            raise IntegrityError(f"hour {hour}: no portfolio_start in the ledger")
        return Decimal(starts[-1].payload["init_cash"])

    def _machine(self, run: dict, snap: Entry | None) -> Any:
        from engine.risk.machine import RiskMachine

        ins = self.cycle._instruments()
        if snap is None:
            return RiskMachine(self.pairs, self._params(Decimal(run["init_cash"])), ins)
        if snap.blob is None:
            raise IntegrityError(f"shadow snapshot at seq {snap.seq} has no bytes")
        return RiskMachine.restore(snap.blob, self._params(Decimal(run["init_cash"])), self.pairs, ins)

    def _features(self, hour: int, rows: Sequence[Entry]) -> tuple[Any, Any, str]:
        """(features, panel, hash) of ``hour``: the primary's, kept by its cycle, else recomputed
        from the store; checked against the hour's ledgered feature hash."""
        got = getattr(self.cycle, "last_features", None)
        if got is not None and int(got[0]) == hour:
            _, panel, feats = got
        else:
            from engine.features.featureset import build_features
            from engine.universe import universe_mask

            panel = self.cycle._panel(hour)
            feats = build_features(panel, self.cycle.cfg.features, universe_mask(panel, self.cycle.universe))
        fh = feature_hash(feats)
        ledgered = [e.digest for e in rows if e.kind == Kind.FEATURES]
        if not ledgered or ledgered[-1] != fh:
            raise IntegrityError(f"hour {hour}: the features differ from the ones the approved model was given")
        return feats, panel, fh

    def _predict(self, hour: int, rows: Sequence[Entry], model: Any) -> tuple[np.ndarray, list[rec.Record], str, Any]:
        """The candidate's predictions of ``hour`` (prediction_dt), their rows, a failure reason and
        the hour's panel (None when the prediction failed)."""
        from engine.risk.enums import prediction_dt

        m = len(self.pairs)
        pred = np.zeros(m, dtype=prediction_dt)
        pred["p_up"] = np.nan
        pred["exp_ret"] = np.nan
        panel = None
        try:
            feats, panel, fh = self._features(hour, rows)
            th = int(model.bundle.trade_horizon)
            p = model.predict(feats, panel, at=hour * HOUR)
            p = p[p["horizon"] == th]
            for pair, pu, er in zip(p["pair"], p["p_up"], p["exp_return"], strict=True):
                j = self.pairs.index(str(pair))
                pred[j]["p_up"], pred[j]["exp_ret"] = float(pu), float(er)
        except Exception as e:  # no prediction: no entry, no signal exit (stops still run)
            pred["p_up"] = np.nan
            pred["exp_ret"] = np.nan
            return pred, [], f"prediction failed: {_why(e)}", None
        out = []
        for j, pair in enumerate(self.pairs):
            if np.isfinite(pred[j]["p_up"]) and np.isfinite(pred[j]["exp_ret"]):
                values = {
                    "p_up": exact_decimal(float(pred[j]["p_up"])),
                    "exp_return": exact_decimal(float(pred[j]["exp_ret"])),
                }
                out.append(
                    rec.event(
                        "shadow_prediction",
                        hour,
                        pair,
                        payload={"model": self.ref, "values": values, "features_sha256": fh, "horizon": th},
                    )
                )
        return pred, out, "", panel

    def _select(self, panel: Any, pred: np.ndarray, bars: np.ndarray, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """``[strategy] enabled``: the candidate's P(up) through the regime selector on the hour's
        window, as the cycle's ``make_inputs`` puts the approved model's (only the last row carries a
        prediction there too; ``regime_thresholds = "model"``: the CANDIDATE's fitted regime rule, the
        one it would trade by): (the gated predictions, the bar's exits, ``bar_exit_dt``)."""
        from engine.risk.machine import exit_records
        from engine.strategy import apply_strategy, bar_exits
        from live_bridge.cycle import strategy_raw_regime

        n, m = panel.close.shape
        pu = np.full((n, m), np.nan)
        pu[-1] = pred["p_up"]
        raw = strategy_raw_regime(self.cycle.cfg, model, panel)
        sel = apply_strategy(panel.high, panel.close, panel.volume, panel.valid, pu, self.cycle.cfg, raw)
        bx = bar_exits(sel.rows(slice(-1, None)), panel.close[-1:], bars["atr"][None, :], panel.valid[-1:])
        out = pred.copy()
        out["p_up"] = sel.p_up_gated[-1]
        return out, exit_records(bx[0])

    def _step(
        self, hour: int, model: Any, run: dict, snap: Entry | None, start: rec.Record | None, notes: list[str]
    ) -> None:
        """One shadow hour: inputs from the ledger, the candidate's predictions, the shadow machine
        with simulated fills, every row in one append."""
        from live_bridge.cycle import decision_records, recorded_inputs

        rows = self.ledger.entries(hour=hour)
        got = recorded_inputs(self.ledger, hour, self.pairs, rows)
        if got is None:
            raise IntegrityError(f"hour {hour}: no ledgered inputs to shadow")
        (h, bars, _primary_pred, tradable, entry_block, api_fault, operator, _exits), _ = got
        pred, pred_rows, failure, panel = self._predict(hour, rows, model)
        exits = None
        if panel is not None and self.cycle.cfg.strategy.enabled:  # the approved model's rules, not raw P(up)
            pred, exits = self._select(panel, pred, bars, model)
        m = self._machine(run, snap)
        res = m.on_bar(h, bars, pred, tradable, entry_block, api_fault, operator, exits, simulate_fills=True)
        batch: list[rec.Record] = [start] if start is not None else []
        batch += pred_rows
        if failure:
            notes.append(f"hour {hour}: {failure}")
            batch.append(self._failed_row(hour, "predict", failure))
        for r in decision_records(hour, res, self.pairs, "close"):
            pl = json.loads(r.payload)
            batch.append(
                rec.event(
                    "shadow_decision",
                    hour,
                    r.pair,
                    payload={**pl, "code": r.code, "side": r.side, "qty": r.qty, "price": r.price},
                )
            )
        batch += self._fill_rows(hour, res.trades)
        st = m.state[0]
        from engine.risk.enums import TradingState

        batch.append(
            rec.risk_snapshot(
                hour,
                PHASE,
                m.snapshot(),
                payload={
                    **run,
                    "init_cash": Decimal(run["init_cash"]),
                    "equity": _dec(st["equity"]),
                    "cash": _dec(st["cash"]),
                    "state": TradingState(int(st["trading_state"])).name,
                    "n_positions": int(st["n_positions"]),
                },
            )
        )
        self.ledger.append(*batch)

    def _fill_rows(self, hour: int, trades: np.ndarray) -> list[rec.Record]:
        from engine.risk.enums import FillHow, Reason

        out = []
        for t in trades:
            out.append(
                rec.event(
                    "shadow_fill",
                    hour,
                    self.pairs[int(t["pair"])],
                    payload={
                        "side": "buy" if int(t["side"]) > 0 else "sell",
                        "qty": _dec(t["qty"]),
                        "price": _dec(t["price"]),
                        "notional": _dec(t["notional"]),
                        "fee": _dec(t["fee"]),
                        "pnl": _dec(t["pnl"]),
                        "cash_after": _dec(t["cash_after"]),
                        "reason": Reason(int(t["reason"])).name,
                        "how": FillHow(int(t["how"])).name,
                        "bar": int(t["bar"]),
                    },
                )
            )
        return out


# ---- reading the ledger: status line and report ----------------------------------------------------


def shadow_summary(ledger: Ledger) -> dict[str, Any] | None:
    """The shadow's last state from the ledger (its last snapshot), or None: model, manifest, first
    and last hour, equity, state, and the last ``shadow_failed`` reason after it, if any."""
    snap = ledger.last_risk_snapshot(PHASE)
    fails = [e for e in ledger.entries(kind=Kind.EVENT) if e.code == "shadow_failed"]
    last_fail = fails[-1] if fails and (snap is None or fails[-1].seq > snap.seq) else None
    if snap is None and last_fail is None:
        return None
    p = snap.payload if snap is not None else {}
    return {
        "model": p.get("model") or (last_fail.payload.get("model") if last_fail else None),
        "manifest_sha256": p.get("manifest_sha256"),
        "first_hour": p.get("first_hour"),
        "last_hour": None if snap is None else snap.hour,
        "init_cash": p.get("init_cash"),
        "equity": p.get("equity"),
        "state": p.get("state"),
        "failed": None
        if last_fail is None
        else {
            "hour": last_fail.hour,
            "stage": last_fail.payload.get("stage"),
            "reason": last_fail.payload.get("reason"),
        },
    }


@dataclass
class Side:
    """One side of the comparison over the covered hours."""

    equity_start: Decimal
    equity_end: Decimal
    buys: int = 0
    sells: int = 0
    fees: Decimal = Decimal(0)

    @property
    def pnl(self) -> Decimal:
        return self.equity_end - self.equity_start

    @property
    def return_pct(self) -> Decimal | None:
        return None if self.equity_start <= 0 else (self.pnl / self.equity_start * 100).quantize(Decimal("0.0001"))


@dataclass
class ShadowReport:
    model: str
    manifest_sha256: str
    approved: list[str]  # the approved model(s) of the covered hours (ledgered model rows)
    first_hour: int
    last_hour: int
    hours: int
    cells: int  # hours x pairs
    agree: int  # cells where both took the same entry and exit action
    entries: dict[str, int]  # both / neither / primary_only / shadow_only
    exits: dict[str, int]
    primary: Side
    shadow: Side
    failures: int  # shadow_failed rows of the run
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agreement_pct(self) -> Decimal:
        return Decimal(0) if not self.cells else (Decimal(self.agree) * 100 / self.cells).quantize(Decimal("0.01"))

    def to_json(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            d = {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(s).items()}
            d["pnl"] = str(s.pnl)
            d["return_pct"] = None if s.return_pct is None else str(s.return_pct)
            return d

        from live_bridge.operator import hour_utc

        return {
            "model": self.model,
            "manifest_sha256": self.manifest_sha256,
            "approved": self.approved,
            "first_hour": self.first_hour,
            "last_hour": self.last_hour,
            "first_hour_utc": hour_utc(self.first_hour),
            "last_hour_utc": hour_utc(self.last_hour),
            "hours": self.hours,
            "cells": self.cells,
            "agree": self.agree,
            "agreement_pct": str(self.agreement_pct),
            "entries": self.entries,
            "exits": self.exits,
            "primary": side(self.primary),
            "shadow": side(self.shadow),
            "failures": self.failures,
            "disagreements": self.disagreements,
        }

    def lines(self) -> list[str]:
        from live_bridge.operator import hour_utc

        def money(d: Decimal) -> str:
            return f"{float(d):,.2f}"

        def side(name: str, s: Side) -> str:
            r = "n/a" if s.return_pct is None else f"{s.return_pct}%"
            return (
                f"{name}: equity {money(s.equity_start)} -> {money(s.equity_end)}, PnL after fees {money(s.pnl)} "
                f"({r}); trades {s.buys} buys {s.sells} sells; fees {money(s.fees)}"
            )

        e, x = self.entries, self.exits
        return [
            f"kq live shadow-report: {self.model} (manifest {self.manifest_sha256[:16]}) beside "
            f"{', '.join(self.approved) or 'n/a'}",
            f"hours: {self.hours} ({hour_utc(self.first_hour)} .. {hour_utc(self.last_hour)}), "
            f"{len(self.disagreements)} disagreement(s), {self.failures} shadow failure(s)",
            f"agreement: {self.agreement_pct}% of {self.cells} hour x pair cells",
            f"entries: both {e['both']}, neither {e['neither']}, approved only {e['primary_only']}, "
            f"shadow only {e['shadow_only']}",
            f"exits: both {x['both']}, neither {x['neither']}, approved only {x['primary_only']}, "
            f"shadow only {x['shadow_only']}",
            side("approved (traded)", self.primary),
            side("shadow (hypothetical, never traded)", self.shadow),
        ]


def _actions(rows: Sequence[Entry], code_of: Any, side_of: Any) -> dict[tuple[int, str], set[str]]:
    """{(hour, pair): {"entry", "exit"}} of the ORDER decisions of a close (tag ``close``)."""
    out: dict[tuple[int, str], set[str]] = {}
    for e in rows:
        code = code_of(e)
        if not str(code).startswith("ORDER:") or e.payload.get("tag") != "close" or e.pair is None:
            continue
        out.setdefault((int(e.hour or 0), str(e.pair)), set()).add("entry" if side_of(e) == "buy" else "exit")
    return out


def shadow_report(ledger: Ledger) -> ShadowReport:
    """The last shadow run against the primary over the same hours (see :class:`ShadowReport`),
    from the ledger alone. InputError when the ledger holds no shadow run."""
    events = ledger.entries(kind=Kind.EVENT)
    starts = [e for e in events if e.code == "shadow_start"]
    if not starts:
        fails = [e for e in events if e.code == "shadow_failed"]
        hint = f" (the last shadow_failed: {fails[-1].payload.get('reason')})" if fails else ""
        raise InputError(f"no shadow run in the ledger {ledger.dsn}: is [shadow] model set in the daemon config?{hint}")
    start = starts[-1]
    run = start.payload
    mine = [e for e in events if e.seq > start.seq and str(e.code).startswith("shadow_")]
    states = [e for e in mine if e.code == "shadow_decision" and str(e.payload.get("code", "")).startswith("STATE:")]
    if not states:
        raise InputError(f"the shadow run of {run.get('model')} (seq {start.seq}) has no completed hour yet")
    hours = sorted({int(e.hour or 0) for e in states})
    first, last = int(run["first_hour"]), hours[-1]
    pairs = [str(p) for p in run.get("pairs", [])]
    covered = set(hours)
    # the primary over the same hours
    ends = {int(e.hour or 0): e for e in ledger.entries(kind=Kind.CYCLE_END) if e.code == "completed"}
    if last not in ends:
        raise IntegrityError(f"hour {last}: shadowed but not completed by the approved model")
    eq0 = Decimal(run["init_cash"])  # the primary's equity at the close before the first shadow hour
    p = Side(equity_start=eq0, equity_end=Decimal(ends[last].payload["equity"]))
    for f in ledger.entries(kind=Kind.FILL):
        if f.code == "own" and f.hour is not None and int(f.hour) in covered:
            p.buys += f.side == "buy"
            p.sells += f.side == "sell"
            p.fees += f.fee or Decimal(0)
    s = Side(equity_start=eq0, equity_end=Decimal(states[-1].payload["equity"]))
    for e in mine:
        if e.code == "shadow_fill":
            s.buys += e.payload.get("side") == "buy"
            s.sells += e.payload.get("side") == "sell"
            s.fees += Decimal(e.payload.get("fee") or 0)
    prim = _actions(
        [e for e in ledger.entries(kind=Kind.DECISION) if e.hour is not None and int(e.hour) in covered],
        lambda e: e.code,
        lambda e: e.side,
    )
    shad = _actions(
        [e for e in mine if e.code == "shadow_decision"],
        lambda e: e.payload.get("code"),
        lambda e: e.payload.get("side"),
    )
    entries: Counter[str] = Counter({"both": 0, "neither": 0, "primary_only": 0, "shadow_only": 0})
    exits: Counter[str] = Counter({"both": 0, "neither": 0, "primary_only": 0, "shadow_only": 0})
    agree = 0
    dis = []

    def kind(a: bool, b: bool) -> str:
        return "both" if a and b else "neither" if not (a or b) else "primary_only" if a else "shadow_only"

    for h in hours:
        for pair in pairs:
            pa, sa = prim.get((h, pair), set()), shad.get((h, pair), set())
            entries[kind("entry" in pa, "entry" in sa)] += 1
            exits[kind("exit" in pa, "exit" in sa)] += 1
            if pa == sa:
                agree += 1
            else:
                dis.append({"hour": h, "pair": pair, "approved": sorted(pa), "shadow": sorted(sa)})
    approved = sorted(
        {str(e.code) for e in ledger.entries(kind=Kind.MODEL) if e.hour is not None and int(e.hour) in covered}
    )
    return ShadowReport(
        model=str(run.get("model")),
        manifest_sha256=str(run.get("manifest_sha256")),
        approved=approved,
        first_hour=first,
        last_hour=last,
        hours=len(hours),
        cells=len(hours) * len(pairs),
        agree=agree,
        entries=dict(entries),
        exits=dict(exits),
        primary=p,
        shadow=s,
        failures=sum(1 for e in mine if e.code == "shadow_failed"),
        disagreements=dis,
    )
