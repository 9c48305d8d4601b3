from pathlib import Path

import pytest

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


@pytest.mark.parametrize("raw,needle", [
    ({"risk": {"max_positions": 99}}, "risk.max_positions"),
    ({"risk": {"not_a_rule": 1}}, "risk.not_a_rule: unknown key"),
    ({"fees": {"fee_rate": -0.1}}, "fees.fee_rate"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"risk": {"dd_halt": 0.05}}, "drawdown tiers"),
    ({"labels": {"horizons": [24, 1]}}, "horizons"),
    ({"data": {"bar_seconds": 60}}, "data.bar_seconds"),
])
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict(raw, "x.toml")


def test_config_is_frozen():
    c = load_config()
    with pytest.raises(Exception):
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
