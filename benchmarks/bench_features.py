"""Feature benchmark: the full feature set for the 10-pair Binance panel (2020-09-22 06:00 ..
2025-11-15 23:00, 45,138 bars x 10 pairs) against the pandas/numpy reference
(benchmarks/feature_reference.py, the same reference the tests check the kernels against).

    python benchmarks/bench_features.py [--repeat 7] [--cold] [--no-reference]

Prints compile time (first call; ``--cold`` uses an empty numba cache so it is a true compile),
the median of ``--repeat`` builds after compilation, a per-kernel breakdown, the reference time
and the ratio. Goal (issue 3): whole set < 0.5 s on one core and >= 20x faster than the reference.
numba kernels here are single-threaded. The machine may be shared: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BINANCE10 = [f"binance_{s}USDT_1h" for s in ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]]
START, END = 1600754400, 1763247600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cold", action="store_true", help="compile from scratch (empty numba cache)")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) pandas reference")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="kq-numba-")

    from engine.features import featureset as F
    from engine.features.config import FeaturesConfig
    from engine.store.panel import load_shared_panel

    t = time.perf_counter()
    panel = load_shared_panel(BINANCE10, START, END)
    print(
        f"panel: {panel.n_bars:,} bars x {panel.n_pairs} pairs ({panel.venue}), loaded in "
        f"{time.perf_counter() - t:.2f} s; {int((~panel.valid).sum())} missing bar-slots"
    )
    cfg = FeaturesConfig()

    t = time.perf_counter()
    fs = F.build_features(panel, cfg)
    print(f"first build (numba {'compile' if args.cold else 'compile or cache load'}): {time.perf_counter() - t:.2f} s")
    times, cpu = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        fs2 = F.build_features(panel, cfg)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    assert fs2.content_hash == fs.content_hash
    med = statistics.median(times)
    print(
        f"numba feature set ({len(fs.names)} features): wall median {med * 1e3:.0f} ms, best "
        f"{min(times) * 1e3:.0f} ms; CPU time median {statistics.median(cpu) * 1e3:.0f} ms, best "
        f"{min(cpu) * 1e3:.0f} ms over {args.repeat} builds (goal < 500 ms; one thread)"
    )

    # per-kernel breakdown (one more pass with timers around each kernel call)
    from engine.features import nb as nbmod

    timings: dict[str, float] = {}
    wrapped = {}
    for name in dir(nbmod):
        fn = getattr(nbmod, name)
        if name.endswith("_nb") and callable(fn):

            def make(fn=fn, name=name):
                def w(*a):
                    t0 = time.perf_counter()
                    r = fn(*a)
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
                    return r

                return w

            wrapped[name] = fn
            setattr(nbmod, name, make())
    import engine.features.spread as sp

    orig_spread = sp.spread_arrays

    def timed_spread(*a):
        t0 = time.perf_counter()
        r = orig_spread(*a)
        timings["spread_arrays (B)"] = time.perf_counter() - t0
        return r

    sp.spread_arrays = timed_spread
    t = time.perf_counter()
    F.build_features(panel, cfg)
    total = time.perf_counter() - t
    for name, fn in wrapped.items():
        setattr(nbmod, name, fn)
    sp.spread_arrays = orig_spread
    for name, s in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {s * 1e3:7.1f} ms")
    print(f"  {'(assembly, hashing, numpy)':28s} {(total - sum(timings.values())) * 1e3:7.1f} ms")

    if args.no_reference:
        return 0
    from benchmarks.feature_reference import compare, reference_features
    from engine.features.spread import spread_estimate

    spread = spread_estimate(panel, cfg.spread_window, cfg.spread_method)  # input to the reference
    t, c = time.perf_counter(), time.process_time()
    ref = reference_features(panel, cfg, spread=spread)
    ref_t, ref_cpu = time.perf_counter() - t, time.process_time() - c
    err = compare({n: fs.feature(n) for n in fs.names}, ref, cfg)
    worst = max(err.values())
    for name, e in err.items():
        if e > 1e-9:
            print(f"  MISMATCH {name}: max relative difference {e:.3g}")
    print(
        f"pandas/numpy reference: wall {ref_t:.2f} s, CPU {ref_cpu:.2f} s "
        f"(max relative difference to the kernels {worst:.1e})"
    )
    print(
        f"ratio reference / numba: wall {ref_t / med:.1f}x, CPU {ref_cpu / statistics.median(cpu):.1f}x (goal >= 20x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
