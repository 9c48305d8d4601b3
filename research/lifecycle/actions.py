"""Lifecycle actions over a candidate folder and the approvals store: validate, promote, rollback.

Registry-free on purpose: a candidate here is a :class:`CandidateInfo` (its ref, its local bundle
folder, its registry tags); ``research.lifecycle.registry`` turns MLflow model versions into them.
Every refusal raises before anything is written, with one line that says why and that nothing
changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError, InputError, IntegrityError
from engine.lifecycle_config import (
    PaperRecord,
    effective_thresholds,
    looser_than,
    protected_sha256,
    required_paper_hours,
)
from research.lifecycle.approvals import ENVS, ApprovalStore
from research.lifecycle.gates import (
    Verdict,
    check_files,
    gate_schema,
    read_manifest,
    read_verdict,
    rerun_gates,
    validate_bundle,
    verdict_differences,
    write_verdict,
)
from research.lifecycle.util import operator_name, sha256_file, utc_now_iso

__all__ = [
    "PROMOTE_WORD",
    "ROLLBACK_WORD",
    "CandidateInfo",
    "approvals_dir",
    "check_approvable",
    "check_paper_record",
    "promote",
    "required_thresholds",
    "rollback",
    "store_for",
    "validate",
]

PROMOTE_WORD = "yes-promote"
ROLLBACK_WORD = "yes-rollback"


@dataclass(frozen=True)
class CandidateInfo:
    ref: str  # "NAME/VERSION"
    path: Path  # the bundle folder
    tags: dict = field(default_factory=dict)
    run_id: str | None = None


def approvals_dir(cfg) -> Path:
    from engine.paths import data_dir

    d = cfg.lifecycle.approvals_dir
    return Path(d).expanduser() if d else data_dir() / "approvals"


def store_for(cfg) -> ApprovalStore:
    return ApprovalStore(approvals_dir(cfg))


def validate(cand: CandidateInfo, cfg, *, load: bool = True, config_source: str | None = None) -> tuple[Verdict, Path]:
    """Run the four gates and write ``verdict.json`` beside the candidate's manifest (replacing an
    earlier verdict atomically). Returns (verdict, its path)."""
    if not Path(cand.path).is_dir():
        raise InputError(f"{cand.ref}: candidate folder {cand.path} does not exist")
    v = validate_bundle(
        cand.path,
        cfg,
        candidate={"ref": cand.ref, "path": str(cand.path), "run_id": cand.run_id},
        tags=cand.tags,
        load=load,
        config_source=config_source,
    )
    return v, write_verdict(cand.path, v)


def check_approvable(
    path: str | Path, cfg, *, expect_manifest: str | None = None, what: str = "promote", env: str | None = None
) -> tuple[dict, dict]:
    """(manifest, verdict) of a bundle folder that may be approved for (or loaded in) ``env``: manifest
    intact (and the one expected), every file's sha256 as recorded, a PASSED verdict for exactly this
    manifest judged under thresholds at least as strict as :func:`required_thresholds` (the protected
    ones of ``env``, tightened by ``cfg``; ``env=None``: of every environment), and inputs equal to the
    current feature set. Raises IntegrityError / ConfigError otherwise."""
    p = Path(path)
    if not p.is_dir():
        raise IntegrityError(f"{what} refused: model folder {p} does not exist")
    try:
        man = read_manifest(p)
    except (IntegrityError, InputError) as e:
        raise IntegrityError(f"{what} refused: {e}") from None
    msha = man["manifest_sha256"]
    if expect_manifest is not None and msha != expect_manifest:
        raise IntegrityError(
            f"{what} refused: {p} manifest {msha[:16]} is not the approved {expect_manifest[:16]} "
            f"(the model changed after approval)"
        )
    probs = check_files(p, man)
    if probs:
        raise IntegrityError(
            f"{what} refused: tampered or incomplete model {p}: {probs[0]}"
            + (f" (+{len(probs) - 1} more)" if len(probs) > 1 else "")
        )
    v = read_verdict(p)
    if v is None:
        raise IntegrityError(f"{what} refused: {p} has not been validated (run kq models validate first)")
    if v.get("manifest_sha256") != msha:
        raise IntegrityError(
            f"{what} refused: the verdict in {p} is for another manifest "
            f"({str(v.get('manifest_sha256'))[:16]}, now {msha[:16]}): re-validate"
        )
    if v.get("passed") is not True:
        bad = [g.get("message", g.get("gate")) for g in v.get("gates", []) if not g.get("passed")]
        raise IntegrityError(f"{what} refused: validation FAILED ({'; '.join(bad) or 'no gate passed'})")
    required = required_thresholds(cfg, env)
    looser = looser_than(v.get("thresholds"), required) + _looser_checks(v, required)
    if looser:
        raise IntegrityError(
            f"{what} refused: {p} was validated under looser thresholds than the protected "
            f"{env or 'paper/live'} gates and this config require ({'; '.join(looser)}): "
            f"re-validate (kq models validate)"
        )
    sch = gate_schema(p, cfg, load=False)
    if not sch.passed:
        raise ConfigError(f"{what} refused: {sch.message}")
    _recheck(p, cfg, v, required, what)
    return man, v


def _recheck(p: Path, cfg, v: dict, required: dict, what: str) -> None:
    """verdict.json is not covered by the manifest: re-run the gates that only read the bundle's
    files (integrity, schema from the manifest, quality and risk from the stored Parquet records) under
    the thresholds the verdict claims (already checked to be at least ``required``) and refuse unless
    the stored verdict is exactly what they say."""
    th = {k: float(v["thresholds"][k]) for k in required}
    gates = rerun_gates(p, cfg, th)
    failed = [g for g in gates if not g.passed]
    if failed:
        raise IntegrityError(
            f"{what} refused: re-running the gates on {p} under this config FAILED "
            f"({'; '.join(g.message for g in failed)}) although its verdict.json says passed: re-validate"
        )
    diffs = verdict_differences(v, gates)
    if diffs:
        raise IntegrityError(
            f"{what} refused: {p} verdict.json differs from a re-run of the gates ({'; '.join(diffs[:3])}"
            + (f"; +{len(diffs) - 3} more" if len(diffs) > 3 else "")
            + "): it was edited or judged under another config; re-validate (kq models validate)"
        )


def required_thresholds(cfg, env: str | None = None) -> dict:
    """The thresholds a verdict must have been judged under to approve or load a model in ``env``:
    the protected ones (engine.lifecycle_config), tightened by ``cfg``'s ``[lifecycle]``."""
    return effective_thresholds(cfg.lifecycle, env)[0]


# the verdict's gate checks that compare with a threshold, and which threshold
_CHECK_THRESHOLD = {
    "oos_sharpe": "min_sharpe",
    "oos_max_drawdown": "max_drawdown",
    "daily_turnover": "max_daily_turnover",
}


def _looser_checks(v: dict, required: dict) -> list[str]:
    """Gate checks whose recorded threshold is looser than required (a verdict whose summary
    ``thresholds`` disagree with what its gates actually compared against)."""
    out = []
    for g in v.get("gates") or []:
        for c in (g.get("checks") or []) if isinstance(g, dict) else []:
            key = _CHECK_THRESHOLD.get(str(c.get("name"))) if isinstance(c, dict) else None
            if key is not None:
                out += [f"check {c['name']}: {x}" for x in looser_than({key: c.get("threshold")}, {key: required[key]})]
    return out


def _threshold_record(v: dict, required: dict) -> dict:
    """What an approvals-log entry records about the thresholds behind it."""
    src = v.get("thresholds_source") or {}
    return {
        "thresholds": v.get("thresholds"),
        "thresholds_required": required,
        "thresholds_protected_sha256": protected_sha256(),
        "verdict_protected_sha256": src.get("protected_sha256"),
    }


def _gate_summary(v: dict) -> list[dict]:
    return [{"gate": g.get("gate"), "passed": g.get("passed"), "message": g.get("message")} for g in v.get("gates", [])]


def check_paper_record(
    record: PaperRecord | None, manifest_sha256: str, cfg, ref: str = "the model"
) -> tuple[PaperRecord, int]:
    """Paper before live: refuse (one-line InputError) unless ``record`` (read from the paper ledger
    by the caller, ``live_bridge.paper_record``) shows at least :func:`required_paper_hours` completed
    paper hours of exactly ``manifest_sha256`` with no unresolved reconciliation mismatch and no
    parity failure. Returns (the record, the hours required)."""
    need, _ = required_paper_hours(cfg.lifecycle)
    if record is None:
        raise InputError(
            f"promote refused: {ref} needs {need} paper hours for manifest {manifest_sha256[:16]} "
            f"before live and no paper ledger was read (nothing changed)"
        )
    probs = record.problems(manifest_sha256, need)
    if probs:
        where = f" in {record.ledger}" if record.ledger else ""
        raise InputError(f"promote refused: {ref} {'; '.join(probs)}{where} (nothing changed)")
    return record, need


def promote(
    cand: CandidateInfo,
    env: str,
    reason: str,
    confirm: str | None,
    cfg,
    *,
    store: ApprovalStore | None = None,
    paper_record: PaperRecord | Callable[[str], PaperRecord] | None = None,
) -> tuple[dict, dict]:
    """Approve a validated candidate for ``env``; the approved model it replaces becomes the rollback
    target. Returns (log entry, new state). ``live`` also needs ``paper_record``: the candidate's
    paper record, or a function of its manifest digest that reads it (called once the bundle has
    been checked; ``kq models promote`` reads the paper ledger so), see :func:`check_paper_record`;
    ``paper`` needs none and ignores it."""
    if env not in ENVS:
        raise InputError(f"--env {env}: must be one of {', '.join(ENVS)}")
    if confirm != PROMOTE_WORD:
        raise InputError(
            f"promote refused: pass --confirm {PROMOTE_WORD} to promote {cand.ref} to {env} (nothing changed)"
        )
    if not reason or not reason.strip():
        raise InputError("promote refused: --reason must say why (nothing changed)")
    store = store or store_for(cfg)
    with store.locked():
        rep = store.require_clean("promote")
        man, v = check_approvable(cand.path, cfg, env=env)
        paper = {}
        if env == "live":
            msha = man["manifest_sha256"]
            got = paper_record(msha) if callable(paper_record) else paper_record
            pr, need = check_paper_record(got, msha, cfg, cand.ref)
            paper = {"paper_record": {**pr.summary(), "hours_required": need}}
        cur = store.state(env)["current"]
        if cur is not None and cur["model"] == cand.ref and cur["manifest_sha256"] == man["manifest_sha256"]:
            raise InputError(f"promote refused: {cand.ref} is already the approved {env} model (nothing changed)")
        entry = {
            "ts_utc": utc_now_iso(),
            "who": operator_name(),
            "action": "promote",
            "env": env,
            "model": cand.ref,
            "path": str(Path(cand.path).resolve()),
            "run_id": cand.run_id,
            "manifest_sha256": man["manifest_sha256"],
            "verdict_sha256": sha256_file(Path(cand.path) / "verdict.json"),
            "validated_utc": v.get("validated_utc"),
            "gates": _gate_summary(v),
            **_threshold_record(v, required_thresholds(cfg, env)),
            **paper,
            "replaced": cur["model"] if cur else None,
            "reason": reason.strip(),
        }
        return store.apply(entry, rep)


def rollback(
    env: str, confirm: str | None, cfg, *, reason: str | None = None, store: ApprovalStore | None = None
) -> tuple[dict, dict]:
    """Restore the previous approved model of ``env`` (it must still verify); the current one is
    dropped from the approvals (its log entries stay). Returns (log entry, new state)."""
    if env not in ENVS:
        raise InputError(f"--env {env}: must be one of {', '.join(ENVS)}")
    if confirm != ROLLBACK_WORD:
        raise InputError(f"rollback refused: pass --confirm {ROLLBACK_WORD} to roll {env} back (nothing changed)")
    store = store or store_for(cfg)
    with store.locked():
        rep = store.require_clean("rollback")
        st = store.state(env)
        if not st["previous"]:
            what = f"{st['current']['model']} is the only approval" if st["current"] else "nothing is approved"
            raise InputError(f"rollback refused: nothing to roll back to in {env} ({what}; nothing changed)")
        target = st["previous"][-1]
        man, v = check_approvable(
            target["path"], cfg, expect_manifest=target["manifest_sha256"], what="rollback", env=env
        )
        entry = {
            "ts_utc": utc_now_iso(),
            "who": operator_name(),
            "action": "rollback",
            "env": env,
            "model": target["model"],
            "path": target["path"],
            "manifest_sha256": target["manifest_sha256"],
            "verdict_sha256": sha256_file(Path(target["path"]) / "verdict.json"),
            "validated_utc": v.get("validated_utc"),
            "gates": _gate_summary(v),
            **_threshold_record(v, required_thresholds(cfg, env)),
            "replaced": st["current"]["model"] if st["current"] else None,
            "reason": (reason or "rollback").strip(),
        }
        return store.apply(entry, rep)


def describe_state(store: ApprovalStore) -> dict:
    """{env: {current, previous}} for ``kq models list|show`` (read under a shared lock)."""
    with store.locked(shared=True):
        out = {}
        for env in ENVS:
            st = store.state(env)
            out[env] = {"current": st["current"], "previous": st["previous"]}
        return out


def verdict_summary(path: str | Path) -> str:
    try:
        v = read_verdict(path)
    except IntegrityError:
        return "damaged verdict"
    if v is None:
        return "not validated"
    try:
        msha = read_manifest(path)["manifest_sha256"]
    except (IntegrityError, InputError):
        return "manifest damaged"
    if v.get("manifest_sha256") != msha:
        return "stale verdict (manifest changed)"
    return (
        "passed"
        if v.get("passed")
        else "failed: " + ", ".join(g["gate"] for g in v.get("gates", []) if not g.get("passed"))
    )
