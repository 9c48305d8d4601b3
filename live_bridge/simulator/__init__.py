"""A local Kraken-compatible spot REST exchange (``kq sim serve``): paper trading, tests, parity.

``market`` (bars under a simulated clock), ``exchange`` (Decimal books and matching through the
shared fill kernels), ``app`` (Kraken's HTTP API + /admin), ``faults``, ``store`` (SQLite state),
``server`` (build + uvicorn on loopback), ``spec`` (OpenAPI validation), ``testing`` (helpers).
"""
