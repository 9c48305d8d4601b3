"""The demo's paper run (``kq.demo.paper_run``): the daemon against the in-process simulator on
relabelled Binance bars after the model's training span, a fresh folder each time, books that match
the simulator's, a ledger that verifies; refused on lookahead; skipped when the walk-forward fails."""

from __future__ import annotations

import io
import shutil
import sqlite3

import pytest
from rich.console import Console

from engine.errors import InputError
from tests.conftest import require_shared
from tests.live_harness import tiny_model_dir

pytestmark = pytest.mark.slow


def _con() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=400, highlight=False), buf


def test_paper_run_trades_nothing_it_cannot_account_for_and_starts_clean(tmp_path):
    from kq.demo import paper_run

    require_shared()
    folder = tmp_path / "demo-paper"
    folder.mkdir()
    (folder / "old-ledger-junk").write_text("from an earlier demo")
    con, buf = _con()
    assert paper_run(con, tiny_model_dir(), folder=folder, hours=3) == 0
    out = buf.getvalue()
    assert "Binance bars stand in for Kraken's" in out and "NOT approved: paper mechanics only" in out
    hours = [ln for ln in out.splitlines() if ln.startswith("2024-05-01 0")]
    assert [h[:20] for h in hours] == ["2024-05-01 00:00 UTC", "2024-05-01 01:00 UTC", "2024-05-01 02:00 UTC"]
    assert "3 of 3 hours completed" in out and "match to the cent" in out and "MISMATCH" not in out
    assert "verify ok" in out and f"kq live verify --dsn sqlite:///{folder / 'ledger.sqlite'}" in out
    assert not (folder / "old-ledger-junk").exists()  # the folder was deleted first
    with sqlite3.connect(folder / "ledger.sqlite") as c:
        rows1 = c.execute("select count(*) from ledger_entry").fetchone()[0]
        models = {r[0] for r in c.execute("select code from ledger_entry where kind = 'model'")}
    assert models == {"demo-candidate-NOT-approved"}
    # a second run starts a fresh portfolio: same rows, not appended to the first run's ledger
    con2, _ = _con()
    assert paper_run(con2, tiny_model_dir(), folder=folder, hours=3) == 0
    with sqlite3.connect(folder / "ledger.sqlite") as c:
        assert c.execute("select count(*) from ledger_entry").fetchone()[0] == rows1


def test_paper_run_refuses_a_model_trained_on_the_paper_hours(tmp_path):
    from kq.demo import paper_run

    require_shared()
    folder = tmp_path / "demo-paper"
    folder.mkdir()
    (folder / "keep").write_text("x")
    # the tiny model's labels reach 2022-05-31 23:00: a paper run from 2022-05-20 would replay them
    with pytest.raises(InputError, match="lookahead"):
        paper_run(_con()[0], tiny_model_dir(), folder=folder, start="2022-05-20", hours=2)
    assert (folder / "keep").exists()  # refused before anything was deleted


def test_demo_skips_the_paper_run_when_the_walkforward_fails(tmp_path, monkeypatch, capsys):
    import kq.demo as demo

    shared = require_shared()
    fake = tmp_path / "shared" / "data" / "ohlcv"
    fake.mkdir(parents=True)
    shutil.copyfile(shared / "binance_LINKUSDT_1h.parquet", fake / "binance_LINKUSDT_1h.parquet")
    monkeypatch.setenv("KQ_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("KQ_STORE", str(tmp_path / "m.duckdb"))
    monkeypatch.setattr(demo, "_walkforward", lambda *a, **k: 1)
    called = []
    monkeypatch.setattr(demo, "paper_run", lambda *a, **k: called.append(a) or 0)
    assert demo.main([]) == 1
    assert not called and "paper run skipped: the walk-forward step failed" in capsys.readouterr().out


def test_demo_ends_with_the_command_and_url_of_the_dashboard(tmp_path, monkeypatch):
    """The README's main job ends by naming the dashboard on what it made: kq serve over the demo's
    paper ledger and runs folder, and the URL (kq serve's default port, not the simulator's)."""
    from kq import demo
    from kq.serve import DEFAULT_PORT

    monkeypatch.setenv("KQ_DATA", str(tmp_path))
    con, buf = _con()
    demo.dashboard_hint(con, demo.PAPER_FOLDER_NAME)
    lines = buf.getvalue().splitlines()
    serve = next(ln.strip() for ln in lines if "kq serve" in ln)
    from engine.paths import data_dir

    ledger = data_dir() / "demo-paper" / "ledger.sqlite"
    assert serve == f".venv/bin/kq serve --dsn sqlite:///{ledger} --runs {data_dir() / 'runs'}"
    assert any(f"http://127.0.0.1:{DEFAULT_PORT}/" in ln for ln in lines) and DEFAULT_PORT != 8765
    assert any("export KQ_API_TOKEN=" in ln for ln in lines)  # the user's own token: none is printed
    con, buf = _con()
    demo.dashboard_hint(con, None)  # no paper run (synthetic data): the runs only
    assert "--dsn" not in buf.getvalue() and "kq serve --runs" in buf.getvalue()
