"""Retraining in the training window: the daemon starts one job per window (``[retrain]`` in the live
config, off by default); the job REGISTERS a candidate and stops. It never promotes or approves.

When an hour that begins inside ``risk.training_window_utc`` starts (the hour's open time is inside
the window: the same rule by which the cycle blocks entries whose order would execute in that bar),
:func:`tick` (called by :meth:`live_bridge.daemon.Daemon.run_once` after the due hours ran) starts
at most one job for that window, and only when

* no ``retrain_started`` event names this window yet (once per window, across restarts),
* the last job that produced a candidate (``retrain_finished``) started ``every_hours`` or more
  before this window opened, and the window opens on ``weekday`` (``any``: every day),
* no job holds ``STATE_DIR/retrain.lock`` (a job still running, from this daemon or an earlier one),
* the ledger has a completed hour (the data end: the job trains on bars up to that bar, never later).

The job is a separate PROCESS (``python -m live_bridge.retrain JOB_DIR``, its own session, lower CPU
priority, no exchange credentials nor ledger DSN in its environment), so no cycle waits for it: the
daemon exports the bars it trains on from its own store (``MarketStore.export_parquet``), ledgers
``retrain_started`` and spawns; each later :func:`tick` only looks at the job's files. The job:

1. imports the exported bars into its own store (``JOB_DIR/store.duckdb``; the daemon's DuckDB file
   stays the daemon's),
2. runs the research pipeline of ``retrain.config`` over ``span_hours`` bars ending at the data end
   (venue kraken, the daemon's pairs) with ``register=True``: a new candidate (a model version),
3. validates it through the four gates (``verdict.json``, registry tags) and tags it
   ``stage=candidate``, ``produced_by=live-retrain``,
4. writes ``JOB_DIR/result.json`` (atomic) and exits.

The whole job runs under :func:`no_approvals`: promotion, rollback and every write to the approvals
store raise :class:`RetrainForbidden` in its process, so a candidate that passes every gate stays a
candidate until an operator runs ``kq models promote``. The daemon checks it again when the job ends:
a candidate of the job that is current in an approvals state is reported ``retrain_failed``.

Ledger events (kind ``event``): ``retrain_started`` (the window hour; job, config digest, data end),
``retrain_finished`` (candidate, manifest digest, gate verdicts) or ``retrain_failed`` (one line
why: the job's error, a timeout, a process gone without a result). Each also goes out as an alert
(:func:`live_bridge.alerts.retrain_alert`).

Crash safety: the ``retrain_started`` row is written before the process starts, so a restarted
daemon finds it and never starts a second job for the same window; the lock (an ``flock`` the job
process inherits and holds until it exits, SIGKILL included) says whether that job is still running.
An open job whose lock is free and that left no ``result.json`` is reported failed ("process gone").
A job running past ``timeout_s`` or the end of its window (whichever is earlier, wall-clock seconds
from its start) is killed (its process group) and reported failed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import KQError
from engine.timeutil import HOUR

__all__ = [
    "JOB_STARTED",
    "RetrainForbidden",
    "Retrainer",
    "job_argv",
    "no_approvals",
    "run_job",
    "should_start",
    "tick",
    "window_open",
]

log = logging.getLogger("live_bridge.retrain")

JOB_STARTED, JOB_FINISHED, JOB_FAILED = "retrain_started", "retrain_finished", "retrain_failed"
CODES = (JOB_STARTED, JOB_FINISHED, JOB_FAILED)
LOCK_NAME = "retrain.lock"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: environment variables a training job never receives (exchange credentials, ledger and webhook secrets)
_SECRET_ENV = (
    "KQ_LEDGER_DSN",
    "KQ_PAPER_LEDGER_DSN",
    "KQ_ALERT_WEBHOOK",
    "KQ_LEDGER_HMAC_KEY",  # the ledger's signing key: a job holding it could forge ledger rows
    "KQ_API_TOKEN",
    "KQ_SIM_ADMIN_TOKEN",
)
#: ... nor any variable whose name says it holds a secret (a denylist alone misses new ones)
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "HMAC", "WEBHOOK", "CREDENTIAL")


class RetrainForbidden(KQError):
    """A retraining job tried to promote, roll back or write an approval."""


# ---- when ----------------------------------------------------------------------------------------


def window_open(hour_start: int, window: Any) -> int | None:
    """The unix time at which the window holding the hour that opens at ``hour_start`` opened; None
    when that hour does not open inside the window (or there is none). The inside rule is
    :func:`engine.risk.schedule.in_training_window` (start inclusive, end exclusive, wraps midnight)."""
    from engine.risk.schedule import DAY, in_training_window, parse_window

    w = parse_window(window)
    if w is None or not in_training_window(int(hour_start), window):
        return None
    a, _ = w
    return int(hour_start) - (int(hour_start) - a) % DAY


def window_end(opened: int, window: Any) -> int:
    from engine.risk.schedule import DAY, parse_window

    w = parse_window(window)
    assert w is not None
    a, b = w
    return int(opened) + (b - a) % DAY


def should_start(
    opened: int, *, started_windows: set[int], last_finished: int | None, every_hours: int, weekday: str
) -> str | None:
    """None when a job may start for the window that opened at ``opened``; else why not (one line)."""
    if opened in started_windows:
        return "a job was already started in this window"
    if weekday != "any" and WEEKDAYS[_dt.datetime.fromtimestamp(opened, _dt.UTC).weekday()] != weekday:
        return f"windows opening on {weekday} only"
    if last_finished is not None and opened - last_finished < int(every_hours) * HOUR:
        return f"the last retraining (window {_utc(last_finished)}) is younger than every_hours {every_hours}"
    return None


def _utc(ts: int | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(int(ts), _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _job_id(opened: int) -> str:
    return "w" + _dt.datetime.fromtimestamp(int(opened), _dt.UTC).strftime("%Y%m%dT%H%MZ")


# ---- the daemon side -----------------------------------------------------------------------------


@dataclass
class _Known:
    """What the ledger says about the jobs (read once per daemon start, then kept up to date)."""

    started: dict[str, dict] = field(default_factory=dict)  # job id -> retrain_started payload
    ended: set[str] = field(default_factory=set)
    last_finished: int | None = None  # window open of the newest job that produced a candidate

    @property
    def windows(self) -> set[int]:
        return {int(p["window_open"]) for p in self.started.values()}

    def open_job(self) -> dict | None:
        left = [p for j, p in self.started.items() if j not in self.ended]
        return max(left, key=lambda p: int(p["window_open"])) if left else None


def _lock_free(path: Path) -> bool:
    """True when no process holds the job lock (no job running)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases it when taken
    return True


def job_argv(job_dir: Path) -> list[str]:
    """The job's command line (tests replace it to plant a hung or crashing job)."""
    return [sys.executable, "-m", "live_bridge.retrain", str(job_dir)]


def _child_env() -> dict[str, str]:
    def secret(k: str) -> bool:
        u = k.upper()
        if u.startswith("MLFLOW_"):  # the job registers its candidate: the tracking server's credentials
            return False
        return u.startswith("KRAKEN_") or u in _SECRET_ENV or any(w in u for w in _SECRET_WORDS)

    return {k: v for k, v in os.environ.items() if not secret(k)}


class Retrainer:
    """The daemon's side: decides, starts and watches jobs. Built on the daemon's first :func:`tick`."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.live = daemon.live
        self.sec = daemon.live.retrain
        self.window = tuple(daemon.cfg.risk.training_window_utc)
        self.state = Path(self.live.paths.state_dir)
        self.lock = self.state / LOCK_NAME
        self.known = _Known()
        self._said: set[tuple[int, str]] = set()  # (window, reason) logged once
        self.enabled = bool(self.sec.enabled)
        from engine.risk.schedule import parse_window

        if self.enabled and parse_window(self.window) is None:
            self.enabled = False
            self._emit(
                JOB_FAILED,
                None,
                "retraining is enabled but risk.training_window_utc is empty: no job will run",
                {},
                ledger=False,
            )
        if self.enabled:
            self._read_ledger()

    # ---- ledger and alerts

    def _read_ledger(self) -> None:
        from live_bridge.ledger import Kind

        k = _Known()
        for e in self.d.ledger.entries(kind=Kind.EVENT):
            if e.code not in CODES:
                continue
            job = str(e.payload.get("job"))
            if e.code == JOB_STARTED:
                k.started[job] = dict(e.payload)
            else:
                k.ended.add(job)
                if e.code == JOB_FINISHED and job in k.started:
                    k.last_finished = max(k.last_finished or 0, int(k.started[job]["window_open"]))
        self.known = k

    def _emit(self, code: str, hour: int | None, message: str, payload: dict, *, ledger: bool = True) -> None:
        from live_bridge.alerts import retrain_alert

        if ledger:
            from live_bridge.ledger import records as rec

            self.d.ledger.append(rec.event(code, hour, payload=dict(payload, message=message)))
            job = str(payload.get("job"))
            if code == JOB_STARTED:
                self.known.started[job] = dict(payload)
            else:
                self.known.ended.add(job)
                if code == JOB_FINISHED and job in self.known.started:
                    opened = int(self.known.started[job]["window_open"])
                    self.known.last_finished = max(self.known.last_finished or 0, opened)
        (log.warning if code == JOB_FAILED else log.info)("%s: %s", code, message)
        self.d._alert(retrain_alert, code, hour, message, payload)

    # ---- each tick

    def tick(self, now: float) -> None:
        if not self.enabled:
            return
        job = self.known.open_job()
        if job is not None:
            self._watch(job, now)
            return
        hour0 = int(now) // HOUR * HOUR
        opened = window_open(hour0, self.window)
        if opened is None:
            return
        why = should_start(
            opened,
            started_windows=self.known.windows,
            last_finished=self.known.last_finished,
            every_hours=int(self.sec.every_hours),
            weekday=str(self.sec.weekday),
        )
        if why is None and not _lock_free(self.lock):
            why = f"{self.lock} is held: a retraining job is still running"
        if why is None and self.d.ledger.last_completed_hour() is None:
            why = "no completed hour yet (no data end)"
        if why is not None:
            if (opened, why) not in self._said and opened not in self.known.windows:
                self._said.add((opened, why))
                log.info("retraining not started in the window opened %s: %s", _utc(opened), why)
            return
        self._start(opened, hour0, now)

    def _start(self, opened: int, hour0: int, now: float) -> None:
        """Export the bars, ledger ``retrain_started``, spawn the job holding the lock. Called only
        with the window check passed: asserted again here (a job never starts outside the window)."""
        import fcntl

        from live_bridge.data import VENUE
        from research.pipeline import DataSelection, load_spec

        assert window_open(hour0, self.window) == opened, "retraining job outside the training window"
        job = _job_id(opened)
        hour = hour0 // HOUR
        data_end = int(self.d.ledger.last_completed_hour()) * HOUR  # the newest bar a cycle completed
        span = int(self.sec.span_hours)
        start = data_end - (span - 1) * HOUR
        config = self.live.retrain_config_path().resolve()
        pairs = tuple(self.live.universe.pairs)
        base = {"job": job, "window_open": opened, "window_utc": _utc(opened), "hour": hour}
        jd = self.state / "retrain" / job
        try:
            spec = load_spec(config, data=DataSelection(venue=VENUE, pairs=pairs, start=start, end=data_end))
            digest = hashlib.sha256(
                json.dumps(spec.raw, sort_keys=True, default=str, separators=(",", ":")).encode()
            ).hexdigest()
            jd.mkdir(parents=True, exist_ok=True)
            warm = int(spec.research.warmup_bars)
            n = self.d.store.export_parquet(jd / "bars.parquet", pairs, VENUE, start - warm * HOUR, data_end)
        except (KQError, OSError) as e:  # a broken config or export fails this window's job, not the daemon
            self._emit(JOB_STARTED, hour, f"retraining job {job} could not start", base)
            self._emit(JOB_FAILED, hour, f"retraining job {job} failed: {config.name}: {_line(e)}", base)
            return
        budget = min(float(self.sec.timeout_s), float(window_end(opened, self.window) - now))
        out = Path(self.sec.out_root) / f"retrain-{job}"
        out.parent.mkdir(parents=True, exist_ok=True)
        spec_doc = {
            **base,
            "config": str(config),
            "config_sha256": digest,
            "venue": VENUE,
            "pairs": list(pairs),
            "start": start,
            "data_end": data_end,
            "data_end_utc": _utc(data_end),
            "bars": n,
            "out": str(out.resolve()),
            "env": self.live.env,
            "budget_s": max(int(budget), 1),
            "nice": int(self.sec.nice),
            "started_wall": time.time(),
        }
        from research.lifecycle.util import atomic_write_text

        atomic_write_text(jd / "job.json", json.dumps(spec_doc, indent=2, sort_keys=True) + "\n")
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return  # a job took the lock since the check: nothing started, nothing ledgered
        payload = {
            k: spec_doc[k]
            for k in (
                "job",
                "window_open",
                "window_utc",
                "hour",
                "config",
                "config_sha256",
                "data_end",
                "data_end_utc",
                "budget_s",
            )
        }
        try:
            # ledgered BEFORE the process exists: a crash from here on can never start a second job
            self._emit(
                JOB_STARTED,
                hour,
                f"retraining job {job} started: {Path(config).name} ({digest[:12]}), bars to {_utc(data_end)}, "
                f"{span} h; produces a candidate only",
                payload,
            )
        except BaseException:
            os.close(fd)
            raise
        try:
            with open(jd / "log.txt", "ab") as logf:
                p = subprocess.Popen(
                    job_argv(jd),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,),  # the job holds the lock until it exits (the flock is shared)
                    start_new_session=True,  # its own process group: killed as one on timeout
                    env=_child_env(),
                    cwd=os.getcwd(),
                )
            (jd / "pid").write_text(f"{p.pid}\n")
            self._proc = p  # reaped by _watch (no zombie while the daemon lives)
        except Exception as e:
            self._emit(JOB_FAILED, hour, f"retraining job {job} failed: could not start: {_line(e)}", base)
        finally:
            os.close(fd)

    def _watch(self, job: dict, now: float) -> None:
        jid = str(job["job"])
        jd = self.state / "retrain" / jid
        hour = int(now) // HOUR
        proc = getattr(self, "_proc", None)
        if proc is not None:
            proc.poll()  # reap
        res = _read_json(jd / "result.json")
        base = {"job": jid, "window_open": int(job["window_open"]), "window_utc": job.get("window_utc")}
        if res is not None:
            if res.get("status") == "finished":
                self._finished(res, base, hour)
            else:
                why = f"retraining job {jid} failed: {res.get('why', '?')}"
                self._emit(JOB_FAILED, hour, why, dict(base, seconds=str(res.get("seconds"))))
            return
        if _lock_free(self.lock):
            if _read_json(jd / "result.json") is None:  # it may have written its result just now
                self._emit(
                    JOB_FAILED,
                    hour,
                    f"retraining job {jid} failed: its process is gone without a result (crash or kill); "
                    f"see {jd / 'log.txt'}",
                    base,
                )
            return
        spec = _read_json(jd / "job.json") or {}
        began, budget = float(spec.get("started_wall", time.time())), float(spec.get("budget_s", 0) or 0)
        if budget and time.time() - began > budget:
            what = "killed" if _kill(jd) else f"could not kill it: stop process {_pid(jd)} by hand"
            self._emit(
                JOB_FAILED,
                hour,
                f"retraining job {jid} failed: timed out after {budget:.0f} s (retrain.timeout_s or the end "
                f"of its window); {what}",
                base,
            )

    def _finished(self, res: dict, base: dict, hour: int) -> None:
        from research.lifecycle.actions import store_for

        cand = str(res.get("candidate"))
        try:  # the job may not approve: its candidate is current nowhere
            with store_for(self.d.cfg).locked(shared=True):
                states = store_for(self.d.cfg).audit().states
            hit = [env for env, st in states.items() if st.get("current") and st["current"].get("model") == cand]
        except Exception as e:
            hit = []
            log.warning("approvals store not readable after retraining: %s", _line(e))
        if hit:
            self._emit(
                JOB_FAILED,
                hour,
                f"retraining job {base['job']}: its candidate {cand} is approved for {', '.join(hit)}; a retraining "
                "job must never promote: check the approvals log (kq models audit)",
                dict(base, candidate=cand),
            )
            return
        verdicts = dict(res.get("verdicts") or {})
        ok = bool(res.get("passed"))
        tail = (
            f"passed every gate; awaits kq models promote {cand}"
            if ok
            else "failed " + ", ".join(g for g, v in verdicts.items() if v != "passed") + "; not approvable"
        )
        payload = dict(
            base,
            candidate=cand,
            manifest_sha256=res.get("manifest_sha256"),
            verdicts=verdicts,
            passed=ok,
            seconds=str(res.get("seconds")),
        )
        self._emit(JOB_FINISHED, hour, f"retraining job {base['job']} registered candidate {cand}: {tail}", payload)


def _pid(jd: Path) -> str:
    try:
        return (jd / "pid").read_text().strip()
    except OSError:
        return "?"


def _kill(jd: Path) -> bool:
    """SIGKILL the job's process group (its pid is the group id: ``start_new_session``)."""
    try:
        pid = int((jd / "pid").read_text().strip())
        os.killpg(pid, signal.SIGKILL)
        return True
    except (OSError, ValueError):
        return False


def _read_json(p: Path) -> dict | None:
    try:
        v = json.loads(p.read_text())
        return v if isinstance(v, dict) else None
    except (OSError, ValueError):
        return None


def _line(e: BaseException) -> str:
    from engine.store.readers import one_line

    s = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return one_line(s if isinstance(e, KQError) else f"{type(e).__name__}: {s}", 300)


def tick(daemon: Any, now: float) -> None:
    """The daemon's hook (after the due hours of :meth:`Daemon.run_once`): start or watch a job.
    Never raises: a retraining problem is a warning line, never a cycle's failure."""
    try:
        r = getattr(daemon, "_retrainer", None)
        if r is None:
            if not daemon.live.retrain.enabled:
                return
            r = daemon._retrainer = Retrainer(daemon)
        r.tick(float(now))
    except Exception as e:
        msg = _line(e)
        if getattr(daemon, "_retrain_err", None) != msg:  # once per distinct problem, not every poll
            daemon._retrain_err = msg
            log.warning("retraining: %s", msg)


# ---- the job process -----------------------------------------------------------------------------


@contextlib.contextmanager
def no_approvals() -> Iterator[None]:
    """Within: promote, rollback and every write to an approvals store raise :class:`RetrainForbidden`
    (the retraining job runs entirely inside this)."""
    from research.lifecycle import actions
    from research.lifecycle.approvals import ApprovalStore

    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise RetrainForbidden("a retraining job may not promote, roll back or approve a model")

    names: list[tuple[Any, tuple[str, ...]]] = [
        (actions, ("promote", "rollback")),
        (ApprovalStore, ("apply", "_append", "_write_state", "rebuild_states")),
    ]
    saved = [(obj, n, getattr(obj, n)) for obj, ns in names for n in ns]
    for obj, name, _ in saved:
        setattr(obj, name, forbidden)
    try:
        yield
    finally:
        for obj, name, orig in saved:
            setattr(obj, name, orig)


def run_job(job_dir: str | Path) -> dict:
    """The job (module docstring, steps 1-4) for ``JOB_DIR/job.json``; returns and writes result.json."""
    from research.lifecycle.util import atomic_write_text

    jd = Path(job_dir)
    t0 = time.perf_counter()
    try:
        spec = json.loads((jd / "job.json").read_text())
        with no_approvals():
            res = _train(jd, spec)
    except Exception as e:
        res = {"status": "failed", "why": _line(e)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(jd / "result.json", json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
    return res


def _train(jd: Path, spec: dict) -> dict:
    import pandas as pd

    from engine.store.market import MarketStore
    from research.lifecycle.actions import validate
    from research.lifecycle.gates import read_manifest
    from research.lifecycle.registry import load_configs, resolve, tag_verdict
    from research.pipeline import DataSelection, load_spec, run
    from research.tracking import set_candidate_tags

    store = jd / "store.duckdb"
    bars = pd.read_parquet(jd / "bars.parquet")
    with MarketStore(store) as s:
        s.import_frames(
            {p: g.drop(columns=["venue", "pair"]).reset_index(drop=True) for p, g in bars.groupby("pair")},
            spec["venue"],
            f"live-retrain-{spec['job']}",
        )
    sel = DataSelection(
        store=str(store), venue=spec["venue"], pairs=tuple(spec["pairs"]), start=spec["start"], end=spec["data_end"]
    )
    rs = load_spec(spec["config"], data=sel)
    o = run(rs, spec["out"], register=True)
    if o.candidate is None:
        raise KQError("the run registered no candidate (is [research.tracking] enabled?)")
    cfg, tracking = load_configs(spec["config"])
    cand = resolve(o.candidate.ref, tracking)
    v, _ = validate(cand, cfg, config_source=spec["config"])
    tag_verdict(cand, v, tracking)
    set_candidate_tags(
        cand.ref, {"stage": "candidate", "produced_by": "live-retrain", "retrain_job": spec["job"]}, tracking
    )
    return {
        "status": "finished",
        "candidate": cand.ref,
        "path": str(cand.path),
        "manifest_sha256": read_manifest(cand.path)["manifest_sha256"],
        "verdicts": {g.gate: ("passed" if g.passed else "failed") for g in v.gates},
        "failed": [g.message for g in v.failed_gates],
        "passed": bool(v.passed),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m live_bridge.retrain JOB_DIR", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, ValueError, KeyError):
        spec = json.loads((Path(args[0]) / "job.json").read_text())
        os.nice(int(spec["nice"]))  # retrain.nice: the daemon's cycles come first
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = run_job(args[0])
    print(json.dumps(res, default=str))
    return 0 if res.get("status") == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(main())
