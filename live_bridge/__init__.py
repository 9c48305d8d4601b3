"""krakenquant live bridge (imports engine; research only to load approved models).

Exists: the Kraken adapter (``kraken``), order execution (``execution``), reconciliation
(``reconcile``), the append-only ledger (``ledger``), the exchange simulator (``simulator``) and the
approved-model loader (``models``). Planned: the hourly daemon cycle, replay and operator commands
(docs/LIVE.md).
"""
