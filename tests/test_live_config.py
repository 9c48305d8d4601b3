"""The daemon's config (live_bridge/config.py): configs/paper.toml and configs/live.toml load, and
every bad value is ONE line naming the file and the key."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.paths import configs_dir
from live_bridge.config import LiveConfig, live_config_from_dict, load_live_config

PAPER = configs_dir() / "paper.toml"
LIVE = configs_dir() / "live.toml"


def _raw(path: Path = PAPER) -> dict:
    return tomllib.loads(path.read_text())


def _err(raw: dict, source: str = "configs/paper.toml") -> str:
    with pytest.raises(ConfigError) as ei:
        live_config_from_dict(raw, source)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{source}: "), msg
    assert "Traceback" not in msg and "pydantic" not in msg.lower(), msg
    return msg


def _with(raw: dict, dotted: str, value) -> dict:
    r = copy.deepcopy(raw)
    *path, last = dotted.split(".")
    d = r
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value
    return r


def test_paper_and_live_configs_load():
    p = load_live_config(PAPER)
    assert p.mode == "paper" and p.env == "paper" and p.quote == "USD"
    assert p.exchange.url == "http://127.0.0.1:8765" and p.cycle.clock == "exchange"
    assert "BTC/USD" in p.universe.pairs and p.source == str(PAPER)
    assert p.engine_path().resolve() == (configs_dir() / "default.toml").resolve()
    lv = load_live_config(LIVE)
    assert lv.mode == "live" and lv.exchange.url == "https://api.kraken.com" and lv.cycle.clock == "local"
    assert lv.quote == "USD" and len(lv.universe.pairs) == len(set(lv.universe.pairs))
    assert lv.engine_path().is_file()
    # neither file holds a secret: the key and secret come from the environment only
    for f in (PAPER, LIVE):
        text = f.read_text().lower()
        assert "api_key =" not in text and "secret =" not in text


@pytest.mark.parametrize(
    "dotted, value, words",
    [
        ("cycle.sttle_delay_s", 30, "cycle.sttle_delay_s: Extra inputs are not permitted"),
        ("colour", "red", "colour: Extra inputs are not permitted"),
        ("exchange.api_key", "k", "exchange.api_key: Extra inputs are not permitted"),
        ("cycle.settle_delay_s", "30", "cycle.settle_delay_s: must be a number, not a string"),
        ("cycle.history_bars", 30.5, "cycle.history_bars"),
        ("cycle.history_bars", True, "cycle.history_bars: must be a number, not a boolean"),
        ("universe.pairs", "BTC/USD", "universe.pairs"),
        ("cycle", 5, "cycle"),
        ("cycle.settle_delay_s", -1, "cycle.settle_delay_s: Input should be greater than or equal to 0"),
        ("cycle.settle_delay_s", 1801, "cycle.settle_delay_s: Input should be less than or equal to 1800"),
        ("cycle.settle_delay_s", float("nan"), "cycle.settle_delay_s: Input should be a finite number"),
        ("cycle.settle_delay_s", float("inf"), "cycle.settle_delay_s: Input should be a finite number"),
        ("cycle.history_bars", 799, "cycle.history_bars: Input should be greater than or equal to 800"),
        ("cycle.max_api_failures", 0, "cycle.max_api_failures"),
        ("cycle.clock", "sundial", "cycle.clock"),
        ("execution.market_buffer", 1, "execution.market_buffer: Input should be less than 1"),
        ("exchange.timeout_s", 0, "exchange.timeout_s: Input should be greater than 0"),
        ("exchange.deadline_s", 2, "exchange.deadline_s: Input should be greater than or equal to 5"),
        ("execution.limit_timeout_s", 600, "execution.limit_timeout_s 600 x 5 pairs"),
        ("exchange.tier", "gold", "exchange.tier"),
        ("exchange.url", "ftp://127.0.0.1", "exchange.url: not an http(s) URL"),
        ("mode", "backtest", "mode"),
        ("source", "elsewhere.toml", "source: unknown key"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(dotted, value, words):
    msg = _err(_with(_raw(), dotted, value))
    assert words in msg, msg


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8765", "https://api.kraken.com", "http://kraken.example:8765", "http://127.0.0.2:8765"]
)
def test_paper_config_needs_a_loopback_url(url):
    msg = _err(_with(_raw(), "exchange.url", url))
    assert "exchange.url" in msg and "not loopback" in msg and url in msg, msg


@pytest.mark.parametrize("url", ["http://localhost:9000", "http://[::1]:8765", "http://127.0.0.1:8765/"])
def test_paper_config_takes_loopback_urls(url):
    c = live_config_from_dict(_with(_raw(), "exchange.url", url))
    assert c.exchange.url == url.rstrip("/")


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://api.kraken.com", "https"),
        ("http://127.0.0.1:8765", "loopback"),
        ("https://127.0.0.1:8765", "loopback"),
        ("https://localhost", "loopback"),
    ],
)
def test_live_config_needs_https_and_a_real_host(url, words):
    msg = _err(_with(_raw(LIVE), "exchange.url", url), "configs/live.toml")
    assert "exchange.url" in msg and words in msg, msg


@pytest.mark.parametrize(
    "pairs, words",
    [
        (["BTC/USD", "ETH/USD", "BTC/USD"], "a pair is listed twice"),
        (["BTC/USD", "XBT/USD"], "a pair is listed twice"),  # Kraken's name of the same pair
        (["BTC/USD", "ETH/EUR"], "unknown pair 'ETH/EUR'"),  # no Kraken rules here
        (["BTC/USD", "ETH/USDT"], "all pairs must share one quote currency (got USD, USDT)"),
        (["NOPE/USD"], "unknown pair 'NOPE/USD'"),
        ([], "universe.pairs"),
    ],
)
def test_bad_universe_is_one_line(pairs, words):
    msg = _err(_with(_raw(), "universe.pairs", pairs))
    assert msg.startswith("configs/paper.toml: universe.pairs: ") and words in msg, msg


def test_missing_universe_is_named():
    r = _raw()
    del r["universe"]
    assert "universe: Field required" in _err(r)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such live config file"):
        load_live_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "paper"\n[cycle\n')
    with pytest.raises(ConfigError, match="invalid TOML") as ei:
        load_live_config(bad)
    assert "\n" not in str(ei.value)
    orphan = tmp_path / "orphan.toml"
    orphan.write_text(PAPER.read_text().replace('engine_config = "default.toml"', 'engine_config = "missing.toml"'))
    with pytest.raises(ConfigError, match=r"engine_config: no such file"):
        load_live_config(orphan)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(PAPER.read_text().replace("[cycle]\n", "[cycle]\nsettle_dealy_s = 5\n"))
    with pytest.raises(ConfigError) as ei:
        load_live_config(unknown)
    assert str(ei.value).startswith(f"{unknown}: cycle.settle_dealy_s:")


def test_digest_is_stable_and_changes_with_a_value():
    a, b = load_live_config(PAPER), load_live_config(PAPER)
    assert isinstance(a, LiveConfig) and a.digest() == b.digest() and len(a.digest()) == 64
    # the same config read from another path (source is not part of it) digests the same
    assert live_config_from_dict(_raw(), "elsewhere.toml").digest() == a.digest()
    # ... and so does a value written differently but equal (30 vs 30.0)
    assert live_config_from_dict(_with(_raw(), "cycle.settle_delay_s", 30.0)).digest() == a.digest()
    seen = {a.digest()}
    for dotted, value in [
        ("cycle.settle_delay_s", 31),
        ("execution.market_buffer", "0.03"),
        ("universe.pairs", ["BTC/USD", "ETH/USD"]),
        ("universe.pairs", ["ETH/USD", "BTC/USD"]),
        ("exchange.url", "http://127.0.0.1:8766"),
        ("paths.ledger", ""),
    ]:
        d = live_config_from_dict(_with(_raw(), dotted, value)).digest()
        assert d not in seen, dotted
        seen.add(d)
    # stable across processes (no hash seed, no dict order in it)
    code = f"from live_bridge.config import load_live_config as f; print(f({str(PAPER)!r}).digest())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == a.digest()
