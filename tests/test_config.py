from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import config_from_dict, load_config
from engine.errors import ConfigError
from engine.paths import configs_dir


def test_default_config_carries_the_system_numbers():
    c = load_config()
    assert c.fees.fee_rate == 0.004
    assert c.risk.max_positions == 10
    assert c.risk.max_exposure == 0.20
    assert (c.risk.dd_reduce_risk, c.risk.dd_reduce_exposure, c.risk.dd_halt) == (0.10, 0.15, 0.20)
    assert c.risk.base_risk == 0.02
    assert c.data.bar_seconds == 3600
    assert c.labels.horizons == (1, 4, 24)


def _loader_for(name: str):
    """Each shipped config is validated by the model that reads it."""
    if name == "universe.toml":
        from engine.universe import load_universe

        return load_universe
    if name.startswith("sim"):
        from live_bridge.simulator.config import load_sim_config

        return load_sim_config
    if name in ("paper.toml", "live.toml"):  # the daemon's configs (live_bridge/config.py)
        from live_bridge.config import load_live_config

        return load_live_config
    from engine.config import read_toml

    if "research" in read_toml(configs_dir() / name):  # walk-forward configs: engine Config + [research]
        from research.config import load_research_config

        return load_research_config
    return load_config


def test_every_shipped_config_is_valid():
    files = sorted(configs_dir().glob("*.toml"))
    assert any(f.name == "default.toml" for f in files)
    for f in files:
        _loader_for(f.name)(f)


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"risk": {"max_positions": 99}}, "risk.max_positions"),
        ({"risk": {"not_a_rule": 1}}, "risk.not_a_rule: unknown key"),
        ({"fees": {"fee_rate": -0.1}}, "fees.fee_rate"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"risk": {"dd_halt": 0.05}}, "drawdown tiers"),
        ({"labels": {"horizons": [24, 1]}}, "horizons"),
        ({"data": {"bar_seconds": 60}}, "data.bar_seconds"),
        (
            {"execution": {"enforce_precision": "yes"}},
            "execution.enforce_precision: Value error, must be true or false",
        ),
        ({"execution": {"spread_in_slippage": 1}}, "execution.spread_in_slippage: Value error, must be true or false"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict(raw, "x.toml")


def test_config_is_frozen():
    c = load_config()
    with pytest.raises(ValidationError, match="frozen"):
        c.risk.max_positions = 3  # type: ignore[misc]


def test_extends_merges_over_the_parent(tmp_path: Path):
    (tmp_path / "base.toml").write_text("[risk]\nmax_positions = 5\nbase_risk = 0.01\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[risk]\nmax_positions = 3\n')
    c = load_config(tmp_path / "child.toml")
    assert c.risk.max_positions == 3 and c.risk.base_risk == 0.01


def test_content_hash_is_stable_and_sensitive():
    a, b = load_config(), load_config()
    assert a.content_hash() == b.content_hash()
    assert config_from_dict({"seed": 8}).content_hash() != a.content_hash()


# ---- wrong shapes, non-finite and unbounded numbers (issue 21 item 8)

SECTIONS = ("data", "fees", "labels", "features", "risk", "execution", "backtest", "lifecycle")


def _section_models():
    from engine.config import Config

    return {name: Config.model_fields[name].annotation for name in SECTIONS}


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("value", [5, "x", [{"p_up_entry": 0.6}], [], True, 1.5])
def test_a_section_of_the_wrong_shape_is_a_one_line_error(section, value):
    """``risk = 5`` and ``[[risk]]`` used to load (the section was typed Any) and crash kq backtest."""
    with pytest.raises(ConfigError, match=rf"^x\.toml: {section}: Input should be a valid dictionary") as e:
        config_from_dict({section: value}, "x.toml")
    assert "\n" not in str(e.value)


def test_every_section_is_typed():
    from pydantic import BaseModel

    for name, model in _section_models().items():
        assert isinstance(model, type) and issubclass(model, BaseModel), name


def _numeric_fields():
    """(section, key, kind) of every float and int field of every section."""
    import typing

    out = []
    for sec, model in _section_models().items():
        for key, f in model.model_fields.items():
            ann = f.annotation
            base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
            if base in (float, int):
                inf_off = any(getattr(m, "allow_inf_nan", False) for m in f.metadata)
                out.append((sec, key, base.__name__, inf_off))
    out.append(("", "seed", "int", False))
    return out


def test_non_finite_numbers_are_refused_except_where_inf_means_off():
    seen = 0
    for sec, key, _kind, inf_off in _numeric_fields():
        raw = (lambda v, s=sec, k=key: {s: {k: v}}) if sec else (lambda v, k=key: {k: v})
        name = f"{sec}.{key}" if sec else key
        for v in (float("nan"), float("inf"), float("-inf")):
            if inf_off and v == float("inf"):
                continue
            with pytest.raises(ConfigError, match=rf"{name}: "):
                config_from_dict(raw(v))
            seen += 1
    assert seen > 60


def test_booleans_and_strings_are_refused_for_every_number_naming_the_key():
    """Pydantic's lax mode turned ``max_positions = true`` into 1, ``init_cash = true`` into 1.0 and
    ``max_exposure = "0.5"`` into 0.5. Every int/float field (and ``seed``) is now strict about them;
    an int for a float field stays allowed (TOML writes 1 for 1.0)."""
    seen = 0
    for sec, key, _kind, _inf_off in _numeric_fields():
        raw = (lambda v, s=sec, k=key: {s: {k: v}}) if sec else (lambda v, k=key: {k: v})
        name = f"{sec}.{key}" if sec else key
        for v in (True, False, "1", "0.5", ""):
            with pytest.raises(ConfigError, match=rf"{name}: .*must be a number, not a (boolean|string)"):
                config_from_dict(raw(v))
            seen += 1
    assert seen > 250
    for raw in (
        {"risk": {"max_positions": True}},
        {"backtest": {"init_cash": True}},
        {"risk": {"max_exposure": "0.5"}},
    ):
        with pytest.raises(ConfigError, match="must be a number"):
            config_from_dict(raw)
    with pytest.raises(ConfigError, match=r"labels\.horizons: .*not a boolean"):
        config_from_dict({"labels": {"horizons": [1, True, 24]}})
    # an int for a float field, and "inf" where inf means off (what a JSON dump writes), still load
    cfg = config_from_dict({"backtest": {"init_cash": 10000}, "risk": {"spread_max": "inf", "max_exposure": 1}})
    assert cfg.backtest.init_cash == 10000.0 and cfg.risk.max_exposure == 1.0
    assert config_from_dict(cfg.model_dump(mode="json")) == cfg


def test_every_number_has_an_upper_bound_and_huge_values_are_refused():
    for sec, key, kind, inf_off in _numeric_fields():
        if inf_off:
            continue
        name = f"{sec}.{key}" if sec else key
        v = 10**30 if kind == "int" else 1e300
        with pytest.raises(ConfigError, match=rf"{name}: "):
            config_from_dict({sec: {key: v}} if sec else {key: v})


def test_init_cash_inf_is_refused_by_check_and_by_backtest_before_anything_is_written(tmp_path, capsys):
    from kq.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("[backtest]\ninit_cash = inf\n")
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == f"kq: error: {cfg}: backtest.init_cash: Input should be a finite number\n"
    out = tmp_path / "out"
    assert main(["backtest", "--config", str(cfg), "--out", str(out)]) == 2
    assert "backtest.init_cash" in capsys.readouterr().err and not out.exists()
    cfg.write_text("risk = 5\n")
    assert main(["backtest", "--config", str(cfg), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()


def test_spread_max_inf_means_off_and_every_json_dump_stays_strict(tmp_path, capsys):
    import json

    from engine.risk.params import params_from_config
    from kq.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("[risk]\nspread_max = inf\n")
    c = load_config(cfg)
    assert c.risk.spread_max == float("inf") and params_from_config(c)[0]["spread_max"] == float("inf")
    assert len(c.content_hash()) == 64
    dumped = c.model_dump(mode="json")
    assert dumped["risk"]["spread_max"] == "inf"
    assert config_from_dict(json.loads(json.dumps(dumped, allow_nan=False))) == c  # round-trips
    assert main(["config", "show", str(cfg)]) == 0

    def _refuse(tok):
        raise AssertionError(f"non-standard JSON token {tok}")

    assert json.loads(capsys.readouterr().out, parse_constant=_refuse)["risk"]["spread_max"] == "inf"
    with pytest.raises(ConfigError, match="risk.spread_max"):
        config_from_dict({"risk": {"spread_max": float("nan")}})


# ---- files the loader must refuse with one line, never a traceback (issue 21 item 10)


def _check(path, capsys) -> str:
    from kq.cli import main

    rc = main(["config", "check", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("kq: error: ") and err.count("\n") == 1, (rc, err[:300])
    return err


def test_a_directory_a_fifo_and_a_missing_file_are_one_line_errors(tmp_path, capsys):
    import os

    d = tmp_path / "dir.toml"
    d.mkdir()
    assert "is a directory, not a config file" in _check(d, capsys)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert "not a regular file" in _check(fifo, capsys)  # never opened: reading a FIFO would hang
    assert "config file not found" in _check(tmp_path / "none.toml", capsys)
    (tmp_path / "child.toml").write_text('extends = "dir.toml"\n')
    assert "dir.toml: is a directory" in _check(tmp_path / "child.toml", capsys)
    (tmp_path / "nul.toml").write_text('extends = "a\\u0000b"\n')
    assert "a\\x00b: config file not found" in _check(tmp_path / "nul.toml", capsys)  # NUL escaped


def test_a_file_that_is_not_utf8_or_too_large_is_a_one_line_error(tmp_path, capsys):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"[risk]\nmax_positions = 5 # caf\xe9\n")
    assert "not UTF-8 text (byte 0xe9 at offset 30)" in _check(p, capsys)
    p.write_bytes(b"\xff\xfe[\x00r\x00")
    assert "not UTF-8 text" in _check(p, capsys)
    p.write_bytes(b"\xef\xbb\xbf[risk]\nmax_positions = 5\n")  # a UTF-8 BOM (Windows editors) is fine
    assert load_config(p).risk.max_positions == 5
    p.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    assert "too large for a config file" in _check(p, capsys)


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 100_000 + "]" * 100_000,  # RecursionError inside tomllib
        "x = " + "{a=" * 3000 + "1" + "}" * 3000,
        "x = " + "[" * 40 + "]" * 40,  # parses, but deeper than any config
        "[risk]\ntraining_window_utc = " + "[" * 30 + "]" * 30,
    ],
)
def test_deeply_nested_toml_is_a_one_line_error(tmp_path, capsys, text):
    p = tmp_path / "deep.toml"
    p.write_text(text + "\n")
    assert ": not a config: tables or arrays nested" in _check(p, capsys)


def test_unknown_keys_are_refused_at_every_level_and_control_characters_are_escaped(tmp_path, capsys):
    p = tmp_path / "u.toml"
    p.write_text("[risk]\nmax_postions = 5\n")
    assert "risk.max_postions: unknown key" in _check(p, capsys)
    p.write_text("[riks]\nmax_positions = 5\n")
    assert "riks: unknown key" in _check(p, capsys)
    p.write_text('"a\\nb\\u001b[2J" = 1\n')  # a key with a newline and a terminal escape
    assert "a\\nb\\x1b[2J: unknown key" in _check(p, capsys)
    p.write_text("\n".join(f"k{i} = {i}" for i in range(50)) + "\n")
    assert "(+45 more)" in _check(p, capsys)


def test_config_check_validates_walkforward_configs_with_their_research_table(tmp_path, capsys):
    from kq.cli import main

    ci = configs_dir() / "ci.toml"
    assert main(["config", "check", str(ci)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{ci}: ok (sha256 ") and out.endswith("; [research] ok)\n")
    assert main(["config", "show", str(ci)]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["research"]["trade_horizon"] == 24
    p = tmp_path / "r.toml"
    p.write_text(f'extends = "{ci}"\n[research.folds]\npurge_bars = 2\n')
    assert "research.folds.purge_bars: 2 is shorter than the longest label horizon" in _check(p, capsys)


def test_metrics_json_stays_strict_when_a_metric_is_infinite(tmp_path):
    """profit_factor is inf when no trade lost (engine.backtest.nb): metrics.json must still be
    strict JSON (null), not the token Infinity that JSON readers reject."""
    import json

    import numpy as np

    from engine.backtest.io import write_outputs
    from engine.backtest.runner import make_inputs, run_backtest
    from engine.risk.params import params_from_config
    from engine.store.panel import load_shared_panel
    from tests.conftest import require_shared

    require_shared()
    cfg = load_config()
    t0 = 1672531200
    panel = load_shared_panel(["binance_BTCUSDT_1h"], t0, t0 + 200 * 3600)
    n = panel.close.shape[0]
    res = run_backtest(make_inputs(panel, np.full((n, 1), 0.3), np.zeros((n, 1)), cfg), params_from_config(cfg))
    res.metrics[0]["profit_factor"] = np.inf
    res.metrics[0]["calmar"] = -np.inf
    write_outputs(tmp_path / "bt", res, cfg)

    def _refuse(tok):
        raise AssertionError(f"metrics.json holds the non-standard JSON token {tok}")

    doc = json.loads((tmp_path / "bt" / "metrics.json").read_text(), parse_constant=_refuse)
    assert doc["profit_factor"] is None and doc["calmar"] is None


@pytest.mark.parametrize(
    "body, key, words",
    [
        ('[data]\nvenue = "nope"\n', "data.venue", "unknown venue 'nope'"),
        ('[research]\nstart = "garbage"\n', "research.start", "invalid time 'garbage'"),
        ('[research]\nend = "2024-13-01"\n', "research.end", "invalid time '2024-13-01'"),
        ("[research]\nstart = 2024-01-01\n", "research.start", 'write the time as a string: "2024-01-01"'),
        ("[research]\nstart = true\n", "research.start", "must be a date"),
        ('[research]\nstart = "2024-02-01"\nend = "2024-01-01"\n', "research", "is before start"),
        ("[research.models.xgboost]\nn_jobs = 257\n", "research.models.xgboost.n_jobs", "less than or equal to 256"),
        ("[research.models.lstm]\nunits = 100000\n", "research.models.lstm.units", "less than or equal to 4096"),
        (
            "[research.models.random_forest]\nn_estimators = 10000000\n",
            "research.models.random_forest.n_estimators",
            "",
        ),
        ("[research.models.lightgbm]\nseed = 4294967296\n", "research.models.lightgbm.seed", ""),
    ],
)
def test_config_check_refuses_bad_venue_dates_and_huge_model_sizes_naming_the_key(tmp_path, capsys, body, key, words):
    """These used to pass ``kq config check`` and fail later (or run an absurd fit) without naming the key."""
    p = tmp_path / "c.toml"
    p.write_text(f'extends = "{configs_dir() / "default.toml"}"\n{body}')
    err = _check(p, capsys)
    assert f"{key}: " in err and words in err, err


def test_every_research_number_has_an_upper_bound():
    import typing

    from pydantic import BaseModel

    from research.config import ResearchConfig

    missing = []

    def walk(model, prefix):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}.{name}")
                continue
            base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
            if base in (int, float) and not any(
                getattr(m, a, None) is not None for m in f.metadata for a in ("le", "lt")
            ):
                missing.append(f"{prefix}.{name}")

    walk(ResearchConfig, "research")
    assert not missing, missing
