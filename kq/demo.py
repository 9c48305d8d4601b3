"""The main job (``make demo``): fill the market store, then print the data report.

Real data first: every file in the shared OHLCV folder (``../shared/data/ohlcv`` or ``$KQ_SHARED``)
is imported (idempotent: a second run finds every file already imported and writes nothing).
Without that folder, a SYNTHETIC market (invented data, venue ``synthetic``) is generated instead.
The report says which data was used.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    from engine.errors import KQError
    from engine.paths import default_store_path, shared_ohlcv_dir
    from kq.data import _console, print_report

    con = _console()
    store = default_store_path()
    shared = shared_ohlcv_dir()
    try:
        from engine.store.market import MarketStore
        from engine.store.readers import SUPPORTED_SUFFIXES

        files = sorted(p for p in shared.glob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES) \
            if shared.is_dir() else []
        t0 = time.perf_counter()
        if files:
            con.print(f"[bold]DATA: REAL market data[/] from {shared} ({len(files)} files)")
            with MarketStore(store) as s:
                rep = s.import_files(files)
            con.print(f"import: {rep.summary()} in {time.perf_counter() - t0:.2f} s"
                      + (" (nothing new: already imported)" if rep.noop else ""))
            venue = None
        else:
            from kq.data import synth_into_store

            con.print(f"[bold yellow]DATA: SYNTHETIC market (invented data, venue 'synthetic'): no shared "
                      f"data found at {shared}[/]")
            rep, _ = synth_into_store(store, None, None, 8760, 7)
            con.print(f"synthetic: {rep.summary()} in {time.perf_counter() - t0:.2f} s")
            venue = "synthetic"
        with MarketStore(store, read_only=True) as s:
            report = s.check(venue)
        print_report(report, con)
        if files and any(p["venue"] == "synthetic" for p in report["pairs"]):
            con.print("note: this store also holds SYNTHETIC bars (venue 'synthetic'); they are never mixed "
                      "with real venues")
        return 1 if report["blocking"] else 0
    except KQError as e:
        print(f"kq demo: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
