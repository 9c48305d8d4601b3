"""Hostile config files (issue 21 items 8 and 10): generated TOML documents fed to ``kq config
check``, then, for those it accepts, to what ``kq backtest`` does with a config.

Documents: every known section and key with values of random type (ints up to 10**30, floats
including nan/inf/1e308, strings, booleans, arrays, tables, dates), unknown keys, sections of the
wrong shape (``risk = 5``, ``[[risk]]``), random nesting, unicode and control characters in keys
and strings, and the shipped default.toml with random bytes spliced in (not UTF-8, broken syntax).

Each case must end in exactly one of:
* exit 2 with one line ``kq: error: ...`` on stderr (nothing else printed);
* exit 0, and then the document held no boolean or quoted number where a number belongs (lax
  parsing would read ``true`` as 1 and ``"0.5"`` as 0.5), and the resolved config has every number
  finite and within its declared bounds
  (only ``risk.spread_max`` may be ``inf``, "off"), dumps to strict JSON, and the backtest's
  parameter record (``engine.risk.params.params_from_config``) and feature names build without
  an exception.
Any other exception (a traceback) fails the case. ``count_case("config")`` counts every case.
"""

from __future__ import annotations

import json
import math
import typing

import numpy as np
from fuzzing import count_case, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from engine.backtest.config import BacktestConfig
from engine.config import DataConfig, FeesConfig, LabelsConfig
from engine.execution.config import ExecutionConfig
from engine.features.config import FeaturesConfig
from engine.lifecycle_config import LifecycleConfig
from engine.paths import configs_dir
from engine.risk.config import RiskConfig

SECTIONS = {
    "data": DataConfig,
    "fees": FeesConfig,
    "labels": LabelsConfig,
    "features": FeaturesConfig,
    "risk": RiskConfig,
    "execution": ExecutionConfig,
    "backtest": BacktestConfig,
    "lifecycle": LifecycleConfig,
}
KEYS = {sec: list(model.model_fields) for sec, model in SECTIONS.items()}

# ---- a tiny TOML writer (the generator needs to write what tomllib must then read)


def _key(k: str) -> str:
    return k if k and all((c.isalnum() and c.isascii()) or c in "_-" for c in k) else json.dumps(k)


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        if v.startswith("@raw:"):  # a literal TOML token (dates, odd spellings)
            return v[5:]
        return json.dumps(v)  # JSON escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_val(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _doc(top: dict, tables: dict, arrays: dict) -> str:
    lines = [f"{_key(k)} = {_val(v)}" for k, v in top.items()]
    for name, body in tables.items():
        lines.append(f"[{_key(name)}]")
        lines += [f"{_key(k)} = {_val(v)}" for k, v in body.items()]
    for name, items in arrays.items():
        for body in items:
            lines.append(f"[[{_key(name)}]]")
            lines += [f"{_key(k)} = {_val(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


# ---- strategies

_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e308, -1e308, 0.5, 1.0, 2.0, 0.02, 0.999999, 1.0000001]),
)
_INTS = st.one_of(
    st.integers(-10, 10_000),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**32, 2**63 - 1, -(2**63), 0, 1, 24, 168]),
)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_TOKENS = st.sampled_from(
    [
        "@raw:1979-05-27T07:32:00Z",
        "@raw:07:32:00",
        "@raw:1979-05-27",
        "@raw:0x_ff",
        "@raw:+inf",
        "@raw:-nan",
        "@raw:1_000",
        "@raw:1e400",
        "@raw:0o777",
        "@raw:'lit'",
    ]
)
_SCALARS = st.one_of(
    _FLOATS,
    _INTS,
    st.booleans(),
    _TEXT,
    _TOKENS,
    st.sampled_from(
        [
            "limit_first",
            "market",
            "risk",
            "fixed_fraction",
            "vol_target",
            "corwin_schultz",
            "none",
            "03:00",
            "25:00",
            "kraken",
            "binance",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_TEXT, kids, max_size=3)),
    max_leaves=12,
)


def _near_default(sec: str, key: str):
    """Values close to what the field accepts: its default, its bounds, just outside them, scaled."""
    f = SECTIONS[sec].model_fields[key]
    d = f.default
    if isinstance(d, bool) or d is None or isinstance(d, str):
        return st.just(d) if d is not None else _SCALARS
    if isinstance(d, tuple):
        return st.one_of(st.just(list(d)), st.lists(st.sampled_from(list(d) or [1]), max_size=4))
    lo, hi = _bounds(f)
    edges = [d, d * 10, d / 10, -d]
    for b in (lo, hi):
        if b is not None:
            edges += [b, b - 1e-9, b + 1e-9, b - 1, b + 1]
    # lax spellings of a number that must be refused: a boolean, the number quoted
    loose = st.sampled_from([True, False, str(d), repr(float(d))])
    if isinstance(d, int):
        return st.one_of(st.sampled_from(sorted({int(x) for x in edges})), loose)
    return st.one_of(st.sampled_from(edges + [math.inf, math.nan]), loose)


@st.composite
def _documents(draw) -> str:
    top: dict = {}
    tables: dict = {}
    arrays: dict = {}
    if draw(st.booleans()):
        top["seed"] = draw(st.one_of(_INTS, _VALUES))
    for sec in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        shape = draw(st.sampled_from(["table"] * 6 + ["scalar", "array_of_tables", "inline"]))
        body = {}
        for key in draw(st.lists(st.sampled_from(KEYS[sec]), max_size=5, unique=True)):
            body[key] = draw(st.one_of(_near_default(sec, key), _near_default(sec, key), _SCALARS, _VALUES))
        if draw(st.integers(0, 4)) == 0:  # an unknown key
            known = set(KEYS[sec])
            body[draw(_TEXT.filter(lambda k, known=known: k not in known))] = draw(_SCALARS)
        if shape == "table":
            tables[sec] = body
        elif shape == "scalar":
            top[sec] = draw(_SCALARS)
        elif shape == "inline":
            top[sec] = body
        else:
            arrays[sec] = [body] * draw(st.integers(1, 2))
    if draw(st.integers(0, 5)) == 0:  # an unknown section or top-level key
        top[draw(_TEXT.filter(lambda k: k not in SECTIONS and k not in ("seed", "extends")))] = draw(_VALUES)
    if draw(st.integers(0, 7)) == 0:  # deep nesting
        d = draw(st.integers(10, 3000))
        top["deep"] = "@raw:" + ("[" * d + "]" * d if draw(st.booleans()) else "{a=" * d + "1" + "}" * d)
    return _doc(top, tables, arrays)


@st.composite
def _spliced_default(draw) -> bytes:
    """default.toml with random bytes inserted, a span deleted, or cut short."""
    raw = (configs_dir() / "default.toml").read_bytes()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if op == "insert":
            raw = raw[:i] + draw(st.binary(min_size=1, max_size=8)) + raw[i:]
        elif op == "delete":
            raw = raw[:i] + raw[i + draw(st.integers(1, 40)) :]
        else:
            raw = raw[:i]
    return raw


def _numeric(ann) -> bool:
    base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
    if typing.get_origin(base) in (tuple, list):
        return all(a in (int, float) for a in typing.get_args(base) if a is not Ellipsis)
    return base in (int, float)


_NUMERIC_KEYS = sorted(
    (sec, key) for sec, model in SECTIONS.items() for key, f in model.model_fields.items() if _numeric(f.annotation)
)


@st.composite
def _loose_number(draw) -> str:
    """A valid document but for one number written as a boolean or a quoted number (or a list of
    numbers holding one): must be refused, naming the key."""
    sec, key = draw(st.sampled_from(_NUMERIC_KEYS))
    d = SECTIONS[sec].model_fields[key].default
    bad = draw(st.sampled_from([True, False, str(d), json.dumps(d), "1", " 0.5", "1e3"]))
    if isinstance(d, tuple):
        bad = [*list(d)[:-1], bad] if d else [bad]
    if draw(st.integers(0, 7)) == 0:
        return _doc({"seed": draw(st.sampled_from([True, "7", "0"]))}, {}, {})
    return _doc({}, {sec: {key: bad}}, {})


_CASES = st.one_of(
    *[_documents().map(str.encode)] * 5,
    _loose_number().map(str.encode),
    _spliced_default(),
    _spliced_default(),
    st.one_of(_documents().map(lambda s: s.encode("utf-16")), st.binary(max_size=200)),
)


# ---- the properties a config that loads must have


def _bounds(f) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in f.metadata:
        for attr in ("ge", "gt"):
            if getattr(m, attr, None) is not None:
                lo = getattr(m, attr)
        for attr in ("le", "lt"):
            if getattr(m, attr, None) is not None:
                hi = getattr(m, attr)
    return lo, hi


def _check_numbers(model) -> None:
    """Every int/float field of every section is finite and within its declared bounds."""
    for name, f in type(model).model_fields.items():
        v = getattr(model, name)
        if isinstance(v, BaseModel):
            _check_numbers(v)
            continue
        ann = f.annotation
        base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
        if base not in (int, float):
            continue
        inf_off = any(getattr(m, "allow_inf_nan", False) for m in f.metadata)
        assert not isinstance(v, bool) and isinstance(v, (int, float)), (name, v)
        assert math.isfinite(v) or (inf_off and v == math.inf), (name, v)
        lo, hi = _bounds(f)
        assert (lo is not None and hi is not None) or inf_off, f"{name} has no bounds"
        if lo is not None:
            assert v >= lo, (name, v)
        if hi is not None and math.isfinite(v):
            assert v <= hi, (name, v)


def _no_loose_numbers(data: bytes) -> None:
    """A config that loaded had no boolean or string (other than "inf") where a number belongs."""
    import tomllib

    raw = tomllib.loads(data.decode("utf-8-sig"))

    def ok(v) -> bool:
        if isinstance(v, list):
            return all(ok(x) for x in v)
        return not isinstance(v, bool) and not (isinstance(v, str) and v.strip().lower() not in ("inf", "+inf", "-inf"))

    if "seed" in raw:
        assert ok(raw["seed"]), ("seed", raw["seed"])
    for sec, model in SECTIONS.items():
        body = raw.get(sec)
        for key, f in model.model_fields.items():
            if isinstance(body, dict) and key in body and _numeric(f.annotation):
                assert ok(body[key]), (sec, key, body[key])


def _use(cfg) -> None:
    """What kq backtest does with a config before the data: the parameter record and the features."""
    from engine.features.featureset import feature_names, feature_schema_sha256
    from engine.risk.params import params_from_config

    p = params_from_config(cfg)[0]
    for k in p.dtype.names:
        x = float(p[k])
        assert math.isfinite(x) or (k in ("spread_max", "capital_ceiling") and x == math.inf), (k, x)
    assert 0.0 < p["spread_alpha"] <= 1.0 and p["init_cash"] > 0
    assert feature_names(cfg.features) and len(feature_schema_sha256(cfg.features)) == 64
    assert np.isfinite(cfg.fees.round_trip_cost)
    json.loads(json.dumps(cfg.model_dump(mode="json"), allow_nan=False))
    assert len(cfg.content_hash()) == 64


@fuzz_settings()
@given(data=_CASES)
def test_fuzz_config_check_is_a_one_line_error_or_a_usable_config(tmp_path_factory, capsys, data):
    from engine.config import load_config
    from kq.cli import main

    count_case("config")
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_bytes(data)
    capsys.readouterr()
    rc = main(["config", "check", str(path)])
    cap = capsys.readouterr()
    if rc == 2:
        assert cap.out == "" and cap.err.startswith("kq: error: ") and cap.err.count("\n") == 1, cap.err[:500]
        assert cap.err[:-1].isprintable(), cap.err[:500]
        return
    assert rc == 0 and cap.err == "", (rc, cap.err[:500])
    if cap.out.rstrip().endswith("[research] ok)"):
        from research.config import load_research_config

        cfg = load_research_config(path)[0]
    else:
        cfg = load_config(path)
    _check_numbers(cfg)
    _no_loose_numbers(data)
    _use(cfg)
