import json
import logging

import numpy as np
import pytest
import torch

import train
from config import load_config
from dataset import CacheEntry
from utils import UserError, dice_iou

from conftest import tiny_argv, write_blobs


def _entries(empty_flags):
    return [CacheEntry(str(i), None, None, bool(e), "") for i, e in enumerate(empty_flags)]


def test_folds_are_stratified_disjoint_and_complete():
    entries = _entries([i % 4 == 0 for i in range(40)])  # 10 empty, 30 not
    folds = train.make_folds(entries, 5, seed=1)
    val = [i for _, va in folds for i in va]
    assert sorted(val) == list(range(40))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert sum(entries[i].empty for i in va) == 2  # 10 empty / 5 folds


def test_too_few_samples_for_folds():
    with pytest.raises(UserError, match="cannot be split into FOLDS=5"):
        train.make_folds(_entries([0, 1, 0]), 5, seed=0)


@pytest.mark.parametrize("seed", range(3))
def test_torch_scores_match_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    target = (rng.random((4, 1, 16, 16)) > 0.7).astype(np.float32)
    target[0] = 0  # one empty image
    logits = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    logits[0] = -5  # predicted empty too: counts as a perfect 1.0
    got = train.per_image_scores(torch.from_numpy(logits), torch.from_numpy(target), 1).numpy()
    want = np.array([dice_iou(logits[i] > 0, target[i]) for i in range(4)])
    assert np.allclose(got, want, atol=1e-6)
    assert got[0].tolist() == [1.0, 1.0]


def test_run_writes_every_artifact(trained_run):
    for name in ("config.json", "cv_summary.json", "folds.json", "cache_manifest.json", "model.onnx",
                 "logs/metrics.json", "logs/training.log",
                 "models/fold0_best.pt", "models/fold0_last.pt", "models/fold1_best.pt", "models/fold1_last.pt"):
        assert (trained_run / name).is_file(), name
    summary = json.loads((trained_run / "cv_summary.json").read_text())
    assert set(summary["folds"]) == {"0", "1"} and summary["oof_images"] == 12
    assert 0.0 <= summary["dice_mean"] <= 1.0 and summary["best_threshold"] in train.THRESHOLD_GRID
    records = json.loads((trained_run / "logs" / "metrics.json").read_text())
    assert [(r["fold"], r["epoch"]) for r in records] == [(0, 0), (1, 0)]
    for key in ("train_loss", "train_dice", "train_iou", "val_loss", "val_dice", "val_iou", "lr"):
        assert all(np.isfinite(r[key]) for r in records), key


def test_rerun_skips_finished_folds(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    argv = tiny_argv(data, tmp_path / "work", export="false")
    train.run(load_config(argv, environ={}))
    best = tmp_path / "work" / "models" / "fold0_best.pt"
    before = best.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(load_config(argv, environ={}))
    assert "fold 0: already finished" in caplog.text and "12 reused" in caplog.text
    assert best.stat().st_mtime_ns == before


def test_interrupted_fold_resumes_from_last_epoch(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    argv = tiny_argv(data, tmp_path / "work", export="false", fold_ids="0", epochs=2)
    cfg = load_config(argv, environ={})
    train.run(cfg)
    last = tmp_path / "work" / "models" / "fold0_last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["state"].update(epoch=0, finished=False)  # as if killed after the first epoch
    torch.save(ckpt, last)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "fold 0: resuming after epoch 0" in caplog.text
    assert "fold 0 epoch 2/2" in caplog.text and "fold 0 epoch 1/2" not in caplog.text


def test_changed_settings_retrain(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    train.run(load_config(tiny_argv(data, tmp_path / "work", export="false", fold_ids="0"), environ={}))
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(load_config(tiny_argv(data, tmp_path / "work", export="false", fold_ids="0", lr="5e-4"),
                              environ={}))
    assert "settings changed" in caplog.text
