"""One simulator per state file: a second one on the same file refuses to start (one line, exit 2)
instead of booking the same txids a second time."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.errors import InputError
from kq.cli import main
from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import ADMIN_TOKEN, KEY, SECRET, T0, flat_panel, sim_test_config

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
BUY = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.01"}


def open_state(path):
    return build_exchange(
        flat_panel(),
        config=sim_test_config(),
        start=T0 + 5 * 3600,
        env=ENV,
        state=str(path),
        balances={"USD": Decimal("10000")},
    )


def test_a_second_simulator_on_the_same_state_file_refuses(tmp_path):
    path = tmp_path / "s.sqlite"
    first = open_state(path)
    with pytest.raises(InputError, match=r"is in use by another simulator \(lock .*s\.sqlite\.lock is held\)"):
        open_state(path)
    # the first is unaffected and is the only one booking
    txid = first.add_order(first.accounts[KEY], BUY)["txid"][0]
    first.store.close()
    second = open_state(path)  # free again once the first has stopped
    try:
        assert txid in second.orders
        new = second.add_order(second.accounts[KEY], BUY)["txid"][0]
        assert new != txid and len(second.trades) == 2
    finally:
        second.store.close()


def test_kq_sim_serve_on_a_held_state_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import socket

    path = tmp_path / "s.sqlite"
    first = open_state(path)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))  # were the file not refused, serving would fail on this port, not hang
    busy.listen()
    try:
        before = path.read_bytes()
        monkeypatch.setenv("KQ_SIM_ADMIN_TOKEN", ADMIN_TOKEN)
        assert (
            main(
                [
                    "sim",
                    "serve",
                    "--shared",
                    "XBTUSD_1h",
                    "--start",
                    "2022-01-02",
                    "--end",
                    "2022-01-05",
                    "--port",
                    str(busy.getsockname()[1]),
                    "--state",
                    str(path),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert err.startswith("kq: error: ") and "is in use by another simulator" in err and err.count("\n") == 1
        assert path.read_bytes() == before
    finally:
        busy.close()
        first.store.close()


def test_a_failed_start_releases_the_lock(tmp_path):
    path = tmp_path / "s.sqlite"
    ex = open_state(path)
    ex.add_order(ex.accounts[KEY], {**BUY, "ordertype": "limit", "price": "19000"})
    ex.store.close()
    with pytest.raises(InputError, match="does not serve"):  # another market: refused after taking the lock
        build_exchange(flat_panel(pair="ETH/USD"), start=T0 + 5 * 3600, env=ENV, state=str(path))
    open_state(path).store.close()  # the refused start did not keep the file locked
