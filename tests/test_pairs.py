from decimal import Decimal

import pytest

from engine.errors import InputError
from engine.pairs import INSTRUMENTS, instrument, normalize_asset, normalize_pair


@pytest.mark.parametrize("spelling", ["XXBTZUSD", "XBTUSD", "XBT/USD", "BTC/USD", "btcusd", "btc-usd", "XBT_USD"])
def test_every_kraken_spelling_of_btc_usd_is_one_pair(spelling):
    assert normalize_pair(spelling) == "BTC/USD"


@pytest.mark.parametrize(
    "spelling,expected",
    [
        ("XDGUSD", "DOGE/USD"),
        ("XXDG/ZUSD", "DOGE/USD"),
        ("DOGEUSDT", "DOGE/USDT"),
        ("XETHZUSD", "ETH/USD"),
        ("XXRPZUSD", "XRP/USD"),
        ("SOLUSD", "SOL/USD"),
        ("BTCUSDT", "BTC/USDT"),
        ("LINKUSDT", "LINK/USDT"),
        ("AVAX/USD", "AVAX/USD"),
    ],
)
def test_aliases(spelling, expected):
    assert normalize_pair(spelling) == expected


@pytest.mark.parametrize("bad", ["FOOBAR", "BTC/", "/USD", "BTC/USD/EUR", "", "ZZZUSD", "BTC USD"])
def test_unknown_pairs_are_rejected(bad):
    with pytest.raises(InputError, match="unknown pair"):
        normalize_pair(bad)


def test_asset_ids():
    assert normalize_asset("XXBT") == "BTC"
    assert normalize_asset("XDG") == "DOGE"
    assert normalize_asset("ZUSD") == "USD"


def test_kraken_ids_and_rules_match_the_published_btc_usd_pair():
    i = instrument("BTC/USD")
    assert (i.kraken_id, i.altname, i.wsname, i.base_id, i.quote_id) == (
        "XXBTZUSD",
        "XBTUSD",
        "XBT/USD",
        "XXBT",
        "ZUSD",
    )
    assert (i.pair_decimals, i.lot_decimals) == (1, 8)
    assert i.ordermin == Decimal("0.0001") and i.costmin == Decimal("0.5") and i.tick_size == Decimal("0.1")
    assert instrument("DOGE/USD").kraken_id == "XDGUSD"
    assert instrument("SOL/USD").kraken_id == "SOLUSD"
    assert instrument("ETH/USD").kraken_id == "XETHZUSD"


def test_every_instrument_is_self_consistent():
    for pair, i in INSTRUMENTS.items():
        assert normalize_pair(i.kraken_id) == pair
        assert normalize_pair(i.altname) == pair
        assert normalize_pair(i.wsname) == pair
        assert i.tick_size == Decimal(1).scaleb(-i.pair_decimals)
