"""API secrets live in the environment only: never in the state file (which is owner-only), read
again at every start, so rotating KRAKEN_API_SECRET (or the key) takes effect and the old one stops
working."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from decimal import Decimal

import pytest

from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import KEY, SECRET, T0, flat_panel, local_client, signed_form, sim_test_config

NEW_SECRET = base64.b64encode(bytes(range(100, 164))).decode()
BUY = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}


def start(tmp_path, env):
    return build_exchange(
        flat_panel(),
        config=sim_test_config(),
        start=T0 + 5 * 3600,
        env=env,
        state=str(tmp_path / "s.sqlite"),
        balances={"USD": Decimal("10000")},
    )


def call(ex, endpoint="Balance", key=KEY, secret=SECRET, params=None):
    body, headers = signed_form(endpoint, params or {}, key=key, secret=secret)
    with local_client(ex) as c:
        return c.post(f"/0/private/{endpoint}", content=body, headers=headers).json()


def files(tmp_path):
    return [p for p in tmp_path.iterdir() if p.name.startswith("s.sqlite")]


def test_a_rotated_secret_takes_effect_at_the_next_start(tmp_path):
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET})
    assert call(ex)["error"] == []
    ex.store.close()
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": NEW_SECRET})
    try:
        assert call(ex, secret=NEW_SECRET) == {"error": [], "result": {"ZUSD": "10000.0000"}}
        assert call(ex, secret=SECRET)["error"] == ["EAPI:Invalid signature"]
    finally:
        ex.store.close()


def test_a_rotated_key_takes_the_books_over(tmp_path):
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET})
    txid = call(ex, "AddOrder", params=BUY)["result"]["txid"][0]
    ex.store.close()
    ex = start(tmp_path, {"KRAKEN_API_KEY": "new-key", "KRAKEN_API_SECRET": NEW_SECRET})
    ex.store.close()
    ex = start(tmp_path, {"KRAKEN_API_KEY": "new-key", "KRAKEN_API_SECRET": NEW_SECRET})  # and it was saved so
    try:
        assert list(ex.accounts) == ["new-key"]
        assert call(ex, "Balance", key=KEY)["error"] == ["EAPI:Invalid key"]
        r = call(ex, "QueryOrders", key="new-key", secret=NEW_SECRET, params={"txid": txid})
        assert r["error"] == [] and r["result"][txid]["status"] == "open"
    finally:
        ex.store.close()


def test_an_account_without_its_secret_in_the_environment_is_not_served(tmp_path):
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET})
    ex.store.close()
    ex = start(tmp_path, {})
    try:
        assert call(ex)["error"] == ["EAPI:Invalid key"]  # the saved books stay, unreachable
        assert ex.accounts[KEY].balances == {"USD": Decimal("10000")}
    finally:
        ex.store.close()


def test_the_state_file_holds_no_secret_and_is_owner_only(tmp_path):
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET})
    try:
        call(ex, "AddOrder", params=BUY)
        for p in files(tmp_path):  # the database, its WAL and shared memory, the lock
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
            assert SECRET.encode() not in p.read_bytes(), p.name
    finally:
        ex.store.close()
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT secret FROM accounts").fetchall() == [("",)]


def test_an_old_state_file_with_the_secret_in_clear_is_scrubbed(tmp_path):
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET})
    ex.store.close()
    path = tmp_path / "s.sqlite"
    c = sqlite3.connect(path)  # what older versions wrote: the secret in clear, mode 0644
    c.execute("UPDATE accounts SET secret = ?", (SECRET,))
    c.commit()
    c.close()
    os.chmod(path, 0o644)
    assert SECRET.encode() in b"".join(p.read_bytes() for p in files(tmp_path))
    ex = start(tmp_path, {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": NEW_SECRET})
    try:
        assert call(ex, secret=NEW_SECRET)["error"] == [] and call(ex)["error"] == ["EAPI:Invalid signature"]
        for p in files(tmp_path):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
            assert SECRET.encode() not in p.read_bytes(), p.name
    finally:
        ex.store.close()


def test_two_accounts_on_one_key_are_refused(tmp_path):
    from engine.errors import InputError
    from live_bridge.simulator.config import sim_config_from_dict

    cfg = sim_config_from_dict({"accounts": [{"name": "p2", "key_env": "K", "secret_env": "S"}]})
    with pytest.raises(InputError, match="same API key"):
        build_exchange(
            flat_panel(),
            config=cfg,
            start=T0 + 5 * 3600,
            env={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET, "K": KEY, "S": SECRET},
        )
