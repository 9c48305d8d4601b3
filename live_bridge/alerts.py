"""Alert events: what an operator must hear about without reading the ledger.

:func:`alerts_for` derives them from one completed hour (its :class:`~live_bridge.cycle.HourReport`
and the hour's ledger rows); :func:`failure_alert` is the one for a cycle that failed and stopped the
daemon (a Kraken halt, an integrity error). :class:`Alerter` writes each as one JSON log line on the
logger ``live_bridge.alerts`` and, when a webhook is configured, POSTs the same JSON to it.

========================  ==========  ============================================================
kind                      severity    when
========================  ==========  ============================================================
``kill_switch``           critical    the kill switch latched at this bar (its trigger and reason)
``halt``                  critical    the drawdown halt latched (no entries until a manual reset)
``tier_change``           warning     the drawdown tier changed (risk cut, or back to normal)
``kill_switch_requested`` critical    the kill switch is asked for at the next bar (reason)
``reconcile_mismatch``    critical    reconciliation found what the ledger cannot explain
``reconcile_incomplete``  warning     reconciliation could not compare (an API call failed)
``model_failed``          warning     no prediction this hour (no entry, no signal exit)
``data_problem``          warning     a pair's bar is missing or stale this hour (gap, lag, fetch)
``note``                  warning     another problem the hour line names
``reset``                 info        an operator reset was applied (kill switch, halt)
``kraken_halt``           critical    a Kraken halt stopped the daemon (lockout, nonce, credentials)
``cycle_failed``          critical    an hour failed with an error and the daemon stopped
``retrain_started``       info        a retraining job started in the training window (live_bridge.retrain)
``retrain_finished``      info        it registered a candidate (gate verdicts); promotion stays manual
``retrain_failed``        warning     it failed, timed out or its process vanished (one line why)
========================  ==========  ============================================================

Each alert is ``{"ts", "severity", "kind", "hour", "pair", "message", "details"}``: ``ts`` the
ISO-8601 UTC time it was raised, ``hour`` the bar (unix seconds // 3600, as in the ledger) or null.

Delivery never blocks a cycle: :meth:`Alerter.emit` logs the line and puts the POST on a bounded
queue that one background thread empties (each alert: up to ``retries`` attempts of ``timeout_s``
with ``retry_wait_s`` between, at most 30 s, which the config enforces); a full queue drops the
alert with a warning, a failed POST is a warning. Nothing here raises into the daemon. The webhook
URL is a secret: it is never logged, and error text is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from engine.errors import ConfigError

__all__ = ["ENV_WEBHOOK", "Alert", "Alerter", "alerts_for", "check_webhook", "failure_alert", "retrain_alert"]

log = logging.getLogger("live_bridge.alerts")

#: the environment variable that may hold the webhook URL instead of the config file
ENV_WEBHOOK = "KQ_ALERT_WEBHOOK"
SEVERITIES = ("info", "warning", "critical")
_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}
_KILL = {
    "KILL_API": "API instability",
    "KILL_SPREAD": "spread anomaly",
    "KILL_VOLATILITY": "volatility spike",
    "KILL_DATA": "data integrity",
}


def check_webhook(url: str) -> None:
    """Empty (no webhook) or an http(s) URL with a host; the error never repeats the URL."""
    if not url:
        return
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("webhook URL is not an http(s) URL with a host (not shown: it may hold a token)")


@dataclass(frozen=True)
class Alert:
    severity: str  # info | warning | critical
    kind: str
    message: str
    hour: int | None = None
    pair: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    ts: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "severity": self.severity,
            "kind": self.kind,
            "hour": self.hour,
            "pair": self.pair,
            "message": self.message,
            "details": self.details,
        }

    def json(self) -> str:
        """One line of strict JSON (Decimals and other non-JSON values as strings)."""
        return json.dumps(self.as_dict(), default=str, sort_keys=False, separators=(",", ":"))


def _bar_utc(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00 UTC")


def _pct(v: Any) -> str:
    try:
        return f"{float(v):.2%}"
    except (TypeError, ValueError):
        return str(v)


def alerts_for(report: Any, ledger: Any) -> list[Alert]:
    """The alerts of one hour: ``report`` is the :class:`~live_bridge.cycle.HourReport`, ``ledger``
    the daemon's ledger (the hour's decision, event and reconciliation rows). A skipped hour (already
    completed) has none."""
    from live_bridge.ledger import Kind

    if report.status != "completed":
        return []
    h = int(report.hour)
    base = {"bar_utc": _bar_utc(h), "state": report.state, "catch_up": bool(report.catch_up)}
    out: list[Alert] = []
    decisions = ledger.entries(h, Kind.DECISION)
    events = ledger.entries(h, Kind.EVENT)
    states = [e for e in decisions if str(e.code).startswith("STATE:")]
    state = states[-1] if states else None
    inputs = [e for e in events if e.code == "risk_inputs"]
    api_reasons = list(inputs[-1].payload.get("api_fault_reasons", [])) if inputs else []
    seen: set[tuple[str, str | None]] = set()
    for e in decisions:
        code = str(e.code)
        ev, _, why = code.partition(":")
        if ev not in ("KILL", "TIER", "RESET") or (code, e.pair) in seen:
            continue
        seen.add((code, e.pair))
        value = e.payload.get("value")
        if ev == "KILL":
            what = _KILL.get(why, why)
            msg = f"kill switch latched: {what}" + (f" (first tripped by {e.pair})" if e.pair else "")
            if why == "KILL_API" and api_reasons:
                msg += ": " + "; ".join(str(x) for x in api_reasons)
            msg += "; no new entries until kq live reactivate"
            d = {**base, "trigger": why, "value": value, "api_fault_reasons": api_reasons}
            if state is not None:
                d["kill_reason"] = state.payload.get("kill_reason")
            out.append(Alert("critical", "kill_switch", msg, h, e.pair, d))
        elif ev == "TIER" and why == "HALT":
            msg = f"drawdown halt latched at a drawdown of {_pct(value)}; no new entries until kq live reset-halt"
            out.append(Alert("critical", "halt", msg, h, None, {**base, "drawdown": value}))
        elif ev == "TIER":
            msg = f"drawdown tier changed: now {report.state} at a drawdown of {_pct(value)}"
            out.append(Alert("warning", "tier_change", msg, h, None, {**base, "drawdown": value}))
        else:
            msg = f"operator reset applied: {why}"
            out.append(Alert("info", "reset", msg, h, None, {**base, "reset": why}))
    if report.reconcile == "mismatch":
        rows = [e for e in ledger.entries(h, Kind.RECONCILIATION) if e.code == "mismatch"]
        p = rows[-1].payload if rows else {}
        problems = list(p.get("problems", []))
        msg = "reconciliation mismatch: " + ("; ".join(str(x) for x in problems) or report.latch or "see the ledger")
        out.append(Alert("critical", "reconcile_mismatch", msg[:1000], h, None, {**base, "problems": problems}))
    data = {str(e.payload.get("reason")): e for e in events if str(e.code).startswith("data_")}
    for note in report.notes:
        if note.startswith("reconciliation incomplete"):
            out.append(Alert("warning", "reconcile_incomplete", note[:1000], h, None, dict(base)))
        elif note in data:
            e = data[note]
            d = {**base, "event": e.code, "detail": e.payload.get("detail")}
            out.append(Alert("warning", "data_problem", note[:1000], h, e.pair, d))  # names its pair
        else:
            out.append(Alert("warning", "note", note[:1000], h, None, dict(base)))
    for e in events:
        if e.code == "model_failed":
            out.append(Alert("warning", "model_failed", str(e.payload.get("reason", ""))[:1000], h, None, dict(base)))
    if report.latch:
        msg = f"kill switch asked for the next bar: {report.latch}"
        out.append(Alert("critical", "kill_switch_requested", msg[:1000], h, None, {**base, "reason": report.latch}))
    return out


def retrain_alert(code: str, hour: int | None, message: str, details: Mapping[str, Any] | None = None) -> Alert:
    """A retraining job's event (``code``: retrain_started / retrain_finished / retrain_failed); a
    failure is a warning, the rest info. ``hour`` is the wall-clock hour (unix seconds // 3600)."""
    sev = "warning" if code == "retrain_failed" else "info"
    return Alert(sev, code, message[:1000], hour, None, dict(details or {}))


def failure_alert(hour: int | None, message: str, kind: str = "cycle_failed") -> Alert:
    """A cycle that failed and stopped the daemon (``kind``: ``kraken_halt`` or ``cycle_failed``)."""
    d: dict[str, Any] = {"bar_utc": _bar_utc(hour)} if hour is not None else {}
    return Alert("critical", kind, message[:1000], hour, None, d)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: the token never follows it to another address."""

    def redirect_request(self, *a: Any, **k: Any) -> None:
        return None


def _post(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "krakenquant"}
    )
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(req, timeout=timeout) as r:
        r.read(65536)
        return int(r.status)


class Alerter:
    """Logs alerts and, with a webhook, POSTs them from one background thread (started on the first
    POST). ``post(url, body, timeout) -> HTTP status`` and ``sleep`` replace the defaults in tests."""

    def __init__(
        self,
        webhook_url: str = "",
        *,
        min_severity: str = "warning",
        timeout_s: float = 5.0,
        retries: int = 3,
        retry_wait_s: float = 2.0,
        queue_size: int = 100,
        context: Mapping[str, Any] | None = None,
        post: Callable[[str, bytes, float], int] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if min_severity not in SEVERITIES:
            raise ConfigError(f"alerts.min_severity {min_severity!r} is not one of {', '.join(SEVERITIES)}")
        try:
            check_webhook(webhook_url)
        except ValueError as e:
            raise ConfigError(f"alerts: {e}") from None
        self._url = webhook_url
        self.min_severity = min_severity
        self.timeout_s, self.retries, self.retry_wait_s = float(timeout_s), int(retries), float(retry_wait_s)
        self.context = dict(context or {})
        self._post = post or _post
        self._sleep = sleep or time.sleep
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=int(queue_size))
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @classmethod
    def from_config(cls, live: Any, environ: Mapping[str, str] | None = None, **kw: Any) -> Alerter:
        """From a :class:`~live_bridge.config.LiveConfig`: its ``[alerts]`` section, the webhook from
        the file or else from ``KQ_ALERT_WEBHOOK``."""
        import os

        a = live.alerts
        env = os.environ if environ is None else environ
        url = a.webhook_url.get_secret_value() or env.get(ENV_WEBHOOK, "").strip()
        try:
            check_webhook(url)
        except ValueError as e:
            raise ConfigError(f"{ENV_WEBHOOK}: {e}") from None
        return cls(
            url,
            min_severity=a.min_severity,
            timeout_s=a.timeout_s,
            retries=a.retries,
            retry_wait_s=a.retry_wait_s,
            queue_size=a.queue_size,
            context={"mode": live.mode},
            **kw,
        )

    @property
    def webhook(self) -> bool:
        """Whether a webhook is configured (the URL itself is never exposed)."""
        return bool(self._url)

    @property
    def max_delivery_s(self) -> float:
        """The longest one alert's delivery can take (every attempt timing out)."""
        return self.retries * self.timeout_s + (self.retries - 1) * self.retry_wait_s

    def __repr__(self) -> str:
        return f"Alerter(webhook={'set' if self._url else 'none'}, min_severity={self.min_severity!r})"

    # ---- emitting ----------------------------------------------------------------------------------

    def emit(self, alerts: Iterable[Alert]) -> None:
        """Log each alert as one JSON line; queue the POST of those at ``min_severity`` or above.
        Never raises and never waits for the network."""
        floor = SEVERITIES.index(self.min_severity)
        for a in alerts:
            try:
                if self.context:
                    a = Alert(a.severity, a.kind, a.message, a.hour, a.pair, {**self.context, **a.details}, a.ts)
                line = self._scrub(a.json())
                log.log(_LEVEL[a.severity], "%s", line)
                if self._url and SEVERITIES.index(a.severity) >= floor:
                    self._enqueue(line.encode())
            except Exception as e:  # an alert must never break the daemon
                log.warning("alert %s could not be emitted: %s", getattr(a, "kind", "?"), self._scrub(repr(e))[:300])

    def _enqueue(self, body: bytes) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name="kq-alerts", daemon=True)
                self._thread.start()
        try:
            self._q.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook: %d alerts waiting, this one is dropped (it is in the log)", self._q.qsize())

    def _worker(self) -> None:
        while True:
            body = self._q.get()
            try:
                if body is None:
                    return
                self._deliver(body)
            except Exception as e:  # the worker outlives any one alert
                log.warning("alert webhook: %s", self._scrub(repr(e))[:300])
            finally:
                self._q.task_done()

    def _deliver(self, body: bytes) -> bool:
        kind = json.loads(body).get("kind", "?")
        for attempt in range(1, self.retries + 1):
            try:
                status = self._post(self._url, body, self.timeout_s)
                if 200 <= status < 300:
                    self.delivered += 1
                    return True
                why = f"HTTP {status}"
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                e.close()
            except urllib.error.URLError as e:
                why = f"{type(e.reason).__name__}: {e.reason}"
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
            log.warning(
                "alert webhook: %s alert, attempt %d/%d failed: %s",
                kind,
                attempt,
                self.retries,
                self._scrub(why)[:300],
            )
            if attempt < self.retries:
                self._sleep(self.retry_wait_s)
        self.failed += 1
        log.warning("alert webhook: %s alert not delivered after %d attempts (it is in the log)", kind, self.retries)
        return False

    def _scrub(self, text: str) -> str:
        """``text`` without the webhook URL or its parts that may hold a token."""
        if not self._url:
            return text
        u = urlsplit(self._url)
        parts = [self._url, self._url.rstrip("/"), u.password or "", u.query, u.path if len(u.path) > 1 else ""]
        for p in sorted({x for x in parts if x}, key=len, reverse=True):
            text = text.replace(p, "***")
        return text

    # ---- waiting and closing -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert was delivered or given up, at most ``timeout`` seconds
        (default: one alert's longest delivery). True when the queue is empty."""
        limit = self.max_delivery_s if timeout is None else float(timeout)
        end = time.monotonic() + limit
        cond = self._q.all_tasks_done
        with cond:
            while self._q.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (bounded: see :meth:`flush`), then stop the thread; alerts still waiting are only
        in the log."""
        if self._thread is None:
            return
        if not self.flush(timeout):
            log.warning("alert webhook: %d alerts not sent before shutdown (they are in the log)", self._q.qsize())
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread = None
