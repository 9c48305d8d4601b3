"""Helpers for tests, the benchmark and the parity job: a tiny hand-made panel, raw signed calls,
and a running simulator with python-kraken-sdk clients pointed at it."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from engine.store.panel import Panel

from .app import sign
from .config import SimConfig, sim_config_from_dict
from .server import SimServer, build_exchange

KEY = "kq-test-key"
SECRET = base64.b64encode(bytes(range(64))).decode()
ADMIN_TOKEN = "kq-test-admin-token-not-a-kraken-key"
LOCAL = "http://127.0.0.1:8765"  # base URL of in-process clients (the Host check wants loopback)
T0 = 1_700_000_000 // 3600 * 3600  # 2023-11-14 22:00 UTC


def bars_panel(
    rows: list[tuple[float, float, float, float, float]], pair: str = "BTC/USD", t0: int = T0, venue: str = "synthetic"
) -> Panel:
    """A one-pair panel from explicit (open, high, low, close, volume) rows; NaN rows are missing bars."""
    a = np.asarray(rows, dtype=np.float64).reshape(len(rows), 5)
    n = a.shape[0]
    ts = t0 + 3600 * np.arange(n, dtype=np.int64)
    col = lambda k: a[:, k].reshape(n, 1).copy()  # noqa: E731
    valid = ~np.isnan(a[:, 0]).reshape(n, 1)
    nan = np.full((n, 1), np.nan)
    return Panel(venue, (pair,), ts, col(0), col(1), col(2), col(3), col(4), nan.copy(), nan.copy(), valid)


def flat_panel(n: int = 48, price: float = 20000.0, pair: str = "BTC/USD", volume: float = 50.0) -> Panel:
    """n bars around a constant price with a +-1% range (no fills below 99% / above 101%)."""
    return bars_panel([(price, price * 1.01, price * 0.99, price, volume)] * n, pair)


def sim_test_config(**over: Any) -> SimConfig:
    base: dict[str, dict[str, Any]] = {
        "rate_limit": {"max_counter": 1e9, "order_max_counter": 1e9},
        "fills": {"use_estimator": False},
    }
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return sim_config_from_dict(base)


@dataclass
class Sim:
    server: SimServer
    market: Any
    user: Any
    trade: Any

    @property
    def ex(self):
        return self.server.exchange

    @property
    def url(self) -> str:
        return self.server.url

    def admin(
        self,
        path: str,
        body: Any = None,
        method: str | None = None,
        token: str | None = ADMIN_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> Any:
        import requests

        m = method or ("POST" if body is not None else "GET")
        h = admin_headers(token) | (headers or {})
        r = requests.request(m, self.url + path, json=body, timeout=10, headers=h)
        return r.status_code, r.json()

    def raw_private(
        self,
        endpoint: str,
        params: dict[str, Any] | None = None,
        *,
        key: str = KEY,
        secret: str = SECRET,
        nonce: int | None = None,
        timeout: float = 10.0,
    ):
        """A signed private call without the SDK: returns the requests.Response."""
        import requests

        body, headers = signed_form(endpoint, params or {}, key=key, secret=secret, nonce=nonce)
        return requests.post(f"{self.url}/0/private/{endpoint}", data=body, headers=headers, timeout=timeout)

    def raw_public(self, endpoint: str, params: dict[str, Any] | None = None, timeout: float = 10.0):
        import requests

        return requests.get(f"{self.url}/0/public/{endpoint}", params=params or {}, timeout=timeout)

    def stop(self) -> None:
        self.server.stop()


def signed_form(
    endpoint: str, params: dict[str, Any], *, key: str = KEY, secret: str = SECRET, nonce: int | None = None
) -> tuple[str, dict[str, str]]:
    """(body, headers) of a signed private call, as python-kraken-sdk sends it."""
    p = dict(params)
    p["nonce"] = str(nonce if nonce is not None else time.time_ns() // 10)
    body = urllib.parse.urlencode(p)
    path = f"/0/private/{endpoint}"
    return body, {
        "API-Key": key,
        "API-Sign": sign(secret, path, p["nonce"], body),
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
    }


def admin_headers(token: str | None = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def local_client(ex, admin_token: str | None = ADMIN_TOKEN):
    """An in-process client (no socket, no thread) of the simulator's app, on a loopback base URL."""
    import warnings

    with warnings.catch_warnings():  # starlette prefers httpx2 (not installed); httpx works the same
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from .app import create_app

    return TestClient(create_app(ex, admin_token=admin_token), base_url=LOCAL, raise_server_exceptions=False)


def start_sim(
    panel: Panel,
    *,
    balances: dict[str, str] | None = None,
    start: float | None = None,
    config: SimConfig | None = None,
    state: str | None = None,
    admin_token: str | None = ADMIN_TOKEN,
) -> Sim:
    from kraken.spot import Market, Trade, User

    env = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
    bal = {k: Decimal(v) for k, v in (balances or {"USD": "100000"}).items()}
    ex = build_exchange(panel, config=config or sim_test_config(), start=start, state=state, balances=bal, env=env)
    srv = SimServer(ex, admin_token=admin_token).start()
    return Sim(
        srv, Market(url=srv.url), User(key=KEY, secret=SECRET, url=srv.url), Trade(key=KEY, secret=SECRET, url=srv.url)
    )


def body(resp) -> dict[str, Any]:
    return json.loads(resp.text)


class UnapprovedModel:
    """A saved model bundle with the face the daemon's cycle needs (model id, manifest digest,
    ``bundle.trade_horizon``, ``predict``), for paper runs against this simulator only: tests, the
    benchmark and the demo inject it because their candidates are NOT approved for any environment
    (``live_bridge.models.load_approved`` rightly refuses them). Never used by the daemon itself."""

    def __init__(self, path: Any, model_id: str = "unapproved") -> None:
        from research.bundle import load_bundle

        self.bundle = load_bundle(path)
        self.model = model_id
        self.manifest_sha256 = str(self.bundle.manifest["manifest_sha256"])
        self.path = path

    def predict(self, features: Any, panel: Any, at: int | None = None) -> Any:
        return self.bundle.predict(features, panel, at)


class VirtualClock:
    """A monotonic clock for the client-side rate budget whose waits pass at once (for paper runs
    against this in-process simulator, whose own rate limits are off)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(float(s), 0.0)
