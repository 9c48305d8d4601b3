"""The four promotion gates and the verdict they produce (``kq models validate``).

1. ``integrity`` - the manifest is a ``krakenquant-model/1`` manifest and every artifact file's
   SHA-256 equals the one it records; no file is missing and no unlisted file exists (the verdict
   itself, ``verdict.json``, is the one file allowed beside the manifest); registry tags that repeat a
   manifest value (``feature_schema_sha256``, ``config_sha256``, ``manifest_sha256``) agree with it.
2. ``schema`` - the declared inputs equal the CURRENT feature set's names, order and schema hash
   (``engine.features.featureset.feature_names`` / ``feature_schema_sha256`` of the config given);
   the outputs are ``p_up`` and ``exp_return`` for every declared horizon and the trade horizon is one
   of them; with ``load=True`` the bundle is also loaded and must expose exactly those.
3. ``quality`` - the candidate's backtest ran under the validating config: its ``fees``,
   ``execution``, ``risk`` and ``backtest`` sections equal this config's (``backtest_config``; no field
   is exempt, see :data:`STRICTER_ALLOWED`), else its figures (a cost-free Sharpe, a drawdown under
   smaller caps) say nothing about this config; and its out-of-sample walk-forward backtest
   (``walkforward/metrics.json`` "strategy", re-derived from ``walkforward/backtest/equity.parquet``):
   annualised Sharpe >= ``min_sharpe`` and max drawdown <= ``max_drawdown``.
4. ``risk`` - turnover per day (traded notional / mean equity, /365 of metrics.json's annual figure)
   <= ``max_daily_turnover`` and no breach in the independent audit of the backtest records
   (:mod:`research.lifecycle.riskaudit`) against the risk rules of the config that ran it.

The thresholds are :func:`engine.lifecycle_config.effective_thresholds`: the protected ones
(``PROTECTED_GATE_THRESHOLDS``, the strictest over paper and live), tightened, never loosened, by the
``[lifecycle]`` section of the config given. The verdict records them, the protected table's digest
and the config values that were ignored as looser.

Every check records the measured value, the comparison and the threshold; a failed gate's message
names all three. The verdict binds to the manifest's SHA-256, so it cannot vouch for a changed
candidate.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.backtest.io import EQUITY_SCHEMA, TRADE_SCHEMA, read_table
from engine.errors import ConfigError, InputError, IntegrityError
from engine.lifecycle_config import PROTECTED_SOURCE, effective_thresholds, protected_sha256, protected_thresholds
from research.lifecycle.util import atomic_write_text, operator_name, sha256_file, utc_now_iso

__all__ = [
    "BACKTEST_SECTIONS",
    "GATES",
    "MANIFEST_FORMAT",
    "STRICTER_ALLOWED",
    "VERDICT_FORMAT",
    "VERDICT_NAME",
    "Check",
    "GateResult",
    "Verdict",
    "candidate_config",
    "check_files",
    "config_differences",
    "gate_integrity",
    "gate_quality",
    "gate_risk",
    "gate_schema",
    "manifest_sha256",
    "read_manifest",
    "read_verdict",
    "rerun_gates",
    "validate_bundle",
    "verdict_differences",
    "write_verdict",
]

MANIFEST_FORMAT = "krakenquant-model/1"
VERDICT_FORMAT = "krakenquant-verdict/1"
VERDICT_NAME = "verdict.json"
OUTPUTS = ["p_up", "exp_return"]
GATES = ("integrity", "schema", "quality", "risk")
_XCHECK_REL = 1e-6  # metrics.json vs the figure re-derived from the records


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: Any = None
    op: str | None = None  # how measured compares to threshold for a pass: ">=", "<=", "=="
    threshold: Any = None
    message: str = ""


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    checks: tuple[Check, ...]

    @property
    def message(self) -> str:
        bad = [c for c in self.checks if not c.passed]
        if not bad:
            return f"{self.gate}: passed"
        return f"{self.gate}: FAILED: " + "; ".join(c.message for c in bad)

    def to_json(self) -> dict:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "message": self.message,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class Verdict:
    passed: bool
    manifest_sha256: str | None
    gates: tuple[GateResult, ...]
    candidate: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    thresholds_source: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    validated_utc: str = ""
    who: str = ""

    def to_json(self) -> dict:
        return {
            "format": VERDICT_FORMAT,
            "passed": self.passed,
            "manifest_sha256": self.manifest_sha256,
            "candidate": self.candidate,
            "validated_utc": self.validated_utc,
            "who": self.who,
            "config": self.config,
            "thresholds": self.thresholds,
            "thresholds_source": self.thresholds_source,
            "gates": [g.to_json() for g in self.gates],
        }

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]


def _gate(name: str, checks: list[Check]) -> GateResult:
    return GateResult(name, bool(checks) and all(c.passed for c in checks), tuple(checks))


def read_manifest(bundle_dir: str | Path) -> dict:
    """The candidate's manifest: format and self-digest checked (``research.bundle.read_manifest``),
    plus a non-empty ``files`` table. IntegrityError / InputError with one line otherwise."""
    from research.bundle import read_manifest as _read

    m = _read(bundle_dir)
    if not m["files"]:
        raise IntegrityError(f"{Path(bundle_dir) / 'manifest.json'}: 'files' lists no artifact")
    return m


def manifest_sha256(bundle_dir: str | Path) -> str:
    """The manifest's self-digest (``manifest["manifest_sha256"]``, verified): what a verdict and an
    approval bind to. Any edit of manifest.json, including of a file's recorded sha256, changes it."""
    return read_manifest(bundle_dir)["manifest_sha256"]


def check_files(bundle_dir: str | Path, manifest: dict) -> list[str]:
    """Problems with the artifact files (empty = every sha256 matches, nothing missing or extra)."""
    root = Path(bundle_dir)
    probs: list[str] = []
    listed = manifest["files"]
    for rel, want in sorted(listed.items()):
        rp = Path(rel)
        if rp.is_absolute() or ".." in rp.parts or rel in ("manifest.json", VERDICT_NAME):
            probs.append(f"{rel}: not a valid artifact path")
            continue
        f = root / rp
        if not f.is_file() or f.is_symlink():
            probs.append(f"{rel}: missing")
        elif sha256_file(f) != want:
            probs.append(f"{rel}: sha256 differs from the manifest")
    have = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    extra = sorted(have - set(listed) - {"manifest.json", VERDICT_NAME})
    probs += [f"{x}: not listed in the manifest" for x in extra]
    return probs


def gate_integrity(bundle_dir: str | Path, tags: dict | None = None) -> GateResult:
    checks: list[Check] = []
    try:
        m = read_manifest(bundle_dir)
    except (IntegrityError, InputError) as e:
        return _gate("integrity", [Check("manifest", False, str(e), message=str(e))])
    probs = check_files(bundle_dir, m)
    n = len(m["files"])
    checks.append(
        Check(
            "artifact_sha256",
            not probs,
            f"{n - sum(1 for p in probs if 'not listed' not in p)}/{n} "
            f"match" + (f", {len(probs)} problem(s)" if probs else ""),
            "==",
            f"{n}/{n} match",
            ""
            if not probs
            else "artifact files do not match the manifest: "
            + "; ".join(probs[:5])
            + (f" (+{len(probs) - 5} more)" if len(probs) > 5 else ""),
        )
    )
    msha = m["manifest_sha256"]
    tags = tags or {}
    pairs = [
        ("manifest_sha256", msha),
        ("feature_schema_sha256", (m.get("features") or {}).get("schema_sha256")),
        ("config_sha256", m.get("config_sha256")),
    ]
    for key, val in pairs:
        if key in tags:
            ok = str(tags[key]) == str(val)
            checks.append(
                Check(
                    f"registry_tag_{key}",
                    ok,
                    val,
                    "==",
                    tags[key],
                    ""
                    if ok
                    else f"registry tag {key} {str(tags[key])[:16]} differs from the manifest's {str(val)[:16]}",
                )
            )
    return _gate("integrity", checks)


def gate_schema(bundle_dir: str | Path, cfg, *, load: bool = True) -> GateResult:
    from engine.features.featureset import feature_names, feature_schema_sha256

    try:
        m = read_manifest(bundle_dir)
    except (IntegrityError, InputError) as e:
        return _gate("schema", [Check("manifest", False, str(e), message=str(e))])
    want_names = list(feature_names(cfg.features))
    want_hash = feature_schema_sha256(cfg.features)
    feats = m.get("features") or {}
    names = list(feats.get("names") or [])
    checks: list[Check] = []
    ok = names == want_names
    msg = ""
    if not ok:
        missing = [x for x in want_names if x not in names]
        extra = [x for x in names if x not in want_names]
        if missing or extra:
            msg = f"inputs differ from the current feature set: missing {missing or 'none'}, extra {extra or 'none'}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(names, want_names)) if a != b)
            msg = f"input order differs from the current feature set at position {i}: {names[i]} vs {want_names[i]}"
    checks.append(
        Check("input_names", ok, f"{len(names)} features", "==", f"{len(want_names)} features, same order", msg)
    )
    h = feats.get("schema_sha256")
    ok = h == want_hash
    checks.append(
        Check(
            "input_schema_sha256",
            ok,
            h,
            "==",
            want_hash,
            ""
            if ok
            else f"feature schema hash {str(h)[:16]} differs from the current "
            f"feature set's {want_hash[:16]} (features config changed)",
        )
    )
    outs = m.get("outputs")
    ok = outs == OUTPUTS
    checks.append(Check("outputs", ok, outs, "==", OUTPUTS, "" if ok else f"outputs {outs} are not {OUTPUTS}"))
    hs = m.get("horizons")
    th = m.get("trade_horizon")
    ok = (
        isinstance(hs, list)
        and bool(hs)
        and all(isinstance(x, int) and x >= 1 for x in hs)
        and hs == sorted(set(hs))
        and th in hs
    )
    checks.append(
        Check(
            "horizons",
            ok,
            {"horizons": hs, "trade_horizon": th},
            None,
            "trade_horizon in horizons",
            "" if ok else f"horizons {hs} / trade horizon {th} are not a valid declaration",
        )
    )
    if load and all(c.passed for c in checks):
        checks.append(_loaded_schema_check(bundle_dir, m, want_names, want_hash))
    return _gate("schema", checks)


def _loaded_schema_check(bundle_dir, m: dict, want_names: list, want_hash: str) -> Check:
    from research.bundle import load_bundle

    try:
        b = load_bundle(bundle_dir, verify=False)
    except Exception as e:  # a model file that does not deserialise fails the gate, never crashes it
        return Check(
            "loaded_model",
            False,
            f"{type(e).__name__}",
            "==",
            "loads",
            f"the bundle does not load: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
        )
    got = {
        "feature_names": list(b.feature_names),
        "feature_schema_sha256": b.feature_schema_sha256,
        "horizons": sorted(int(h) for h in b.metas),
        "trade_horizon": int(b.trade_horizon),
    }
    want = {
        "feature_names": want_names,
        "feature_schema_sha256": want_hash,
        "horizons": sorted(m["horizons"]),
        "trade_horizon": m["trade_horizon"],
    }
    bad = [k for k in want if got[k] != want[k]]
    return Check(
        "loaded_model",
        not bad,
        "loads" if not bad else f"differs in {', '.join(bad)}",
        "==",
        "matches the declaration",
        "" if not bad else f"the loaded model's {', '.join(bad)} differ from the declaration / current feature set",
    )


def candidate_config(bundle_dir: str | Path):
    """The engine Config the candidate was trained and backtested with (``config.json`` or a
    self-contained ``config.toml`` in the bundle; a ``[research]`` table is ignored)."""
    from engine.config import config_from_dict

    root = Path(bundle_dir)
    pj, pt = root / "config.json", root / "config.toml"
    if pj.is_file():
        try:
            raw = json.loads(pj.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{pj}: not valid JSON ({e})") from None
        src = pj
    elif pt.is_file():
        try:
            raw = tomllib.loads(pt.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{pt}: not valid TOML ({e})") from None
        src = pt
    else:
        raise ConfigError(f"{root}: the candidate has no config.json or config.toml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: not a config table")
    if src == pj and isinstance(raw.get("config"), dict):  # research.bundle: {"config": ..., "research": ...}
        raw = raw["config"]
    if "extends" in raw:
        raise ConfigError(f"{src}: 'extends' in a candidate's config: it must be the resolved config")
    raw = {k: v for k, v in raw.items() if k not in ("research",)}
    return config_from_dict(raw, str(src))


# The config sections that produce the figures gates 3 and 4 judge (costs, fills, risk caps, cash).
BACKTEST_SECTIONS = ("fees", "execution", "risk", "backtest")
# Fields of those sections where a candidate's value may differ from the validating config's because
# it is provably stricter for the gates. Deliberately empty: no field qualifies. Higher fees or
# slippage also raise the entry edge rule (``fees.round_trip_cost``) and the cost-aware labels, so
# marginal trades are filtered out and Sharpe can RISE; tighter caps (max_exposure, max_positions,
# dd_halt, ...) lower the measured drawdown and turnover below what the production caps allow. Any
# difference therefore fails the gate: retrain under the validating config.
STRICTER_ALLOWED: dict[str, str] = {}


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: d}


def config_differences(cand_cfg, cfg) -> list[dict]:
    """Keys of :data:`BACKTEST_SECTIONS` whose candidate value differs from the validating config's
    (``[{"key", "candidate", "config"}]``, sorted by key; empty = equal)."""
    out = []
    for sec in BACKTEST_SECTIONS:
        a = _flat(getattr(cand_cfg, sec).model_dump(mode="json"), sec)
        b = _flat(getattr(cfg, sec).model_dump(mode="json"), sec)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append({"key": k, "candidate": a.get(k), "config": b.get(k)})
    return out


def _config_check(cand_cfg, cfg) -> Check:
    diff = config_differences(cand_cfg, cfg)
    msg = ""
    if diff:
        shown = ", ".join(f"{d['key']} {d['candidate']!r} (config {d['config']!r})" for d in diff[:8])
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        msg = (
            f"the candidate's backtest ran under a config that differs from the validating one in "
            f"{len(diff)} key(s): {shown}{more}: its figures do not hold under this config (retrain)"
        )
    return Check(
        "backtest_config",
        not diff,
        {"sections": list(BACKTEST_SECTIONS), "differs": diff},
        "==",
        "validating config's " + "/".join(BACKTEST_SECTIONS),
        msg,
    )


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=_XCHECK_REL, abs_tol=1e-12)


def _strategy(bundle_dir: Path, cand_cfg):
    """(metrics.json strategy dict, re-derived dict, problems)."""

    from research.lifecycle.riskaudit import recompute_strategy

    wf = bundle_dir / "walkforward"
    probs = []
    try:
        strat = (json.loads((wf / "metrics.json").read_text()).get("strategy")) or {}
    except FileNotFoundError:
        return None, None, ["walkforward/metrics.json is missing"]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None, None, ["walkforward/metrics.json is not a metrics document"]
    if not strat:
        return None, None, ["walkforward/metrics.json has no out-of-sample strategy (no backtest ran)"]
    try:  # the backtest records, read through the one outputs module
        eq = read_table(wf / "backtest", "equity", EQUITY_SCHEMA)
        tr = read_table(wf / "backtest", "trades", TRADE_SCHEMA)
    except IntegrityError as e:  # missing/damaged parquet, missing column, unknown code
        return strat, None, [f"walkforward/backtest records unreadable ({e})"]
    re = recompute_strategy(eq, tr, float(cand_cfg.backtest.init_cash))
    for k in ("sharpe", "max_drawdown", "turnover"):
        if not _close(strat.get(k), re[k]):
            probs.append(f"metrics.json {k} {strat.get(k)} disagrees with the backtest records ({re[k]})")
    return strat, re, probs


def _thresholds(cfg, thresholds: dict | None) -> dict:
    return dict(thresholds) if thresholds is not None else effective_thresholds(cfg.lifecycle)[0]


def gate_quality(bundle_dir: str | Path, cfg, cand_cfg=None, thresholds: dict | None = None) -> GateResult:
    """Gate 3 under ``thresholds`` (default: :func:`effective_thresholds` of ``cfg.lifecycle``)."""
    th = _thresholds(cfg, thresholds)
    min_sharpe, max_dd = th["min_sharpe"], th["max_drawdown"]
    root = Path(bundle_dir)
    try:
        cand_cfg = cand_cfg or candidate_config(root)
    except ConfigError as e:
        return _gate("quality", [Check("config", False, str(e), message=f"candidate config unusable: {e}")])
    strat, re, probs = _strategy(root, cand_cfg)
    checks = [_config_check(cand_cfg, cfg)]
    checks.append(
        Check("records_agree", not probs, "agree" if not probs else "disagree", "==", "agree", "; ".join(probs))
    )
    if re is None:
        return _gate("quality", checks)
    s = re["sharpe"]
    ok = s is not None and math.isfinite(s) and s >= min_sharpe
    checks.append(
        Check(
            "oos_sharpe",
            ok,
            s,
            ">=",
            min_sharpe,
            ""
            if ok
            else (
                f"out-of-sample Sharpe {s:.3f} is below the minimum {min_sharpe}"
                if s is not None
                else "out-of-sample Sharpe undefined (flat equity)"
            ),
        )
    )
    d = re["max_drawdown"]
    ok = math.isfinite(d) and d <= max_dd
    checks.append(
        Check(
            "oos_max_drawdown",
            ok,
            d,
            "<=",
            max_dd,
            "" if ok else f"out-of-sample max drawdown {d:.2%} is above the maximum {max_dd:.2%}",
        )
    )
    return _gate("quality", checks)


def gate_risk(bundle_dir: str | Path, cfg, cand_cfg=None, thresholds: dict | None = None) -> GateResult:
    """Gate 4 under ``thresholds`` (default: :func:`effective_thresholds` of ``cfg.lifecycle``)."""
    from research.lifecycle.riskaudit import audit_backtest

    th = _thresholds(cfg, thresholds)
    root = Path(bundle_dir)
    try:
        cand_cfg = cand_cfg or candidate_config(root)
    except ConfigError as e:
        return _gate("risk", [Check("config", False, str(e), message=f"candidate config unusable: {e}")])
    strat, re, probs = _strategy(root, cand_cfg)
    checks: list[Check] = []
    if re is None:
        checks.append(Check("records", False, "unreadable", "==", "readable", "; ".join(probs)))
    else:
        t = re["daily_turnover"]
        ok = math.isfinite(t) and t <= th["max_daily_turnover"]
        checks.append(
            Check(
                "daily_turnover",
                ok,
                t,
                "<=",
                th["max_daily_turnover"],
                ""
                if ok
                else f"turnover {t:.3f}x equity per day ({re['turnover']:.1f}x per year) is "
                f"above the maximum {th['max_daily_turnover']}x per day",
            )
        )
    a = audit_backtest(root / "walkforward" / "backtest", cand_cfg, exposure_tolerance=th["exposure_tolerance"])
    n = sum(a.n_breaches_by_rule.values())
    msg = ""
    if not a.ok:
        by = ", ".join(f"{k} {v}" for k, v in sorted(a.n_breaches_by_rule.items()))
        msg = f"{n} risk-rule breach(es) in the backtest ({by}); first: {a.breaches[0].message}"
    checks.append(Check("risk_audit", a.ok, n, "==", 0, msg))
    return _gate("risk", checks)


def validate_bundle(
    bundle_dir: str | Path,
    cfg,
    *,
    candidate: dict | None = None,
    tags: dict | None = None,
    load: bool = True,
    config_source: str | None = None,
) -> Verdict:
    """Run the four gates on a bundle folder; nothing is written (see :func:`write_verdict`)."""
    root = Path(bundle_dir)
    try:
        msha = manifest_sha256(root)
    except (IntegrityError, InputError):
        msha = None
    try:
        cand_cfg = candidate_config(root)
    except ConfigError:
        cand_cfg = None
    th, ignored = effective_thresholds(cfg.lifecycle)
    gates = (
        gate_integrity(root, tags),
        gate_schema(root, cfg, load=load),
        gate_quality(root, cfg, cand_cfg, th),
        gate_risk(root, cfg, cand_cfg, th),
    )
    lc = cfg.lifecycle
    source = {
        "protected": PROTECTED_SOURCE,
        "protected_sha256": protected_sha256(),
        "protected_thresholds": protected_thresholds(),
        "config_source": config_source,
        "config_thresholds": {k: float(getattr(lc, k)) for k in th},
        "tightened_by_config": sorted(k for k in th if th[k] != protected_thresholds()[k]),
        "ignored_as_looser": ignored,
    }
    return Verdict(
        passed=all(g.passed for g in gates),
        manifest_sha256=msha,
        gates=gates,
        candidate=dict(candidate or {}),
        thresholds=th,
        thresholds_source=source,
        config={
            "source": config_source,
            "config_sha256": cfg.content_hash(),
            "candidate_config_sha256": cand_cfg.content_hash() if cand_cfg is not None else None,
            "compared_sections": list(BACKTEST_SECTIONS),
            "stricter_allowed": dict(STRICTER_ALLOWED),
            "differs": config_differences(cand_cfg, cfg) if cand_cfg is not None else None,
        },
        validated_utc=utc_now_iso(),
        who=operator_name(),
    )


def rerun_gates(bundle_dir: str | Path, cfg, thresholds: dict) -> tuple[GateResult, ...]:
    """The four gates again, without loading the model (integrity without registry tags, schema from
    the manifest, quality and risk from the stored Parquet records): what promote, rollback and the
    loader compare a stored verdict with, since ``verdict.json`` is not covered by the manifest."""
    root = Path(bundle_dir)
    try:
        cand_cfg = candidate_config(root)
    except ConfigError:
        cand_cfg = None
    return (
        gate_integrity(root),
        gate_schema(root, cfg, load=False),
        gate_quality(root, cfg, cand_cfg, thresholds),
        gate_risk(root, cfg, cand_cfg, thresholds),
    )


# checks a stored verdict may hold that a re-run without the registry or the model cannot produce
_RERUN_SKIPS = ("loaded_model", "registry_tag_")


def verdict_differences(stored: dict, gates: tuple[GateResult, ...]) -> list[str]:
    """Where a stored verdict's gates differ from ``gates`` (a re-run): each gate's pass and every
    check's name, pass, measured value, comparison, threshold and message, compared as written to
    JSON. Empty = the verdict is what the gates say now."""
    out: list[str] = []
    got = {g.get("gate"): g for g in stored.get("gates") or [] if isinstance(g, dict)}
    extra = sorted(str(k) for k in set(got) - {g.gate for g in gates})
    out += [f"gate {k} is not one of the gates" for k in extra]
    for g in gates:
        now = json.loads(json.dumps(_finite(g.to_json()), allow_nan=False))
        old = got.get(g.gate)
        if old is None:
            out.append(f"gate {g.gate} is missing")
            continue
        if old.get("passed") is not now["passed"]:
            out.append(f"gate {g.gate}: recorded passed={old.get('passed')}, re-run passed={now['passed']}")
        was = {c.get("name"): c for c in old.get("checks") or [] if isinstance(c, dict)}
        for c in now["checks"]:
            w = was.pop(c["name"], None)
            if w != c:
                diff = "missing" if w is None else ", ".join(k for k in c if w.get(k) != c[k]) or "extra fields"
                out.append(f"{g.gate} check {c['name']}: recorded {diff} differ(s) from the re-run")
        out += [
            f"{g.gate} check {k}: recorded but not a check of this gate"
            for k in sorted(str(x) for x in was)
            if not (k == _RERUN_SKIPS[0] or k.startswith(_RERUN_SKIPS[1])) or was[k].get("passed") is not True
        ]
    return out


def write_verdict(bundle_dir: str | Path, verdict: Verdict) -> Path:
    """Write ``verdict.json`` beside the manifest atomically (the temporary file lives in the parent
    folder, so an interrupted write never leaves a stray file inside the bundle)."""
    root = Path(bundle_dir)
    p = root / VERDICT_NAME
    text = json.dumps(_finite(verdict.to_json()), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(p, text + "\n", tmp_dir=root.parent)
    return p


def _finite(v: Any) -> Any:
    """``v`` with every non-finite float as None: the verdict is strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_verdict(bundle_dir: str | Path) -> dict | None:
    """The stored verdict, or None when there is none. A damaged file is an IntegrityError."""
    p = Path(bundle_dir) / VERDICT_NAME
    if not p.is_file():
        return None
    try:
        v = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{p}: damaged verdict ({e})") from None
    if not isinstance(v, dict) or v.get("format") != VERDICT_FORMAT:
        raise IntegrityError(f"{p}: not a {VERDICT_FORMAT} verdict")
    return v
