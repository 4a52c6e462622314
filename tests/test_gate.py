"""The clean/defect gate: threshold choice, TASK=classify training and export, and the runtime skip path."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import classify
import inference
import train
from config import config_hash, load_config
from dataset import pad_collate
from conftest import ROOT, build_gate_onnx, tiny_argv, write_blobs
from export import export_onnx
from exporting.checkpoints import find_checkpoints, load_fold_models
from exporting.ensembles import GateEnsemble
from model import GateClassifier, GateLoss, image_labels
from runtime.gate import Gate
from runtime.metadata import read_metadata
from runtime.pipeline import RunOptions
from test_inference import TEST_META, build_model, read_rows, rect_image
from utils import LOG, UserError, preprocess, read_image, read_mask, write_png


# ----------------------------------------------------------------------------- threshold choice


def recall_at(probs, labels, threshold) -> float:
    probs, labels = np.asarray(probs), np.asarray(labels, bool)
    return int((probs[labels] >= threshold).sum()) / int(labels.sum())


@pytest.mark.parametrize("seed", range(25))
def test_threshold_is_the_highest_one_meeting_the_recall_target(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    probs = np.round(rng.random(n), 1 if seed % 2 else 3)  # coarse rounding: many ties
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[int(rng.integers(n))] = True
    target = float(rng.choice([0.5, 0.9, 0.95, 0.99, 1.0, round(float(rng.uniform(0.01, 1.0)), 2)]))
    threshold = classify.select_threshold(probs, labels, target)
    assert recall_at(probs, labels, threshold) >= target
    # every threshold above it loses recall: the probabilities themselves and the next floats above them
    candidates = np.concatenate([probs, np.nextafter(probs, 2.0)])
    assert all(recall_at(probs, labels, t) < target for t in candidates if t > threshold)
    assert threshold in probs[labels]


@pytest.mark.parametrize("probs, labels, target, expected", [
    ([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 1, 1, 1], 0.5, 0.5),  # ties: all three 0.5s kept, recall 0.8
    ([0.9, 0.3, 0.7, 0.2], [1, 1, 1, 0], 1.0, 0.3),  # target 1.0: the lowest defective probability
    ([0.8, 0.6, 0.4, 0.2], [1, 1, 1, 1], 0.75, 0.4),  # no clean image at all
    ([0.2, 0.9, 0.8], [0, 1, 1], 0.99, 0.8),  # the clean image above nothing: all defects kept
    ([0.6], [1], 0.01, 0.6),
])
def test_threshold_edge_cases(probs, labels, target, expected):
    assert classify.select_threshold(np.array(probs), np.array(labels, bool), target) == expected


@pytest.mark.parametrize("target, k", [(0.07, 7), (0.29, 29), (0.57, 57), (0.99, 99), (1.0, 100)])
def test_recall_exactly_at_the_target_is_enough(target, k):
    """100 defective images: the k-th largest probability gives recall k/100 == target exactly (no float slack)."""
    probs = np.arange(100, 0, -1) / 100.0  # 1.00, 0.99, ... 0.01
    threshold = classify.select_threshold(probs, np.ones(100, bool), target)
    assert threshold == probs[k - 1] and recall_at(probs, np.ones(100), threshold) >= target


def test_report_counts_the_clean_images_skipped():
    report = classify.gate_report([0.9, 0.4, 0.5, 0.1, 0.05], [1, 1, 0, 0, 0], 1.0)
    assert report["threshold"] == 0.4 and report["recall"] == 1.0
    assert report["specificity"] == pytest.approx(2 / 3)  # 0.1 and 0.05 skipped, 0.5 segmented
    assert report["precision"] == pytest.approx(2 / 3) and report["skipped_fraction"] == pytest.approx(0.4)
    assert report["accuracy"] == pytest.approx(3 / 5)  # at 0.5: 0.4 missed, 0.5 a false alarm
    assert report["auc"] == pytest.approx(5 / 6) and (report["defective"], report["clean"]) == (2, 3)


def test_no_defective_image_is_a_clear_error_and_no_clean_image_a_warning(caplog):
    with pytest.raises(UserError, match="no defective"):
        classify.gate_report([0.1, 0.2], [0, 0], 0.99)
    LOG.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="seg"):
            report = classify.gate_report([0.7, 0.8], [1, 1], 0.99)
    finally:
        LOG.removeHandler(caplog.handler)
    assert report["specificity"] is None and report["auc"] is None and report["threshold"] == 0.7
    assert "no clean" in caplog.text


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_recall_target_outside_0_1_is_refused(target):
    with pytest.raises(UserError, match="GATE_RECALL"):
        classify.select_threshold([0.5], [True], target)


# ----------------------------------------------------------------------------- model, loss, batching


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_gate_classifier_gives_one_logit_per_image(encoder):
    model = GateClassifier(encoder).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 1)


def test_max_pooling_sees_a_small_peak_that_the_average_dilutes():
    torch.manual_seed(0)
    feature = torch.zeros(2, 512, 2, 50)  # 2 strips' deepest features; strip 1 has one hot cell (a few pits)
    feature[1, :, 1, 37] = 1.0
    heads = {}
    for pool in ("avg", "max", "avgmax"):
        model = GateClassifier("resnet18", pool=pool).eval()
        model.encoder.forward = lambda image, f=feature: [f]
        torch.nn.init.ones_(model.head.weight), torch.nn.init.zeros_(model.head.bias)
        with torch.no_grad():
            heads[pool] = model(torch.zeros(2, 3, 64, 1600))[:, 0]
        assert model.head.in_features == (1024 if pool == "avgmax" else 512)
    assert heads["avg"][1] - heads["avg"][0] == pytest.approx(512 / 100)  # the peak averaged over 100 cells
    assert heads["max"][1] - heads["max"][0] == pytest.approx(512)  # kept whole
    assert heads["avgmax"][1] - heads["avgmax"][0] == pytest.approx(512 + 512 / 100)


def test_gate_checkpoints_rebuild_with_their_pooling(tmp_path):
    from model import GATE_ARCH, build_model_from_checkpoint, model_args, save_checkpoint

    for pool in ("avg", "max", "avgmax"):
        model = GateClassifier("resnet18", pool=pool)
        save_checkpoint(tmp_path / f"{pool}.pt", {"model": model.state_dict(),
                                                  "model_args": model_args(GATE_ARCH, "resnet18", 1, gate_pool=pool)})
        assert build_model_from_checkpoint(tmp_path / f"{pool}.pt")[0].pool == pool
    old = GateClassifier("resnet18", pool="avg")  # written before GATE_POOL existed: no "pool" key, average pooling
    args = {k: v for k, v in model_args(GATE_ARCH, "resnet18", 1).items() if k != "pool"}
    save_checkpoint(tmp_path / "old.pt", {"model": old.state_dict(), "model_args": args})
    assert build_model_from_checkpoint(tmp_path / "old.pt")[0].pool == "avg"
    with pytest.raises(UserError, match="pooling"):
        GateClassifier("resnet18", pool="mean")


def test_gate_loss_labels_images_by_any_foreground_pixel():
    binary = torch.zeros(3, 1, 8, 8)
    binary[1, 0, 2, 3] = 1.0  # one pixel is enough
    multi = torch.zeros(3, 8, 8, dtype=torch.int64)
    multi[2, 5, 5] = 2
    assert image_labels(binary)[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert image_labels(multi)[:, 0].tolist() == [0.0, 0.0, 1.0]
    multi[0, 0, 0] = 255  # void alone is no defect
    assert image_labels(multi)[:, 0].tolist() == [0.0, 0.0, 1.0]
    loss = GateLoss()
    good, bad = torch.tensor([[-4.0], [4.0], [-4.0]]), torch.tensor([[4.0], [-4.0], [4.0]])
    assert loss(good, binary) < 0.05 < loss(bad, binary)
    weighted = GateLoss(pos_weight=5.0)
    assert weighted(bad, binary) > loss(bad, binary)  # the missed defect costs more


def test_pad_collate_pads_to_the_stride_not_to_a_square():
    batch = [(torch.ones(3, 40, 64), torch.ones(1, 40, 64)), (torch.ones(3, 64, 20), torch.ones(1, 64, 20))]
    images, masks = pad_collate(batch)
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 1, 64, 64)
    assert images[0, :, 40:].abs().sum() == 0 and images[1, :, :, 20:].abs().sum() == 0  # zero = the mean colour
    assert images[0, :, :40, :64].min() == 1 and masks[1, :, :, :20].min() == 1
    strip, _ = pad_collate([(torch.ones(3, 33, 200), torch.zeros(33, 200, dtype=torch.int64))])
    assert strip.shape == (1, 3, 64, 224)


# ----------------------------------------------------------------------------- config


def test_classify_config_trains_at_the_gate_size_and_names_the_export_gate(tmp_path):
    cfg = load_config(["--task", "classify", "--input-size", "512"], environ={})
    assert (cfg.input_size, cfg.name) == (256, "gate")
    cfg = load_config(["--input-size", "512", "--gate-input-size", "96", "--name", "g2"], environ={"TASK": "classify"})
    assert (cfg.input_size, cfg.name) == (96, "g2")
    assert load_config(["--input-size", "32"], environ={"TASK": "classify"}).input_size == 32  # at least 32
    assert load_config(["--input-size", "512"], environ={}).input_size == 512  # segment: untouched


@pytest.mark.parametrize("argv, match", [
    (["--task", "detect"], "choose one of: segment, classify"),
    (["--task", "classify", "--gate-input-size", "100"], "GATE_INPUT_SIZE=100 must be a multiple of 32"),
    (["--task", "classify", "--gate-recall", "0"], "--gate-recall='0' is not a valid"),
    (["--task", "classify", "--gate-pos-weight", "-2"], "--gate-pos-weight='-2' is not a valid"),
    (["--task", "classify", "--gate-pool", "mean"], "choose one of: avgmax, avg, max"),
])
def test_bad_gate_settings_are_named(argv, match):
    with pytest.raises(UserError, match=match):
        load_config(argv, environ={})


def test_classify_with_smart_crop_is_refused(tmp_path):
    weights = tmp_path / "det.pt"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="TASK=classify with CROP=person is not supported"):
        load_config(["--task", "classify", "--crop", "person", "--crop-model", str(weights)], environ={})


def test_gate_settings_leave_a_segmenters_hash_alone():
    base = load_config([], environ={})
    assert config_hash(base) == config_hash(load_config(["--gate-pos-weight", "auto"], environ={}))
    gate = load_config(["--task", "classify"], environ={})
    assert config_hash(gate) != config_hash(load_config(["--task", "classify", "--gate-pos-weight", "2"],
                                                                    environ={}))
    assert config_hash(gate) == config_hash(load_config(["--task", "classify", "--gate-recall", "0.9"],
                                                                    environ={}))  # only picks the threshold
    assert config_hash(base) == config_hash(load_config(["--gate-pool", "max"], environ={}))


def test_a_gate_run_from_before_gate_pool_resumes_with_avg_and_the_new_default_retrains(monkeypatch):
    gate = load_config(["--task", "classify"], environ={})
    with_avg = load_config(["--task", "classify", "--gate-pool", "avg"], environ={})
    new_default_hash, avg_hash = config_hash(gate), config_hash(with_avg)
    # what such a run hashed: the same settings without the gate_pool field
    monkeypatch.setattr(type(gate), "to_dict",
                        lambda self: {k: v for k, v in dataclasses.asdict(self).items() if k != "gate_pool"})
    old_hash = config_hash(gate)
    assert avg_hash == old_hash  # its average-pooled checkpoints are resumed
    assert new_default_hash != old_hash  # avgmax: another model


# ----------------------------------------------------------------------------- training and export


@pytest.fixture(scope="session")
def gate_run(tmp_path_factory):
    """A finished 2-fold, 1-epoch gate run (64 px) with its gate.onnx."""
    base = tmp_path_factory.mktemp("gate_run")
    data = write_blobs(base / "data", 12)
    train.run(load_config(tiny_argv(data, base / "work", task="classify", gate_input_size=64), environ={}))
    return base / "work"


def test_gate_run_writes_summary_oof_predictions_and_checkpoints(gate_run):
    summary = json.loads((gate_run / "cv_summary.json").read_text())
    assert summary["task"] == "classify" and set(summary["folds"]) == {"0", "1"}
    oof = summary["oof"]
    assert (oof["images"], oof["defective"], oof["clean"]) == (12, 9, 3)  # every 4th blob image is empty
    assert oof["recall"] >= oof["recall_target"] == 0.99 and summary["threshold"] == oof["threshold"]
    for key in ("accuracy", "auc", "specificity", "precision", "skipped_fraction"):
        assert 0.0 <= oof[key] <= 1.0, key
    rows = (gate_run / "gate_oof.csv").read_text().splitlines()
    assert rows[0] == "key,fold,defective,prob" and len(rows) == 13
    probs = np.array([float(r.split(",")[3]) for r in rows[1:]])
    labels = np.array([r.split(",")[2] == "1" for r in rows[1:]])
    assert classify.select_threshold(probs, labels, 0.99) == pytest.approx(summary["threshold"], rel=1e-6)
    ckpt = torch.load(gate_run / "models" / "fold0_best.pt", weights_only=True)
    assert ckpt["model_args"]["task"] == "classify" and ckpt["config"]["task"] == "classify"
    assert ckpt["model_args"]["pool"] == ckpt["config"]["gate_pool"] == "avgmax"
    records = json.loads((gate_run / "logs" / "metrics.json").read_text())
    assert [(r["fold"], r["epoch"]) for r in records] == [(0, 0), (1, 0)]
    assert all({"train_accuracy", "val_loss", "val_accuracy", "val_auc"} <= set(r) for r in records)
    assert "auc" in (gate_run / "logs" / "training.log").read_text()


def test_gate_onnx_equals_the_torch_fold_ensemble_and_describes_itself(gate_run):
    path = gate_run / "gate.onnx"
    meta = read_metadata(path)
    summary = json.loads((gate_run / "cv_summary.json").read_text())
    assert meta["task"] == "gate" and meta["threshold"] == summary["threshold"] and meta["recall_target"] == 0.99
    assert meta["pool"] == "avgmax"
    assert meta["oof"]["auc"] == summary["oof"]["auc"] and meta["oof"]["specificity"] == summary["oof"]["specificity"]
    assert (meta["input_size"], meta["resize"], meta["stride"], meta["folds"]) == (64, "long_side", 32, [0, 1])
    assert len(meta["mean"]) == len(meta["std"]) == 3 and {"torch", "onnxruntime"} <= set(meta["versions"])
    models, _ = load_fold_models(find_checkpoints(gate_run, None))
    ensemble = GateEnsemble(models).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 96), dtype=np.float32)  # not the export's shape
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        want = ensemble(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 1) and np.abs(got - want).max() <= 1e-4
    # the runtime Gate preprocesses a real image as training's OOF scoring did
    image = read_image(next((gate_run / "images").iterdir()))
    gate = Gate(path, session)
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(preprocess(image, meta)[0])[None]).numpy()[0, 0]
    assert gate.threshold == meta["threshold"] and abs(gate.predict([image])[0] - expected) <= 1e-4


def test_gate_rerun_keeps_finished_folds(gate_run, caplog):
    data = gate_run.parent / "data"
    LOG.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="seg"):
            train.run(load_config(tiny_argv(data, gate_run, task="classify", gate_input_size=64, export="false"),
                                  environ={}))
    finally:
        LOG.removeHandler(caplog.handler)
    assert "fold 0: already finished (best auc" in caplog.text and "fold 1: already finished" in caplog.text


def test_a_gate_checkpoint_from_before_best_score_resumes_with_its_best_auc(gate_run, tmp_path, caplog):
    """fold<K>_last.pt written before the rename kept the gate's best AUC as state["best_dice"]."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(gate_run, work)
    last = work / "models" / "fold0_last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["state"].pop("best_score")
    ckpt["state"]["best_dice"] = 0.1234
    torch.save(ckpt, last)
    LOG.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="seg"):
            train.run(load_config(tiny_argv(gate_run.parent / "data", work, task="classify", gate_input_size=64,
                                            fold_ids="0", export="false"), environ={}))
    finally:
        LOG.removeHandler(caplog.handler)
    assert "fold 0: already finished (best auc 0.1234 at epoch 1)" in caplog.text


def test_a_segmenter_run_in_a_gate_work_dir_is_refused(gate_run):
    with pytest.raises(UserError, match="holds a TASK=classify run"):
        train.run(load_config(tiny_argv(gate_run.parent / "data", gate_run), environ={}))


def test_all_clean_images_cannot_train_a_gate(tmp_path):
    data = write_blobs(tmp_path / "data", 6, empty_every=1)  # every mask empty
    with pytest.raises(UserError, match="none of the 6 images is defective"):
        train.run(load_config(tiny_argv(data, tmp_path / "work", task="classify"), environ={}))


def test_gate_export_refuses_segmenter_only_options(gate_run, tmp_path):
    with pytest.raises(UserError, match="--tta, --int8: not available for a gate"):
        export_onnx(gate_run, output=tmp_path / "g.onnx", tta="hflip", int8=True)


# ----------------------------------------------------------------------------- runtime: the skip path


class CountingSession:
    """An onnxruntime session that counts the images it is asked to run."""

    def __init__(self, path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.images = 0

    def run(self, outputs, feeds):
        self.images += len(next(iter(feeds.values())))
        return self.session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.fixture
def line(tmp_path):
    """Two black (clean) and two rectangle (defect) images of odd sizes, ground truth for one of each, and
    the tiny segmenter and gate models."""
    src, gt = tmp_path / "images", tmp_path / "gt"
    for name, (h, w) in {"clean_a.png": (48, 64), "defect_a.png": (64, 80), "clean_b.png": (40, 30),
                         "defect_b.png": (37, 53)}.items():
        image, mask = rect_image(h, w)
        if name.startswith("clean"):
            image, mask = np.zeros_like(image), np.zeros_like(mask)
        write_png(src / name, image)
        if name.endswith("_a.png"):
            write_png(gt / name, mask * 255)
    return {"src": src, "gt": gt, "model": build_model(tmp_path / "seg.onnx", TEST_META),
            "gate": build_gate_onnx(tmp_path / "gate.onnx"), "tmp": tmp_path}


def segmenter_with_gate(line, model=None, **gate_options):
    counting = CountingSession(model or line["model"])
    gate = Gate(line["gate"], ort.InferenceSession(str(line["gate"]), providers=["CPUExecutionProvider"]))
    return inference.Segmenter(model or line["model"], session=counting, gate=gate, **gate_options), counting


@pytest.mark.parametrize("batch_size", [1, 3])
def test_gated_images_skip_the_segmenter_and_the_rest_is_unchanged(line, batch_size):
    plain = inference.Segmenter(line["model"], device="cpu")
    inference.run(plain, line["src"], line["tmp"] / "plain", gt_dir=line["gt"], batch_size=batch_size)
    gated, counting = segmenter_with_gate(line)
    result = inference.run(gated, line["src"], line["tmp"] / "gated", gt_dir=line["gt"], batch_size=batch_size)

    assert counting.images == 2  # only the two defect images reached the segmenter
    assert (result["gated_clean"], result["ok"], result["errors"]) == (2, 2, 0)
    rows = {r["file"]: r for r in read_rows(line["tmp"] / "gated" / "summary.csv")}
    plain_rows = {r["file"]: r for r in read_rows(line["tmp"] / "plain" / "summary.csv")}
    assert all(r["gate_prob"] == "" for r in plain_rows.values())  # the column exists, empty without a gate
    for name, row in rows.items():
        mask_path, overlay_path = (line["tmp"] / "gated" / d / name for d in ("masks", "overlays"))
        if name.startswith("clean"):
            assert row["status"] == "gated_clean" and float(row["gate_prob"]) < 0.5
            assert (row["area_px"], row["max_prob"], row["threshold"]) == ("0", "", "")
            mask, image = read_mask(mask_path), read_image(line["src"] / name)
            assert mask.shape == image.shape[:2] and not mask.any()
            assert np.array_equal(read_image(overlay_path), image)
        else:
            assert row["status"] == "ok" and float(row["gate_prob"]) >= 0.5
            for folder in ("masks", "overlays"):
                assert (line["tmp"] / "gated" / folder / name).read_bytes() == \
                       (line["tmp"] / "plain" / folder / name).read_bytes()
            same = {k: v for k, v in row.items() if k not in ("ms", "gate_prob")}
            assert same == {k: v for k, v in plain_rows[name].items() if k not in ("ms", "gate_prob")}
    # --gt still counts the gated image: its empty prediction against its empty truth is a perfect 1.0
    assert rows["clean_a.png"]["dice"] == "1.0" and result["with_gt"] == 2
    assert json.loads((line["tmp"] / "gated" / "metrics.json").read_text())["images_with_gt"] == 2
    assert "gate_ms" in result["timing_ms"] and result["timing_ms"]["infer_ms"] > 0


@pytest.mark.parametrize("threshold, segmented", [(0.0, 4), (0.99, 0)])
def test_gate_threshold_overrides_the_gates_own(line, threshold, segmented):
    segmenter, counting = segmenter_with_gate(line, gate_threshold=threshold)
    result = inference.run(segmenter, line["src"], line["tmp"] / "out")
    assert counting.images == segmented and result["gated_clean"] == 4 - segmented


def test_multiclass_segmenter_gets_background_masks_for_gated_images(line):
    model = build_model(line["tmp"] / "multi.onnx", {**TEST_META, "num_classes": 3}, classes=3)
    segmenter, counting = segmenter_with_gate(line, model=model)
    inference.run(segmenter, line["src"], line["tmp"] / "out", save_probs=True)
    assert counting.images == 2
    mask = read_mask(line["tmp"] / "out" / "masks" / "clean_b.png", 3)
    assert mask.shape == (40, 30) and not mask.any()
    probs = np.load(line["tmp"] / "out" / "probs" / "clean_b.npy")
    assert probs.shape == (3, 40, 30) and probs[0].min() == 1 and probs[1:].max() == 0
    assert (line["tmp"] / "out" / "masks_color" / "clean_b.png").is_file()


@pytest.mark.parametrize("kind", ["zip", "list", "glob"])
def test_cli_gate_on_zip_list_and_glob_sources(line, kind):
    names = sorted(p.name for p in line["src"].iterdir())
    if kind == "zip":
        source = line["tmp"] / "batch.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for name in names:
                archive.write(line["src"] / name, name)
    elif kind == "list":
        source = line["tmp"] / "images.txt"
        source.write_text("\n".join(f"images/{name}" for name in names))
    else:
        source = str(line["src"] / "*.png")
    out = line["tmp"] / "out"
    inference.main(["--model", str(line["model"]), "--gate", str(line["gate"]), "--source", str(source),
                    "--output", str(out), "--device", "cpu", "--batch-size", "2"])
    statuses = {Path(r["file"]).name: r["status"] for r in read_rows(out / "summary.csv")}  # lists keep their paths
    assert statuses == {"clean_a.png": "gated_clean", "clean_b.png": "gated_clean", "defect_a.png": "ok",
                        "defect_b.png": "ok"}
    assert sorted(p.name for p in (out / "masks").rglob("*.png")) == names
    if kind == "zip":
        assert "masks/clean_a.png" in zipfile.ZipFile(out / "predictions.zip").namelist()


def test_video_frames_are_gated_one_by_one(line):
    import cv2

    clip = line["tmp"] / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(6):
        writer.write(rect_image(48, 64)[0] if i % 2 else np.zeros((48, 64, 3), np.uint8))
    writer.release()
    segmenter, counting = segmenter_with_gate(line)
    result = inference.run(segmenter, clip, line["tmp"] / "out")
    rows = read_rows(line["tmp"] / "out" / "clip_frames.csv")
    assert [r["status"] for r in rows] == ["gated_clean", "ok"] * 3 and counting.images == 3
    assert result["gated_clean"] == 3 and all(r["gate_prob"] for r in rows)


def test_wrong_model_kinds_are_named(line, tmp_path):
    session = ort.InferenceSession(str(line["model"]), providers=["CPUExecutionProvider"])
    with pytest.raises(UserError, match="is a segmentation model .*not a gate"):
        Gate(line["model"], session)
    with pytest.raises(UserError, match="is a gate classifier .*not a segmentation model"):
        inference.Segmenter(line["gate"], device="cpu")
    bare = build_model(tmp_path / "bare.onnx")  # no metadata at all
    with pytest.raises(UserError, match="not a gate exported by export.py"):
        Gate(bare, ort.InferenceSession(str(bare), providers=["CPUExecutionProvider"]))
    with pytest.raises(UserError, match="--gate-threshold needs --gate"):
        inference.Segmenter(line["model"], device="cpu", gate_threshold=0.3)
    with pytest.raises(UserError, match="--gate-threshold 1.5 is not valid"):
        inference.Segmenter(line["model"], device="cpu", gate=line["gate"], gate_threshold=1.5)


def test_cli_with_a_segmenter_as_gate_exits_2_with_one_line(line):
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--model", str(line["model"]), "--gate",
                           str(line["model"]), "--source", str(line["src"]), "--output", str(line["tmp"] / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "is a segmentation model" in done.stderr and "Traceback" not in done.stderr


def test_cli_help_documents_the_gate():
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert "--gate GATE" in done.stdout and "--gate-threshold" in done.stdout and "gated_clean" in done.stdout


def test_ray_engine_runs_the_gate_like_the_local_engine(line):
    pytest.importorskip("ray", reason="ray is not installed (requirements-dist.txt)")
    common = ["--model", str(line["model"]), "--gate", str(line["gate"]), "--source", str(line["src"]),
              "--threads", "1", "--gt", str(line["gt"])]
    inference.main([*common, "--output", str(line["tmp"] / "local")])
    inference.main([*common, "--output", str(line["tmp"] / "ray"), "--engine", "ray", "--ray-num-cpus", "2",
                    "--ray-actors", "1", "--ray-block-size", "2"])
    drop_ms = [{k: v for k, v in r.items() if k != "ms"} for r in read_rows(line["tmp"] / "local" / "summary.csv")]
    assert drop_ms == [{k: v for k, v in r.items() if k != "ms"} for r in read_rows(line["tmp"] / "ray" / "summary.csv")]
    assert [r["status"] for r in drop_ms].count("gated_clean") == 2
    for name in ("clean_a.png", "defect_b.png"):
        assert (line["tmp"] / "ray" / "masks" / name).read_bytes() == (line["tmp"] / "local" / "masks" / name).read_bytes()


@pytest.mark.parametrize("mode", ["png", "fast", "skip"])
def test_gated_overlay_modes(line, mode):
    segmenter, _ = segmenter_with_gate(line)
    out = line["tmp"] / mode
    inference.run(segmenter, line["src"], out, gated_overlay=mode)
    overlay = out / "overlays" / "clean_a.png"
    assert (out / "overlays" / "defect_a.png").is_file() and (out / "masks" / "clean_a.png").is_file()
    if mode == "skip":
        assert not overlay.exists()
        return
    assert np.array_equal(read_image(overlay), read_image(line["src"] / "clean_a.png"))  # same pixels either way
    if mode == "fast":  # stored, not deflated: the raw 48 x 64 x 3 bytes are all in the file
        assert overlay.stat().st_size > 48 * 64 * 3 > (line["src"] / "clean_a.png").stat().st_size


def test_bad_gated_overlay_mode_is_named():
    with pytest.raises(UserError, match="--gated-overlay 'jpeg' is not valid"):
        RunOptions(gated_overlay="jpeg")


def test_gate_export_fp16_and_triton_repository(gate_run, tmp_path):
    from export import main as export_main

    export_main(["--work-dir", str(gate_run), "--output", str(tmp_path / "g.onnx"), "--fp16", "--threshold", "0.3",
                 "--triton-repo", str(tmp_path / "repo")])
    meta = read_metadata(tmp_path / "g.onnx")
    assert meta["threshold"] == 0.3 and meta["threshold_source"] == "given" and meta["task"] == "gate"
    half = read_metadata(tmp_path / "g.fp16.onnx")
    assert half["precision"] == "fp16" and half["task"] == "gate"
    config = (tmp_path / "repo" / "gate" / "config.pbtxt").read_text()
    assert 'name: "prob"' in config and "dims: [ 1 ]" in config and "max_batch_size: 8" in config
