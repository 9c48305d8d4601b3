"""``kq parity`` (issue 16): the vectorised backtester and the paper daemon (simulator over HTTP,
python-kraken-sdk, the tiny real model) on Kraken's real bars, compared bar by bar.

* The CI job: ``kq parity`` over 200 hours (2022-06-08 22:00 .. 2022-06-17 05:00 UTC, 27 fills)
  exits 0 with ``"mismatches": 0``: inputs, decisions, orders, fills (price, quantity, fee), cash
  and positions equal exactly.
* Planted differences on ONE side are found at their first bar: a prediction shifted one bar, a fee
  off by one basis point, a warm-up one bar shorter on the live side.
* Parity holds across a daemon crash (after its orders executed, before its reconciliation) and
  restart in the middle of the window, and with operator actions (the backtester receives the
  daemon's ledgered operator bits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.paths import configs_dir
from live_bridge.parity import Hooks, Operation, hour_label, run_parity, shared_panel
from tests.live_harness import P0, PAIRS, BundleModel, H, paper_dict, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
START = P0 // H  # 2022-06-01 00:00 UTC
HOURS = 48  # the tiny model buys BTC/USD at the close of START+29 and sells at START+40
ENTRY = START + 29
CI_START = START + 190  # the CI window: 2022-06-08 22:00 .. 2022-06-17 05:00 UTC
CI_HOURS = 200


@pytest.fixture(scope="module")
def model():
    return BundleModel(tiny_model_dir())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from live_bridge.config import live_config_from_dict

    return live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp_path_factory.mktemp("cfg")))


@pytest.fixture(scope="module")
def panel():
    return shared_panel(PAIRS, (START - 1168) * H, (START + HOURS) * H)


def _run(live, model, panel, tmp: Path, **kw: Any):
    return run_parity(live, START, START + HOURS - 1, model=model, panel=panel, work=tmp / "work", **kw)


@pytest.fixture(scope="module")
def clean(live, model, panel, tmp_path_factory):
    return _run(live, model, panel, tmp_path_factory.mktemp("clean"))


def _first(rep):
    assert rep.mismatches, "the planted difference was not found"
    return rep.mismatches[0]


def test_short_window_agrees_and_trades(clean):
    assert clean.ok, [m.line() for m in clean.mismatches[:5]]
    c = clean.counts
    assert c["fills"] == {"backtest": 2, "paper": 2}
    fin = clean.final
    assert fin["backtest"]["cash"] == fin["paper"]["cash"] != "10000"
    s = clean.summary()
    assert s["mismatches"] == 0 and s["first_mismatch"] is None
    assert any("entry_order limit_first -> market" in a for a in s["adjustments"])


class Shifted:
    """The model one bar late on the live side: hour t gets the prediction made at t-1."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.bundle, self.model = inner, inner.bundle, inner.model
        self.manifest_sha256 = inner.manifest_sha256

    def predict(self, features: Any, panel: Any, at: int | None = None) -> Any:
        out = self.inner.predict(features, panel, int(at) - H if at is not None else int(panel.ts[-1]) - H)
        out["ts"] = at
        return out


def test_planted_one_bar_signal_shift_is_found_at_its_first_bar(live, model, panel, tmp_path):
    rep = _run(live, model, panel, tmp_path, hooks=Hooks(paper_model=Shifted))
    m = _first(rep)
    assert m.hour == START and m.field in ("input BTC/USD p_up", "input BTC/USD exp_ret"), m.line()
    assert m.backtest != m.paper


def test_planted_fee_one_basis_point_off_is_found_at_the_first_fill(live, model, panel, tmp_path, clean):
    rep = _run(live, model, panel, tmp_path, hooks=Hooks(sim_fee_rate=Decimal("0.0041")))
    m = _first(rep)
    assert m.hour == ENTRY and m.field == "fill[BTC/USD buy]", m.line()
    # the same quantity and price, the fee differs: 0.4% vs 0.41% of the notional
    b, p = m.backtest.split(), m.paper.split()
    assert b[:4] == p[:4] and Decimal(p[4]) > Decimal(b[4])
    assert Decimal(p[4]) / Decimal(b[4]) == pytest.approx(Decimal("1.025"), abs=Decimal("0.001"))
    _failure_is_recorded_and_refuses_live(rep, tmp_path)


def _failure_is_recorded_and_refuses_live(rep, tmp_path: Path) -> None:
    """The failed run's outcome in the paper ledger: ``parity_failed`` naming the model's digest, so
    the model's paper record carries it and promotion to live is refused, however many paper hours."""
    from engine.errors import InputError
    from live_bridge.ledger import Kind, Ledger
    from live_bridge.paper_record import read_paper_record, record_parity

    dsn = f"sqlite:///{tmp_path / 'paper-ledger.sqlite'}"
    with pytest.raises(InputError, match="no paper ledger"):
        record_parity(dsn, rep.summary())
    Ledger.open(dsn).close()
    entry = record_parity(dsn, rep.summary())
    assert entry.code == "parity_failed" and entry.payload["manifest_sha256"] == rep.manifest_sha256
    assert entry.payload["first_mismatch"]["field"] == "fill[BTC/USD buy]"
    pr = read_paper_record(dsn, rep.manifest_sha256)
    assert pr.parity_failures == (None,)
    with Ledger.open(dsn, migrate=False) as led:
        assert [e.code for e in led.entries(kind=Kind.EVENT)] == ["parity_failed"]


def test_planted_warmup_one_bar_shorter_on_the_live_side_is_found_at_its_first_bar(live, model, tmp_path, monkeypatch):
    """Bars start 765 hours before the window: both sides find BTC/USD warm (768 bars) at START+2;
    a live side that needs 767 finds it warm one hour earlier, and parity names that hour."""
    import live_bridge.data as data

    short = shared_panel(PAIRS, (START - 765) * H, (START + 8) * H)
    real = data.warmup_status

    def one_shorter(store, pairs, now_hour, need=768):
        return real(store, pairs, now_hour, need=need - 1)

    monkeypatch.setattr(data, "warmup_status", one_shorter)
    rep = run_parity(live, START, START + 5, model=model, panel=short, work=tmp_path / "w")
    m = _first(rep)
    assert m.hour == START + 1 and m.field == "input BTC/USD tradable", m.line()
    assert (m.backtest, m.paper) == ("false", "true")
    monkeypatch.setattr(data, "warmup_status", real)
    rep = run_parity(live, START, START + 5, model=model, panel=short, work=tmp_path / "w2")
    assert rep.ok, [x.line() for x in rep.mismatches[:5]]


def test_parity_holds_across_a_crash_and_restart_mid_window(live, model, panel, tmp_path, clean):
    """The entry hour's cycle dies after its order executed (filled at the simulator, fill
    ledgered) and before reconciliation and its snapshot; a new daemon resumes, reconciles and
    re-runs the hour from its ledgered inputs: the comparison is unchanged."""
    rep = _run(live, model, panel, tmp_path, hooks=Hooks(crash_at=frozenset({ENTRY})), restart_after=[START + 35])
    assert rep.restarts == [ENTRY, START + 35]
    assert rep.ok, [m.line() for m in rep.mismatches[:5]]
    assert rep.counts["fills"] == clean.counts["fills"]
    assert rep.final == clean.final


def test_operator_actions_are_the_backtests_operator_input(live, model, panel, tmp_path, clean):
    """A pause applied at START+28's close and a resume at ENTRY+3's: the entry of ENTRY is refused
    on both sides (REFUSE_PAUSED); the backtester got the bits from the daemon's ledger."""
    ops = [Operation(START + 28, "pause"), Operation(ENTRY + 3, "resume")]
    rep = _run(live, model, panel, tmp_path, operations=ops)
    assert rep.ok, [m.line() for m in rep.mismatches[:5]]
    assert rep.counts["fills"] != clean.counts["fills"]  # the pause changed what traded
    assert [(o["action"], o["status"]) for o in rep.operations] == [("pause", "applied"), ("resume", "applied")]
    assert [o["applied_at"] for o in rep.operations] == [hour_label(START + 28), hour_label(ENTRY + 3)]


def _paper_toml(tmp: Path) -> Path:
    p = tmp / "paper.toml"
    p.write_text(
        "\n".join(
            [
                'mode = "paper"',
                f'engine_config = "{configs_dir() / "default.toml"}"',
                "[exchange]",
                'url = "http://127.0.0.1:8765"',
                "[universe]",
                f"pairs = {json.dumps(PAIRS)}",
                "[paths]",
                f'store = "{tmp / "m.duckdb"}"',
                f'state_dir = "{tmp / "state"}"',
                f'ledger = "sqlite:///{tmp / "ledger.sqlite"}"',
            ]
        )
        + "\n"
    )
    return p


def _kq(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "kq", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_ci_job_kq_parity_200_hours_of_real_data(tmp_path):
    """The CI job (issue 16): ``kq parity`` over 200 hours of Kraken's real bars with the tiny model;
    any mismatch fails CI. Prints how long it took."""
    from live_bridge.ledger import Kind, Ledger

    model_dir = tiny_model_dir()
    cfg = _paper_toml(tmp_path)
    Ledger.open(tmp_path / "ledger.sqlite").close()  # the paper ledger the outcome is recorded in
    end = CI_START + CI_HOURS - 1
    t = time.perf_counter()
    r = _kq(
        "parity",
        "--config",
        str(cfg),
        "--start",
        hour_label(CI_START)[:-1],
        "--end",
        hour_label(end)[:-1],
        "--model",
        str(model_dir),
        "--json",
    )
    wall = time.perf_counter() - t
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    s = json.loads(r.stdout)
    print(f"\nkq parity {CI_HOURS} hours: {wall:.1f} s wall ({s['wall_s']}); {s['compared']}")
    assert s["mismatches"] == 0 and s["window"]["hours"] == CI_HOURS
    assert s["compared"]["fills"]["backtest"] == s["compared"]["fills"]["paper"] >= 20
    assert s["final"]["backtest"] == s["final"]["paper"]
    with Ledger.open(tmp_path / "ledger.sqlite", migrate=False) as led:
        (ev,) = led.entries(kind=Kind.EVENT)
    assert ev.code == "parity_passed" and ev.payload["manifest_sha256"] == s["manifest_sha256"]
    assert s["recorded"] == {"code": "parity_passed", "seq": ev.seq}


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    cfg = _paper_toml(tmp_path)
    for extra, want in (
        (["--start", "2022-06-02T00:00", "--end", "2022-06-01T00:00"], "is before --start"),
        (["--start", "2022-06-01T00:30", "--end", "2022-06-02T00:00"], "not on the hour"),
        (["--start", "2022-06-01T00:00", "--end", "2022-06-02T00:00", "--operator", "x=launch"], "TIME=ACTION"),
        (["--start", "2022-06-01T00:00", "--end", "2022-06-02T00:00", "--model", str(tmp_path)], "no saved bundle"),
        (
            ["--start", "2022-06-01T00:00", "--end", "2022-06-02T00:00", "--model", str(tiny_model_dir())],
            "no paper ledger at",
        ),
    ):
        r = _kq("parity", "--config", str(cfg), *extra, timeout=120)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert want in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_an_unreachable_paper_ledger_is_refused_before_the_run(tmp_path):
    """The outcome's ledger is opened before anything runs: a PostgreSQL ledger that cannot be
    reached is one line, exit 2, not a run whose outcome is then lost."""
    cfg = _paper_toml(tmp_path)
    r = _kq(
        "parity",
        "--config",
        str(cfg),
        "--start",
        "2022-06-01T00:00",
        "--end",
        "2022-06-02T00:00",
        "--model",
        str(tiny_model_dir()),
        "--paper-ledger",
        "postgresql://postgres@127.0.0.1:9/nowhere",
        timeout=120,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "paper ledger" in err[0] and "Traceback" not in err[0], r.stderr
