"""EMA=<decay> (training/ema.py): the averaged weights are what an epoch evaluates, what the best checkpoint keeps
and what is exported; the raw ones keep training and a resumed fold continues both."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import train
from config import config_hash, load_config
from conftest import tiny_argv, write_blobs
from training.ema import WeightEma, warm_decay
from utils import UserError


def test_the_decay_warms_up_then_holds():
    assert [round(warm_decay(0.999, n), 4) for n in (1, 2, 10, 90)] == [0.1818, 0.25, 0.55, 0.91]
    assert warm_decay(0.999, 10_000) == 0.999 and warm_decay(0.5, 1) == pytest.approx(2 / 11)


def test_an_update_moves_the_average_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = WeightEma(model, 0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    model.train()
    model(torch.randn(2, 3, 8, 8))  # BatchNorm statistics and its step count move
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    keep = warm_decay(0.5, 1)
    now, raw = ema.module.state_dict(), model.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(now[key], keep * before[key] + (1 - keep) * raw[key], atol=1e-6), key
    assert now["1.num_batches_tracked"] == raw["1.num_batches_tracked"] == 1
    copy = WeightEma(model, 0.5)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 1 and torch.equal(copy.module[0].weight, ema.module[0].weight)


@pytest.mark.parametrize("text, value", [("0", 0.0), ("off", 0.0), ("0.999", 0.999)])
def test_ema_parses_and_only_a_run_with_it_hashes_differently(tmp_path, text, value):
    data = tmp_path / "data"
    cfg = load_config(tiny_argv(data, tmp_path / "work", ema=text), environ={})
    assert cfg.ema == value
    plain = load_config(tiny_argv(data, tmp_path / "work"), environ={})
    assert (config_hash(cfg) == config_hash(plain)) == (value == 0.0)


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "fast"])
def test_a_bad_ema_decay_is_refused(tmp_path, text):
    with pytest.raises(UserError, match="not a valid EMA decay"):
        load_config(tiny_argv(tmp_path, tmp_path / "work", ema=text), environ={})


def test_the_best_checkpoint_and_the_export_hold_the_average_and_a_resume_continues_it(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, ema="0.9", epochs=2, fold_ids="0", batch_size=2, patience=100,
                                save_checkpoints="true"), environ={})
    train.run(cfg)
    models = work / "models"
    last = torch.load(models / "fold0_last.pt", weights_only=True)
    best = torch.load(models / "fold0_best.pt", weights_only=True)
    assert last["ema"]["updates"] == last["state"]["step"] == 6  # one update per optimizer step (3 per epoch)
    average = last["ema"]["model"]
    differs = [k for k, v in average.items() if v.is_floating_point() and not torch.equal(v, last["model"][k])]
    assert differs  # the raw weights trained on; the average lags behind
    source = last if best["epoch"] == 1 else torch.load(models / "fold0_epoch1.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], source["ema"]["model"][k]) for k in best["model"])

    import onnxruntime as ort  # the export is the best checkpoint's average: compare its output with a torch forward
    from training.tasks import SegmentTask
    x = np.random.default_rng(0).random((1, 3, 64, 64), np.float32)
    session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]

    def gap(weights) -> float:  # the export's probabilities against these weights' own
        model = SegmentTask(cfg).build_model()
        model.load_state_dict(weights)
        with torch.no_grad():
            want = torch.sigmoid(model.eval()(torch.from_numpy(x))).numpy()
        return float(np.abs(got.reshape(want.shape) - want).max())

    assert gap(best["model"]) < 1e-4 < gap(source["model"])  # the average was exported, not the raw weights

    epoch1 = torch.load(models / "fold0_epoch1.pt", weights_only=True)  # killed after the first epoch
    (models / "fold0_last.pt").write_bytes((models / "fold0_epoch1.pt").read_bytes())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "fold 0: resuming after epoch 1" in caplog.text
    again = torch.load(models / "fold0_last.pt", weights_only=True)
    assert epoch1["ema"]["updates"] == 3 and again["ema"]["updates"] == 6  # the average went on, not restarted
