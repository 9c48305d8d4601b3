"""``kq doctor``: is this machine ready to run the paper/live daemon? Every check the daemon's
start-up depends on, each one independent (a failing check never hides the others), each a
:class:`Check` with a status (``ok`` / ``warn`` / ``fail``), what was found and, when it is not
``ok``, what to do. ``fail`` is blocking: the daemon would refuse to start, or would start and lose
the hour (the CLI exits 1).

Nothing here sends an order or changes state: the store is opened read-only, the ledger without
migrations, the approvals store under its shared lock, the daemon's lock is tried non-blocking on an
existing file and released at once. The exchange is asked only read-only questions (Time,
SystemStatus; with the key, BalanceEx and OpenOrders). One file may be written: a private query
draws its nonce from the key's counter in ``paths.state_dir`` (as every client of that key must, so a
running daemon's next nonce stays valid); with no state folder yet, a throw-away one is used.

A paper key must never be a real key. Paper mode trades against the loopback simulator only (the
config refuses any other URL), so a real key cannot trade there; but a Kraken key exported in a paper
shell is one typo away from a live run and is sent, signed, to the simulator. Kraken's API keys are 56
base64 characters; the rule: in paper mode a ``KRAKEN_API_KEY`` of that shape fails (the simulator
takes any key it is started with: use another shape, e.g. ``kq-test-key``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import KQError, one_line
from live_bridge.config import LiveConfig

__all__ = [
    "SKEW_FAIL_S",
    "SKEW_WARN_S",
    "STALE_S",
    "Check",
    "doctor",
    "looks_like_kraken_key",
    "run_checks",
]

Status = Literal["ok", "warn", "fail"]
HOUR = 3600
#: the newest stored bar closed longer ago than this: the store is stale
STALE_S = 2 * HOUR
#: |local - exchange| above these: warn, fail (AddOrder deadlines and nonces use the local clock)
SKEW_WARN_S = 5.0
SKEW_FAIL_S = 30.0
#: Kraken API keys: 56 characters of standard base64
_KRAKEN_KEY = re.compile(r"[A-Za-z0-9+/]{54,56}={0,2}")
#: packages the daemon imports (module name, pip distribution) and those the approved model unpickles
_DAEMON_PACKAGES = (
    ("kraken", "python-kraken-sdk"),
    ("sqlalchemy", "sqlalchemy"),
    ("alembic", "alembic"),
    ("requests", "requests"),
    ("duckdb", "duckdb"),
)
_MODEL_PACKAGES = (("sklearn", "scikit-learn"), ("xgboost", "xgboost-cpu"), ("lightgbm", "lightgbm"))


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def looks_like_kraken_key(key: str) -> bool:
    """True for a string shaped like a Kraken API key (56 base64 characters)."""
    return len(key) == 56 and _KRAKEN_KEY.fullmatch(key) is not None


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _hours(s: float) -> str:
    return f"{s / HOUR:.1f} h"


def _guard(name: str, fn: Callable[[], Check | list[Check]], fix: str = "") -> list[Check]:
    """Run one check; an error it did not expect becomes its ``fail`` (one line), never a traceback."""
    try:
        out = fn()
    except KQError as e:
        return [Check(name, "fail", one_line(str(e), 400), fix)]
    except Exception as e:  # the doctor reports; it never crashes on what it examines
        return [Check(name, "fail", one_line(f"{type(e).__name__}: {e}", 400), fix)]
    return out if isinstance(out, list) else [out]


# ---- install and configuration --------------------------------------------------------------------


def check_install() -> Check:
    import sys

    missing = [dist for mod, dist in _DAEMON_PACKAGES if importlib.util.find_spec(mod) is None]
    model_missing = [dist for mod, dist in _MODEL_PACKAGES if importlib.util.find_spec(mod) is None]
    py = f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    if missing or model_missing:
        extras = (["live"] if missing else []) + (["research"] if model_missing else [])
        return Check(
            "install",
            "fail",
            f"{py}; not installed: {', '.join(missing + model_missing)}",
            f"pip install -e '.[{','.join(extras)}]'",
        )
    return Check("install", "ok", f"{py}; the live and model packages import")


def check_config(path: str | Path) -> tuple[LiveConfig | None, Check]:
    from live_bridge.config import load_live_config

    try:
        live = load_live_config(path)
    except KQError as e:
        return None, Check("config", "fail", one_line(str(e), 400), f"fix {path} (docs/LIVE.md, 'Daemon')")
    return live, Check(
        "config",
        "ok",
        f"{path}: mode {live.mode}, exchange {live.exchange.url}, {len(live.universe.pairs)} pairs, "
        f"engine config {live.engine_path()}",
    )


def _engine_config(live: LiveConfig) -> tuple[Any, Check]:
    from engine.config import load_config

    try:
        cfg = load_config(live.engine_path())
    except KQError as e:
        return None, Check("engine config", "fail", one_line(str(e), 400), f"fix {live.engine_path()}")
    need = int(cfg.features.warmup_bars) + 24
    if int(live.cycle.history_bars) < need:
        return cfg, Check(
            "engine config",
            "fail",
            f"cycle.history_bars {live.cycle.history_bars} is below the features' warm-up "
            f"{cfg.features.warmup_bars} + 24 bars ({need})",
            f"raise cycle.history_bars in {live.source} to {need} or more",
        )
    return cfg, Check(
        "engine config", "ok", f"{live.engine_path()} (sha256 {cfg.content_hash()[:16]}); warm-up {need - 24} bars"
    )


# ---- the exchange -----------------------------------------------------------------------------------


def _exchange_fix(live: LiveConfig) -> str:
    if live.mode == "paper":
        return f"start the simulator (kq sim serve) at {live.exchange.url}, or fix exchange.url in {live.source}"
    return f"check the network and https://status.kraken.com; exchange.url in {live.source} is {live.exchange.url}"


def _public_adapter(live: LiveConfig, state: str) -> Any:
    """An adapter for public calls only: placeholder credentials and a throw-away state folder
    (public calls draw no nonce and need no key)."""
    from live_bridge.kraken import Credentials, KrakenAdapter

    placeholder = Credentials("kq-doctor-public-only", "a3EtZG9jdG9y")
    t = float(live.exchange.timeout_s)
    return KrakenAdapter(placeholder, state_dir=state, url=live.exchange.url, tier=live.exchange.tier, timeout_s=t)


@dataclass
class _Exchange:
    reachable: bool = False
    server_time: float | None = None
    local_time: float | None = None


def check_exchange(live: LiveConfig, tmp: str, now: float | None, out: _Exchange) -> list[Check]:
    from live_bridge.kraken import KrakenHalt

    name = "exchange"
    try:
        ad = _public_adapter(live, tmp)
        t0 = time.time()
        r = ad.server_time()
        t1 = time.time()
    except KrakenHalt as e:
        return [Check(name, "fail", f"{live.exchange.url}: {one_line(str(e), 300)}", _exchange_fix(live))]
    if not r.done or r.result is None:
        why = one_line(r.reason or "; ".join(r.errors) or r.outcome.value, 300)
        return [
            Check(name, "fail", f"{live.exchange.url} not reachable (Time: {why})", _exchange_fix(live)),
            Check("clock skew", "fail", "not measured: the exchange's Time did not answer", _exchange_fix(live)),
            Check("system status", "fail", "not read: the exchange did not answer", _exchange_fix(live)),
        ]
    out.reachable, out.server_time = True, float(r.result)
    out.local_time = float(now) if now is not None else (t0 + t1) / 2
    checks = [Check(name, "ok", f"{live.exchange.url} answered Time in {1000 * (t1 - t0):.0f} ms")]
    skew = out.local_time - out.server_time
    if live.mode == "paper" and live.cycle.clock == "exchange":
        checks.append(
            Check(
                "clock skew",
                "ok",
                f"exchange time {_utc(out.server_time)}, local {skew:+.0f} s from it: cycle.clock = exchange, "
                "the simulator's clock decides the hour (a replay may run in the past)",
            )
        )
    else:
        a = abs(skew)
        st: Status = "fail" if a > SKEW_FAIL_S else "warn" if a > SKEW_WARN_S else "ok"
        checks.append(
            Check(
                "clock skew",
                st,
                f"local clock {skew:+.1f} s from the exchange's (warn above {SKEW_WARN_S:g} s, fail above "
                f"{SKEW_FAIL_S:g} s; Time has 1 s resolution)",
                ""
                if st == "ok"
                else "synchronise this machine's clock (NTP: timedatectl set-ntp true, or "
                "chronyc makestep): order deadlines and nonces use it",
            )
        )
    try:
        s = ad.system_status()
    except KrakenHalt as e:
        checks.append(Check("system status", "fail", one_line(str(e), 300), _exchange_fix(live)))
        return checks
    if not s.done:
        why = one_line(s.reason or "; ".join(s.errors) or s.outcome.value, 300)
        checks.append(Check("system status", "fail", f"SystemStatus did not answer ({why})", _exchange_fix(live)))
    elif s.result == "online":
        checks.append(Check("system status", "ok", "online"))
    else:
        checks.append(
            Check(
                "system status",
                "warn",
                f"{s.result}: the daemon sends no new orders until the exchange is online",
                "wait for 'online' (https://status.kraken.com)" if live.mode == "live" else "set the simulator online",
            )
        )
    return checks


def check_credentials(live: LiveConfig, environ: Mapping[str, str], tmp: str, ex: _Exchange) -> Check:
    from live_bridge.kraken import Credentials, CredentialsError, KrakenAdapter, KrakenHalt

    name = "credentials"
    where = "the simulator's paper account" if live.mode == "paper" else "a Kraken key"
    try:
        creds = Credentials.from_env(environ)
    except CredentialsError as e:
        return Check(
            name,
            "fail",
            one_line(str(e), 300),
            f"export KRAKEN_API_KEY and KRAKEN_API_SECRET ({where}); never put them in a config file",
        )
    if live.mode == "paper" and looks_like_kraken_key(creds.key):
        return Check(
            name,
            "fail",
            "mode paper, but KRAKEN_API_KEY is shaped like a real Kraken API key (56 base64 characters)",
            "unset the real key in this shell; run the simulator and the paper daemon with a paper key of "
            "another shape (e.g. kq-test-key)",
        )
    fp = f"key #{creds.fingerprint}"
    if not ex.reachable:
        return Check(name, "warn", f"{fp} set; no private query tried (the exchange did not answer)")
    state = Path(live.paths.state_dir)
    nonce_dir = str(state) if state.is_dir() else tmp  # the key's own counter when the daemon has one
    try:
        ad = KrakenAdapter(
            creds,
            state_dir=nonce_dir,
            url=live.exchange.url,
            tier=live.exchange.tier,
            timeout_s=float(live.exchange.timeout_s),
        )
        bal = ad.balances()
        oo = ad.open_orders(trades=False) if bal.done else None
    except KrakenHalt as e:
        return Check(name, "fail", f"{fp}: {one_line(str(e), 300)}", f"check the key ({where}) and its nonce")
    for what, r, perm in (("BalanceEx", bal, "Query Funds"), ("OpenOrders", oo, "Query Open Orders & Trades")):
        if r is not None and not r.done:
            why = one_line("; ".join(r.errors) or r.reason or r.outcome.value, 300)
            return Check(name, "fail", f"{fp}: {what} refused ({why})", f"give the key the '{perm}' permission")
    n = len(bal.result.tradable) if bal.result is not None else 0
    extra = f", {n} tradable asset(s)"
    tail = "" if live.mode == "paper" else "; order permissions are not tried (that would send an order)"
    return Check(name, "ok", f"{fp}: BalanceEx and OpenOrders answered{extra}{tail}")


# ---- the market store ---------------------------------------------------------------------------------


def check_store(live: LiveConfig, cfg: Any, ref: float | None, ref_note: str) -> list[Check]:
    from engine.errors import InputError
    from engine.store.market import MarketStore
    from live_bridge.data import OHLC_ROWS, VENUE, warmup_status

    path = Path(live.paths.store)
    pairs = list(live.universe.pairs)
    fix_import = f"kq data import FILES --venue kraken --store {path} (Kraken OHLCVT CSVs of {', '.join(pairs)})"
    try:
        store = MarketStore(path, read_only=True)
    except InputError as e:
        msg = one_line(str(e), 300)
        if "lock" in msg.lower():
            return [Check("store", "warn", f"{path} is open in another process (the daemon?): not read", "")]
        return [Check("store", "fail", msg, fix_import)]
    out: list[Check] = []
    try:
        have = {i.pair: i for i in store.list_pairs(VENUE)}
        absent = [p for p in pairs if p not in have]
        if absent:
            out.append(Check("store", "fail", f"{path}: no {VENUE} bars for {', '.join(absent)}", fix_import))
        else:
            n = sum(have[p].rows for p in pairs)
            out.append(Check("store", "ok", f"{path}: {n} {VENUE} bars for {len(pairs)} pairs"))
        present = [p for p in pairs if p in have]
        # freshness: the newest stored bar of each pair against the hour that decides the cycle
        if ref is None:
            out.append(Check("store freshness", "warn", f"not judged: {ref_note}", ""))
        elif present:
            now_hour = int(ref // HOUR) * HOUR
            oldest_fetchable = now_hour - (OHLC_ROWS - 1) * HOUR  # the data step's reach (live_bridge/data.py)
            worst = min(present, key=lambda p: have[p].last_ts)
            last = have[worst].last_ts
            age = ref - (last + HOUR)  # since the newest stored bar closed
            what = f"newest bar of {worst} closed {_utc(last + HOUR)}, {_hours(age)} before {ref_note}"
            if age <= STALE_S:
                out.append(Check("store freshness", "ok", what))
            elif last + HOUR >= oldest_fetchable:
                out.append(
                    Check(
                        "store freshness",
                        "warn",
                        f"stale: {what} (older than {_hours(STALE_S)}); within OHLC's {OHLC_ROWS} bars",
                        "start the daemon to top up (kq live run --once fetches the missing bars), or kq data import",
                    )
                )
            else:
                out.append(
                    Check(
                        "store freshness",
                        "fail",
                        f"stale: {what}; the gap reaches past OHLC's {OHLC_ROWS} bars, the daemon cannot fetch it "
                        "(the missing bar would latch the kill switch)",
                        fix_import + ", up to the last closed hour",
                    )
                )
        # warm-up: contiguous history ending at each pair's newest bar (the gap to now is freshness)
        if cfg is None:
            out.append(Check("warm-up", "fail", "not checked: the engine config did not load", ""))
        elif present:
            need = int(cfg.features.warmup_bars)
            short = []
            for p in present:
                w = warmup_status(store, [p], int(have[p].last_ts) + HOUR, need)[p]
                if not w.ready:
                    short.append(w.reason)
            if short:
                out.append(
                    Check(
                        "warm-up",
                        "fail",
                        "; ".join(short),
                        f"import {need} contiguous hourly bars per pair: {fix_import}",
                    )
                )
            else:
                out.append(Check("warm-up", "ok", f"{need} contiguous bars per pair up to its newest bar"))
        rep = store.check(VENUE)
        rows = [r for r in rep["pairs"] if r["pair"] in pairs]
        blocking = sum(int(r["blocking"]) for r in rows)
        findings = sum(sum(r["findings"].values()) for r in rows)
        if blocking:
            bad = [f"{r['pair']} {r['blocking']}" for r in rows if r["blocking"]]
            out.append(
                Check(
                    "store integrity",
                    "fail",
                    f"{blocking} blocking finding(s) ({', '.join(bad)}) of {findings}",
                    f"kq data check --store {path} lists them; re-import the affected bars",
                )
            )
        else:
            out.append(Check("store integrity", "ok", f"no blocking finding ({findings} finding(s) in all)"))
    finally:
        store.close()
    return out


# ---- model, ledger, state ---------------------------------------------------------------------------------


def check_model(live: LiveConfig, cfg: Any) -> Check:
    from engine.errors import IntegrityError

    name = f"model ({live.env})"
    if cfg is None:
        return Check(name, "fail", "not checked: the engine config did not load", "")
    from live_bridge import models

    try:
        m = models.load_approved(live.env, cfg)
    except IntegrityError as e:
        return Check(
            name,
            "fail",
            one_line(str(e), 400),
            f"restore the approved bundle, or roll back: kq models rollback --env {live.env} (kq models status)",
        )
    except KQError as e:
        return Check(name, "fail", one_line(str(e), 400), f"kq models promote MODEL --env {live.env} --reason ...")
    return Check(name, "ok", f"{m.model} approved, manifest {str(m.manifest_sha256)[:16]}, digests verified")


def check_shadow(live: LiveConfig, cfg: Any) -> Check:
    """The shadow model (``[shadow] model``), loaded as the daemon loads it
    (:func:`live_bridge.shadow.load_shadow`: registered, digests verified, current feature set, not
    the approved model). A shadow naming the approved model stops the daemon at start, and a
    tampered bundle is an integrity problem: both fail. Any other load problem is a warning: the
    daemon trades without the shadow and ledgers ``shadow_failed`` each hour."""
    from engine.errors import ConfigError, IntegrityError

    name = "shadow model"
    ref = live.shadow.model
    if not ref:
        return Check(name, "ok", "none configured ([shadow] model)")
    if cfg is None:
        return Check(name, "fail", "not checked: the engine config did not load", "")
    from live_bridge import models
    from live_bridge.shadow import load_shadow
    from research.lifecycle.registry import load_configs

    fix = f"register the candidate (kq models list), or remove [shadow] model from {live.source or 'the config'}"
    try:
        approved = models.load_approved(live.env, cfg)
    except KQError:
        approved = None  # the approved-model check names that problem
    try:
        _, tracking = load_configs(live.engine_path())
        m = load_shadow(str(ref), cfg, tracking, approved=approved)
    except (ConfigError, IntegrityError) as e:
        return Check(name, "fail", one_line(str(e), 400), fix)
    except Exception as e:  # the registry unreachable, an unknown ref: the daemon runs without it
        return Check(name, "warn", f"{ref}: {one_line(str(e), 300)}: the daemon trades without it", fix)
    return Check(name, "ok", f"{m.model} loads, manifest {str(m.manifest_sha256)[:16]}, digests verified")


def check_ledger(live: LiveConfig, environ: Mapping[str, str]) -> Check:
    from live_bridge.ledger import Ledger
    from live_bridge.ledger.canonical import hmac_key_from_env
    from live_bridge.ledger.migrate import HEAD, _known, ledger_schema_version, redacted, resolve_url

    name = "ledger"
    dsn = live.ledger_dsn(dict(environ))
    schema = live.paths.ledger_schema
    url = resolve_url(dsn) if dsn else resolve_url(None)
    where = redacted(url)
    rev = ledger_schema_version(dsn, schema) if dsn else ledger_schema_version(None, schema)
    if rev is None:
        return Check(name, "warn", f"no ledger at {where} yet: the daemon creates it at its first start", "")
    if rev != HEAD:
        if any(r not in _known() for r in rev.split(",")):
            return Check(
                name,
                "fail",
                f"{where} is at schema revision {rev}, which this code does not know (newest {HEAD})",
                "a newer krakenquant wrote it: upgrade this checkout, never downgrade the ledger",
            )
        return Check(name, "warn", f"{where} at schema revision {rev}: the daemon migrates it to {HEAD} at start", "")
    with Ledger.open(dsn, schema=schema, migrate=False, hmac_key=hmac_key_from_env(environ)) as led:
        rep = led.verify()
    if not rep.ok:
        return Check(
            name,
            "fail",
            f"{where}: {rep.message}",
            "the ledger was edited: keep the copy for review; kq live verify --anchor SEQ:HASH shows how far it holds",
        )
    return Check(name, "ok", f"{where}: schema {HEAD}, chain verifies ({rep.rows} rows, head seq {rep.head_seq})")


def check_state(live: LiveConfig) -> Check:
    import fcntl

    name = "state dir"
    d = Path(live.paths.state_dir)
    if not d.exists():
        parent = next((p for p in d.absolute().parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            return Check(name, "fail", f"{d} does not exist and {parent} is not writable", f"create {d}")
        return Check(name, "warn", f"{d} does not exist yet: the daemon creates it", "")
    if not d.is_dir():
        return Check(name, "fail", f"{d} is not a folder", f"fix paths.state_dir in {live.source}")
    if not os.access(d, os.W_OK | os.X_OK):
        return Check(name, "fail", f"{d} is not writable by this user", f"chown/chmod {d}")
    lock = d / "daemon.lock"
    if not lock.exists():
        return Check(name, "ok", f"{d} writable; no daemon lock")
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return Check(
                name,
                "warn",
                f"a daemon is running on {d} (it holds {lock.name}): a second one would be refused",
                "",
            )
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return Check(name, "ok", f"{d} writable; no daemon holds its lock")


# ---- all of them ----------------------------------------------------------------------------------------


def run_checks(live: LiveConfig, environ: Mapping[str, str] | None = None, now: float | None = None) -> list[Check]:
    """Every check after the config loaded, in the daemon's start-up order. ``now`` replaces this
    machine's clock (tests); ``environ`` the process environment."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    checks: list[Check] = []
    checks += _guard("install", check_install)
    cfg, c = _engine_config(live)
    checks.append(c)
    ex = _Exchange()
    with tempfile.TemporaryDirectory(prefix="kq-doctor-") as tmp:
        checks += _guard("exchange", lambda: check_exchange(live, tmp, now, ex), _exchange_fix(live))
        checks += _guard("credentials", lambda: check_credentials(live, env, tmp, ex))
    # the time that decides the hour: the exchange's (cycle.clock = exchange) or this machine's
    if live.cycle.clock == "exchange":
        ref = ex.server_time
        note = "the exchange's time" if ref is not None else "the exchange's clock decides the hour; it did not answer"
    else:
        ref = float(now) if now is not None else time.time()
        note = "now"
    checks += _guard("store", lambda: check_store(live, cfg, ref, note))
    checks += _guard(f"model ({live.env})", lambda: check_model(live, cfg))
    checks += _guard("shadow model", lambda: check_shadow(live, cfg))
    checks += _guard(
        "ledger", lambda: check_ledger(live, env), "check paths.ledger / KQ_LEDGER_DSN and that the database is up"
    )
    checks += _guard("state dir", lambda: check_state(live))
    return checks


def doctor(
    config: str | Path, environ: Mapping[str, str] | None = None, now: float | None = None
) -> tuple[LiveConfig | None, list[Check]]:
    """The config check, then (when it loaded) :func:`run_checks`."""
    live, c = check_config(config)
    if live is None:
        return None, [*_guard("install", check_install), c]
    return live, [c, *run_checks(live, environ, now)]


def blocking(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)
