"""krakenquant research: folds, models, studies and reports (offline; imports engine)."""
