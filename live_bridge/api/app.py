"""The dashboard API (issue 20; ``kq serve``; docs/DASHBOARD.md): a FastAPI app over a paper/live
ledger and the research outputs under a runs folder.

Read-only except ``POST /api/operator/{action}``, which calls :func:`live_bridge.operator.request`
(the CLI's path: typed confirmation, reason, nothing-to-reset refusals) and so lands one
``operator_action`` row in the ledger. Every route but ``GET /api/health`` needs the bearer token
(compared in constant time); no CORS middleware (same-origin only). Errors are one-line JSON
``{"detail": ...}``: 400 refused/bad input, 401 token, 404 not found, 422 malformed parameters, 503
the ledger cannot be read. The dashboard's static export is mounted at ``/`` when given.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import InputError, IntegrityError, KQError, one_line
from engine.timeutil import HOUR
from live_bridge.api import models as M
from live_bridge.api.runs import RUN_ID, clean, list_runs, read_run
from live_bridge.ledger import Entry, Kind, Ledger

__all__ = ["ApiError", "create_app"]

MAX_LIMIT = 5000
RUN_PATTERN = "^" + RUN_ID.pattern + "$"
#: an hour as the API takes it: the ledger's hour number, or an ISO date / time on the hour (UTC)
HOUR_HELP = "the ledger's hour (unix seconds // 3600) or an ISO time on the hour, UTC: 2022-06-02T05:00"
HOUR_PATTERN = r"^([0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:00(:00)?)?Z?)?)$"
ACTIONS = {"reactivate": "reactivate", "reset-halt": "reset_halt", "pause": "pause", "resume": "resume"}


class ApiError(Exception):
    """An error answered as ``{"detail": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message, 500)


def _utc(hour: int | None) -> str | None:
    if hour is None:
        return None
    return datetime.fromtimestamp(int(hour) * HOUR, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def _s(d: Any) -> str | None:
    return None if d is None else str(d)


class LedgerSource:
    """The ledger, opened once on first use (read-only: no migration) and re-opened after a failure.
    An absent SQLite file or an unreachable database is an ApiError 503, never a created file."""

    def __init__(self, dsn: str | None, schema: str | None = None) -> None:
        self.dsn, self.schema = dsn, schema
        self._led: Ledger | None = None
        self._lock = threading.Lock()

    def _open(self) -> Ledger:
        from live_bridge.ledger.migrate import redacted, resolve_url

        url = resolve_url(self.dsn)
        if url.get_backend_name() == "sqlite":
            db = str(url.database or "")
            if not db or db == ":memory:" or not FsPath(db).expanduser().is_file():
                raise ApiError(503, f"no ledger at {redacted(url)}")
        return Ledger.open(self.dsn, schema=self.schema, migrate=False)

    @contextmanager
    def get(self) -> Iterator[Ledger]:
        with self._lock:
            if self._led is None:
                self._led = self._open()
            led = self._led
        try:
            yield led
        except KQError as e:
            from live_bridge.ledger.migrate import LedgerError

            if isinstance(e, LedgerError):  # a lost connection: open afresh next time
                self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._led is not None:
                self._led.close()
                self._led = None


#: the last hour a UTC label exists for (9999-12-31 23:00)
MAX_API_HOUR = 253402297199 // HOUR


def _hour_param(value: str) -> int:
    """The ledger's hour integer, or an ISO time on the hour (``2022-06-02T05:00``); a value that is
    neither (``2022-13-01``) names no hour: 404."""
    v = value.strip()
    if v.isascii() and v.isdigit() and len(v) <= 12:
        h = int(v)
        if h > MAX_API_HOUR:  # beyond 9999-12-31: no UTC label, and no ledger holds such an hour
            raise ApiError(404, f"no hour {value[:40]!r}: beyond the year 9999")
        return h
    from engine.timeutil import parse_utc

    try:
        ts = parse_utc(v)
    except (InputError, ValueError, OverflowError, OSError):
        raise ApiError(404, f"no hour {value[:40]!r}: neither an hour number nor an ISO time") from None
    if ts is None or ts % HOUR or ts < 0:
        raise ApiError(404, f"no hour {value[:40]!r}: not on the hour (bars open at HH:00 UTC)")
    return ts // HOUR


def _page(items: list[Any], limit: int, offset: int) -> list[Any]:
    """The newest ``limit`` items after skipping ``offset`` newest ones, oldest first."""
    end = max(0, len(items) - offset)
    return items[max(0, end - limit) : end]


# ---- what each route computes (the ledger in, plain dicts out) --------------------------------------


def overview(led: Ledger) -> dict[str, Any]:
    from live_bridge.operator import status

    s = status(led)
    fills = led.entries(kind=Kind.FILL)
    fees = sum((f.fee or Decimal(0) for f in fills), Decimal(0))
    return {
        "ledger": s.ledger,
        "head_seq": s.head_seq,
        "portfolio": s.portfolio,
        "last_completed": s.last_completed,
        "last_completed_utc": _utc(s.last_completed),
        "next_hour": s.next_hour,
        "snapshot_hour": s.snapshot_hour,
        "snapshot_hour_utc": _utc(s.snapshot_hour),
        "snapshot_seq": s.snapshot_seq,
        "state": s.state,
        "tier": s.tier,
        "halted": s.halted,
        "kill_switch": s.kill_switch,
        "kill_reason": s.kill_reason,
        "paused": s.paused,
        "latch_next": s.latch_next,
        "init_cash": _s(s.init_cash),
        "equity": _s(s.equity),
        "cash": _s(s.cash),
        "peak": _s(s.peak),
        "drawdown": _s(s.drawdown),
        "exposure": _s(s.exposure),
        "exposure_frac": _s(s.exposure_frac),
        "n_positions": len(s.positions),
        "fills": len(fills),
        "fees": str(fees),
        "model_id": s.model_id,
        "manifest_sha256": s.manifest_sha256,
        "capital_ceiling": s.capital_ceiling,
        "cap_base": _s(s.cap_base),
        "pending_actions": [
            {k: a.get(k) for k in ("seq", "action", "reason", "actor", "recorded_utc")} for a in s.pending_actions
        ],
    }


def positions(led: Ledger) -> list[dict[str, Any]]:
    from live_bridge.operator import status

    out = []
    for p in status(led).positions:
        pnl = ret = None
        if p.mark is not None and p.entry_price is not None:
            pnl = p.qty * (p.mark - p.entry_price)
            if p.entry_price > 0:
                ret = p.mark / p.entry_price - 1
        out.append(
            {
                "pair": p.pair,
                "qty": str(p.qty),
                "entry_price": _s(p.entry_price),
                "entry_hour": p.entry_hour,
                "entry_hour_utc": _utc(p.entry_hour),
                "stop": _s(p.stop),
                "take_profit": _s(p.take_profit),
                "mark": _s(p.mark),
                "value": _s(p.value),
                "unrealised_pnl": _s(pnl),
                "unrealised_return": _s(ret),
            }
        )
    return out


def equity_curve(led: Ledger) -> list[dict[str, Any]]:
    """One point per completed hour: the cycle_end's equity/cash/state and the drawdown of the
    close's STATE decision."""
    dd: dict[int, Any] = {}
    for e in led.entries(kind=Kind.DECISION):
        if e.hour is not None and str(e.code).startswith("STATE:") and e.payload.get("tag") == "close":
            dd[int(e.hour)] = e.payload.get("drawdown")
    pts: dict[int, dict[str, Any]] = {}
    for e in led.entries(kind=Kind.CYCLE_END):
        if e.code != "completed" or e.hour is None:
            continue
        h = int(e.hour)
        p = e.payload
        pts[h] = {
            "hour": h,
            "hour_utc": _utc(h),
            "equity": _s(p.get("equity")),
            "cash": _s(p.get("cash")),
            "drawdown": _s(dd.get(h)),
            "state": p.get("state"),
        }
    return [pts[h] for h in sorted(pts)]


def _last_decision(led: Ledger, prefix: str) -> Entry | None:
    rows = [e for e in led.entries(kind=Kind.DECISION) if str(e.code).startswith(prefix)]
    return rows[-1] if rows else None


def risk(led: Ledger) -> dict[str, Any]:
    from live_bridge.operator import status

    s = status(led)
    kill: dict[str, Any] = {"latched": s.kill_switch, "reason": s.kill_reason if s.kill_switch else None}
    if s.kill_switch:
        e = _last_decision(led, "KILL:")
        if e is not None:
            kill.update(
                hour=e.hour, hour_utc=_utc(e.hour), recorded_utc=e.recorded_utc, trigger=str(e.code).split(":", 1)[1]
            )
    halt: dict[str, Any] = {"latched": s.halted, "reason": "drawdown halt" if s.halted else None}
    if s.halted:
        e = _last_decision(led, "TIER:HALT")
        if e is not None:
            halt.update(hour=e.hour, hour_utc=_utc(e.hour), recorded_utc=e.recorded_utc, trigger="HALT")
    return {
        "state": s.state,
        "tier": s.tier,
        "drawdown": _s(s.drawdown),
        "peak": _s(s.peak),
        "equity": _s(s.equity),
        "halted": s.halted,
        "halt": halt,
        "kill_switch": kill,
        "paused": s.paused,
        "latch_next": s.latch_next,
        "snapshot_hour": s.snapshot_hour,
        "snapshot_hour_utc": _utc(s.snapshot_hour),
    }


def predictions(led: Ledger, hour: int | None) -> dict[str, Any]:
    h = led.last_completed_hour() if hour is None else hour
    out: dict[str, Any] = {
        "hour": h,
        "hour_utc": _utc(h),
        "model_id": None,
        "manifest_sha256": None,
        "regime": None,
        "profile": None,
        "predictions": [],
    }
    if h is None:
        return out
    rows = led.entries(hour=h)
    if hour is not None and not rows:
        raise ApiError(404, f"the ledger holds nothing for hour {_utc(h)}")
    models = [e for e in rows if e.kind == Kind.MODEL]
    if models:
        out["model_id"], out["manifest_sha256"] = models[-1].code, models[-1].digest
    sel = _selections(rows)
    for e in rows:
        if e.kind != Kind.PREDICTION or e.pair is None:
            continue
        vals = {str(k): str(v) for k, v in (e.payload.get("values") or {}).items()}
        row = {"pair": e.pair, "model_id": e.code or out["model_id"], "values": vals, **sel.get(e.pair, {})}
        out["predictions"].append(row)
    for k in ("regime", "profile"):  # the hour's, when every selected pair agrees
        seen = {r[k] for r in sel.values() if r.get(k) is not None}
        out[k] = seen.pop() if len(seen) == 1 else ("mixed" if seen else None)
    return out


def _names(kind: str) -> tuple[str, ...]:
    try:  # the strategy layer (engine/strategy); without it the codes are shown as numbers
        from engine.strategy import PROFILE_NAMES, REGIME_NAMES
    except ImportError:  # pragma: no cover
        return ()
    return tuple(REGIME_NAMES if kind == "regime" else PROFILE_NAMES)


def _selections(rows: list[Entry]) -> dict[str, dict[str, Any]]:
    """{pair: {regime, profile, strategy_entry}} from the hour's strategy selection events
    (``strategy_<profile>_entry`` / ``_no_entry``, written by the cycle when ``[strategy]`` is
    enabled, for each pair whose P(up) passed the entry threshold)."""
    out: dict[str, dict[str, Any]] = {}
    for e in rows:
        code = str(e.code or "")
        if e.kind != Kind.EVENT or not code.startswith("strategy_") or e.pair is None:
            continue
        d: dict[str, Any] = {"strategy_entry": bool(e.payload.get("candidate"))}
        for k in ("regime", "profile"):
            v = e.payload.get(k)
            names = _names(k)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
                d[k] = str(names[v])
            else:
                d[k] = None if v is None else str(v)
        out[e.pair] = d
    return out


def _fill_row(e: Entry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "hour": e.hour,
        "hour_utc": _utc(e.hour),
        "recorded_utc": e.recorded_utc,
        "trade_id": e.trade_id,
        "cl_ord_id": e.cl_ord_id,
        "txid": e.txid,
        "pair": e.pair,
        "side": e.side,
        "qty": _s(e.qty),
        "price": _s(e.price),
        "fee": _s(e.fee),
        "cost": _s(e.cost),
        "origin": e.code,
    }


def fills(led: Ledger, limit: int, offset: int) -> dict[str, Any]:
    rows = led.entries(kind=Kind.FILL)
    zero = Decimal(0)
    buys = [f for f in rows if f.side == "buy"]
    sells = [f for f in rows if f.side == "sell"]

    def notional(xs: list[Entry]) -> Decimal:
        return sum(((f.qty or zero) * (f.price or zero) for f in xs), zero)

    totals = {
        "count": len(rows),
        "fees": str(sum((f.fee or zero for f in rows), zero)),
        "buys": len(buys),
        "sells": len(sells),
        "bought_notional": str(notional(buys)),
        "sold_notional": str(notional(sells)),
    }
    return {"totals": totals, "fills": [_fill_row(f) for f in _page(rows, limit, offset)], "total": len(rows)}


def orders(led: Ledger, limit: int, offset: int) -> dict[str, Any]:
    intents = led.entries(kind=Kind.ORDER_INTENT)
    finals = {e.cl_ord_id: e for e in led.entries(kind=Kind.ORDER_FINAL)}
    by_order: dict[str | None, list[Entry]] = {}
    for f in led.entries(kind=Kind.FILL):
        by_order.setdefault(f.cl_ord_id, []).append(f)
    out = []
    for e in _page(intents, limit, offset):
        fin = finals.get(e.cl_ord_id)
        fs = by_order.get(e.cl_ord_id, [])
        out.append(
            {
                "seq": e.seq,
                "hour": e.hour,
                "hour_utc": _utc(e.hour),
                "cl_ord_id": str(e.cl_ord_id),
                "pair": e.pair,
                "side": e.side,
                "qty": _s(e.qty),
                "limit_price": _s(e.price),
                "order_type": e.code,
                "outcome": None if fin is None else fin.code,
                "filled_qty": _s(fin.qty) if fin is not None and fin.qty is not None else None,
                "fills": len(fs),
                "fees": str(sum((f.fee or Decimal(0) for f in fs), Decimal(0))),
            }
        )
    return {"orders": out, "total": len(intents)}


def reconciliations(led: Ledger, limit: int) -> dict[str, Any]:
    rows = led.entries(kind=Kind.RECONCILIATION)
    out = [
        {
            "seq": e.seq,
            "hour": e.hour,
            "hour_utc": _utc(e.hour),
            "recorded_utc": e.recorded_utc,
            "status": str(e.code),
            "problems": [str(x) for x in (e.payload.get("problems") or [])],
            "payload": clean(e.payload),
        }
        for e in _page(rows, limit, 0)
    ]
    return {"reconciliations": out, "total": len(rows), "mismatches": sum(1 for e in rows if e.code == "mismatch")}


_KILL_WORDS = {
    "KILL_API": "API instability",
    "KILL_SPREAD": "spread anomaly",
    "KILL_VOLATILITY": "volatility spike",
    "KILL_DATA": "data integrity",
}
_EVENT_ALERTS = {  # event code -> (severity, kind); data_* events are data problems
    "reconcile_incomplete": ("warning", "reconcile_incomplete"),
    "model_failed": ("warning", "model_failed"),
    "cycle_failed": ("critical", "cycle_failed"),
    "retrain_started": ("info", "retrain_started"),
    "retrain_finished": ("info", "retrain_finished"),
    "retrain_failed": ("warning", "retrain_failed"),
    "order_unresolved": ("warning", "order_unresolved"),
    "shadow_failed": ("warning", "shadow_failed"),
    "external_order": ("warning", "external_order"),
    "external_balance_change": ("warning", "external_balance_change"),
}


def alerts(led: Ledger, limit: int) -> dict[str, Any]:
    """The alert events the daemon raises (live_bridge/alerts.py), read back from the ledger's rows:
    KILL/TIER/RESET decisions, reconciliation mismatches, a kill switch asked for the next bar
    (cycle_end ``latch_next``) and the events listed in :data:`_EVENT_ALERTS` (and ``data_*``)."""
    out: list[dict[str, Any]] = []

    def add(e: Entry, severity: str, kind: str, message: str) -> None:
        out.append(
            {
                "seq": e.seq,
                "ts": e.recorded_utc,
                "severity": severity,
                "kind": kind,
                "hour": e.hour,
                "hour_utc": _utc(e.hour),
                "pair": e.pair,
                "message": one_line(message, 1000),
            }
        )

    seen: set[tuple[Any, str, Any]] = set()
    kinds = (Kind.DECISION, Kind.RECONCILIATION, Kind.CYCLE_END, Kind.EVENT)  # not the bars and snapshots
    rows = sorted((e for k in kinds for e in led.entries(kind=k)), key=lambda e: e.seq)
    for e in rows:
        code = str(e.code or "")
        if e.kind == Kind.DECISION:
            ev, _, why = code.partition(":")
            if ev not in ("KILL", "TIER", "RESET") or (e.hour, code, e.pair) in seen:
                continue
            seen.add((e.hour, code, e.pair))
            v = e.payload.get("value")
            if ev == "KILL":
                add(e, "critical", "kill_switch", f"kill switch latched: {_KILL_WORDS.get(why, why)}")
            elif why == "HALT":
                add(e, "critical", "halt", f"drawdown halt latched at a drawdown of {v}")
            elif ev == "TIER":
                add(e, "warning", "tier_change", f"drawdown tier changed ({why}) at a drawdown of {v}")
            else:
                add(e, "info", "reset", f"operator reset applied: {why}")
        elif e.kind == Kind.RECONCILIATION and code == "mismatch":
            probs = "; ".join(str(x) for x in (e.payload.get("problems") or [])) or "see the ledger"
            add(e, "critical", "reconcile_mismatch", f"reconciliation mismatch: {probs}")
        elif e.kind == Kind.CYCLE_END and code == "completed" and e.payload.get("latch_next"):
            why = "; ".join(str(x) for x in e.payload["latch_next"])
            add(e, "critical", "kill_switch_requested", f"kill switch asked for the next bar: {why}")
        elif e.kind == Kind.EVENT and (code in _EVENT_ALERTS or code.startswith("data_")):
            sev, kind = _EVENT_ALERTS.get(code, ("warning", "data_problem"))
            p = e.payload
            msg = p.get("message") or p.get("reason") or p.get("detail") or code
            add(e, sev, kind, str(msg))
    return {"alerts": _page(out, limit, 0), "total": len(out)}


def operator_actions(led: Ledger) -> list[dict[str, Any]]:
    applied = {e.ref_seq: e for e in led.entries(kind=Kind.OPERATOR_APPLIED)}
    out = []
    for e in led.entries(kind=Kind.OPERATOR_ACTION):
        a = applied.get(e.seq)
        out.append(
            {
                "seq": e.seq,
                "action": str(e.code),
                "reason": e.payload.get("reason"),
                "actor": e.payload.get("actor"),
                "recorded_utc": e.recorded_utc,
                "outcome": "pending" if a is None else str(a.code),
                "applied_hour": None if a is None else a.hour,
                "applied_hour_utc": None if a is None else _utc(a.hour),
            }
        )
    return out


def shadow(led: Ledger) -> dict[str, Any]:
    try:
        from live_bridge.shadow import shadow_report
    except ImportError:  # pragma: no cover - the shadow module is part of the package
        raise ApiError(404, "no shadow configured") from None
    try:
        rep = shadow_report(led)
    except InputError as e:
        raise ApiError(404, f"no shadow configured: {e}") from None
    return clean(rep.to_json())


# ---- the app -----------------------------------------------------------------------------------------


def create_app(
    ledger_dsn: str | None,
    runs_dir: str | FsPath,
    token: str,
    static_dir: str | FsPath | None = None,
    *,
    schema: str | None = None,
    actor: str | None = None,
) -> FastAPI:
    """The API over the ledger at ``ledger_dsn`` (None: KQ_LEDGER_DSN, else data/ledger.sqlite;
    ``schema``: its PostgreSQL schema) and the runs under ``runs_dir``; ``token`` guards every
    route but the health check; ``actor`` (default: KQ_OPERATOR, else the OS user) is ledgered with
    operator actions; ``static_dir`` (the dashboard's export) is served at ``/`` if it exists."""
    if not isinstance(token, str) or len(token) < 16:
        raise InputError("the API token must be at least 16 characters (KQ_API_TOKEN)")
    want = token.encode("utf-8")
    src = LedgerSource(ledger_dsn, schema)
    runs_root = FsPath(runs_dir)
    bearer = HTTPBearer(auto_error=False, description="KQ_API_TOKEN of the server's environment")

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        got = (cred.credentials if cred is not None else "").encode("utf-8", "surrogateescape")
        if cred is None or cred.scheme.lower() != "bearer" or not hmac.compare_digest(got, want):
            raise ApiError(401, "missing or wrong bearer token")

    app = FastAPI(
        title="krakenquant dashboard API",
        version="1",
        description="Read-only view of a paper/live ledger and research outputs; operator actions "
        "go through the CLI's path (docs/DASHBOARD.md).",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ledger = src

    def answer(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": one_line(detail, 500)}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        hdr = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return answer(e.status, e.message, hdr)

    @app.exception_handler(KQError)
    async def _kq_error(_req: Request, e: KQError) -> JSONResponse:
        from live_bridge.ledger.migrate import LedgerError

        status = 503 if isinstance(e, (LedgerError, IntegrityError)) else 400
        return answer(status, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return answer(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        return answer(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.get("/api/health", response_model=M.Health, tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: no token needed, nothing read."""
        return {"status": "ok"}

    api = APIRouter(prefix="/api", dependencies=[Depends(auth)], responses={401: {"model": M.ErrorBody}})

    def read(fn: Callable[[Ledger], Any]) -> Any:
        with src.get() as led:
            return fn(led)

    err: dict[int | str, dict[str, Any]] = {c: {"model": M.ErrorBody} for c in (400, 404, 409, 422, 503)}
    lim = Query(500, ge=1, le=MAX_LIMIT, description="newest N rows")
    off = Query(0, ge=0, le=10**9, description="skip the newest N rows")

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @api.get("/overview", response_model=M.Overview, responses=err, tags=["portfolio"])
    def get_overview() -> Any:
        """Portfolio value, drawdown, tier, state, kill switch, fills and fees (docs/DASHBOARD.md)."""
        return read(overview)

    @api.get("/equity", response_model=M.EquityCurve, responses=err, tags=["portfolio"])
    def get_equity(limit: int = lim) -> Any:
        """The equity curve: one point per completed hour."""
        pts = read(equity_curve)
        return {"points": _page(pts, limit, 0), "total": len(pts)}

    @api.get("/positions", response_model=list[M.PositionOut], responses=err, tags=["portfolio"])
    def get_positions() -> Any:
        """Open positions with entry, stop, take-profit, mark and unrealised PnL."""
        return read(positions)

    @api.get("/risk", response_model=M.RiskOut, responses=err, tags=["portfolio"])
    def get_risk() -> Any:
        """Drawdown and its tier, the trading state, the kill-switch and halt latches."""
        return read(risk)

    @api.get("/predictions", response_model=M.Predictions, responses=err, tags=["model"])
    def get_predictions(
        hour: str | None = Query(None, pattern=HOUR_PATTERN, description="hour number or ISO time; default: last"),
    ) -> Any:
        """One hour's predictions per pair and model (default: the last completed hour)."""
        h = None if hour is None else _hour_param(hour)
        return read(lambda led: predictions(led, h))

    @api.get("/orders", response_model=M.Orders, responses=err, tags=["trading"])
    def get_orders(limit: int = lim, offset: int = off) -> Any:
        """Order intents with their outcome, fills and fees."""
        return read(lambda led: orders(led, limit, offset))

    @api.get("/fills", response_model=M.Fills, responses=err, tags=["trading"])
    def get_fills(limit: int = lim, offset: int = off) -> Any:
        """Fills with their fees, and totals."""
        return read(lambda led: fills(led, limit, offset))

    @api.get("/reconciliations", response_model=M.Reconciliations, responses=err, tags=["trading"])
    def get_reconciliations(limit: int = lim) -> Any:
        """Reconciliation results (ok / mismatch)."""
        return read(lambda led: reconciliations(led, limit))

    @api.get("/alerts", response_model=M.Alerts, responses=err, tags=["trading"])
    def get_alerts(limit: int = lim) -> Any:
        """Alert events read back from the ledger."""
        return read(lambda led: alerts(led, limit))

    @api.get("/shadow", response_model=dict[str, Any], responses=err, tags=["model"])
    def get_shadow() -> Any:
        """The shadow model's comparison with the approved one (404: no shadow run)."""
        return read(shadow)

    @api.get("/operator/actions", response_model=M.OperatorActions, responses=err, tags=["operator"])
    def get_actions() -> Any:
        """Every operator action with its outcome (applied, refused, pending)."""
        return {"actions": read(operator_actions)}

    @api.post("/operator/{action}", response_model=M.OperatorResult, responses=err, tags=["operator"])
    def post_action(action: Literal["reactivate", "reset-halt", "pause", "resume"], body: M.OperatorRequest) -> Any:
        """Ledger an operator action through the CLI's path: ``confirm`` must be the action's word and
        ``reason`` non-empty (else 400); nothing to do, or the same action pending: 409. A refusal
        writes nothing."""
        from live_bridge.operator import CONFIRM_WORDS, default_actor, request

        who = actor if actor is not None else default_actor()
        act = ACTIONS[action]
        malformed = body.confirm.strip() != CONFIRM_WORDS[act] or not body.reason.strip()
        with src.get() as led:
            try:
                r = request(led, act, body.reason, who, body.confirm)
            except InputError as e:  # a bad confirmation or reason: 400; nothing to do / pending: 409
                raise ApiError(400 if malformed else 409, str(e)) from None
        return {
            "seq": r.entry.seq,
            "action": r.action,
            "actor": r.entry.payload.get("actor"),
            "reason": r.entry.payload.get("reason"),
            "apply_hour": r.apply_hour,
            "apply_hour_utc": _utc(r.apply_hour),
            "warnings": r.warnings,
        }

    @api.get("/runs", response_model=M.Runs, tags=["research"])
    def get_runs() -> Any:
        """Backtests, walk-forwards, sweeps and studies under the runs folder, newest first."""
        return {"runs_dir": str(runs_root), "runs": list_runs(runs_root)}

    @api.get("/runs/{run_id}", response_model=M.RunDetail, responses=err, tags=["research"])
    def get_run(run_id: str = Path(..., pattern=RUN_PATTERN, description="a run folder's name")) -> Any:
        """One run: its metrics document and chart data."""
        try:
            return read_run(runs_root, run_id)
        except LookupError as e:
            raise ApiError(404, str(e)) from None
        except InputError as e:
            raise ApiError(503, str(e)) from None

    @api.get("/replay/hours", response_model=M.ReplayHours, responses=err, tags=["replay"])
    def get_replay_hours(limit: int = lim) -> Any:
        """Completed hours in the ledger."""

        def hours(led: Ledger) -> list[int]:
            return sorted({int(e.hour) for e in led.entries(kind=Kind.CYCLE_END) if e.code == "completed" and e.hour})

        hs = read(hours)
        return {"hours": _page(hs, limit, 0), "total": len(hs)}

    @api.get("/replay/{hour}", response_model=dict[str, Any], responses=err, tags=["replay"])
    def get_manifest(hour: str = Path(..., pattern=HOUR_PATTERN, description=HOUR_HELP)) -> Any:
        """The hour's replay manifest (kq replay manifest --json)."""
        from live_bridge.replay import manifest

        h = _hour_param(hour)
        try:
            return clean(read(lambda led: manifest(led, h)))
        except InputError as e:
            raise ApiError(404, str(e)) from None

    @api.get("/replay/{hour}/status", response_model=M.ReplayStatus, responses=err, tags=["replay"])
    def get_replay_status(hour: str = Path(..., pattern=HOUR_PATTERN, description=HOUR_HELP)) -> Any:
        """Replay the hour from the ledger alone (kq replay hour)."""
        from live_bridge.replay import replay_hour

        h = _hour_param(hour)
        try:
            r = read(lambda led: replay_hour(led, h))
        except InputError as e:
            raise ApiError(404, str(e)) from None
        return {
            "hour": r.hour,
            "hour_utc": _utc(r.hour),
            "status": r.status,
            "ok": r.ok,
            "replayed": r.replayed,
            "first_diff": r.first_diff,
            "details": clean(r.details),
        }

    app.include_router(api)

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def no_route(rest: str) -> None:
        """An unknown /api path: JSON 404 here, not the dashboard's HTML 404 page (a known path with
        another method: 405)."""
        path = f"/api/{rest}"
        known = [r.path_regex for r in api.routes if hasattr(r, "path_regex")]
        if path == "/api/health" or any(rx.match(path) for rx in known):
            raise ApiError(405, "method not allowed")
        raise ApiError(404, f"no API route /api/{rest[:80]}")

    static = FsPath(static_dir) if static_dir is not None else None
    if static is not None and static.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=static, html=True), name="dashboard")
    return app
