"""The live bridge's model loader: the APPROVED model of an environment, or an error.

:func:`load_approved` is the only way the live bridge obtains a model. It takes an environment,
never a model reference, and returns the model that the approvals store says is current there -
after checking, in this order, and refusing with a one-line error on the first failure:

1. the approvals log's hash chain verifies and replaying it reproduces every ``state.json``
   (``IntegrityError``);
2. something is approved for the environment (``ConfigError``);
3. the approved model's folder exists, its manifest is the one approved (same ``manifest_sha256``),
   every artifact's sha256 matches the manifest, its ``verdict.json`` PASSED for exactly this
   manifest, and re-running the gates that read only the bundle's files (integrity, schema from the
   manifest, quality and risk from the stored Parquet records; ``research.lifecycle.gates.rerun_gates``)
   under the verdict's thresholds and this config reproduces that verdict check for check, so a
   hand-edited ``verdict.json`` (not covered by the manifest) is refused (``IntegrityError``);
4. its declared inputs equal the CURRENT feature configuration's names, order and schema hash
   (``ConfigError``);
5. ``research.bundle.load_bundle`` loads it (step 3 hashed every file, allowing only ``verdict.json`` beside
   the manifest), every file is hashed AGAIN after unpickling (what
   was loaded is what was approved), and the loaded model's feature names / schema hash / horizons
   equal the current feature set (``IntegrityError`` / ``ConfigError``).

There is no fallback: no "latest candidate", no previous model, no unverified load. Rolling back is
an explicit, logged operator action (``kq models rollback``).

The live bridge may import ``research`` for the model artifacts (``research.bundle``) and their
governance (``research.lifecycle``); research never imports the live bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, IntegrityError

__all__ = ["ApprovedModel", "load_approved"]


@dataclass(frozen=True, eq=False)
class ApprovedModel:
    env: str
    model: str  # candidate ref "NAME/VERSION"
    path: Path
    manifest_sha256: str
    approval: dict  # the approvals-log entry that made it current (promote or rollback)
    bundle: Any  # research.bundle.ModelBundle

    def predict(self, features, panel, at: int | None = None):
        return self.bundle.predict(features, panel, at)


def load_approved(env: str, cfg=None, *, approvals_dir: str | Path | None = None) -> ApprovedModel:
    """The approved model of ``env`` ("paper" or "live") under config ``cfg`` (default
    configs/default.toml). ``approvals_dir`` overrides ``lifecycle.approvals_dir``."""
    from engine.config import load_config
    from engine.features.featureset import feature_names, feature_schema_sha256
    from research.bundle import load_bundle
    from research.lifecycle.actions import approvals_dir as _dir
    from research.lifecycle.actions import check_approvable
    from research.lifecycle.approvals import ENVS, ApprovalStore
    from research.lifecycle.gates import check_files

    if env not in ENVS:
        raise ConfigError(f"model loader: unknown environment {env!r} (one of {', '.join(ENVS)})")
    cfg = cfg if cfg is not None else load_config()
    store = ApprovalStore(Path(approvals_dir) if approvals_dir is not None else _dir(cfg))
    with store.locked(shared=True):
        rep = store.audit()
        if not rep.ok:
            raise IntegrityError(f"model loader ({env}): {rep.message}")
        cur = rep.states[env]["current"]
        if cur is None:
            raise ConfigError(
                f"model loader ({env}): no model is approved for {env} (kq models promote MODEL --env {env} ...)"
            )
        entry = _entry(store, rep.states[env]["last_seq"])
        path = Path(cur["path"])
        what = f"model loader ({env})"
        man, _ = check_approvable(path, cfg, expect_manifest=cur["manifest_sha256"], what=what)
        try:  # every file was hashed just above (verdict.json is the one extra file allowed)
            bundle = load_bundle(path, verify=False)
        except IntegrityError as e:
            raise IntegrityError(f"{what}: {e}") from None
        # and again after unpickling: what was loaded is what was checked and approved
        probs = check_files(path, man)
        if probs or bundle.manifest.get("manifest_sha256") != cur["manifest_sha256"]:
            raise IntegrityError(f"{what}: {path} changed while loading ({probs[0] if probs else 'manifest'})")
    want_names, want_hash = tuple(feature_names(cfg.features)), feature_schema_sha256(cfg.features)
    if tuple(bundle.feature_names) != want_names or bundle.feature_schema_sha256 != want_hash:
        raise ConfigError(
            f"model loader ({env}): {cur['model']} reads features {bundle.feature_schema_sha256[:16]}, "
            f"the current feature set is {want_hash[:16]} (schema mismatch)"
        )
    if sorted(bundle.metas) != sorted(bundle.horizons) or bundle.trade_horizon not in bundle.horizons:
        raise IntegrityError(f"model loader ({env}): {cur['model']} does not hold a model for every declared horizon")
    return ApprovedModel(
        env=env, model=cur["model"], path=path, manifest_sha256=cur["manifest_sha256"], approval=entry, bundle=bundle
    )


def _entry(store, seq: int) -> dict:
    entries, _ = store.read_log()
    for e in entries:
        if e.get("seq") == seq:
            return e
    raise IntegrityError(f"model loader: approvals log has no entry {seq}")
