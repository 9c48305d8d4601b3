"""Hostile files that exhaust resources or reach outside the import: refused before harm, store unchanged.

Zip bombs and member floods (limits on decompressed size and member count), FIFOs and other
non-regular files (refused before they are opened: a FIFO blocked the import forever), and
symbolic links resolving outside the folder being imported (never read, never echoed).
"""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
import zipfile

import pytest
from test_import_bad import T0, digest, kraken_lines, reject, write

from engine.store import readers
from kq.cli import main


@pytest.fixture
def store(tmp_path):
    """A store already holding a good ETH/USD file, so 'unchanged' is checked on real content."""
    p = tmp_path / "market.duckdb"
    assert main(["data", "import", str(write(tmp_path / "ETHUSD_60.csv", kraken_lines(24))), "--store", str(p)]) == 0
    return p


def csv_text(n=5, t0=T0):
    return "\n".join(kraken_lines(n, t0)) + "\n"


def test_zip_bomb_is_refused_without_decompressing(store, tmp_path, capsys):
    # ~72 MB of one repeated line compresses to ~70 KB; it used to be decompressed whole (1.5 MB of
    # zip expanding to 1.5 GB took 3.3 GB of memory)
    line = f"{T0},1,2,0.5,1.5,1,1\n".encode()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("XBTUSD_60.csv", line * (readers.MAX_UNIT_BYTES // len(line) + 1024))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        err = reject(store, capsys, bomb, rule="(MAX_UNIT_BYTES)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "bomb.zip:XBTUSD_60.csv" in err and peak < 16 * 2**20


def test_member_larger_than_its_header_says_is_cut_at_the_cap(monkeypatch, tmp_path):
    # the stream is capped whatever the header declares: a reader that ignores file_size stops too
    monkeypatch.setattr(readers, "MAX_UNIT_BYTES", 1000)
    with pytest.raises(readers.InputError, match=r"x.csv: larger than 1,000 bytes; refused \(MAX_UNIT_BYTES\)"):
        readers.read_capped(io.BytesIO(b"1" * 5000), "x.csv", 1000)
    assert readers.read_capped(io.BytesIO(b"1" * 1000), "x.csv", 1000) == b"1" * 1000


def test_zip_members_together_over_the_archive_limit(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(readers, "MAX_ARCHIVE_BYTES", 1200)
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, pair in enumerate(("XBTUSD", "ETHUSD", "SOLUSD", "LTCUSD")):
            zf.writestr(f"{pair}_60.csv", csv_text(8, T0 + 3600 * 100 * k))  # ~430 bytes each
    reject(store, capsys, z, rule="members decompress to more than 1,200 bytes; refused (MAX_ARCHIVE_BYTES)")


def test_zip_with_too_many_members(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(readers, "MAX_ZIP_MEMBERS", 5)
    z = tmp_path / "flood.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(6):  # 20,000 such members ran for minutes
            zf.writestr(f"d{i}/XBTUSD_60.csv", csv_text(1, T0 + 3600 * i))
    reject(store, capsys, z, rule="more than 5 hourly CSV members; refused (MAX_ZIP_MEMBERS")
    monkeypatch.setattr(readers, "MAX_ZIP_MEMBERS", 6)
    monkeypatch.setattr(readers, "MAX_ZIP_ENTRIES", 5)
    reject(store, capsys, z, rule="6 entries; at most 5 (MAX_ZIP_ENTRIES)")


def _import_in_thread(args):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", main(args)), daemon=True)
    t.start()
    t.join(60)
    return t, out


@pytest.mark.parametrize("in_folder", [False, True])
def test_fifo_is_refused_not_waited_on(store, tmp_path, capsys, in_folder):
    d = tmp_path / "in"
    d.mkdir()
    fifo = d / "XBTUSD_60.csv"
    os.mkfifo(fifo)
    before = digest(store)
    capsys.readouterr()
    t, out = _import_in_thread(["data", "import", str(d if in_folder else fifo), "--store", str(store)])
    if t.is_alive():  # unblock the reader so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("importing a FIFO blocked")
    err = capsys.readouterr().err.strip()
    assert out["rc"] == 2 and err == f"kq: error: {fifo}: a FIFO (named pipe), not a regular file; refused"
    assert digest(store) == before


def test_device_file_is_refused(store, capsys):
    reject(store, capsys, __import__("pathlib").Path("/dev/null"), rule="a character device, not a regular file")


@pytest.mark.parametrize("in_folder", [False, True])
def test_symlink_outside_the_import_is_refused_and_never_echoed(store, tmp_path, capsys, in_folder):
    secret = tmp_path / "private" / "keys.csv"
    secret.parent.mkdir()
    secret.write_text("hunter2-secret,1,2,3,4,5,6\n")
    d = tmp_path / "download"
    d.mkdir()
    link = d / "XBTUSD_60.csv"
    link.symlink_to(secret)
    err = reject(
        store, capsys, d if in_folder else link, rule="symbolic link to a file outside the import folder", named=False
    )
    assert str(link) in err and "hunter2" not in err and "private" not in err


def test_symlink_inside_the_folder_is_followed(store, tmp_path, capsys):
    d = tmp_path / "in"
    (d / "raw").mkdir(parents=True)
    real = write(d / "raw" / "btc.csv", kraken_lines(6, px=30000.0))
    (d / "XBTUSD_60.csv").symlink_to(real)
    capsys.readouterr()
    assert main(["data", "import", str(d), "--store", str(store)]) == 0
    assert "1 imported" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [["data", "check"], ["data", "import", "X_60.csv"]])
def test_store_path_that_is_a_fifo_is_refused(tmp_path, capsys, cmd):
    fifo = tmp_path / "market.duckdb"
    os.mkfifo(fifo)
    write(tmp_path / "X_60.csv", kraken_lines())
    args = [a if a != "X_60.csv" else str(tmp_path / a) for a in cmd] + ["--store", str(fifo)]
    capsys.readouterr()
    t, out = _import_in_thread(args)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("opening a FIFO as the store blocked")
    err = capsys.readouterr().err.strip()
    assert out["rc"] == 2 and err == f"kq: error: market store {fifo}: a FIFO (named pipe), not a regular file"
