"""On-demand speed and memory benchmarks: ``python -m benchmarks [name]`` (``make bench``).

Each ``bench_*.py`` script prints its figures and the reference it compares against. Benchmarks
are never part of the test suite.
"""
