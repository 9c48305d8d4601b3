"""Run every ``benchmarks/bench_*.py`` script, or the ones named: ``python -m benchmarks [name ...] [--option ...]``.

The arguments from the first one starting with ``-`` on are passed to every chosen script
(``python -m benchmarks walkforward --full`` runs every fold of configs/research.toml).

Names may be given as ``data``, ``bench_data`` or ``bench_data.py``. Each script runs in its own
process (``python -m benchmarks.bench_x``) so one benchmark's imports and caches do not flatter the
next. Exit status: 0 if every script succeeded, else 1; an unknown name exits 2.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        print("available:", ", ".join(n.removeprefix("bench_") for n in names) or "none")
        return 0
    # everything from the first option on goes to every chosen script:
    # ``python -m benchmarks walkforward --full`` or ``... walkforward --max-folds 2``
    first = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    argv, opts = argv[:first], argv[first:]
    chosen = []
    for a in argv:
        stem = Path(a).stem
        stem = stem if stem.startswith("bench_") else f"bench_{stem}"
        if stem not in names:
            print(
                f"benchmarks: error: no benchmark {a!r} (available: "
                f"{', '.join(n.removeprefix('bench_') for n in names) or 'none'})",
                file=sys.stderr,
            )
            return 2
        chosen.append(stem)
    failed = []
    for stem in chosen or names:
        print(f"== {stem} ==", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{stem}", *opts], cwd=HERE.parent)
        print(
            f"== {stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.1f} s ==\n",
            flush=True,
        )
        if rc:
            failed.append(stem)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
