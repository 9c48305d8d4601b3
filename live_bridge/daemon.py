"""The paper/live daemon: builds the collaborators from a :class:`~live_bridge.config.LiveConfig`,
recovers at start, and runs :class:`~live_bridge.cycle.Cycle` once per closed bar.

Start-up, in order (any failure stops it with one line; nothing is sent before step 5):

1. the mode gate: ``mode = "live"`` needs ``allow_live`` (``kq live run --live``); ``--live`` with a
   paper config is refused; paper needs a loopback exchange URL (the config checks that);
2. credentials from the environment only (``KRAKEN_API_KEY`` / ``KRAKEN_API_SECRET``);
3. the approved model of the mode's environment (``live_bridge.models.load_approved``): none, or
   one that fails its checks, and the daemon does not start;
4. the ledger (migrated), the market store, Kraken's pair rules and status;
5. crash recovery: every order intent without a final outcome is resolved by lookup
   (:func:`live_bridge.execution.resume`, sends nothing but cancels), then reconciliation; a
   mismatch it cannot explain asks for the kill switch at the next bar.

Then each closed bar, ``cycle.settle_delay_s`` after its close: :meth:`Cycle.run_hour`. Hours that
closed while the daemon was down are run in order first ("catch-up": exits are executed, entries are
not sent, being stale). A Kraken halt (lockout, bad nonce, bad credentials) stops the daemon with
its reason after ledgering a failed cycle that asks for the kill switch; it is never retried.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, KQError
from engine.timeutil import HOUR
from live_bridge.alerts import Alerter, alerts_for, failure_alert
from live_bridge.config import LiveConfig
from live_bridge.cycle import Cycle, HourReport

__all__ = ["Daemon", "DaemonBusy", "DaemonStopped", "StartReport"]

log = logging.getLogger("live_bridge.daemon")


def _exclusive(path: Path) -> Any:
    """Hold an exclusive ``flock`` on ``path`` for the daemon's lifetime: two daemons on one state
    folder (an overlapping ``--once`` from a scheduler, a second copy) would both resolve and send
    the same intents. The lock dies with the process, SIGKILL included."""
    import fcntl

    f = open(path, "a+")  # noqa: SIM115 - held open on purpose until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise DaemonBusy(f"another daemon is running on {path.parent} (it holds {path.name}); stop it first") from None
    return f


class DaemonBusy(KQError):
    """Another daemon holds the state folder's lock."""


class DaemonStopped(KQError):
    """The daemon stopped itself to protect capital (a Kraken halt, an unusable exchange)."""

    exit_code = 3


@dataclass
class StartReport:
    resumed: int = 0
    unresolved: int = 0
    reconcile: str = ""
    latch: str = ""
    last_completed: int | None = None
    notes: list[str] = field(default_factory=list)


class Daemon:
    def __init__(
        self,
        live: LiveConfig,
        *,
        cfg: Any,
        store: Any,
        adapter: Any,
        ledger: Any,
        model: Any,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        universe: Any = None,
    ) -> None:
        self.live, self.cfg, self.store, self.adapter, self.ledger, self.model = (
            live,
            cfg,
            store,
            adapter,
            ledger,
            model,
        )
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.cycle = Cycle(
            live=live,
            cfg=cfg,
            store=store,
            adapter=adapter,
            ledger=ledger,
            model=model,
            universe=universe,
            clock=self.clock,
            sleep=self.sleep,
        )
        self._stop = threading.Event()
        self.alerter = Alerter.from_config(live, {})  # from_config: KQ_ALERT_WEBHOOK of its environment
        self._lock: Any = None  # the state folder's flock (from_config)
        self.start_latch: list[str] = []
        self.shadow: Any = None  # [shadow] model: live_bridge.shadow.Shadow (from_config); never trades

    # ---- construction from a config --------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        live: LiveConfig,
        *,
        allow_live: bool = False,
        environ: dict[str, str] | None = None,
        model: Any = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        budget: Any = None,
        engine_cfg: Any = None,
        shadow_model: Any = None,
    ) -> Daemon:
        """Everything from the config and the environment; refuses to start on the first problem.
        ``model``, ``clock``, ``sleep`` and ``budget`` (a :class:`~live_bridge.kraken.RateBudget`)
        replace the defaults (tests, the benchmark); ``engine_cfg`` replaces the engine config read
        from ``engine_config`` (``kq parity`` runs both of its sides under one adjusted config);
        ``shadow_model`` replaces the registry load of ``[shadow] model`` (tests)."""
        import os

        from engine.config import load_config
        from engine.store.market import MarketStore
        from live_bridge.kraken import KrakenAdapter
        from live_bridge.ledger import Ledger

        if live.mode == "live" and not allow_live:
            raise ConfigError(f"{live.source}: mode is live: add --live to trade real money")
        if live.mode != "live" and allow_live:
            raise ConfigError(f"{live.source}: --live needs a config with mode = 'live' (this one is {live.mode})")
        env = dict(os.environ if environ is None else environ)
        from live_bridge.kraken import Credentials

        Credentials.from_env(env)  # step 2, before the model is loaded or any state is touched
        cfg = load_config(live.engine_path()) if engine_cfg is None else engine_cfg
        need = int(cfg.features.warmup_bars) + 24
        if int(live.cycle.history_bars) < need:
            raise ConfigError(
                f"{live.source}: cycle.history_bars {live.cycle.history_bars} is below the features' warm-up "
                f"{cfg.features.warmup_bars} + 24 bars ({need})"
            )
        if cfg.strategy.enabled and int(live.cycle.history_bars) < int(cfg.strategy.lookback_bars):
            # checked here, not at the first hour: a daemon that starts and then stops on its first
            # close would leave its positions unmanaged
            raise ConfigError(
                f"{live.source}: cycle.history_bars {live.cycle.history_bars} is below the "
                f"{cfg.strategy.lookback_bars} bars [strategy] needs (its regime and profile windows)"
            )
        if model is None:
            from live_bridge.models import load_approved

            model = load_approved(live.env, cfg)
        from live_bridge.cycle import strategy_lookback

        # [strategy] regime_thresholds = "model": the bundle's fitted regime rule and its windows
        # (a one-line ConfigError naming the setting when the bundle has none), before any state
        need_s = strategy_lookback(cfg, model)
        if cfg.strategy.enabled and int(live.cycle.history_bars) < need_s:
            raise ConfigError(
                f"{live.source}: cycle.history_bars {live.cycle.history_bars} is below the "
                f"{need_s} bars [strategy] needs (the approved model's regime windows)"
            )
        state = Path(live.paths.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        lock = _exclusive(state / "daemon.lock")
        adapter = KrakenAdapter.from_env(
            env=env,
            state_dir=state,
            url=live.exchange.url,
            tier=live.exchange.tier,
            timeout_s=float(live.exchange.timeout_s),
            deadline_s=float(live.exchange.deadline_s),
            lookup_margin_s=float(live.execution.lookup_margin_s),
            **({"clock": clock} if clock else {}),
            **({"sleep": sleep} if sleep else {}),
            **({"budget": budget} if budget is not None else {}),
        )
        Path(live.paths.store).parent.mkdir(parents=True, exist_ok=True)
        store = MarketStore(live.paths.store)
        dsn = live.ledger_dsn(env)
        if dsn and dsn.startswith("sqlite:///"):
            Path(dsn.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open(dsn, schema=live.paths.ledger_schema) if dsn else Ledger.open()
        d = cls(live, cfg=cfg, store=store, adapter=adapter, ledger=ledger, model=model, clock=clock, sleep=sleep)
        d._lock = lock
        d.alerter = Alerter.from_config(live, env)
        try:
            from live_bridge.shadow import make_shadow

            d.shadow = make_shadow(d, shadow_model)  # ConfigError: the shadow names the approved model
        except BaseException:
            d.close()
            raise
        return d

    def close(self) -> None:
        with contextlib.suppress(Exception):  # queued webhook POSTs: bounded wait (docs/LIVE.md, Alerts)
            self.alerter.close()
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()  # releases the flock
        for x in (self.ledger, self.store):
            with contextlib.suppress(Exception):  # closing is best effort
                x.close()

    # ---- time ------------------------------------------------------------------------------------

    def now(self) -> float | None:
        """The time that decides the hour: this machine's clock, or the exchange's (``cycle.clock``);
        None when the exchange's cannot be read."""
        if self.live.cycle.clock == "local":
            return float(self.clock())
        r = self.adapter.server_time()
        return float(r.result) if r.done and r.result is not None else None

    def next_hour(self) -> int | None:
        """The hour to run next: the one after the last completed hour; while no hour has
        completed, the portfolio's first hour if it was begun (its ``portfolio_start`` is ledgered:
        a first cycle killed after its inputs must be re-run, not skipped); None for a new one."""
        from live_bridge.ledger import Kind

        last = self.ledger.last_completed_hour()
        if last is not None:
            return last + 1
        starts = [e.hour for e in self.ledger.entries(kind=Kind.EVENT) if e.code == "portfolio_start"]
        return int(starts[0]) if starts and starts[0] is not None else None

    def due_hours(self, now: float) -> list[int]:
        """Closed bars (settle delay passed) not completed yet, oldest first. The first run of a
        new portfolio starts at the newest closed bar."""
        newest = int((now - float(self.live.cycle.settle_delay_s)) // HOUR) - 1
        nxt = self.next_hour()
        if nxt is None:
            return [newest]
        return list(range(nxt, newest + 1))

    # ---- start and run ---------------------------------------------------------------------------

    def start(self) -> StartReport:
        from live_bridge.execution import resume
        from live_bridge.reconcile import reconcile

        rep = StartReport(last_completed=self.ledger.last_completed_hour())
        self._guard(self.adapter.refresh)
        nxt = self.next_hour()
        rr = self._guard(
            lambda: resume(
                self.ledger,
                self.adapter,
                self.cycle.executor.config,
                current_hour=nxt,
                clock=self.clock,
                sleep=self.sleep,
            )
        )
        rep.resumed = len(rr.results)
        rep.unresolved = len(rr.unresolved)
        rc = self._guard(lambda: reconcile(self.ledger, self.adapter, hour=nxt))
        rep.reconcile = rc.status
        if rc.latch:
            rep.latch = rc.reason
        elif rr.unresolved:
            rep.latch = f"{len(rr.unresolved)} order(s) whose fate is unknown after the restart"
        if rep.latch:
            self.cycle.extra_latch.append(rep.latch)
        why = self._ceiling_note()
        if why:
            rep.notes.append(why)
            log.warning("%s", why)
        return rep

    def _ceiling_note(self) -> str:
        """A warning when the live config's capital_ceiling differs from the newest applied
        ``set_ceiling`` (the ledger's is in force: docs/DECISIONS.md), so an edited config is never
        silently ignored; empty otherwise."""
        from live_bridge.ceiling import ceiling_text, effective_ceiling

        cc = self.live.capital_ceiling
        in_force, last = effective_ceiling(self.ledger, cc)
        if last is None or cc == in_force:
            return ""
        return (
            f"capital_ceiling {ceiling_text(cc)} in {self.live.source or 'the config'} is NOT in force: the "
            f"ledger's set_ceiling {ceiling_text(in_force)} (applied at hour {last.hour}) is; "
            f"kq live set-ceiling --to {ceiling_text(cc)} to apply the config's, or edit the config to match"
        )

    def _guard(self, fn: Callable[[], Any]) -> Any:
        from live_bridge.kraken import KrakenHalt

        try:
            return fn()
        except KrakenHalt as e:
            msg = f"Kraken halt ({e.code}): {e}"
            nxt = self.next_hour()
            if nxt is not None:  # a portfolio exists: its next bar gets the kill-switch input
                self.cycle.fail(nxt, f"at start-up: {msg}")
            self._alert(failure_alert, nxt, f"daemon stopped at start-up: {msg}", "kraken_halt")
            raise DaemonStopped(f"{msg}; trading stopped, see docs/LIVE.md") from None

    def run_once(self, now: float | None = None) -> list[HourReport]:
        """Every due hour, in order; an empty list when none is due (or the exchange clock is unreadable)."""
        from live_bridge.kraken import KrakenHalt

        t = self.now() if now is None else now
        if t is None:
            log.warning("exchange time unavailable: cycle postponed")
            return []
        hours = self.due_hours(t)
        out = []
        for i, h in enumerate(hours):
            if self._stop.is_set():
                break
            try:
                r = self.cycle.run_hour(h, catch_up=i < len(hours) - 1)
            except KrakenHalt as e:
                self.cycle.fail(h, f"Kraken halt ({e.code}): {e}")
                stop = f"hour {h}: Kraken halt ({e.code}): {e}; trading stopped, see docs/LIVE.md"
                self._alert(failure_alert, h, f"daemon stopped: {stop}", "kraken_halt")
                raise DaemonStopped(stop) from None
            except Exception as e:
                self._alert(failure_alert, h, f"hour {h} failed, daemon stopped: {type(e).__name__}: {e}")
                raise
            log.info("%s", r.line())
            self._alert(alerts_for, r, self.ledger)
            out.append(r)
            if self.shadow is not None:  # after the hour: ledgered only, never sent, never raises
                self._alert(self.shadow.after_hour, h)
        from live_bridge.retrain import tick as retrain_tick

        retrain_tick(self, t)  # [retrain]: starts/watches a job in another process; never raises, never waits
        return out

    def _alert(self, make: Callable[..., Any], *args: Any) -> None:
        """Derive and emit alerts (live_bridge.alerts: ``make(*args)`` gives one or a list); a failure
        here is one warning, never the cycle's. The POSTs go out from a background thread."""
        try:
            got = make(*args)
            self.alerter.emit(got if isinstance(got, list) else [got])
        except Exception as e:
            log.warning("alerts failed: %s", type(e).__name__)

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self, on_hour: Callable[[HourReport], None] | None = None) -> None:
        """Run due hours until :meth:`stop` (SIGTERM / SIGINT finish the current hour first)."""
        prev = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                prev[sig] = signal.signal(sig, lambda *_: self.stop())
        try:
            while not self._stop.is_set():
                for r in self.run_once():
                    if on_hour:
                        on_hour(r)
                self._stop.wait(float(self.live.cycle.poll_s)) if self.sleep is time.sleep else self.sleep(
                    float(self.live.cycle.poll_s)
                )
        finally:
            for sig, h in prev.items():
                signal.signal(sig, h)
