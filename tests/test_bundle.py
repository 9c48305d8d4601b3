"""The final model bundle (research/bundle.py) on real Binance bars with tiny models: the training
window, save -> load bit-identical predictions, the sha256 gate (changed, missing, extra file,
edited manifest, unknown format), causal prediction, and a deterministic fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.config import load_config
from engine.errors import InputError, IntegrityError
from research.config import research_from_dict
from tests.conftest import require_shared

H = 3600
START = 1704067200  # 2024-01-01
WARM = 768
END = START + 40 * 24 * H - H  # 40 days


def _rc(cfg):
    # all five base models (the Keras nets must round-trip too), two horizons, a 480-bar window
    return research_from_dict(
        {
            "tiny": True,
            "horizons": [1, 24],
            "trade_horizon": 24,
            "folds": {"train_bars": 480, "test_bars": 240, "purge_bars": 24, "embargo_bars": 24, "inner_folds": 2},
        },
        cfg,
    )


@pytest.fixture(scope="module")
def setup():
    require_shared()
    from engine.features.featureset import build_features
    from engine.store.panel import load_shared_panel
    from engine.universe import universe_mask
    from research.bundle import fit_final

    cfg = load_config()
    rc = _rc(cfg)
    panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], START - WARM * H, END)
    fs = build_features(panel, cfg.features, universe_mask(panel))
    events = []
    bundle = fit_final(panel, cfg, rc, features=fs, start_ts=START, progress=lambda ev, **kw: events.append((ev, kw)))
    return cfg, rc, panel, fs, bundle, events


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
    from research.bundle import save_bundle

    bundle = setup[4]
    out = tmp_path_factory.mktemp("bundle") / "b"
    man = save_bundle(bundle, out, extra={"run_id": "abc", "note": "test"})
    return out, man


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_final_window_is_the_most_recent_train_bars_ending_at_the_last_label(setup):
    cfg, rc, panel, fs, b, events = setup
    assert b.horizons == (1, 24) and b.trade_horizon == 24 and set(b.metas) == {1, 24}
    last = int(panel.ts[-1])
    shared = b.metas[1] is b.metas[24]  # one meta-learner for every horizon, as the walk-forward fits
    end = last - 1 * H  # the last bar with a label (1 h); longer horizons' targets stop earlier
    for h in (1, 24):
        s, e = b.train_windows[h]
        assert e == last - h * H, (h, e, last)  # the last h bars have no h-bar label
        # train_bars hours ending at the last label of the window's shortest horizon
        assert s == (end if shared else e) - (rc.folds.train_bars - 1) * H
        # one target per labelled (bar, pair) in the window: both pairs complete, every bar
        assert b.n_train[h] == 2 * ((e - s) // H + 1)
    assert b.n_train[1] == 2 * rc.folds.train_bars
    assert b.pairs == ("BTC/USDT", "ETH/USDT") and b.venue == panel.venue
    # warm-up: the nets' seq_len (8) and the regime windows (48, 24) + 2
    assert b.warm_bars == 50
    steps = [e for e, _ in events if e in ("plan", "step", "horizon_done")]
    assert steps == (["plan", "step", "horizon_done"] if shared else ["plan"] + ["step", "horizon_done"] * 2)
    assert any(e == "fit" and kw["stage"] == "done" for e, kw in events)


def test_predict_rows_are_meta_outputs_for_the_bar(setup):
    cfg, rc, panel, fs, b, _ = setup
    p = b.predict(fs, panel)
    assert list(p.columns) == ["ts", "pair", "horizon", "p_up", "exp_return"]
    assert len(p) == 4 and set(p["ts"]) == {int(panel.ts[-1])}
    assert list(zip(p["horizon"], p["pair"])) == [(1, "BTC/USDT"), (1, "ETH/USDT"), (24, "BTC/USDT"), (24, "ETH/USDT")]
    assert p["p_up"].between(0, 1).all() and np.isfinite(p["exp_return"]).all()
    # the same numbers as the meta-learner's own predict_proba on the history block
    from research.walkforward import row_block

    i = len(panel.ts) - 1
    lo = i - b.warm_bars
    X3 = np.where(np.isfinite(fs.values[lo : i + 1]), fs.values[lo : i + 1], np.nan)
    c = np.where(panel.valid[lo : i + 1], panel.close[lo : i + 1], np.nan)
    X, cc, seg, bar = row_block(X3, c, 0, i - lo, [0, 1])
    meta = b.metas[24]
    if hasattr(meta, "predict_all"):  # a meta-learner fitted on several horizons: one column each
        col = [h for h in b.horizons if b.metas[h] is meta].index(24)
        pm = meta.predict_all(X, close=cc, segments=seg)["p_up"][:, col][bar == i - lo]
    else:
        pm = meta.predict_proba(X, close=cc, segments=seg)[:, 1][bar == i - lo]
    assert np.array_equal(pm, p[p["horizon"] == 24]["p_up"].to_numpy())
    with pytest.raises(InputError, match="not a bar of the panel"):
        b.predict(fs, panel, at=int(panel.ts[-1]) + 1800)


def test_save_load_predictions_bit_identical(setup, saved):
    from research.bundle import FORMAT, load_bundle

    cfg, rc, panel, fs, b, _ = setup
    out, man = saved
    assert man["format"] == FORMAT and (out / "manifest.json").is_file()
    d = man["meta_files"]["24"].rsplit("/", 1)[0]
    assert set(man["files"]) >= {
        "config.json",
        man["meta_files"]["1"],
        man["meta_files"]["24"],
        f"{d}/net0.keras",
        f"{d}/net1.keras",
    }  # the lstm and the transformer
    assert man["data"]["train_windows"] == {"1": list(b.train_windows[1]), "24": list(b.train_windows[24])}
    assert man["config_sha256"] == cfg.content_hash() and man["seed"] == cfg.seed
    assert man["features"]["schema_sha256"] == b.feature_schema_sha256 and man["walkforward"]["run_id"] == "abc"
    assert man["extra"] == {"note": "test"} and man["research"]["folds"]["train_bars"] == 480
    b2 = load_bundle(out)
    assert b2.horizons == b.horizons and b2.warm_bars == b.warm_bars and b2.feature_names == b.feature_names
    for at in (int(panel.ts[-1]), int(panel.ts[-200]), int(panel.ts[WARM + 60])):
        p1, p2 = b.predict(fs, panel, at=at), b2.predict(fs, panel, at=at)
        assert p1.equals(p2), at
        assert np.array_equal(p1[["p_up", "exp_return"]].to_numpy(), p2[["p_up", "exp_return"]].to_numpy())
    # the base models agree too (trees pickled, nets as .keras files)
    X = np.nan_to_num(fs.values[-300:, 0, :])
    assert np.array_equal(b.metas[1].predict_base_proba(X), b2.metas[1].predict_base_proba(X), equal_nan=True)


@pytest.mark.parametrize("which", ["config.json", "meta.pkl", "net0.keras", "net1.keras"])
def test_flipped_byte_is_refused_naming_the_file(saved, tmp_path, which):
    from research.bundle import load_bundle

    d = _copy(saved[0], tmp_path)
    rel = which if which == "config.json" else saved[1]["meta_files"]["24"].replace("meta.pkl", which)
    f = d / rel
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="sha256 differs") as e:
        load_bundle(d)
    assert str(f) in str(e.value)


def test_every_listed_file_is_checked(saved, tmp_path):
    from research.bundle import load_bundle

    out, man = saved
    for rel in man["files"]:
        d = tmp_path / rel.replace("/", "_")
        shutil.copytree(out, d)
        f = d / rel
        raw = bytearray(f.read_bytes())
        raw[0] ^= 0x80
        f.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError, match=rel.split("/")[-1]):
            load_bundle(d)


def test_manifest_edit_missing_extra_and_unknown_format_are_refused(saved, tmp_path):
    from research.bundle import load_bundle

    out, man = saved
    d = _copy(out, tmp_path)
    (d / man["meta_files"]["1"].replace("meta.pkl", "net0.keras")).unlink()
    with pytest.raises(IntegrityError, match="net0.keras: listed in the bundle manifest but missing"):
        load_bundle(d)
    shutil.rmtree(d)
    d = _copy(out, tmp_path)
    (d / "models" / "extra.pkl").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra.pkl: file not listed"):
        load_bundle(d)
    (d / "models" / "extra.pkl").unlink()
    (d / "verdict.json").write_text("{}")  # the lifecycle's verdict: tolerated in the root only
    load_bundle(d)
    (d / "models" / "verdict.json").write_text("{}")
    with pytest.raises(IntegrityError, match="verdict.json: file not listed"):
        load_bundle(d)
    shutil.rmtree(d)
    d = _copy(out, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["data"]["train_end"] += 3600  # a plausible edit that changes no file hash
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="manifest.json: manifest content does not match"):
        load_bundle(d)
    m["format"] = "krakenquant-model/9"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="unknown bundle format 'krakenquant-model/9'"):
        load_bundle(d, verify=False)
    (d / "manifest.json").write_bytes(b"{not json")
    with pytest.raises(IntegrityError, match="manifest.json: not valid JSON"):
        load_bundle(d)
    (d / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="manifest.json: missing"):
        load_bundle(d)


def test_save_is_atomic_and_never_overwrites(setup, saved, tmp_path, monkeypatch):
    import research.bundle as rb

    b = setup[4]
    with pytest.raises(InputError, match="already exists"):
        rb.save_bundle(b, saved[0])

    def boom(self, obj):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rb._Pickler, "dump", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rb.save_bundle(b, tmp_path / "nb")
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder left


def test_predict_is_causal(setup):
    """Dropping (or changing) every bar after `at` leaves the prediction at `at` unchanged; changing
    the bar at `at` changes it (the check can fail)."""
    import dataclasses

    from engine.features.featureset import build_features
    from engine.universe import universe_mask

    cfg, rc, panel, fs, b, _ = setup
    at = int(panel.ts[-150])
    p_full = b.predict(fs, panel, at=at)
    cut = panel.slice(None, at)
    fs_cut = build_features(cut, cfg.features, universe_mask(cut))
    p_cut = b.predict(fs_cut, cut, at=at)
    assert p_full.equals(p_cut)
    i = int(np.searchsorted(panel.ts, at))
    close = panel.close.copy()
    close[i + 1 :] *= 1.7
    future = dataclasses.replace(
        panel, close=close, high=np.maximum(panel.high, close), low=np.minimum(panel.low, close)
    )
    fs_f = build_features(future, cfg.features, universe_mask(future))
    assert b.predict(fs_f, future, at=at).equals(p_full)
    close2 = panel.close.copy()
    close2[i] *= 1.05
    now = dataclasses.replace(panel, close=close2, high=np.maximum(panel.high, close2))
    fs_n = build_features(now, cfg.features, universe_mask(now))
    assert not np.array_equal(b.predict(fs_n, now, at=at)["p_up"].to_numpy(), p_full["p_up"].to_numpy())


def test_feature_schema_mismatch_is_refused(setup):
    from engine.features.featureset import build_features, feature_schema_sha256

    cfg, rc, panel, fs, b, _ = setup
    other = cfg.features.model_copy(update={"mr_window": 49})
    assert feature_schema_sha256(other) != feature_schema_sha256(cfg.features)
    assert feature_schema_sha256(cfg.features) == feature_schema_sha256(cfg.features.model_copy())
    fs2 = build_features(panel, other)
    with pytest.raises(InputError, match="schema differs"):
        b.predict(fs2, panel)


def test_fit_final_is_deterministic(setup, saved, tmp_path):
    """A second fit with the same inputs and seed gives identical predictions, in memory and saved."""
    from research.bundle import fit_final, load_bundle, save_bundle

    cfg, rc, panel, fs, b, _ = setup
    b2 = fit_final(panel, cfg, rc, features=fs, start_ts=START)
    save_bundle(b2, tmp_path / "b2")
    b3 = load_bundle(tmp_path / "b2")
    b1 = load_bundle(saved[0])
    for at in (int(panel.ts[-1]), int(panel.ts[-300])):
        ref = b.predict(fs, panel, at=at)
        assert b2.predict(fs, panel, at=at).equals(ref) and b3.predict(fs, panel, at=at).equals(ref)
        assert b1.predict(fs, panel, at=at).equals(ref)
    m1 = json.loads((saved[0] / "manifest.json").read_text())
    m3 = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    # the pickles and config are byte-identical; Keras files embed a save timestamp
    assert m1["meta_files"] == m3["meta_files"]
    for rel in {"config.json", m1["meta_files"]["1"], m1["meta_files"]["24"]}:
        assert m1["files"][rel] == m3["files"][rel], rel


def test_final_model_equals_a_fold_model_on_the_same_window():
    """fit_final builds its window as a walk-forward fold does: with the data cut so that the final
    window is fold 0's training window, the two fitted meta-learners predict identically (trees only)."""
    require_shared()
    from engine.features.featureset import build_features
    from engine.store.panel import load_shared_panel
    from engine.universe import universe_mask
    from research.bundle import fit_final
    from research.walkforward import row_block, run_walkforward

    cfg = load_config()
    rc = research_from_dict(
        {
            "tiny": True,
            "horizons": [24],
            "trade_horizon": 24,
            "base_models": ["xgboost", "lightgbm", "random_forest"],
            "folds": {"train_bars": 480, "test_bars": 240, "purge_bars": 24, "embargo_bars": 24, "inner_folds": 2},
        },
        cfg,
    )
    panel = load_shared_panel(
        ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], START - WARM * H, START + (480 + 24 + 480) * H - H
    )
    res = run_walkforward(panel, cfg, rc, start_ts=START, keep_models=True, backtest=False, max_folds=1)
    f0 = res.folds[0]
    fold_meta = res.fitted[(0, 24)]
    cut = panel.slice(None, f0["train_end"] + 24 * H)  # the last 24 h label of the cut data = fold 0's train end
    b = fit_final(cut, cfg, rc, start_ts=START)
    assert b.train_windows[24] == (f0["train_start"], f0["train_end"])
    fs = build_features(panel, cfg.features, universe_mask(panel))
    lo, hi = len(panel.ts) - 300, len(panel.ts) - 1
    X3 = np.where(np.isfinite(fs.values), fs.values, np.nan)
    X, c, seg, _ = row_block(X3, np.where(panel.valid, panel.close, np.nan), lo, hi, [0, 1])
    pred = (
        (lambda mt: mt.predict_all(X, close=c, segments=seg)["p_up"])
        if hasattr(fold_meta, "predict_all")
        else (lambda mt: mt.predict_proba(X, close=c, segments=seg)[:, 1])
    )
    assert np.array_equal(pred(fold_meta), pred(b.metas[24]))
