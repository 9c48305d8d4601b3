"""Purpose-made candidates for the lifecycle tests: a bundle folder in the real format
(``research.bundle`` manifest + digest, current feature schema) whose walk-forward backtest records
are built here bar by bar, so each gate can be made to pass or fail on purpose. The model file is
opaque bytes: these candidates are never unpickled (the loader refuses them before that, or the
tests stop at the checks)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from engine.config import config_from_dict, load_config

T0 = 1704067200  # 2024-01-01 00:00 UTC


def lifecycle_config(tmp: Path, **lifecycle) -> object:
    """configs/default.toml with the approvals store in ``tmp`` and the given [lifecycle] keys."""
    from engine.config import read_toml
    from engine.paths import configs_dir

    raw = read_toml(configs_dir() / "default.toml")
    raw["lifecycle"] = dict(raw.get("lifecycle", {}), approvals_dir=str(tmp / "approvals"), **lifecycle)
    return config_from_dict(raw)


def backtest_records(
    n=720, drift=0.0004, every=48, hold=24, frac=0.08, entry_hour=12, crash_at=None, init_cash=10_000.0, fee_rate=0.004
):
    """(equity, trades, events) frames of a one-pair long-only strategy: enter at ``entry_hour`` every
    ``every`` bars with ``frac`` of equity, exit ``hold`` bars later; price drifts by ``drift``/bar with
    a small wiggle (and drops 40% at ``crash_at``)."""
    t = np.arange(n)
    price = 100.0 * np.exp(drift * t) * (1.0 + 0.002 * np.sin(t / 3.0))
    if crash_at is not None:
        price[crash_at:] *= 0.6
    ts = T0 + 3600 * t
    cash, qty = init_cash, 0.0
    eq_rows, trades = [], []
    hour = (ts // 3600) % 24
    entry_bar = -1
    for i in range(n):
        if qty > 0 and i - entry_bar >= hold:
            notional = qty * price[i]
            fee = notional * fee_rate
            cash += notional - fee
            trades.append((ts[i], "BTC/USDT", "sell", qty, price[i], notional, fee, "EXIT_TIME", "market_open", 0.0))
            qty = 0.0
        if entry_hour is None:  # churn: any hour outside the default training window 03:00-05:00
            want = hour[i] not in (3, 4)
        else:
            want = hour[i] == entry_hour and (i // 24) % max(every // 24, 1) == 0
        if qty == 0 and i > 0 and want:
            eq_prev = eq_rows[-1][1]
            q = frac * eq_prev / price[i]
            notional = q * price[i]
            fee = notional * fee_rate
            cash -= notional + fee
            qty = q
            entry_bar = i
            trades.append((ts[i], "BTC/USDT", "buy", q, price[i], notional, fee, "ENTRY", "limit", 0.0))
        pos = qty * price[i]
        eq = cash + pos
        eq_rows.append((ts[i], eq, cash, pos / eq, 0.0, "ACTIVE", int(qty > 0), 0))
    equity = pd.DataFrame(
        eq_rows, columns=["ts", "equity", "cash", "exposure", "drawdown", "trading_state", "n_positions", "kill_reason"]
    )
    peak = np.maximum.accumulate(np.concatenate([[init_cash], equity["equity"].to_numpy()]))[1:]
    equity["drawdown"] = 1.0 - equity["equity"] / peak
    tr = pd.DataFrame(
        trades, columns=["ts", "pair", "side", "quantity", "price", "notional", "fee", "reason", "fill", "pnl"]
    )
    tr["ts"] = tr["ts"].astype(np.int64)
    ev = pd.DataFrame({"ts": tr["ts"], "pair": tr["pair"], "event": "ORDER", "reason": tr["reason"], "value": 0.0})
    return equity, tr, ev


def write_records(bundle: Path, equity, trades, events, init_cash=10_000.0, metrics_override=None) -> None:
    from research.lifecycle.riskaudit import recompute_strategy

    bt = bundle / "walkforward" / "backtest"
    bt.mkdir(parents=True, exist_ok=True)
    equity.to_parquet(bt / "equity.parquet", index=False)
    trades.to_parquet(bt / "trades.parquet", index=False)
    events.to_parquet(bt / "events.parquet", index=False)
    s = recompute_strategy(equity, trades, init_cash)
    strat = {
        "sharpe": s["sharpe"],
        "max_drawdown": s["max_drawdown"],
        "turnover": s["turnover"],
        "n_trades": int((trades["side"] == "sell").sum()),
    }
    strat.update(metrics_override or {})
    (bt / "metrics.json").write_text(json.dumps(strat) + "\n")
    (bundle / "walkforward" / "metrics.json").write_text(json.dumps({"strategy": strat}) + "\n")


def rehash(bundle: Path) -> dict:
    """Re-record every file's sha256 and the manifest digest (a candidate that is internally
    consistent after a purpose-made edit)."""
    from research.bundle import manifest_digest

    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {
        p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "verdict.json")
    }
    m.pop("manifest_sha256", None)
    m["manifest_sha256"] = manifest_digest(m)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    return m


def make_candidate(path: Path, cfg=None, records=None, **rec_kw) -> Path:
    """A purpose-made candidate folder at ``path`` (passes every gate with default arguments)."""
    from engine.features.featureset import feature_names, feature_schema_sha256

    cfg = cfg or load_config()
    path.mkdir(parents=True)
    (path / "models" / "h24").mkdir(parents=True)
    (path / "models" / "h24" / "meta.pkl").write_bytes(b"opaque model bytes " + path.name.encode())
    (path / "config.json").write_text(
        json.dumps({"config": cfg.model_dump(mode="json"), "research": {}}, sort_keys=True) + "\n"
    )
    eq, tr, ev = records if records is not None else backtest_records(**rec_kw)
    write_records(path, eq, tr, ev, float(cfg.backtest.init_cash))
    m = {
        "format": "krakenquant-model/1",
        "created_utc": "2024-02-01T00:00:00Z",
        "git_commit": None,
        "git_dirty": False,
        "seed": 7,
        "config_sha256": cfg.content_hash(),
        "research": {},
        "features": {
            "names": list(feature_names(cfg.features)),
            "schema_sha256": feature_schema_sha256(cfg.features),
            "warmup_bars": 768,
        },
        "data": {"venue": "binance", "pairs": ["BTC/USDT"], "train_start": T0, "train_end": T0 + 3600 * 719},
        "horizons": [24],
        "trade_horizon": 24,
        "warm_bars": 50,
        "outputs": ["p_up", "exp_return"],
        "models": ["meta"],
        "walkforward": {"run_id": None, "out_dir": None, "strategy": None},
        "files": {},
    }
    (path / "manifest.json").write_text(json.dumps(m) + "\n")
    rehash(path)
    return path


def copy_candidate(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    v = dst / "verdict.json"
    if v.exists():
        v.unlink()
    return dst


# 2022-06-01 00:00 UTC as an hour index (unix seconds // 3600)
PAPER_START_HOUR = 1654041600 // 3600


def write_paper_ledger(
    dsn, model_ref: str, manifest_sha256: str, hours: int = 720, start_hour: int = PAPER_START_HOUR, mismatch_at=()
):
    """A synthetic paper ledger: ``hours`` completed hours from ``start_hour`` that ran the model
    ``manifest_sha256`` (a ``model`` row, a ``reconciliation`` (``mismatch`` at the hours in
    ``mismatch_at``, else ``ok``) and a ``cycle_end`` ``completed`` each). Appends to an existing
    ledger. Returns the path or DSN."""
    from live_bridge.ledger import Ledger
    from live_bridge.ledger import records as rec

    rows = []
    for h in range(start_hour, start_hour + hours):
        rows.append(rec.model(h, model_ref, manifest_sha256))
        rows.append(rec.reconciliation(h, "mismatch" if h in mismatch_at else "ok", {"synthetic": True}))
        rows.append(rec.cycle_end(h, "completed"))
    with Ledger.open(dsn) as led:
        led.append(*rows)
    return dsn


def paper_record_for(tmp: Path, cand_path: Path, hours: int = 720):
    """The paper record of the candidate at ``cand_path`` read from a fresh synthetic paper ledger
    under ``tmp`` (enough for a live promotion by default)."""
    from live_bridge.paper_record import read_paper_record
    from research.lifecycle.gates import read_manifest

    digest = read_manifest(cand_path)["manifest_sha256"]
    dsn = tmp / f"paper-{digest[:12]}-{hours}.sqlite"
    if not dsn.exists():
        write_paper_ledger(dsn, "synthetic/1", digest, hours)
    return read_paper_record(dsn, digest)
