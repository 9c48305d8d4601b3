"""`kq sim serve`: refuses non-loopback hosts and bad input in one line; serves real bars the Kraken way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from kq.cli import main
from live_bridge.simulator.testing import ADMIN_TOKEN, KEY, SECRET


@pytest.fixture(autouse=True)
def admin_token(monkeypatch):
    monkeypatch.setenv("KQ_SIM_ADMIN_TOKEN", ADMIN_TOKEN)


def test_refuses_anything_but_loopback(capsys):
    assert main(["sim", "serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kq: error: --host '0.0.0.0': the simulator binds loopback only (127.0.0.1 or ::1)"


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--balance", "USD"], "use ASSET=AMOUNT"),
        (["--balance", "USD=-1"], "amount must be >= 0"),
        (["--balance", "USD=lots"], "is not a number"),
        (["--balance", "USD=١٢"], "is not a number"),
        (["--balance", "USD=1_000"], "is not a number"),
        (["--balance", "USD=NaN"], "is not a number"),
        (["--balance", "USD=1e99"], "amount must be >= 0 and <= 1,000,000,000,000,000"),
        (["--clock", "warp"], "use manual, realtime or accelerated"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, args, msg):
    assert main(["sim", "serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kq: error: ") and msg in err and "Traceback" not in err


def test_secret_must_be_base64(capsys, monkeypatch):
    monkeypatch.setenv("KRAKEN_API_SECRET", "not base64!!")
    assert main(["sim", "serve", "--shared", "XBTUSD_1h"]) == 2
    err = capsys.readouterr().err
    assert "KRAKEN_API_SECRET is not valid base64" in err and "not base64!!" not in err


@pytest.mark.parametrize(
    "token, msg",
    [
        (None, "KQ_SIM_ADMIN_TOKEN is not set"),
        ("", "KQ_SIM_ADMIN_TOKEN is not set"),
        ("short", "KQ_SIM_ADMIN_TOKEN must be 16 to 512 printable ASCII characters"),
        (SECRET, "KQ_SIM_ADMIN_TOKEN must differ from the Kraken API key and secret"),
    ],
)
def test_serve_refuses_to_start_without_a_strong_admin_token(capsys, monkeypatch, token, msg):
    monkeypatch.setenv("KRAKEN_API_KEY", KEY)
    monkeypatch.setenv("KRAKEN_API_SECRET", SECRET)
    if token is None:
        monkeypatch.delenv("KQ_SIM_ADMIN_TOKEN")
    else:
        monkeypatch.setenv("KQ_SIM_ADMIN_TOKEN", token)
    assert main(["sim", "serve", "--shared", "XBTUSD_1h"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kq: error: ") and msg in err and err.count("\n") == 1
    assert SECRET not in err


def test_admin_commands_send_the_token(capsys, monkeypatch):
    from live_bridge.simulator.testing import T0, flat_panel, start_sim

    s = start_sim(flat_panel(), start=T0 + 5 * 3600)
    try:
        monkeypatch.delenv("KQ_SIM_ADMIN_TOKEN")
        assert main(["sim", "state", "--url", s.url]) == 2
        assert "KQ_SIM_ADMIN_TOKEN is not set" in capsys.readouterr().err
        monkeypatch.setenv("KQ_SIM_ADMIN_TOKEN", "a-wrong-token-of-length")
        assert main(["sim", "advance", "--url", s.url, "--bars", "2"]) == 2
        assert "simulator refused (HTTP 401): missing or wrong admin token" in capsys.readouterr().err
        for bad in ("nan", "inf", "-1"):
            assert main(["sim", "advance", "--url", s.url, "--bars", bad]) == 2
            assert "must be finite and >= 0" in capsys.readouterr().err
        assert s.ex.now() == T0 + 5 * 3600
    finally:
        s.stop()


@pytest.mark.parametrize("default_state", [False, True])
def test_serves_binance_bars_as_kraken_pairs(shared_dir, tmp_path, default_state):
    """Also: without --state the state file lives in the data folder (KQ_DATA), never beside the
    installed package."""
    from kraken.spot import Market, User

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, KRAKEN_API_KEY=KEY, KRAKEN_API_SECRET=SECRET, KQ_SIM_ADMIN_TOKEN=ADMIN_TOKEN)
    env["KQ_DATA"] = str(tmp_path / "kqdata")
    cmd = [
        sys.executable,
        "-m",
        "kq",
        "sim",
        "serve",
        "--port",
        str(port),
        "--shared",
        "binance_BTCUSDT_1h,binance_SOLUSDT_1h",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-10",
        "--balance",
        "USDT=2500",
    ]
    state = tmp_path / "kqdata" / "sim_state.sqlite" if default_state else tmp_path / "s.sqlite"
    if not default_state:
        cmd += ["--state", "s.sqlite"]  # relative: to where kq runs
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        m = Market(url=url)
        for _ in range(200):  # bounded wait for startup
            try:
                pairs = m.get_asset_pairs()
                break
            except Exception:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read())
                time.sleep(0.1)
        else:
            pytest.fail("kq sim serve did not come up")
        assert set(pairs) == {"XBTUSDT", "SOLUSDT"}
        ohlc = m.get_ohlc(pair="BTC/USDT", interval=60)
        assert ohlc["XBTUSDT"][-1][0] == 1709251200  # the forming candle is the start hour
        assert User(key=KEY, secret=SECRET, url=url).get_account_balance() == {"USDT": "2500.00000000"}
        assert state.is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_store_pairs_are_served_the_kraken_way(tmp_path):
    """A market store (here the synthetic market) feeds the simulator; every stored pair with
    Kraken rules is listed under its Kraken id."""
    from kq.data import synth_into_store
    from kq.sim import load_market_panel
    from live_bridge.simulator.server import build_exchange

    store = tmp_path / "m.duckdb"
    synth_into_store(str(store), ["BTC/USD", "ETH/USD", "DOGE/USD"], 1_704_067_200, 100, 3)
    panel = load_market_panel(str(store), "synthetic", None, None, 1_704_067_200 + 48 * 3600, None)
    ex = build_exchange(panel, start=1_704_067_200 + 48 * 3600, env={})
    assert sorted(ex.asset_pairs(None)) == ["XDGUSD", "XETHZUSD", "XXBTZUSD"]
    assert ex.accounts == {}  # no KRAKEN_API_KEY in this environment: public data only
    rows, last = ex.market.ohlc("ETH/USD", ex.now(), None)
    assert last == 1_704_067_200 + 47 * 3600 and rows[-1][0] == 1_704_067_200 + 48 * 3600


def test_admin_commands_drive_a_running_simulator(capsys):
    from live_bridge.simulator.testing import T0, flat_panel, start_sim

    s = start_sim(flat_panel(), start=T0 + 5 * 3600)
    try:
        assert main(["sim", "advance", "--url", s.url, "--bars", "2"]) == 0
        assert capsys.readouterr().out.strip() == f"now {T0 + 7 * 3600}"
        assert (
            main(["sim", "fault", "--url", s.url, '{"kind": "error", "endpoint": "Time", "message": "EService:Busy"}'])
            == 0
        )
        assert s.raw_public("Time").json()["error"] == ["EService:Busy"]
        assert main(["sim", "fault", "--url", s.url, '{"kind": "meteor"}']) == 2
        assert "unknown fault kind" in capsys.readouterr().err
        assert main(["sim", "state", "--url", s.url]) == 0
        assert f'"now": {T0 + 7 * 3600}' in capsys.readouterr().out
    finally:
        s.stop()
    assert main(["sim", "state", "--url", s.url]) == 2
    assert "no simulator at" in capsys.readouterr().err


def test_a_state_file_from_other_data_is_refused(tmp_path):
    from decimal import Decimal

    from engine.errors import InputError
    from live_bridge.simulator.server import build_exchange
    from live_bridge.simulator.testing import T0, flat_panel

    env = {"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "c2VjcmV0"}
    state = str(tmp_path / "s.sqlite")
    ex = build_exchange(flat_panel(), start=T0 + 3 * 3600, state=state, env=env, balances={"USD": Decimal(10**5)})
    ex.add_order(
        ex.accounts["k"], {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"}
    )
    ex.store.close()
    with pytest.raises(InputError, match=r"holds orders on pairs this market does not serve \(BTC/USD\)"):
        build_exchange(flat_panel(pair="ETH/USD"), start=T0 + 3 * 3600, state=state, env=env)


def test_starting_the_server_leaves_existing_log_handlers_open(tmp_path):
    """The simulator must not reconfigure global logging: uvicorn's default dictConfig calls close()
    on every handler in the process (a daemon's file handlers, pytest's capture handlers)."""
    import logging

    from live_bridge.simulator.testing import T0, flat_panel, start_sim

    class Tracking(logging.Handler):
        closed_calls = 0

        def emit(self, record):
            pass

        def close(self):
            Tracking.closed_calls += 1
            super().close()

    handler = Tracking()
    logger = logging.getLogger("kq.test.handlers")
    logger.addHandler(handler)
    try:
        s = start_sim(flat_panel(), start=T0 + 5 * 3600)
        s.stop()
        assert Tracking.closed_calls == 0
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)
