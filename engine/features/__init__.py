"""Causal features (engine.features.nb kernels, engine.features.featureset.build_features) and,
separately, labels (engine.features.labels: the only module that reads the future; nothing on the
feature path imports it). Window lengths: engine.features.config.FeaturesConfig ([features])."""
