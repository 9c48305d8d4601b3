"""Nothing but finite numbers in range gets into the simulator's books, clock or fault plan, and a
state file that holds anything else is refused in one line and left as it is."""

from __future__ import annotations

import json
import math
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from engine.errors import InputError
from live_bridge.simulator.market import SimClock
from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import KEY, SECRET, T0, admin_headers, flat_panel, local_client, sim_test_config

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
NOW = T0 + 5 * 3600
HOSTILE_NUMBERS = [
    "NaN",
    "nan",
    "-nan",
    "Infinity",
    "inf",
    "-inf",
    "1e999999999",
    "1e25",
    "١٢",
    "²",
    "1_000",
    " 5",
    "5 ",
    "0x10",
    "",
    "1e",
    True,
    False,
    None,
    [],
    {},
    [5],
    {"v": 5},
    1e300,
    -1e300,
]


def make(tmp_path=None, **kw):
    state = str(tmp_path / "s.sqlite") if tmp_path is not None else None
    return build_exchange(
        flat_panel(),
        config=sim_test_config(),
        start=NOW,
        env=ENV,
        state=state,
        balances={"USD": Decimal("1000"), "BTC": Decimal("2")},
        **kw,
    )


@pytest.fixture
def ex():
    return make()


@pytest.fixture
def client(ex):
    with local_client(ex) as c:
        yield c


def post(client, path, body):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, content=raw, headers=admin_headers() | {"Content-Type": "application/json"})


def books(ex):
    st = ex.state()
    return st["now"], st["accounts"], st["orders"], st["trades"], st["faults"]


@pytest.mark.parametrize("delta", HOSTILE_NUMBERS + ["-1000.0001", "0.00001", "1e15", 10**15])
def test_balance_changes_take_finite_amounts_only(ex, client, delta):
    before = books(ex)
    r = post(client, "/admin/balance", {"account": "default", "asset": "USD", "delta": delta})
    assert r.status_code == 400 and r.json()["error"].startswith("bad balance change: "), (delta, r.text)
    assert books(ex) == before
    assert all(v.is_finite() for v in ex.accounts[KEY].balances.values())


def test_json_nan_literals_and_bad_json_are_400(ex, client):
    before = books(ex)
    for raw in (
        '{"account": "default", "asset": "USD", "delta": NaN}',
        '{"to": Infinity}',
        "{",
        "[1,",
        '{"account": "default", "account": "x", "asset": "USD", "delta": 1}',
        b"\xff\xfe{}",
        "[" * 100_000 + "]" * 100_000,
    ):
        for path in ("/admin/balance", "/admin/clock/advance", "/admin/faults", "/admin/status"):
            r = post(client, path, raw)
            assert r.status_code in (400, 413) and "error" in r.json(), (path, raw[:20], r.text)
    assert books(ex) == before


def test_balance_changes_that_stay_valid_are_applied(ex, client):
    assert post(client, "/admin/balance", {"account": "default", "asset": "USD", "delta": "-999.5"}).json() == {
        "XXBT": "2.0000000000",
        "ZUSD": "0.5000",
    }
    assert post(client, "/admin/balance", {"account": "default", "asset": "XBT", "delta": 1.5}).status_code == 200
    assert ex.accounts[KEY].balances == {"USD": Decimal("0.5"), "BTC": Decimal("3.5")}


def test_a_withdrawal_cannot_take_funds_held_by_open_orders(ex, client):
    ex.add_order(
        ex.accounts[KEY], {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.04", "price": "19000"}
    )
    held = ex.holds(ex.accounts[KEY])["USD"]
    r = post(client, "/admin/balance", {"account": "default", "asset": "USD", "delta": str(-(1000 - held) - 1)})
    assert r.status_code == 400 and "its open orders hold" in r.json()["error"]
    assert ex.accounts[KEY].balances["USD"] == Decimal(1000)


@pytest.mark.parametrize(
    "body",
    [{"to": v} for v in HOSTILE_NUMBERS]
    + [{"bars": v} for v in HOSTILE_NUMBERS]
    + [{"seconds": v} for v in HOSTILE_NUMBERS]
    + [
        {"to": -1},
        {"to": NOW - 1},
        {"to": 1e10},
        {"seconds": -5},
        {"bars": -1},
        {"bars": 10**7},
        {"to": NOW + 3600, "bars": 1},
        {"hours": 1},
        [1],
        "x",
        5,
    ],
)
def test_the_clock_takes_finite_forward_moves_only(ex, client, body):
    before = books(ex)
    r = post(client, "/admin/clock/advance", body)
    assert r.status_code == 400, (body, r.text)
    assert books(ex) == before and ex.now() == NOW


def test_the_reported_clock_attack_no_longer_lands(tmp_path):
    """{"to": "nan"} got past the never-backwards guard, then {"to": -1} and {"bars": "inf"} were taken
    and the saved now = inf crashed `kq sim serve` at start."""
    ex = make(tmp_path)
    with local_client(ex) as c:
        for body in ({"to": "nan"}, {"to": -1}, {"bars": "inf"}, {"to": "inf"}):
            assert post(c, "/admin/clock/advance", body).status_code == 400
        assert post(c, "/admin/clock/advance", {"bars": 2}).json() == {"now": NOW + 7200}
        assert post(c, "/admin/balance", {"account": "default", "asset": "USD", "delta": "NaN"}).status_code == 400
    ex.store.close()
    again = make(tmp_path)
    assert again.now() == NOW + 7200 and again.accounts[KEY].balances["USD"] == Decimal(1000)
    again.store.close()


@pytest.mark.parametrize("t", [math.nan, math.inf, -math.inf, 5e9])
def test_sim_clock_refuses_non_finite_times(t):
    c = SimClock(NOW)
    with pytest.raises(InputError):
        c.set(t)
    with pytest.raises(InputError):
        c.advance(t)
    with pytest.raises(InputError):
        SimClock(t)
    with pytest.raises(InputError):
        SimClock(NOW, "accelerated", speed=t)
    assert c.now() == NOW


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "timeout", "seconds": "inf"},
        {"kind": "timeout", "seconds": 1e9},
        {"kind": "timeout", "apply": "yes"},
        {"kind": "http_error", "status": "abc"},
        {"kind": "http_error", "status": 200},
        {"kind": "http_error", "status": True},
        {"kind": "spread_blowup", "factor": "nan"},
        {"kind": "spread_blowup", "factor": True},
        {"kind": "price_gap", "factor": 1.2},
        {"kind": "price_gap", "factor": "١", "from_ts": NOW},
        {"kind": "error", "message": "E" * 1000},
        {"kind": "error", "message": 5},
        {"kind": "error"},
        {"kind": "missing_candle", "ts": "x"},
        {"kind": "missing_candle"},
        {"kind": "late_candle", "delay": -1},
        {"kind": "clock_skew", "seconds": math.inf},
        {"kind": "partial_fills", "polls": 0},
        {"kind": "rules_change", "pair": "XBTUSD", "tick_size": "1e-30"},
        {"kind": "rules_change", "pair": "XBTUSD", "pair_decimals": 99},
        {"kind": "rules_change", "pair": "XBTUSD"},
        {"kind": "delist"},
        {"kind": "delist", "pair": ["XBTUSD"]},
        {"kind": "stuck_open", "count": 0},
        {"kind": "stuck_open", "count": "many"},
        {"kind": "stuck_open", "from_ts": "nan"},
        {"kind": "stuck_open", "from_ts": NOW + 10, "until_ts": NOW},
        {"kind": "empty_book", "colour": "red"},
        {"kind": "error", "message": "EService:Busy", "params": []},
        {"kind": "error", "endpoint": 5, "message": "E"},
        {"kind": ["error"]},
        {"faults": 5},
        [1, 2],
        "error",
        None,
        {"faults": [{"kind": "stuck_open"}, {"kind": "meteor"}]},  # all or nothing: the valid one is not added
    ],
)
def test_faults_are_validated_whole(ex, client, fault):
    before = books(ex)
    r = post(client, "/admin/faults", fault)
    assert r.status_code == 400, (fault, r.text)
    assert books(ex) == before and ex.faults.faults == []


@pytest.mark.parametrize(
    "body",
    [
        {"status": "melted"},
        {"status": True},
        {"status": ["online"]},
        {"status": "online", "pair": 5},
        {"status": "online", "pair": "NOPE"},
        {"mode": "x"},
        [],
        "online",
    ],
)
def test_market_status_takes_known_values_only(ex, client, body):
    r = post(client, "/admin/status", body)
    assert r.status_code == 400, r.text
    assert ex.status == "online" and ex.pair_status == {}


# ---- the state file ------------------------------------------------------------------------------
def _saved(tmp_path) -> str:
    ex = make(tmp_path)
    ex.add_order(
        ex.accounts[KEY], {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}
    )
    ex.store.close()
    return str(tmp_path / "s.sqlite")


def _corrupt(path: str, sql: str, *args) -> None:
    c = sqlite3.connect(path)
    c.execute(sql, args)
    c.commit()
    c.close()


CORRUPTIONS = [
    ("UPDATE meta SET v = ? WHERE k = 'now'", "inf"),
    ("UPDATE meta SET v = ? WHERE k = 'now'", "nan"),
    ("UPDATE meta SET v = ? WHERE k = 'now'", "-1"),
    ("UPDATE meta SET v = ? WHERE k = 'seq'", "x"),
    ("UPDATE meta SET v = ? WHERE k = 'faults'", "{not json"),
    ("UPDATE meta SET v = ? WHERE k = 'faults'", '[{"kind": "timeout", "seconds": "inf"}]'),
    ("UPDATE meta SET v = ? WHERE k = 'status'", "melted"),
    ("UPDATE balances SET amount = ? WHERE asset = 'USD'", "NaN"),
    ("UPDATE balances SET amount = ? WHERE asset = 'USD'", "-5"),
    ("UPDATE balances SET amount = ? WHERE asset = 'USD'", "lots"),
    ("UPDATE accounts SET last_nonce = ?", "1.5"),
    ("UPDATE accounts SET deadman = ?", float("inf")),
    ("UPDATE orders SET data = ?", "{"),
    ("UPDATE orders SET data = ?", "[]"),
    ("UPDATE orders SET data = json_set(data, '$.vol', ?)", "NaN"),
    ("UPDATE orders SET data = json_set(data, '$.expiretm', ?)", 1e999),
    ("UPDATE orders SET data = json_set(data, '$.surprise', ?)", 1),
    ("DROP TABLE balances",),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: " ".join(map(str, c))[:60])
def test_a_corrupt_state_file_is_one_line_and_left_untouched(tmp_path, capsys, corruption):
    path = _saved(tmp_path)
    _corrupt(path, *corruption)
    before = Path(path).read_bytes()
    with pytest.raises(InputError) as e:
        make(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and ("corrupt" in msg or "state file" in msg), msg
    assert Path(path).read_bytes() == before


def test_a_state_file_that_is_not_sqlite_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from kq.cli import main
    from live_bridge.simulator.testing import ADMIN_TOKEN

    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database\x00\xff" * 200)
    before = sorted(p.name for p in tmp_path.iterdir()) + ["s.sqlite.lock"]  # the lock file is beside it
    with pytest.raises(InputError, match="not a usable simulator state file"):
        make(tmp_path)
    assert path.read_bytes() == b"this is not a database\x00\xff" * 200
    monkeypatch.setenv("KQ_SIM_ADMIN_TOKEN", ADMIN_TOKEN)
    assert main(["sim", "serve", "--shared", "XBTUSD_1h", "--state", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kq: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert path.read_bytes() == b"this is not a database\x00\xff" * 200
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_directory_as_state_file_is_refused(tmp_path):
    (tmp_path / "s.sqlite").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        make(tmp_path)


@pytest.mark.parametrize("v", ["١٢", "1_000", " 5", "-5", "NaN", True, "1e16"])
def test_config_account_balances_are_strict(v):
    from engine.errors import ConfigError
    from live_bridge.simulator.config import sim_config_from_dict

    with pytest.raises(ConfigError, match=r"accounts\.0\.balances"):
        sim_config_from_dict({"accounts": [{"name": "a", "key_env": "K", "secret_env": "S", "balances": {"USD": v}}]})
