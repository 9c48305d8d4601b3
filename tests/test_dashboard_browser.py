"""The dashboard in a real browser (issue 20): headless Debian chromium (``/usr/bin/chromium``,
installed by ``make browser``, run by ``make test``) driven by Playwright's Python package (no
browser of Playwright's own), against the API app (live_bridge/api) served by uvicorn in a thread
with the built static export (dashboard/out, ``make setup``) at ``/``.

The ledger is a real paper run: the tiny model on Kraken's BTC/USD and ETH/USD bars through the
simulator (tests/live_harness.py); BTC/USD is bought at the 2022-06-02 05:00 UTC close, and an OHLC
outage at 08:00 UTC latches the kill switch with the position open. The runs folder holds a real
backtest (the MA-crossover demo signal on Binance BTC/USDT and ETH/USDT, 2023).

Screenshots of every page (laptop and phone widths) go to ``test-artifacts/dashboard/`` (or
``$KQ_TEST_ARTIFACTS/dashboard``); a missing browser or export fails, never skips.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from live_bridge.ledger import Kind, Ledger
from live_bridge.operator import LiveStatus, status
from tests.live_harness import (
    P0,
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    make_daemon,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "dashboard" / "out"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("KQ_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"
TOKEN = "dashboard-browser-test-token-0123"
HOURS_AFTER = 48
HOUR0 = P0 // H + 29  # 2022-06-02 05:00 UTC: BTC/USD is bought at this close
KILL_HOUR = HOUR0 + 3  # its OHLC calls fail: the kill switch latches, the position stays open
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 20_000


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("KQ_OPERATOR", "alice")


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """The ledger of a paper run whose kill switch is latched with BTC/USD held."""
    from live_bridge.simulator.testing import start_sim

    tmp = tmp_path_factory.mktemp("paper")
    h = HOUR0
    kraken_store(tmp / "m.duckdb", shared_frames(HOURS_AFTER), upto=(h - 2) * H)
    sim = start_sim(sim_panel(HOURS_AFTER), start=float((h - 1) * H + SETTLE))
    d = make_daemon(sim.url, tmp, BundleModel(tiny_model_dir()), cycle={"max_api_failures": 1})
    try:
        d.start()
        win = {"endpoint": "OHLC", "from_ts": (KILL_HOUR + 1) * H, "until_ts": (KILL_HOUR + 1) * H + SETTLE + 1}
        code, body = sim.admin("/admin/faults", {"kind": "error", "message": "EService:Busy", "count": None, **win})
        assert code == 200, body
        states = []
        for hour in range(h - 1, KILL_HOUR + 1):
            sim.ex.advance(to=float((hour + 1) * H + SETTLE))
            (rep,) = d.run_once()
            states.append(rep.state)
        assert states == ["ACTIVE"] * 4 + ["KILL_SWITCH"], states
    finally:
        d.close()
        sim.stop()
    return tmp / "ledger.sqlite"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A runs folder with one real backtest (engine.backtest.io outputs)."""
    from tests.conftest import require_shared

    require_shared()
    from engine.backtest.demo import ma_signal
    from engine.backtest.io import write_outputs
    from engine.backtest.runner import make_inputs, run_backtest
    from engine.config import load_config
    from engine.risk.params import params_from_config
    from engine.store.panel import load_shared_panel

    start = 1_672_531_200  # 2023-01-01
    cfg = load_config()
    panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], start, start + 2400 * 3600)
    p_up, er = ma_signal(panel.close, 12, 48, 50.0)
    res = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg))
    root = tmp_path_factory.mktemp("runs")
    write_outputs(root / "ma-demo-2023", res, cfg, {"note": "dashboard browser test"}, market=panel)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(paper, runs_dir) -> Iterator[str]:
    """The API with the dashboard's export at ``/``, served by uvicorn in a thread: its base URL."""
    import uvicorn

    from live_bridge.api import create_app

    assert (EXPORT / "index.html").is_file(), "dashboard/out is missing: run `make setup` (npm ci + build)"
    app = create_app(str(paper), runs_dir, TOKEN, EXPORT, actor="alice")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert th.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    ctx = browser.new_context(viewport=LAPTOP)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert errors == [], errors  # no uncaught script error on any page


def sign_in(page: Any, base: str, path: str = "/") -> None:
    page.goto(base + path)
    page.get_by_test_id("token-prompt").wait_for()
    page.fill("input[name=token]", TOKEN)
    page.get_by_role("button", name="Open").click()


def shoot(page: Any, name: str) -> None:
    """A full-page screenshot at laptop width, then one at phone width."""
    page.set_viewport_size(LAPTOP)
    page.wait_for_timeout(150)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
    # usable on a phone: nothing wider than the screen (wide tables scroll inside their box)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], (name, width)
    page.set_viewport_size(LAPTOP)


# the canvas pixels a chart drew (alpha > 0): uPlot draws the axes and the series on its canvas
INKED = """(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""


def inked(page: Any, scope: str = "") -> list[int]:
    sel = f"{scope} [data-testid=chart] canvas".strip()
    page.locator(sel).first.wait_for()
    page.wait_for_timeout(200)
    return [int(c.evaluate(INKED)) for c in page.locator(sel).all()]


def money(x: Any) -> str:
    return f"{float(x):,.2f}"


def pct(x: Any) -> str:
    return f"{float(x) * 100:.2f}%"


def ledger_status(path: Path) -> LiveStatus:
    led = Ledger.open(str(path), migrate=False)
    try:
        return status(led)
    finally:
        led.close()


# ---- tests -------------------------------------------------------------------------------------


def test_without_the_token_the_api_refuses_and_the_page_asks_for_it(server, page):
    assert httpx.get(f"{server}/api/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        r = httpx.get(f"{server}/api/overview", headers=headers)
        assert r.status_code == 401, (headers, r.text)
    page.goto(server + "/")
    page.get_by_test_id("token-prompt").wait_for()
    assert page.get_by_test_id("equity").count() == 0
    assert page.evaluate("() => window.sessionStorage.getItem('kq.token')") is None
    shoot(page, "token-prompt")
    # a wrong token: the API refuses it and the prompt comes back, saying so
    page.fill("input[name=token]", "wrong-token-wrong-token")
    page.get_by_role("button", name="Open").click()
    page.get_by_text("The server refused the token").wait_for()
    assert page.get_by_test_id("equity").count() == 0
    assert page.evaluate("() => window.sessionStorage.getItem('kq.token')") is None
    # the token is not part of the build
    for f in EXPORT.rglob("*"):
        if f.is_file() and f.suffix in (".html", ".js", ".txt"):
            assert TOKEN not in f.read_text(errors="replace"), f


def test_overview_shows_the_ledgers_value_state_and_positions_and_draws_its_charts(server, paper, page):
    s = ledger_status(paper)
    assert s.state == "KILL_SWITCH" and [p.pair for p in s.positions] == ["BTC/USD"]
    sign_in(page, server)
    eq = page.get_by_test_id("equity")
    eq.wait_for()
    assert eq.inner_text().strip() == money(s.equity)
    state = page.get_by_test_id("state")
    assert state.inner_text().strip() == "KILL_SWITCH"
    assert f"kill switch: {s.kill_reason}" in page.inner_text("main")
    assert page.get_by_test_id("drawdown-value").inner_text() == pct(s.drawdown)
    assert page.get_by_test_id("exposure-value").inner_text() == pct(s.exposure_frac)
    rows = page.locator("[data-testid=positions] tbody tr")
    rows.first.wait_for()
    shown = [(r.locator("[data-col=pair]").inner_text(), r.locator("[data-col=qty]").inner_text()) for r in rows.all()]
    assert shown == [(p.pair, str(p.qty)) for p in s.positions]
    assert rows.first.locator("[data-col=value]").inner_text() == money(s.positions[0].value)
    # the equity curve and the drawdown chart draw (a canvas each, with ink on it)
    ink = inked(page)
    assert len(ink) == 2 and min(ink) > 500, ink
    assert page.get_by_test_id("state").locator(".badge.bad").count() == 1
    shoot(page, "overview")


def test_a_reactivation_through_the_page_lands_in_the_ledger(server, paper, page):
    led = Ledger.open(str(paper), migrate=False)
    try:
        before = led.count()
        assert led.entries(kind=Kind.OPERATOR_ACTION) == []
    finally:
        led.close()
    sign_in(page, server)
    form = page.get_by_test_id("operator-form")
    form.wait_for()
    page.get_by_test_id("equity").wait_for()
    assert form.locator("select[name=action]").input_value() == "reactivate"  # the latched switch
    send = form.get_by_role("button", name="Send reactivate")
    form.locator("input[name=reason]").fill("OHLC back (browser test)")
    form.locator("input[name=confirm]").fill("reactivat")
    assert send.is_disabled()  # not the typed word: nothing can be sent
    form.locator("input[name=confirm]").fill("reactivate")
    send.click()
    res = page.get_by_test_id("operator-result")
    res.wait_for()
    assert "Ledgered as seq" in res.inner_text(), res.inner_text()
    led = Ledger.open(str(paper), migrate=False)
    try:
        (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
        assert led.count() == before + 1
        assert act.code == "reactivate" and act.payload["reason"] == "OHLC back (browser test)"
        assert act.payload["actor"] == "alice" and act.payload["confirmation"] == "reactivate"
        assert act.payload["params"]["seen"]["kill_reason"] == "API_INSTABILITY"
        assert f"seq {act.seq}" in res.inner_text()
        assert [a["seq"] for a in status(led).pending_actions] == [act.seq]
    finally:
        led.close()
    # the history shows it pending
    page.locator("[data-testid=actions] [data-col=outcome]", has_text="pending").wait_for()
    shoot(page, "overview-after-reactivate")


def test_every_page_renders_from_the_api(server, paper, runs_dir, page):
    s = ledger_status(paper)
    sign_in(page, server, "/trades/")
    fills = page.locator("[data-testid=fills] tbody tr")
    fills.first.wait_for()
    assert [r.locator("[data-col=pair]").inner_text() for r in fills.all()] == ["BTC/USD"]
    assert fills.first.locator("[data-col=side]").inner_text() == "buy"
    page.locator("[data-testid=orders] tbody tr").first.wait_for()
    shoot(page, "trades")

    page.get_by_role("link", name="Models").click()
    # the kill hour's data step failed: no prediction at that hour, the newest outputs are shown
    page.get_by_test_id("predictions-fallback").wait_for()
    preds = page.locator("[data-testid=predictions] tbody tr")
    preds.first.wait_for()
    assert sorted(r.locator("[data-col=pair]").inner_text() for r in preds.all()) == ["BTC/USD", "ETH/USD"]
    assert all(r.locator("[data-col=model_id]").inner_text() == s.model_id for r in preds.all())
    inked(page)  # the per-model history chart
    shoot(page, "models")

    page.get_by_role("link", name="Runs").click()
    page.locator("[data-testid=runs] tbody tr", has_text="ma-demo-2023").click()
    page.get_by_test_id("run-detail").wait_for()
    ink = inked(page, "[data-testid=run-detail]")
    assert len(ink) >= 2 and min(ink) > 500, ink  # equity and drawdown of the backtest
    # strategy against buy-and-hold (benchmark.json), in percent as written
    bench = json.loads((runs_dir / "ma-demo-2023" / "benchmark.json").read_text())["metrics"]
    tr = page.locator("[data-testid=run-versus] tr[data-key=total_return]")
    assert tr.locator("[data-col=buy-and-hold]").inner_text() == f"{bench['total_return'] * 100:.2f}%"
    dd = page.locator("[data-testid=run-versus] tr[data-key=max_drawdown]")
    assert dd.locator("[data-col=buy-and-hold]").inner_text() == f"{bench['max_drawdown'] * 100:.2f}%"
    shoot(page, "runs")

    page.get_by_role("link", name="Audit").click()
    page.get_by_test_id("manifest").wait_for()
    assert page.get_by_test_id("hour-select").input_value() == str(s.last_completed)
    page.get_by_test_id("replay").click()
    out = page.get_by_test_id("replay-result")
    out.wait_for(timeout=60_000)
    assert "reproduced" in out.inner_text(), out.inner_text()
    shoot(page, "audit")
    want = {f"{n}{v}.png" for n in ("trades", "models", "runs", "audit") for v in ("", "-phone")}
    assert want <= {p.name for p in ARTIFACTS.glob("*.png")}
