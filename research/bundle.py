"""The final model: fitted on the most recent window, saved as a verifiable bundle directory.

A walk-forward run measures a configuration out of sample; the model that would trade is then fitted
ONCE more on the most recent data: :func:`fit_final` fits one
:class:`~research.models.meta.StackingMetaLearner` per horizon on the latest training window and
returns a :class:`ModelBundle`; :func:`save_bundle` writes it as a directory whose every file is
listed with its sha256 in ``manifest.json``; :func:`load_bundle` refuses a bundle whose files differ
from that list (changed, missing or extra file) BEFORE unpickling anything.

Training window
---------------
The rows are built exactly as a walk-forward fold builds them
(:func:`research.walkforward.window_matrix`, the same eligibility: complete features, universe
member, bar at or after ``start_ts``; one block and one meta-learner for every horizon when the
meta-learner fits a label matrix, as the walk-forward does). The window ends at ``e``, the last bar
that holds an eligible row with a label (the last ``h`` bars of the data have no h-bar label yet,
so ``e`` is set by the shortest horizon), and spans ``[research.folds].train_bars`` hours back from it
(rolling) or everything from the first eligible bar (``expanding = true``). No purge is needed:
nothing is tested after it. Longer horizons' targets end ``h - h_min`` bars earlier (their rows near
``e`` are history only); ``manifest.data.train_windows`` records each horizon's first and last target.

Prediction
----------
:meth:`ModelBundle.predict` reads the feature set and the panel at bars ``at - warm_bars .. at``
only (sequence models and the regime classifier need that history) and returns the META outputs
(P(up), expected simple return over the horizon) for every pair with complete features at ``at``.
Causal by construction: bars after ``at`` are never read (tested).

Files (format ``krakenquant-model/1``)
--------------------------------------
``manifest.json`` (written last), ``config.json`` (the resolved engine config and research table
that trained it), per fitted meta-learner ``models/h{h1-h2-...}/meta.pkl`` (the meta-learner with its
tree base models, regime classifier and stackers, pickled; one folder serving every horizon when
the meta-learner fits all horizons at once, as the walk-forward does, else one per horizon;
``manifest.meta_files`` maps each horizon to its file) with its Keras networks beside it as native
Keras 3 files ``net0.keras``, ``net1.keras``, ... (referenced from the pickle by persistent id), and
with ``extra={"walkforward_dir": ...}`` a copy of the walk-forward's ``metrics.json`` and
``backtest/{trades,equity,events}.parquet, metrics.json`` under ``walkforward/``. Pickles are only
ever read after every file's sha256 matched the manifest (``verify=True``, the default).
"""

from __future__ import annotations

import datetime as _dt
import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InputError, IntegrityError
from engine.hashing import sha256_file, sha256_json

__all__ = [
    "FORMAT",
    "PREDICT_COLUMNS",
    "ModelBundle",
    "fit_final",
    "git_state",
    "load_bundle",
    "manifest_digest",
    "save_bundle",
]

FORMAT = "krakenquant-model/1"
PREDICT_COLUMNS = ("ts", "pair", "horizon", "p_up", "exp_return")
#: the one unlisted file a bundle may hold: research.lifecycle writes its gate verdict beside the
#: manifest (it records the manifest's digest, so it cannot vouch for another bundle)
VERDICT_NAME = "verdict.json"
MODEL_NAMES = ("xgboost", "lightgbm", "random_forest", "lstm", "transformer", "regime", "meta")
# the walk-forward's metrics and its backtest's records (engine.backtest.io), copied into a bundle
_WF_FILES = (
    "metrics.json",
    "backtest/trades.parquet",
    "backtest/equity.parquet",
    "backtest/events.parquet",
    "backtest/metrics.json",
)
# copied too when the run wrote it (the strategy layer's per-bar selection, [strategy] enabled)
_WF_OPTIONAL = ("backtest/selection.parquet",)
# training-time diagnostics of the meta-learner that prediction never reads (window-sized arrays)
_DROP_ATTRS = ("oof_", "stack_X_", "stack_rows_", "inner_folds_")


# ------------------------------------------------------------------------------------------------
# helpers


def git_state() -> tuple[str | None, bool]:
    """(HEAD commit, dirty) of the repository this code runs from; (None, False) outside git."""
    from engine.paths import REPO_ROOT

    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None, False
        st = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True, timeout=30
        )
        return head.stdout.strip() or None, bool(st.stdout.strip()) if st.returncode == 0 else True
    except (OSError, subprocess.SubprocessError):
        return None, False


def _multi_horizon() -> bool:
    """Does the meta-learner fit every horizon at once (a label matrix)? The walk-forward then fits
    one per fold, and so does the final model."""
    from research.models.meta import StackingMetaLearner

    return hasattr(StackingMetaLearner, "predict_all")


def _groups(metas: dict[int, Any], horizons) -> list[tuple[Any, tuple[int, ...]]]:
    """Distinct fitted meta-learners with the horizons each serves (in horizon order)."""
    out: list[tuple[Any, list[int]]] = []
    for h in horizons:
        for meta, hs in out:
            if meta is metas[h]:
                hs.append(int(h))
                break
        else:
            out.append((metas[h], [int(h)]))
    return [(meta, tuple(hs)) for meta, hs in out]


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (:func:`engine.hashing.canonical_json`) without its own
    ``manifest_sha256`` key. A manifest holding NaN or Infinity has no canonical form: IntegrityError."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    try:
        return sha256_json(body)
    except ValueError:
        raise IntegrityError(
            "the bundle manifest holds a non-finite number (NaN or Infinity): edited or corrupted"
        ) from None


# ------------------------------------------------------------------------------------------------
# the bundle


@dataclass(eq=False)
class ModelBundle:
    """One fitted meta-learner per horizon plus what is needed to feed it (see the module doc)."""

    horizons: tuple[int, ...]
    trade_horizon: int
    feature_names: tuple[str, ...]
    feature_schema_sha256: str
    metas: dict[int, Any]  # horizon -> fitted StackingMetaLearner
    warm_bars: int  # history rows a prediction needs (sequence models / regime)
    config: dict = field(repr=False, default_factory=dict)  # {"config": engine config, "research": table}
    venue: str = ""
    pairs: tuple[str, ...] = ()  # pairs that contributed training rows
    train_windows: dict[int, tuple[int, int]] = field(default_factory=dict)  # h -> (first, last) bar open
    n_train: dict[int, int] = field(default_factory=dict)  # h -> training targets
    seed: int = 0
    config_sha256: str = ""
    manifest: dict = field(repr=False, default_factory=dict)  # after save/load
    path: Path | None = None  # after save/load

    def features_config(self):
        from engine.features.config import FeaturesConfig

        return FeaturesConfig(**self.config["config"]["features"])

    def predict(self, features, panel, at: int | None = None) -> pd.DataFrame:
        """Meta P(up) and expected simple return of every horizon for bar ``at`` (bar-open time in
        unix seconds, one of ``panel.ts``; default the last bar), one row per (pair, horizon) for
        every pair with complete features at ``at``. Reads bars ``<= at`` only. Universe membership
        is not applied here: the risk layer's universe rule gates entries (as in the backtester)."""
        from engine.features.featureset import feature_schema_sha256
        from research.walkforward import row_block

        if (
            tuple(features.names) != self.feature_names
            or feature_schema_sha256(features.config) != self.feature_schema_sha256
        ):
            raise InputError(
                "the feature set's schema differs from the one the model was trained on "
                f"(model {self.feature_schema_sha256[:12]}, features "
                f"{feature_schema_sha256(features.config)[:12]}): rebuild the features with the "
                "model's [features] config"
            )
        n, m = panel.close.shape
        if (
            features.values.shape[:2] != (n, m)
            or not np.array_equal(features.ts, panel.ts)
            or tuple(features.pairs) != tuple(panel.pairs)
        ):
            raise InputError("features do not match the panel (bars or pairs)")
        if n == 0:
            raise InputError("the panel has no bars")
        if at is None:
            i = n - 1
        else:
            i = int(np.searchsorted(panel.ts, int(at)))
            if i >= n or int(panel.ts[i]) != int(at):
                raise InputError(f"at={at} is not a bar of the panel ({int(panel.ts[0])} .. {int(panel.ts[-1])})")
        row = features.values[i]
        cols = [j for j in range(m) if features.valid[i, j] and np.isfinite(row[j]).all()]
        if not cols:
            return pd.DataFrame(
                {
                    "ts": pd.Series([], dtype=np.int64),
                    "pair": pd.Series([], dtype=object),
                    "horizon": pd.Series([], dtype=np.int64),
                    "p_up": pd.Series([], dtype=np.float64),
                    "exp_return": pd.Series([], dtype=np.float64),
                }
            )
        lo = max(i - int(self.warm_bars), 0)
        v = features.values[lo : i + 1]
        X3 = np.where(np.isfinite(v), v, np.nan)
        close = np.where(panel.valid[lo : i + 1], panel.close[lo : i + 1], np.nan)
        Xp, cp, sp, bp = row_block(X3, close, 0, i - lo, cols)
        last = bp == i - lo
        pairs = np.asarray(panel.pairs, dtype=object)[sp[last]]
        parts = {}
        for meta, hs in _groups(self.metas, self.horizons):
            if hasattr(meta, "predict_all"):
                o = meta.predict_all(Xp, close=cp, segments=sp)  # base models evaluated once
                P, E = np.asarray(o["p_up"]), np.asarray(o["exp_return"])
            else:
                P = meta.predict_proba(Xp, close=cp, segments=sp)[:, 1][:, None]
                E = np.asarray(meta.predict_return(Xp, close=cp, segments=sp)).reshape(-1, 1)
            for ci, h in enumerate(hs):
                parts[h] = pd.DataFrame(
                    {
                        "ts": np.full(len(pairs), int(panel.ts[i]), dtype=np.int64),
                        "pair": pairs,
                        "horizon": np.int64(h),
                        "p_up": P[last, ci],
                        "exp_return": E[last, ci],
                    }
                )
        out = pd.concat([parts[h] for h in self.horizons], ignore_index=True)
        out["pair"] = out["pair"].astype(str)
        return out[list(PREDICT_COLUMNS)]


# ------------------------------------------------------------------------------------------------
# fitting


def fit_final(
    panel,
    cfg,
    rc,
    *,
    features=None,
    member: np.ndarray | None = None,
    start_ts: int | None = None,
    progress: Callable[..., None] | None = None,
) -> ModelBundle:
    """Fit the production meta-learner of every horizon on the most recent training window.

    Same inputs as :func:`research.walkforward.run_walkforward` (``features``: prebuilt FeatureSet of
    ``panel``; ``member``: universe mask, default ``engine.universe.universe_mask`` when
    ``rc.use_universe``; ``start_ts``: first bar that may be trained on). ``progress(event, **info)``
    receives ``plan`` (horizons, models, inner_folds), ``step`` (horizon, n_train, window), ``fit``
    (horizon, model, stage, final) and ``horizon_done`` events. Deterministic: same inputs and seed ->
    identical predictions."""
    from engine.config import LabelsConfig
    from engine.features.featureset import feature_names, feature_schema_sha256
    from engine.features.labels import future_labels
    from research import walkforward as wf
    from research.config import research_to_json

    horizons = tuple(int(h) for h in rc.horizons_for(cfg))
    n, m = panel.close.shape
    member, features = wf.panel_features(panel, cfg, rc, features, member)
    if tuple(features.names) != tuple(feature_names(features.config)):
        raise InputError("feature set names do not match its config")
    elig = wf.eligible_rows(features, member, start_ts)
    if not elig.any():
        raise InputError("no eligible rows: no bar has complete features for a universe member in the range")
    X3 = np.where(np.isfinite(features.values), features.values, np.nan)
    close = np.where(panel.valid, panel.close, np.nan)
    lab = future_labels(panel, LabelsConfig(horizons=horizons), cfg.fees, with_cost=rc.label_with_cost)
    has_rows = np.asarray(elig.any(axis=1))
    first_bar = int(np.flatnonzero(has_rows)[0])
    if progress:
        progress("plan", horizons=horizons, models=rc.base_models, inner_folds=rc.folds.inner_folds)

    metas: dict[int, Any] = {}
    windows: dict[int, tuple[int, int]] = {}
    n_train: dict[int, int] = {}
    used_cols: set[int] = set()
    warm = 1
    ups = {h: lab[f"future_up_{h}h"] for h in horizons}
    fwds = {h: np.expm1(lab[f"fwd_ret_{h}h"]) for h in horizons}
    labelled = {h: elig & np.isfinite(ups[h]) for h in horizons}
    for h in horizons:
        if not labelled[h].any():
            raise InputError(f"no labelled training rows for the {h}h horizon (span too short)")
    # as the walk-forward: ONE meta-learner for every horizon when it fits a label matrix, else one each
    groups = [horizons] if _multi_horizon() else [(h,) for h in horizons]
    for grp in groups:
        lb = np.flatnonzero(np.logical_or.reduce([labelled[h] for h in grp]).any(axis=1))
        hi = int(lb[-1])  # the last bar with a label (of the shortest horizon in the group)
        lo = first_bar if rc.folds.expanding else max(hi - int(rc.folds.train_bars) + 1, first_bar)
        lo = int(np.flatnonzero(has_rows[lo : hi + 1])[0]) + lo  # first bar with a row, as a fold's min(train bars)
        is_train = np.zeros(n, dtype=bool)
        is_train[lo : hi + 1] = has_rows[lo : hi + 1]
        targets = [labelled[h] & is_train[:, None] for h in grp]
        wm = wf.window_matrix(X3, close, targets, [ups[h] for h in grp], [fwds[h] for h in grp], lo, hi)
        if wm is None:  # pragma: no cover - hi has a labelled row by construction
            raise InputError(f"no training rows for the {'/'.join(map(str, grp))}h horizon(s)")
        X, c, seg, bar, Y, R = wm
        used_cols.update(int(j) for j in np.unique(seg))
        label = "/".join(str(h) for h in grp)
        if progress:
            progress(
                "step",
                horizon=label,
                n_train=int(np.isfinite(Y).any(axis=1).sum()),
                window=(int(panel.ts[lo]), int(panel.ts[hi])),
            )
        meta = wf.make_meta(rc, cfg.seed)

        def on_fit(ev, name, arg, _h=label):
            if progress:
                progress("fit", horizon=_h, model=name, stage=ev, final=arg if ev == "start" else None)

        if len(grp) > 1:
            meta.fit(X, Y, close=c, returns=R, times=panel.ts[bar], segments=seg, on_fit=on_fit)
        else:
            meta.fit(X, Y[:, 0], close=c, returns=R[:, 0], times=panel.ts[bar], segments=seg, on_fit=on_fit)
        for a in _DROP_ATTRS:
            if hasattr(meta, a):
                delattr(meta, a)
        for ci, h in enumerate(grp):
            tb = np.flatnonzero(targets[ci].any(axis=1))
            metas[h] = meta
            windows[h] = (int(panel.ts[tb[0]]), int(panel.ts[tb[-1]]))
            n_train[h] = int(np.isfinite(Y[:, ci]).sum())
        warm = max(warm, wf.warm_bars(meta))
        if progress:
            progress("horizon_done", horizon=label)

    return ModelBundle(
        horizons=horizons,
        trade_horizon=int(rc.trade_horizon),
        feature_names=tuple(features.names),
        feature_schema_sha256=feature_schema_sha256(features.config),
        metas=metas,
        warm_bars=int(warm),
        config={"config": cfg.model_dump(mode="json"), "research": research_to_json(rc)},
        venue=str(panel.venue),
        pairs=tuple(p for j, p in enumerate(panel.pairs) if j in used_cols),
        train_windows=windows,
        n_train=n_train,
        seed=int(cfg.seed),
        config_sha256=cfg.content_hash(),
    )


# ------------------------------------------------------------------------------------------------
# saving and loading


class _Pickler(pickle.Pickler):
    """Pickles a meta-learner with every Keras network written beside it as a native ``.keras`` file
    (``net0.keras``, ``net1.keras``, ... in pickling order) and referenced by a persistent id."""

    def __init__(self, f, folder: Path) -> None:
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.nets: list[tuple[Any, str]] = []
        self._keras = sys.modules.get("keras")

    def persistent_id(self, obj):
        if self._keras is None or not isinstance(obj, self._keras.Model):
            return None
        for o, name in self.nets:
            if o is obj:
                return ("keras", name)
        name = f"net{len(self.nets)}.keras"
        obj.save(self.folder / name)
        self.nets.append((obj, name))
        return ("keras", name)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, folder: Path, seed: int) -> None:
        super().__init__(f)
        self.folder = folder
        self.seed = seed

    def persistent_load(self, pid):
        kind, name = pid if isinstance(pid, tuple) and len(pid) == 2 else (None, None)
        if kind != "keras" or not isinstance(name, str) or Path(name).name != name or not name.endswith(".keras"):
            raise IntegrityError(f"{self.folder / 'meta.pkl'}: unknown persistent reference {pid!r}")
        from research.models.sequences import tf_setup

        tf_setup(self.seed)  # the same op determinism and threading as at fit time
        import keras

        return keras.saving.load_model(self.folder / name, compile=False)


def _meta_dir(hs: tuple[int, ...]) -> str:
    return "models/h" + "-".join(str(h) for h in hs)


def _build_manifest(bundle: ModelBundle, files: dict[str, str], extra: dict) -> dict:
    from engine.features.featureset import warmup_table

    commit, dirty = git_state()
    fc = bundle.features_config()
    wf_metrics = extra.get("_wf_metrics") or {}
    starts = [w[0] for w in bundle.train_windows.values()]
    ends = [w[1] for w in bundle.train_windows.values()]
    man = {
        "format": FORMAT,
        "created_utc": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "seed": int(bundle.seed),
        "config_sha256": bundle.config_sha256,
        "research": bundle.config.get("research", {}),
        "features": {
            "names": list(bundle.feature_names),
            "schema_sha256": bundle.feature_schema_sha256,
            "warmup_bars": int(max(r.bars for r in warmup_table(fc).values())),
        },
        "data": {
            "venue": bundle.venue,
            "pairs": list(bundle.pairs),
            "train_start": int(min(starts)),
            "train_end": int(max(ends)),
            "train_windows": {str(h): [int(a), int(b)] for h, (a, b) in sorted(bundle.train_windows.items())},
            "n_train": {str(h): int(v) for h, v in sorted(bundle.n_train.items())},
        },
        "horizons": [int(h) for h in bundle.horizons],
        "trade_horizon": int(bundle.trade_horizon),
        "warm_bars": int(bundle.warm_bars),
        "outputs": ["p_up", "exp_return"],
        "models": list(MODEL_NAMES),
        "meta_files": extra.get("_meta_files", {}),  # horizon -> its meta-learner (shared when one fits all)
        "walkforward": {
            "run_id": extra.get("run_id"),
            "out_dir": str(extra["walkforward_dir"]) if extra.get("walkforward_dir") else None,
            "strategy": wf_metrics.get("strategy"),
            "suspected_leak": wf_metrics.get("suspected_leak"),
        },
        "files": dict(sorted(files.items())),
    }
    other = {k: v for k, v in extra.items() if k not in ("run_id", "walkforward_dir", "_wf_metrics", "_meta_files")}
    if other:
        man["extra"] = other
    from research.report import json_clean

    man = json_clean(man)
    man["manifest_sha256"] = manifest_digest(man)
    return man


def save_bundle(bundle: ModelBundle, out_dir, *, extra: dict | None = None) -> dict:
    """Write ``bundle`` into the NEW folder ``out_dir`` atomically; returns the manifest.

    ``extra``: ``walkforward_dir`` (a ``kq walkforward`` output folder: its metrics.json and
    backtest outputs are copied under ``walkforward/`` and its strategy metrics go into the
    manifest), ``run_id`` (the MLflow run), anything else is kept under ``manifest["extra"]``.
    Everything is written into a temporary folder next to ``out_dir`` (manifest.json last) and moved
    into place in one rename (:func:`engine.paths.atomic_folder`): a failure leaves nothing at
    ``out_dir``."""
    extra = dict(extra or {})
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"bundle folder {out} already exists (bundles are never overwritten)")
    if not out.parent.is_dir():
        raise InputError(f"bundle folder {out}: parent folder {out.parent} does not exist")
    wfd = Path(extra["walkforward_dir"]) if extra.get("walkforward_dir") else None
    if wfd is not None:
        missing = [f for f in _WF_FILES if not (wfd / f).is_file()]
        if missing:
            raise InputError(f"walk-forward folder {wfd} lacks {', '.join(missing)}")
        extra["_wf_metrics"] = json.loads((wfd / "metrics.json").read_text())
    from engine.paths import atomic_folder

    with atomic_folder(out, option="bundle folder") as tmp:
        (tmp / "config.json").write_text(json.dumps(bundle.config, indent=2, sort_keys=True) + "\n")
        meta_files: dict[str, str] = {}
        for meta, hs in _groups(bundle.metas, bundle.horizons):
            d = tmp / _meta_dir(hs)
            d.mkdir(parents=True)
            with open(d / "meta.pkl", "wb") as f:
                _Pickler(f, d).dump(meta)
            for h in hs:
                meta_files[str(h)] = f"{_meta_dir(hs)}/meta.pkl"
        extra["_meta_files"] = meta_files
        if wfd is not None:
            for name in _WF_FILES + tuple(f for f in _WF_OPTIONAL if (wfd / f).is_file()):
                dst = tmp / "walkforward" / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(wfd / name, dst)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        man = _build_manifest(bundle, files, extra)
        (tmp / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")  # last
    bundle.manifest = man
    bundle.path = out
    return man


def read_manifest(path) -> dict:
    """The manifest of the bundle at ``path`` (format and self-digest checked, files not hashed)."""
    p = Path(path)
    mf = p / "manifest.json"
    if not p.is_dir():
        raise InputError(f"no model bundle at {p} (not a folder)")
    if not mf.is_file():
        raise IntegrityError(f"{mf}: missing (not a model bundle, or a half-written one)")
    try:
        man = json.loads(mf.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{mf}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        fmt = man.get("format") if isinstance(man, dict) else None
        raise IntegrityError(f"{mf}: unknown bundle format {fmt!r} (this version reads {FORMAT!r})")
    if man.get("manifest_sha256") != manifest_digest(man):
        raise IntegrityError(f"{mf}: manifest content does not match its manifest_sha256 (edited or corrupted)")
    if not isinstance(man.get("files"), dict):
        raise IntegrityError(f"{mf}: no files table")
    return man


def verify_bundle(path) -> dict:
    """Check every file against the manifest: changed, missing or unlisted files raise IntegrityError
    naming the file. Returns the manifest."""
    p = Path(path)
    man = read_manifest(p)
    listed = man["files"]
    present = {q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file() or q.is_symlink()}
    present.discard("manifest.json")
    present.discard(VERDICT_NAME)  # the lifecycle's validation verdict (root only), bound to manifest_sha256
    for rel in sorted(present - set(listed)):
        raise IntegrityError(f"{p / rel}: file not listed in the bundle manifest (extra file)")
    for rel, sha in sorted(listed.items()):
        f = p / rel
        if not f.is_file() or f.is_symlink():
            raise IntegrityError(f"{f}: listed in the bundle manifest but missing")
        if sha256_file(f) != sha:
            raise IntegrityError(f"{f}: sha256 differs from the bundle manifest (changed or corrupted)")
    return man


def load_bundle(path, *, verify: bool = True) -> ModelBundle:
    """Load a saved bundle. ``verify`` (default): every file's sha256 is checked BEFORE any pickle
    is read; a changed, missing or extra file raises :class:`~engine.errors.IntegrityError` naming it."""
    p = Path(path)
    man = verify_bundle(p) if verify else read_manifest(p)
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{p / 'config.json'}: unreadable ({e})") from None
    horizons = tuple(int(h) for h in man["horizons"])
    metas: dict[int, Any] = {}
    loaded: dict[str, Any] = {}
    files = man.get("meta_files") or {}
    for h in horizons:
        rel = files.get(str(h))
        if not isinstance(rel, str) or rel not in man["files"]:
            raise IntegrityError(f"{p / 'manifest.json'}: no meta-learner file listed for the {h}h horizon")
        if rel not in loaded:
            f = p / rel
            try:
                with open(f, "rb") as fh:
                    loaded[rel] = _Unpickler(fh, f.parent, int(man.get("seed", 0))).load()
            except FileNotFoundError:
                raise IntegrityError(f"{f}: missing") from None
        metas[h] = loaded[rel]
    data = man.get("data", {})
    tw = {int(k): (int(v[0]), int(v[1])) for k, v in (data.get("train_windows") or {}).items()}
    return ModelBundle(
        horizons=horizons,
        trade_horizon=int(man["trade_horizon"]),
        feature_names=tuple(man["features"]["names"]),
        feature_schema_sha256=man["features"]["schema_sha256"],
        metas=metas,
        warm_bars=int(man["warm_bars"]),
        config=config,
        venue=data.get("venue", ""),
        pairs=tuple(data.get("pairs", ())),
        train_windows=tw,
        n_train={int(k): int(v) for k, v in (data.get("n_train") or {}).items()},
        seed=int(man.get("seed", 0)),
        config_sha256=man.get("config_sha256", ""),
        manifest=man,
        path=p,
    )
