"""MLflow model-registry side of the lifecycle: candidates (``research.tracking``) as
:class:`~research.lifecycle.actions.CandidateInfo`, and the verdict as model-version tags."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError, KQError
from research.lifecycle.actions import CandidateInfo

__all__ = ["list_all", "load_configs", "resolve", "tag_verdict"]


def load_configs(config: str | Path):
    """(engine Config, TrackingConfig) from one TOML file (its ``[research.tracking]`` table)."""
    from research.config import load_research_config

    cfg, rc = load_research_config(config)
    return cfg, getattr(rc, "tracking", None)


def _info(c) -> CandidateInfo:
    return CandidateInfo(ref=f"{c.name}/{c.version}", path=Path(c.path), tags=dict(c.tags or {}), run_id=c.run_id)


def resolve(ref: str, tracking) -> CandidateInfo:
    from research.tracking import get_candidate

    if not ref or not str(ref).strip():
        raise InputError("MODEL: give a candidate as NAME/VERSION or VERSION")
    return _info(get_candidate(str(ref).strip(), tracking))


def list_all(tracking) -> list[CandidateInfo]:
    from research.tracking import list_candidates

    return [_info(c) for c in list_candidates(tracking)]


def tag_verdict(cand: CandidateInfo, verdict, tracking) -> str | None:
    """Set ``validation=passed|failed`` (+ the manifest it judged and when) on the model version.
    Returns a warning line when the registry cannot be tagged (the verdict file is authoritative)."""
    tags = {
        "validation": "passed" if verdict.passed else "failed",
        "validation_manifest_sha256": str(verdict.manifest_sha256),
        "validation_utc": verdict.validated_utc,
        "validation_failed_gates": ",".join(g.gate for g in verdict.failed_gates) or "none",
    }
    try:
        import research.tracking as tr

        if hasattr(tr, "set_candidate_tags"):
            tr.set_candidate_tags(cand.ref, tags, tracking)
            return None
        client = tr._client(tracking)[0]  # until research.tracking exposes set_candidate_tags
        name, version = cand.ref.rsplit("/", 1)
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
    except KQError as e:
        return f"registry tags not set: {e}"
    except Exception as e:  # registry unreachable: the verdict file beside the candidate still holds
        return f"registry tags not set: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None
