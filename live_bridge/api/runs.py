"""Research outputs under a runs folder, for the API: each direct sub-folder that holds a backtest
(``metrics.json`` + ``equity.parquet``; engine/backtest/io.py), a walk-forward (``folds.json`` +
``metrics.json``; research/report.py), a sweep (``sweep.json``; research/sweep.py) or a study
(``study.json``; research/study.py). Only JSON and Parquet files are read; nothing is written."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import InputError

__all__ = ["RUN_ID", "clean", "list_runs", "read_run"]

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_POINTS = 2000
MAX_ROWS = 500


def clean(v: Any) -> Any:
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalar
        try:
            v = v.item()
        except (ValueError, TypeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _kind(d: Path) -> str | None:
    if (d / "sweep.json").is_file():
        return "sweep"
    if (d / "study.json").is_file():
        return "study"
    if (d / "folds.json").is_file() and (d / "metrics.json").is_file():
        return "walkforward"
    if (d / "metrics.json").is_file() and (d / "equity.parquet").is_file():
        return "backtest"
    return None


def _doc_file(kind: str) -> str:
    return {"sweep": "sweep.json", "study": "study.json"}.get(kind, "metrics.json")


def _read_json(p: Path) -> dict[str, Any]:
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p.name}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p.name}: not a JSON object")
    return clean(doc)


def _scalars(d: Any, limit: int = 16) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out = {k: v for k, v in d.items() if v is None or isinstance(v, (int, float, str, bool))}
    return dict(list(out.items())[:limit])


def _headline(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    if kind == "backtest":
        return _scalars(doc)
    if kind == "walkforward":
        return {**_scalars(doc.get("strategy")), **_scalars(doc.get("overfitting"))}
    if kind == "sweep":
        best = doc.get("best") or {}
        return {
            "n_sets": doc.get("n_sets"),
            "objective": doc.get("objective"),
            **_scalars(best.get("metrics") if isinstance(best, dict) else None, 12),
        }
    best = doc.get("best") or {}
    vals = best.get("values") if isinstance(best, dict) else None
    return {"counts": None, **_scalars(doc.get("counts")), **_scalars(vals)}


def _mtime(d: Path, kind: str) -> str:
    t = (d / _doc_file(kind)).stat().st_mtime
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every recognised run folder directly under ``root``, newest first; an unreadable one is
    listed with ``headline.error``."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or not RUN_ID.fullmatch(d.name):
            continue
        kind = _kind(d)
        if kind is None:
            continue
        try:
            head = _headline(kind, _read_json(d / _doc_file(kind)))
        except InputError as e:
            head = {"error": str(e)}
        head = {k: v for k, v in head.items() if v is None or isinstance(v, (int, float, str, bool))}
        out.append({"id": d.name, "kind": kind, "modified_utc": _mtime(d, kind), "headline": clean(head)})
    out.sort(key=lambda r: (r["modified_utc"], r["id"]), reverse=True)
    return out


def _equity_chart(p: Path) -> list[dict[str, Any]]:
    if not p.is_file():
        return []
    import pandas as pd

    try:
        df = pd.read_parquet(p, columns=["ts", "equity", "drawdown"])
    except Exception as e:  # a damaged file: the run's page still opens
        raise InputError(f"{p.name}: not readable ({type(e).__name__})") from None
    from engine.backtest.io import curve_index

    sub = df.iloc[curve_index(len(df), MAX_POINTS)]
    return [
        {
            "ts": int(ts),
            "utc": datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "equity": clean(float(eq)),
            "drawdown": clean(float(dd)),
        }
        for ts, eq, dd in zip(sub["ts"], sub["equity"], sub["drawdown"], strict=True)
    ]


def _benchmark(p: Path) -> dict[str, Any] | None:
    """benchmark.json (buy-and-hold of the run's pairs over its hours, engine/backtest/io.py), its
    curve as chart points; None when the run has none (written without the market)."""
    if not p.is_file():
        return None
    doc = _read_json(p)
    try:
        curve = [
            {
                "ts": int(ts),
                "utc": datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "equity": eq,
                "drawdown": dd,
            }
            for ts, eq, dd in doc["curve"]
        ]
        return {"definition": str(doc["definition"]), "metrics": dict(doc["metrics"]), "curve": curve}
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p.name}: not a benchmark document ({type(e).__name__})") from None


def _table(p: Path) -> list[dict[str, Any]]:
    if not p.is_file():
        return []
    import pandas as pd

    try:
        df = pd.read_parquet(p)
    except Exception as e:
        raise InputError(f"{p.name}: not readable ({type(e).__name__})") from None
    return clean(df.head(MAX_ROWS).to_dict(orient="records"))


def read_run(root: Path, run_id: str) -> dict[str, Any]:
    """One run: its metrics document, its equity chart (downsampled), buy-and-hold of the same pairs
    over the same hours (``benchmark``, None when not written) and its results table.
    LookupError (-> 404) for an id that is not a run folder directly under ``root``."""
    if not RUN_ID.fullmatch(run_id):
        raise LookupError(f"no run {run_id[:80]!r}")
    d = root / run_id
    kind = _kind(d) if d.is_dir() else None
    if kind is None:
        raise LookupError(f"no run {run_id!r} under the runs folder")
    doc = _read_json(d / _doc_file(kind))
    eq = {"backtest": d / "equity.parquet", "walkforward": d / "backtest" / "equity.parquet"}.get(kind)
    tab = {"sweep": d / "results.parquet", "study": d / "trials.parquet"}.get(kind)
    bench = {"backtest": d / "benchmark.json", "walkforward": d / "backtest" / "benchmark.json"}.get(kind)
    return {
        "id": run_id,
        "kind": kind,
        "modified_utc": _mtime(d, kind),
        "metrics": doc,
        "equity": _equity_chart(eq) if eq is not None else [],
        "benchmark": _benchmark(bench) if bench is not None else None,
        "table": _table(tab) if tab is not None else [],
        "files": sorted(p.name for p in d.iterdir()),
    }
