"""krakenquant live bridge: daemon, Kraken adapter, simulator, ledger, replay (imports engine)."""
