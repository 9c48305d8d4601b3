"""[risk]/[execution]/[backtest] sections: defaults match the rules, bad values name the key."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import config_from_dict, load_config
from engine.errors import ConfigError
from engine.paths import configs_dir
from engine.risk.enums import SIZING_FIXED_FRACTION, params_dt
from engine.risk.params import instrument_arrays, params_from_config


def test_defaults_are_the_documented_rules():
    c = load_config()
    r = c.risk
    assert (r.base_risk, r.max_positions, r.max_exposure) == (0.02, 10, 0.20)
    assert (r.dd_reduce_risk, r.dd_reduce_exposure, r.dd_halt) == (0.10, 0.15, 0.20)
    assert c.fees.fee_rate == 0.004 and c.execution.enforce_precision
    p = params_from_config(c)[0]
    assert p["min_edge"] == pytest.approx(2 * 0.004 + 2 * 5e-4)
    assert p["dd_halt"] == 0.20 and p["max_positions"] == 10


def test_parity_config_turns_rules_off():
    c = load_config(configs_dir() / "vectorbt_parity.toml")
    p = params_from_config(c)[0]
    assert p["sizing"] == SIZING_FIXED_FRACTION and p["stop_atr_mult"] == 0 and p["max_exposure"] == 1.0
    assert p["enforce_precision"] == 0 and p["entry_kind"] == 1 and p["spread_slip"] == 0


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("risk", "p_up_exit", 0.6, "p_up_exit must be below p_up_entry"),
        ("risk", "dd_halt", 0.12, "drawdown tiers"),
        ("risk", "max_cluster_exposure", 0.5, "max_cluster_exposure"),
        ("risk", "base_risk", 0.5, "risk.base_risk"),
        ("execution", "entry_order", "iceberg", "execution.entry_order"),
        ("backtest", "init_cash", -1, "backtest.init_cash"),
        ("risk", "bogus", 1, "risk.bogus: unknown key"),
    ],
)
def test_bad_values_name_the_key(section, key, value, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config_from_dict({section: {key: value}})


def test_instrument_arrays_come_from_kraken_rules():
    om, cm, lot, price, quote = instrument_arrays(["BTC/USD", "DOGE/USDT"])
    assert om.tolist() == [0.0001, 30.0] and cm.tolist() == [0.5, 0.5]
    assert lot.tolist() == [8, 8] and price.tolist() == [1, 7]
    assert quote.tolist() == [4, 8]  # USD 4, USDT 8: the fee rounding (engine.pairs.asset_decimals)
    assert params_dt.names == tuple(params_from_config(load_config()).dtype.names)
    with pytest.raises(KeyError):
        params_from_config(load_config(), no_such_field=1)
    assert np.isfinite(params_from_config(load_config())[0]["spread_alpha"])
