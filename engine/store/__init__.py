"""Market data storage: the DuckDB market store (:mod:`engine.store.market`), its readers
(:mod:`engine.store.readers`), the integrity log (:mod:`engine.store.integrity`) and the Panel
contract every consumer reads (:mod:`engine.store.panel`)."""
