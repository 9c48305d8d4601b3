"""MLflow tracking of walk-forward runs and the candidate registry (``[research.tracking]``).

Store
-----
Default: an embedded sqlite store ``<data dir>/mlflow/mlflow.db`` with artifacts under
``<data dir>/mlflow/artifacts`` (data dir = the folder of the default market store, ``data/`` in the
repository, or the folder of ``$KQ_STORE``). ``[research.tracking] uri`` names another store (a
sqlite file, a ``file:`` folder or an MLflow server); ``$KQ_TRACKING_URI`` overrides both. Only
``mlflow-skinny`` is installed (no UI server); a full MLflow elsewhere can browse the sqlite file
(``mlflow ui --backend-store-uri sqlite:///data/mlflow/mlflow.db``).

One run per walk-forward (:func:`log_walkforward_run`)
-----------------------------------------------------
params: the flattened research table (``research.folds.train_bars`` ...), seed, venue, pairs, span,
config path; metrics: per fold (step = fold) ``{model}.{h}h.{auc,log_loss,brier,hit_rate}``, pooled
out-of-sample ``oos.{model}.{h}h.*``, the OOS backtest ``strategy.*`` and ``overfitting.{dsr,pbo}``;
tags: git commit and dirty flag, data hash (the feature set's content hash), feature schema hash,
config sha256, suspected leak; artifacts: the whole output folder (report.html, metrics.json,
folds.json, predictions, backtest/).

Candidates
----------
A candidate is a version of the registered model ``[research.tracking] registered_model`` whose
source is a model bundle (research/bundle.py) logged as the run's artifact ``model/``. Version tags:
``feature_schema_sha256``, ``config_sha256``, ``git_commit``, ``train_start``, ``train_end``,
``manifest_sha256``, ``bundle_format``. :func:`register_candidate`, :func:`get_candidate` and
:func:`list_candidates` are the whole interface; promotion is the model lifecycle's business.

Failures
--------
Anything MLflow raises becomes :class:`TrackingError` (one line, exit code 1). ``kq walkforward``
writes its outputs first and logs after, so a failed logging loses nothing. MLflow is imported only
inside these functions (slow import); its INFO logging (database creation) is silenced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from engine.errors import InputError, KQError

__all__ = [
    "Candidate",
    "TrackingError",
    "check_tracking",
    "flatten_params",
    "get_candidate",
    "list_candidates",
    "log_bundle",
    "log_walkforward_run",
    "redact_uri",
    "register_candidate",
    "resolve_tracking",
    "set_candidate_tags",
]

ENV_URI = "KQ_TRACKING_URI"
MODEL_ARTIFACT = "model"


class TrackingError(KQError):
    """MLflow tracking or the registry failed (unreachable server, broken store)."""

    exit_code = 1


@dataclass(frozen=True)
class Candidate:
    name: str
    version: int
    run_id: str | None
    path: Path
    tags: dict = field(default_factory=dict)
    created: int = 0  # unix seconds

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


# ------------------------------------------------------------------------------------------------
# store resolution


def redact_uri(uri: str) -> str:
    """The URI without a password (``https://user:***@host``) for messages and tags."""
    try:
        u = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if u.password is None and "@" not in (u.netloc or ""):
        return uri
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    user = f"{u.username}:***@" if u.username else "***@"
    return urlunsplit((u.scheme, user + host, u.path, u.query, u.fragment))


def default_tracking_dir() -> Path:
    from engine.paths import default_store_path

    return default_store_path().expanduser().resolve().parent / "mlflow"


def resolve_tracking(tracking) -> tuple[str, Path | None]:
    """(tracking URI, local artifact root or None when the server decides)."""
    uri = os.environ.get(ENV_URI) or (tracking.uri if tracking is not None else None)
    if not uri:
        d = default_tracking_dir()
        return f"sqlite:///{d / 'mlflow.db'}", d / "artifacts"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return uri, db.expanduser().resolve().parent / "artifacts"
    if "://" not in uri:  # a bare folder: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri(), None
    return uri, None


_QUIET = False


def _mlflow():
    """Import mlflow quietly (lazy: the import takes seconds) with short HTTP retries."""
    global _QUIET
    if not _QUIET:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        for name in ("mlflow", "alembic", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        _QUIET = True
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic", "alembic.runtime.migration"):  # mlflow may reset its level on import
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


def _fail(uri: str, what: str, e: BaseException) -> TrackingError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = re.sub(r"//[^/@\s]*:[^/@\s]*@", "//***@", msg)[:300]
    return TrackingError(f"MLflow {what} failed at {redact_uri(uri)}: {type(e).__name__}: {msg}")


def _client(tracking):
    uri, root = resolve_tracking(tracking)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    if uri.startswith("sqlite:///"):
        _precheck_sqlite(uri)
    Client = _mlflow()
    try:
        with _init_lock(uri):
            client = Client(tracking_uri=uri, registry_uri=uri)
            if uri.startswith("sqlite:"):
                client._tracking_client.store  # noqa: B018 - open (and on first use create) the tables now
                client._get_registry_client().store  # noqa: B018
        return client, uri, root
    except Exception as e:  # any store failure is one line
        raise _fail(uri, "connection", e) from None


def _precheck_sqlite(uri: str) -> None:
    """Open the sqlite file directly first: MLflow retries a failing engine with backoff for ~100 s."""
    import sqlite3

    path = uri[len("sqlite:///") :].split("?", 1)[0]
    try:
        con = sqlite3.connect(path, timeout=30)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise _fail(uri, "connection", e) from None


class _init_lock:
    """An exclusive lock file beside a sqlite store while the store is opened: two processes opening
    a NEW store at once would both try to create its tables (measured: "table experiments already
    exists"). Logging itself relies on sqlite's own locking."""

    def __init__(self, uri: str) -> None:
        self.path = Path(uri[len("sqlite:///") :] + ".lock") if uri.startswith("sqlite:///") else None
        self.f = None

    def __enter__(self):
        if self.path is not None and self.path.parent.is_dir():
            try:
                import fcntl

                self.f = open(self.path, "a")
                fcntl.flock(self.f, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no POSIX locks here: open unlocked
                self.f = None
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # releases the lock
        return False


def _experiment_id(client, tracking, uri: str, root: Path | None) -> str:
    name = tracking.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            loc = (root / re.sub(r"[^A-Za-z0-9_.\-]", "_", name)).as_uri() if root is not None else None
            return client.create_experiment(name, artifact_location=loc)
        except Exception:  # created by a concurrent process meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} at {redact_uri(uri)} is deleted; restore it or set "
            "[research.tracking] experiment"
        )
    return exp.experiment_id


def check_tracking(tracking) -> str:
    """Open the store and the experiment now (before a long run); returns the experiment id."""
    client, uri, root = _client(tracking)
    try:
        return _experiment_id(client, tracking, uri, root)
    except TrackingError:
        raise
    except Exception as e:
        raise _fail(uri, "tracking store", e) from None


# ------------------------------------------------------------------------------------------------
# runs


def flatten_params(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"}; lists as JSON; MLflow's 6000-character value limit kept."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            s = json.dumps(v) if isinstance(v, (list, tuple)) else ("null" if v is None else str(v))
            out[key] = s if len(s) <= 6000 else s[:5990] + "...(cut)"
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
        return float(v)
    return None


def _run_metrics(metrics: dict) -> list[tuple[str, float, int]]:
    """(key, value, step) for every per-fold, pooled, strategy and overfitting number."""
    out: list[tuple[str, float, int]] = []
    for r in metrics.get("models") or []:
        base = f"{r['model']}.{int(r['horizon'])}h"
        pooled = r["fold"] == "all"
        for k in ("auc", "log_loss", "brier", "hit_rate", "n"):
            v = _num(r.get(k))
            if v is not None:
                out.append((f"oos.{base}.{k}" if pooled else f"{base}.{k}", v, 0 if pooled else int(r["fold"])))
    for k, v in (metrics.get("strategy") or {}).items():
        x = _num(v)
        if x is not None:
            out.append((f"strategy.{k}", x, 0))
    ov = metrics.get("overfitting") or {}
    for key, sub, name in (("deflated_sharpe", "dsr", "overfitting.dsr"), ("pbo", "pbo", "overfitting.pbo")):
        x = _num((ov.get(key) or {}).get(sub))
        if x is not None:
            out.append((name, x, 0))
    out.append(("suspected_leak", float(bool(metrics.get("suspected_leak"))), 0))
    return out


def log_walkforward_run(out_dir, metrics: dict, meta: dict, cfg, rc, tracking, *, end_run: bool = True) -> str:
    """Log one walk-forward (already written to ``out_dir``) as an MLflow run; returns the run id.

    ``meta`` is the walk-forward's metrics meta (venue, pairs, start, end, config, seed, ...) plus
    ``data_sha256`` (feature set content hash) and ``feature_schema_sha256``. ``end_run=False``
    leaves the run RUNNING (the caller adds the model bundle, then :func:`finish_run`)."""
    from mlflow.entities import Metric, Param

    from research.bundle import git_state
    from research.config import research_to_json

    out = Path(out_dir)
    client, uri, root = _client(tracking)
    run_id = None
    try:
        exp_id = _experiment_id(client, tracking, uri, root)
        commit, dirty = git_state()
        tags = {
            "kq.command": "walkforward",
            "git_commit": commit or "unknown",
            "git_dirty": str(bool(dirty)).lower(),
            "data_sha256": str(meta.get("data_sha256") or ""),
            "feature_schema_sha256": str(meta.get("feature_schema_sha256") or ""),
            "config_sha256": cfg.content_hash(),
            "venue": str(meta.get("venue", "")),
            "pairs": str(meta.get("pairs", "")),
            "suspected_leak": str(bool(metrics.get("suspected_leak"))).lower(),
            "out_dir": str(out.resolve()),
        }
        if commit:
            tags["mlflow.source.git.commit"] = commit
        name = f"wf-{meta.get('venue', '')}-{_day(meta.get('start'))}-{_day(meta.get('end'))}"
        run = client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        params = {
            "seed": str(cfg.seed),
            "venue": str(meta.get("venue", "")),
            "pairs": str(meta.get("pairs", "")),
            "start": str(meta.get("start")),
            "end": str(meta.get("end")),
            "config": str(meta.get("config", "")),
            "bars_loaded": str(meta.get("bars_loaded", "")),
        }
        params.update(flatten_params(research_to_json(rc), "research."))
        plist = [Param(k[:250], v) for k, v in sorted(params.items())]
        now = int(time.time() * 1000)
        mlist = [Metric(k, v, now, s) for k, v, s in _run_metrics(metrics)]
        for i in range(0, len(plist), 100):
            client.log_batch(run_id, params=plist[i : i + 100])
        for i in range(0, len(mlist), 1000):
            client.log_batch(run_id, metrics=mlist[i : i + 1000])
        client.log_artifacts(run_id, str(out))
        if end_run:
            client.set_terminated(run_id, "FINISHED")
        return run_id
    except TrackingError:
        raise
    except Exception as e:
        if run_id is not None:
            with contextlib.suppress(Exception):  # the original error is the one to report
                client.set_terminated(run_id, "FAILED")
        raise _fail(uri, "logging", e) from None


def finish_run(run_id: str, tracking, status: str = "FINISHED") -> None:
    client, uri, _ = _client(tracking)
    try:
        client.set_terminated(run_id, status)
    except Exception as e:
        raise _fail(uri, "run update", e) from None


def _day(ts) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y%m%d")
    except (TypeError, ValueError, OverflowError):
        return "na"


# ------------------------------------------------------------------------------------------------
# candidates


def _local_path(uri: str) -> Path | None:
    u = urlsplit(uri)
    if u.scheme == "file":
        from urllib.request import url2pathname

        return Path(url2pathname(u.path))
    if u.scheme == "" and uri:
        return Path(uri)
    return None


def _bundle_path(client, source: str, name: str, version: int) -> Path:
    """The bundle folder of a model version: the artifact folder itself on a local store, else a
    download cached under the tracking dir."""
    p = _local_path(source)
    if p is not None:
        return p
    cache = default_tracking_dir() / "cache" / name / str(version)
    if not (cache / "manifest.json").is_file():
        import shutil

        import mlflow.artifacts

        tmp = cache.parent / f".{version}.dl-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
            if not cache.exists():
                os.replace(got, cache)  # complete download moved into place in one rename
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _candidate(client, mv) -> Candidate:
    return Candidate(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or None,
        path=_bundle_path(client, mv.source, mv.name, int(mv.version)),
        tags=dict(mv.tags or {}),
        created=int((mv.creation_timestamp or 0) // 1000),
    )


def log_bundle(bundle_dir, *, tracking, run_id: str) -> str:
    """Log a saved bundle folder as the run's artifact ``model/``; returns its artifact URI."""
    from research.bundle import verify_bundle

    verify_bundle(bundle_dir)
    client, uri, _ = _client(tracking)
    try:
        held = client.list_artifacts(run_id, MODEL_ARTIFACT)
    except Exception as e:
        raise _fail(uri, "artifact listing", e) from None
    if held:  # logging again would MERGE two bundles into one folder under a registered version
        raise InputError(f"MLflow run {run_id} already holds a {MODEL_ARTIFACT}/ artifact: one model bundle per run")
    try:
        client.log_artifacts(run_id, str(bundle_dir), MODEL_ARTIFACT)
        return client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + MODEL_ARTIFACT
    except Exception as e:
        raise _fail(uri, "artifact logging", e) from None


def register_candidate(bundle_dir, *, tracking, run_id: str) -> Candidate:
    """Log the bundle at ``bundle_dir`` as ``model/`` of run ``run_id`` and register it as a new
    version of the registered model: the candidate. The logged copy is verified against its
    manifest before it is registered."""
    from research.bundle import verify_bundle

    man = verify_bundle(bundle_dir)
    source = log_bundle(bundle_dir, tracking=tracking, run_id=run_id)
    client, uri, _ = _client(tracking)
    name = tracking.registered_model
    try:
        local = _local_path(source)
        if local is not None:
            verify_bundle(local)  # what the registry points at is intact
        try:
            client.create_registered_model(
                name, description="krakenquant model bundles (research/bundle.py); each version is a candidate"
            )
        except Exception:  # exists already (or a concurrent process created it)
            client.get_registered_model(name)
        data = man.get("data", {})
        tags = {
            "feature_schema_sha256": man["features"]["schema_sha256"],
            "config_sha256": man["config_sha256"],
            "git_commit": str(man.get("git_commit") or "unknown"),
            "git_dirty": str(bool(man.get("git_dirty"))).lower(),
            "train_start": str(data.get("train_start")),
            "train_end": str(data.get("train_end")),
            "manifest_sha256": man["manifest_sha256"],
            "bundle_format": man["format"],
            "horizons": ",".join(str(h) for h in man["horizons"]),
            "trade_horizon": str(man["trade_horizon"]),
        }
        mv = client.create_model_version(
            name,
            source,
            run_id=run_id,
            tags=tags,
            description=f"bundle {man['manifest_sha256'][:12]}, trained "
            f"{_day(data.get('train_start'))}..{_day(data.get('train_end'))}",
        )
        return _candidate(client, mv)
    except KQError:
        raise
    except Exception as e:
        raise _fail(uri, "model registration", e) from None


def _parse_ref(ref: str, default_name: str) -> tuple[str, int]:
    s = str(ref).strip()
    name, _, ver = s.rpartition("/")
    name = name or default_name
    if not ver.isdigit() or int(ver) < 1 or not name:
        raise InputError(f"candidate {ref!r}: expected NAME/VERSION or VERSION (e.g. {default_name}/3)")
    return name, int(ver)


def get_candidate(ref: str, tracking) -> Candidate:
    """The candidate ``NAME/VERSION`` or ``VERSION`` (of ``[research.tracking] registered_model``)."""
    name, ver = _parse_ref(ref, tracking.registered_model)
    client, uri, _ = _client(tracking)
    try:
        mv = client.get_model_version(name, str(ver))
    except Exception as e:
        code = getattr(e, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower() or "does not exist" in str(e).lower():
            raise InputError(f"no candidate {name}/{ver} in {redact_uri(uri)}") from None
        raise _fail(uri, "registry lookup", e) from None
    try:
        return _candidate(client, mv)
    except Exception as e:
        raise _fail(uri, "artifact download", e) from None


def set_candidate_tags(ref: str, tags: dict, tracking) -> Candidate:
    """Set model-version tags of the candidate ``ref`` (values as strings); returns it updated."""
    name, ver = _parse_ref(ref, tracking.registered_model)
    get_candidate(f"{name}/{ver}", tracking)  # InputError when it does not exist
    client, uri, _ = _client(tracking)
    try:
        for k, v in tags.items():
            client.set_model_version_tag(name, str(ver), str(k), str(v))
    except Exception as e:
        raise _fail(uri, "model version tagging", e) from None
    return get_candidate(f"{name}/{ver}", tracking)


def list_candidates(tracking) -> list[Candidate]:
    """Every version of the registered model, oldest first ([] when none was registered)."""
    client, uri, _ = _client(tracking)
    name = tracking.registered_model
    try:
        mvs = client.search_model_versions(f"name='{name}'")
        return sorted((_candidate(client, mv) for mv in mvs), key=lambda c: c.version)
    except Exception as e:
        raise _fail(uri, "registry listing", e) from None
