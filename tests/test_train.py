import json
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import train
from config import load_config
from dataset import CacheEntry, build_cache
from training.sources import collect_sources
from training.loaders import make_loader
from training.loop import evaluate_checkpoint
from training.metrics import THRESHOLD_GRID, Tracker, per_image_scores
from training.splits import auto_class_weights, make_folds
from training.tasks import SegmentTask, make_task
from utils import UserError, dice_iou

from pathlib import Path

from conftest import tiny_argv, write_blobs


def _entries(empty_flags):
    return [CacheEntry(str(i), None, None, bool(e), "") for i, e in enumerate(empty_flags)]


def test_folds_are_stratified_disjoint_and_complete():
    entries = _entries([i % 4 == 0 for i in range(40)])  # 10 empty, 30 not
    folds = make_folds(entries, 5, seed=1)
    val = [i for _, va in folds for i in va]
    assert sorted(val) == list(range(40))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert sum(entries[i].empty for i in va) == 2  # 10 empty / 5 folds


def test_too_few_samples_for_folds():
    with pytest.raises(UserError, match="cannot be split into FOLDS=5"):
        make_folds(_entries([0, 1, 0]), 5, seed=0)


@pytest.mark.parametrize("seed", range(3))
def test_torch_scores_match_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    target = (rng.random((4, 1, 16, 16)) > 0.7).astype(np.float32)
    target[0] = 0  # one empty image
    logits = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    logits[0] = -5  # predicted empty too: counts as a perfect 1.0
    got = per_image_scores(torch.from_numpy(logits), torch.from_numpy(target), 1).numpy()[..., 0]
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
    assert 0.0 <= summary["mean_dice"] <= 1.0 and summary["best_threshold"] in THRESHOLD_GRID
    records = json.loads((trained_run / "logs" / "metrics.json").read_text())
    assert [(r["fold"], r["epoch"], r["kind"]) for r in records] == [(0, 0, "epoch"), (1, 0, "epoch")]
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
    assert "fold 0: resuming after epoch 1" in caplog.text
    assert "fold 0 epoch 2/2" in caplog.text and "fold 0 epoch 1/2" not in caplog.text


def test_state_of_an_old_checkpoint_reads_best_dice_as_best_score():
    from training.loop import new_state, read_state

    old = {"epoch": 3, "step": 40, "best_dice": 0.8, "best_epoch": 2, "finished": False}
    assert read_state(old) == {"epoch": 3, "step": 40, "best_score": 0.8, "best_epoch": 2, "finished": False}
    assert read_state(new_state()) == new_state() and "best_dice" not in new_state()


@pytest.mark.parametrize("argv, name", [([], "SegmentTask"), (["--task", "classify"], "ClassifyTask")])
def test_each_task_gives_the_loop_everything_it_asks(argv, name):
    from training.loop import Task

    task = make_task(load_config(argv, environ={}))
    asked = {n for n in vars(Task) if not n.startswith("_")} | set(Task.__annotations__)
    assert type(task).__name__ == name and asked and all(hasattr(task, n) for n in asked)
    assert task.new_sums().result()["loss"] == 0.0 and task.model_args()["encoder"] == "resnet34"


def test_changed_settings_retrain(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    train.run(load_config(tiny_argv(data, tmp_path / "work", export="false", fold_ids="0"), environ={}))
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(load_config(tiny_argv(data, tmp_path / "work", export="false", fold_ids="0", lr="5e-4"),
                              environ={}))
    assert "settings changed" in caplog.text


def write_multiclass(folder, count=12, seed=0):
    """Class 1 = discs, class 2 = squares, on noise."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for i in range(count):
        image = (rng.random((64, 64, 3)) * 60 + 90).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, (int(rng.integers(12, 30)), int(rng.integers(12, 52))), 8, 1, -1)
        x, y = int(rng.integers(36, 50)), int(rng.integers(4, 48))
        mask[y:y + 12, x:x + 12] = 2
        image[mask == 1] = (240, 60, 60)
        image[mask == 2] = (60, 60, 240)
        cv2.imwrite(str(folder / "images" / f"m{i:02d}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"m{i:02d}.png"), mask)
    return folder


def test_multiclass_training_logs_per_class_metrics_and_learns(tmp_path):
    data = write_multiclass(tmp_path / "data")
    cfg = load_config(tiny_argv(data, tmp_path / "work", classes=3, class_names="background,disc,square",
                                class_weights="auto", epochs=3, fold_ids="0", export="false"), environ={})
    train.run(cfg)
    records = json.loads((tmp_path / "work" / "logs" / "metrics.json").read_text())
    assert {"val_dice_disc", "val_dice_square", "train_dice_disc"} <= set(records[-1])
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    ckpt = torch.load(tmp_path / "work" / "models" / "fold0_best.pt", weights_only=True)
    assert ckpt["config"]["class_names"] == ["background", "disc", "square"]


def test_auto_class_weights_favour_rare_classes():
    entries = [CacheEntry(str(i), None, None, False, "", (900, 90, 10)) for i in range(3)]
    weights = auto_class_weights(entries, 3)
    assert weights[2] > weights[1] > weights[0] and abs(np.mean(weights) - 1) < 1e-3


def test_auto_class_weights_stay_within_ten_times_the_background_on_defect_data():
    # steel-like pixel shares: background 98.5 %, a large class 1.1 %, a tiny one 0.016 %, one absent
    entries = [CacheEntry("a", None, None, False, "", (985_000, 160, 0, 11_300, 3_000))]
    weights = np.array(auto_class_weights(entries, 5))
    assert weights.max() / weights[0] == pytest.approx(10.0, rel=1e-3)  # capped: median-frequency gave ~500
    assert weights[1] >= weights[3] > weights[0] and weights[2] == weights.max() and abs(weights.mean() - 1) < 1e-3


def test_class_id_above_classes_is_named(tmp_path):
    data = write_multiclass(tmp_path / "data", count=4)
    cfg = load_config(tiny_argv(data, tmp_path / "work", classes=2), environ={})
    with pytest.raises(UserError, match=r"m00\.png has class id 2 but CLASSES=2 allows 0..1"):
        train.run(cfg)


def test_split_lists_replace_cv_and_score_the_test_set(tmp_path):
    data = write_blobs(tmp_path / "data", 12)
    stems = sorted(p.stem for p in (data / "images").iterdir())
    (data / "training_dataset.txt").write_text("\n".join(stems[:8]))
    (data / "validation_dataset.txt").write_text("\n".join(f"{s}.jpg" for s in stems[8:10]))
    (data / "test_dataset.txt").write_text("\n".join(stems[10:]))
    summary = train.run(load_config(tiny_argv(data, tmp_path / "work", search_files="true", export="false"),
                                    environ={}))
    assert list(summary["folds"]) == ["0"] and summary["oof_images"] == 2 and "dice" in summary["test"]["0"]
    folds = json.loads((tmp_path / "work" / "folds.json").read_text())
    assert folds == {"0": stems[8:10], "test": stems[10:]}  # the test split: held back from every fold


def test_split_list_naming_an_unknown_image(tmp_path):
    data = write_blobs(tmp_path / "data", 6)
    (data / "training_dataset.txt").write_text("img_000\nnot_there\n")
    with pytest.raises(UserError, match="training_dataset.txt names 1 image.*not_there"):
        train.run(load_config(tiny_argv(data, tmp_path / "work", search_files="true"), environ={}))


def test_groups_never_span_two_folds():
    entries = _entries([i % 4 == 0 for i in range(40)])
    groups = [f"person{i // 4}" for i in range(40)]  # 10 people, 4 images each
    for _, val in make_folds(entries, 5, seed=0, groups=groups):
        val_groups = {groups[i] for i in val}
        train_groups = {groups[i] for i in range(40) if i not in set(val)}
        assert not val_groups & train_groups


def test_same_seed_same_metrics(tmp_path):
    data = write_blobs(tmp_path / "data", 12)
    results = []
    for run_name in ("a", "b"):
        cfg = load_config(tiny_argv(data, tmp_path / run_name, epochs=2, fold_ids="0", export="false", workers=1),
                          environ={})
        train.run(cfg)
        records = json.loads((tmp_path / run_name / "logs" / "metrics.json").read_text())
        results.append([(r["train_loss"], r["val_dice"]) for r in records])
    assert results[0] == results[1]


def test_eval_step_and_epoch_checkpoints(tmp_path):
    data = write_blobs(tmp_path / "data", 12)
    train.run(load_config(tiny_argv(data, tmp_path / "work", eval_step=1, save_checkpoints="true", epochs=2,
                                    fold_ids="0", export="false"), environ={}))
    records = json.loads((tmp_path / "work" / "logs" / "metrics.json").read_text())
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and len(epochs) == 2
    assert steps[-1]["step"] == epochs[-1]["step"]  # eval_step=1: one evaluation per optimizer step
    assert sorted(p.name for p in (tmp_path / "work" / "models").glob("fold0_epoch*.pt")) == [
        "fold0_epoch1.pt", "fold0_epoch2.pt"]
    assert (tmp_path / "work" / "logs" / "val_preview_fold0.png").is_file()


def test_load_model_fine_tunes_from_a_checkpoint(trained_run, tmp_path):
    data = write_blobs(tmp_path / "data", 12)
    source = trained_run / "models" / "fold0_best.pt"
    cfg = load_config(tiny_argv(data, tmp_path / "work", load_model=str(source), lr="1e-9", fold_ids="0",
                                export="false"), environ={})
    train.run(cfg)
    before = torch.load(source, weights_only=True)["model"]
    after = torch.load(tmp_path / "work" / "models" / "fold0_best.pt", weights_only=True)["model"]
    conv = "segmentation_head.0.weight"
    assert torch.allclose(before[conv], after[conv], atol=1e-4)  # lr ~0: the fine-tuned weights stay put


def test_missing_tracker_package_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="pip install tensorboard"):
        Tracker("tensorboard", tmp_path, {})


def test_kill_9_mid_run_then_resume(tmp_path):
    """A real crash: SIGKILL the trainer during its second epoch, then run it again to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_blobs(tmp_path / "data", 24)
    work = tmp_path / "work"
    argv = [sys.executable, "train.py", *tiny_argv(data, work, epochs=5, fold_ids="0", export="false",
                                                   batch_size=2)]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = work / "models" / "fold0_last.pt"
    deadline = time.time() + 300
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.is_file(), "the first epoch never finished"
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fold 0: resuming after epoch" in done.stderr
    records = json.loads((work / "logs" / "metrics.json").read_text())
    assert sorted(r["epoch"] for r in records if r["kind"] == "epoch") == [0, 1, 2, 3, 4]  # each exactly once
    assert torch.load(last, weights_only=True)["state"]["finished"] is True


def test_amp_bf16_on_cpu_trains(tmp_path):
    data = write_blobs(tmp_path / "data", 12)
    summary = train.run(load_config(tiny_argv(data, tmp_path / "work", use_amp="true", fold_ids="0", export="false"),
                                    environ={}))
    records = json.loads((tmp_path / "work" / "logs" / "metrics.json").read_text())
    assert np.isfinite(records[-1]["train_loss"]) and 0 <= summary["mean_dice"] <= 1


@pytest.mark.parametrize("setting, native, device, dtype, words", [
    ("auto", True, "cpu", torch.bfloat16, "AMP bf16 (USE_AMP=auto: this CPU has native bf16)"),
    ("auto", False, "cpu", None, "AMP off (fp32) (USE_AMP=auto: this CPU has no native bf16, which would be emulated)"),
    ("auto", False, "cuda", torch.float16, "AMP fp16 (USE_AMP=auto: CUDA)"),
    ("true", False, "cpu", torch.bfloat16, "AMP bf16 (USE_AMP=true)"),
    ("false", True, "cpu", None, "AMP off (fp32) (USE_AMP=false)"),
    ("false", True, "cuda", None, "AMP off (fp32) (USE_AMP=false)"),
])
def test_use_amp_auto_is_on_where_the_hardware_has_the_type(monkeypatch, setting, native, device, dtype, words):
    from training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    cfg = load_config(["--use-amp", setting], environ={})
    assert precision.amp_dtype(cfg, torch.device(device)) == dtype
    assert precision.describe_amp(cfg, torch.device(device)) == words


def test_native_bf16_reads_torchs_cpu_probe(monkeypatch):
    from training.precision import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert native_bf16() is False


def test_channels_last_trains_nhwc_and_exports(tmp_path, monkeypatch):
    """CHANNELS_LAST: the weights and every training batch are NHWC; the checkpoint still exports."""
    from training import loop
    from training.metrics import MetricsLog, Tracker
    from runtime.metadata import read_metadata

    data = write_blobs(tmp_path / "data", 12)
    cfg = load_config(tiny_argv(data, tmp_path / "work", channels_last="true", fold_ids="0", folds=2), environ={})
    seen, build = [], SegmentTask.build_model

    def recording_model(task, weights=None):
        model = build(task, weights)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(
            (module.training, inputs[0].is_contiguous(memory_format=torch.channels_last))))
        return model

    monkeypatch.setattr(SegmentTask, "build_model", recording_model)
    train.run(cfg)
    assert (True, True) in seen and all(nhwc for training, nhwc in seen if training)  # every training batch
    monkeypatch.undo()
    assert read_metadata(str(tmp_path / "work" / "model.onnx"))["arch"] == cfg.arch
    entries, _, device = train.prepare(cfg)
    run = loop.setup_fold(SegmentTask(cfg), 0, entries, make_folds(entries, 2, 0)[0], device,
                          MetricsLog(tmp_path / "m.json"), Tracker("none", tmp_path, {}))
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_corrupt_last_checkpoint_restarts_the_fold(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    cfg = load_config(tiny_argv(data, tmp_path / "work", export="false", fold_ids="0"), environ={})
    train.run(cfg)
    last = tmp_path / "work" / "models" / "fold0_last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short on disk
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "fold0_last.pt" in caplog.text and "training this fold from scratch" in caplog.text
    assert "fold 0 epoch 1/1" in caplog.text  # trained again instead of crashing
    assert (last.parent / "fold0_last.pt.corrupt").stat().st_size == 1000
    assert torch.load(last, weights_only=True)["state"]["finished"]


def _torchrun(data: Path, work: Path, **overrides) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            *tiny_argv(data, work, fold_ids="0", threads="1", device="cpu", **overrides)]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_two_cpu_processes_write_one_run_with_all_reduced_metrics(tmp_path):
    data, work = write_blobs(tmp_path / "data", 12), tmp_path / "work"
    # fp32: under bf16 the kernels depend on the batch and thread split, which flipped a near-tied pixel once in
    # several runs between the two ranks' shards and one process's batches
    done = _torchrun(data, work, export="false", use_amp="false", recipe="off")  # raw weights, as evaluated below
    log = done.stderr + done.stdout
    assert "DDP over 2 processes (gloo)" in log
    assert log.count("fold 0 epoch 1/1") == 1  # only rank 0 logs
    assert sorted(p.name for p in (work / "models").iterdir()) == ["fold0_best.pt", "fold0_last.pt"]
    assert not list(work.rglob("*.tmp*")) and (work / "cache_manifest.json").is_file()
    [record] = json.loads((work / "logs" / "metrics.json").read_text())
    val_keys = json.loads((work / "folds.json").read_text())["0"]
    assert json.loads((work / "cv_summary.json").read_text())["oof_images"] == len(val_keys) == 6

    # one process, the same checkpoint, the whole val fold, in the epoch's precision (USE_AMP): what the two ranks'
    # sums must add up to
    cfg = load_config(tiny_argv(data, work, fold_ids="0", export="false", use_amp="false"), environ={})
    entries = build_cache(collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, None), work, cfg.input_size,
                          write=False)
    val_idx = [i for i, e in enumerate(entries) if e.key in set(val_keys)]
    single = evaluate_checkpoint(make_task(cfg), work / "models" / "fold0_last.pt", entries, val_idx,
                                 torch.device("cpu"), amp=cfg.use_amp)
    assert record["val_dice"] == pytest.approx(single["dice"], abs=1e-6)
    assert record["val_iou"] == pytest.approx(single["iou"], abs=1e-6)


def test_torchrun_trains_the_gate_with_all_reduced_scores_and_one_oof_report(tmp_path):
    """TASK=classify under DDP: rank 0 alone logs and writes; the val AUC and accuracy gather every rank's
    (probability, label) pairs, so they equal one process scoring the whole val fold."""
    from training import classify

    data, work = write_blobs(tmp_path / "data", 12), tmp_path / "work"
    done = _torchrun(data, work, task="classify", gate_input_size=64, export="false")
    log = done.stderr + done.stdout
    assert "DDP over 2 processes (gloo)" in log and log.count("fold 0 epoch 1/1") == 1
    assert log.count("gate out-of-fold on 6 images") == 1
    [record] = json.loads((work / "logs" / "metrics.json").read_text())
    val_keys = json.loads((work / "folds.json").read_text())["0"]
    rows = (work / "gate_oof.csv").read_text().splitlines()
    assert rows[0] == "key,fold,defective,prob" and sorted(r.split(",")[0] for r in rows[1:]) == sorted(val_keys)
    summary = json.loads((work / "cv_summary.json").read_text())
    assert summary["task"] == "classify" and summary["oof"]["images"] == 6

    cfg = load_config(tiny_argv(data, work, task="classify", gate_input_size=64, fold_ids="0", export="false"),
                      environ={})
    entries = build_cache(collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, None), work, cfg.input_size,
                          write=False)
    val_idx = [i for i, e in enumerate(entries) if e.key in set(val_keys)]
    single = evaluate_checkpoint(make_task(cfg), work / "models" / "fold0_last.pt", entries, val_idx,
                                 torch.device("cpu"), amp=True)  # as the epoch's validation ran
    assert record["val_accuracy"] == pytest.approx(single["accuracy"], abs=1e-6)
    if single.get("auc") is not None:
        assert record["val_auc"] == pytest.approx(single["auc"], abs=1e-6)
    probs = [float(r.split(",")[3]) for r in rows[1:]]
    labels = [r.split(",")[2] == "1" for r in rows[1:]]
    assert summary["threshold"] == pytest.approx(classify.select_threshold(probs, labels, 0.99), rel=1e-6)


@pytest.mark.slow
def test_torchrun_resume_keeps_the_finished_fold(tmp_path):
    data, work = write_blobs(tmp_path / "data", 12), tmp_path / "work"
    _torchrun(data, work, export="false")
    best = work / "models" / "fold0_best.pt"
    before = best.stat().st_mtime_ns
    done = _torchrun(data, work, export="false")
    assert "fold 0: already finished" in done.stderr and "12 reused" in done.stderr
    assert best.stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- TRAIN_PATCH, multi-class


def write_strips(folder: Path, count: int = 12) -> Path:
    """Generated steel strips at 256x64 (class ids 0..4) plus classes.txt."""
    from demos.steel import generate_steel

    generate_steel(folder, count=count, clean_fraction=0.25, seed=0, width=256, height=64)
    return folder


def test_patch_training_on_strips_scores_every_class(tmp_path):
    data = write_strips(tmp_path / "data")
    cfg = load_config(tiny_argv(data, tmp_path / "work", classes=5, classes_file=data / "classes.txt",
                                class_weights="auto", input_size=256, train_patch="64x64", patches_per_image=4,
                                epochs=2, fold_ids="0", export="false"), environ={})
    summary = train.run(cfg)
    names = ["pits", "scratch", "scale", "blotch"]
    on_disk = json.loads((tmp_path / "work" / "cv_summary.json").read_text())
    assert on_disk["oof_per_class"] == summary["oof_per_class"] and list(summary["oof_per_class"]) == names
    fold = on_disk["folds"]["0"]
    assert {f"dice_{n}" for n in names} | {f"iou_{n}" for n in names} <= set(fold)
    assert list(fold["oof"]["per_class"]) == names and fold["oof"]["images"] == 6 == summary["oof_images"]
    for scores in summary["oof_per_class"].values():
        assert 0.0 <= scores["iou"] <= scores["dice"] <= 1.0
    # the image score is the class mean, as the runtime's summary.csv has it
    assert summary["oof_dice"] == pytest.approx(np.mean([v["dice"] for v in summary["oof_per_class"].values()]))
    assert summary["best_threshold"] == 0.5 and "Severstal" in summary["multiclass_rule"]
    records = json.loads((tmp_path / "work" / "logs" / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["train_loss"] < records[0]["train_loss"]
    assert {f"val_dice_{n}" for n in names} <= set(records[-1])
    # validation saw whole 256x64 strips (stacked image/truth/prediction), not 256x256 squares
    preview = cv2.imread(str(tmp_path / "work" / "logs" / "val_preview_fold0.png"))
    assert preview.shape[:2] == (4 * 3 * 64, 256)


def test_patch_loaders_crop_for_training_and_keep_whole_images_for_validation(tmp_path):
    from dataset import PatchDataset

    data = write_strips(tmp_path / "data", count=6)
    cfg = load_config(tiny_argv(data, tmp_path / "work", classes=5, classes_file=data / "classes.txt",
                                input_size=256, train_patch="64x96", patches_per_image=3), environ={})
    entries, _, device = train.prepare(cfg)
    train_loader = make_loader(SegmentTask(cfg), entries, [0, 1, 2], True, device)
    assert isinstance(train_loader.dataset, PatchDataset) and len(train_loader.dataset) == 9
    images, masks = next(iter(train_loader))
    assert images.shape == (4, 3, 64, 96) and masks.shape == (4, 64, 96)
    images, masks = next(iter(make_loader(SegmentTask(cfg), entries, [3, 4, 5], False, device)))
    assert images.shape == (3, 3, 64, 256) and masks.shape == (3, 64, 256)


def test_square_batch_shape_pads_to_input_size_squares(tmp_path):
    """BATCH_SHAPE=square, the rule before rect: validation batches are INPUT_SIZE squares."""
    data = write_blobs(tmp_path / "data", 4, size=(40, 100))
    cfg = load_config(tiny_argv(data, tmp_path / "work", batch_shape="square"), environ={})
    entries, _, device = train.prepare(cfg)
    images, _ = next(iter(make_loader(SegmentTask(cfg), entries, [0, 1], False, device)))
    assert images.shape[-2:] == (64, 64)


# ----------------------------------------------------------------------------- BATCH_SHAPE=rect


def write_mixed_blobs(folder: Path, count: int = 12) -> Path:
    """Blobs at 40x100 (landscape), every third one turned to 100x40 (portrait)."""
    write_blobs(folder, count, size=(40, 100))
    for i in range(0, count, 3):
        for path in (folder / "images" / f"img_{i:03d}.jpg", folder / "masks" / f"img_{i:03d}.png"):
            cv2.imwrite(str(path), cv2.rotate(cv2.imread(str(path)), cv2.ROTATE_90_CLOCKWISE))
    return folder


def test_rect_batches_keep_each_images_shape(tmp_path):
    """BATCH_SHAPE=rect: 40x100 photos at INPUT_SIZE 64 train as 32x64 batches (26x64 padded to /32, as the
    runtime pads), portrait ones as 64x32, not as 64x64 squares; validation pads to /32 only."""
    data = write_mixed_blobs(tmp_path / "data")
    cfg = load_config(tiny_argv(data, tmp_path / "work", batch_shape="rect", batch_size=2), environ={})
    entries, _, device = train.prepare(cfg)
    loader = make_loader(SegmentTask(cfg), entries, list(range(12)), True, device)
    shapes = [tuple(images.shape[-2:]) for images, _ in loader]
    assert len(shapes) == 6 and set(shapes) == {(32, 64), (64, 32)} and shapes.count((64, 32)) == 2
    val = [tuple(i.shape[-2:]) for i, _ in make_loader(SegmentTask(cfg), entries, [1, 2], False, device)]
    assert val == [(32, 64)]
    square = load_config(tiny_argv(data, tmp_path / "work", batch_size=2, batch_shape="square"), environ={})
    assert {tuple(i.shape[-2:]) for i, _ in make_loader(SegmentTask(square), entries, list(range(12)), True,
                                                        device)} == {(64, 64)}


def test_rect_run_trains_exports_and_records_its_batch_shape(tmp_path):
    from runtime.metadata import read_metadata

    data = write_mixed_blobs(tmp_path / "data")
    cfg = load_config(tiny_argv(data, tmp_path / "work", batch_size=2, epochs=2, fold_ids="0", folds=2),
                      environ={})  # rect is the default
    summary = train.run(cfg)
    assert 0.0 <= summary["oof_dice"] <= 1.0
    assert read_metadata(str(tmp_path / "work" / "model.onnx"))["batch_shape"] == "rect"
    assert load_config([], environ={}).batch_shape == "rect"
    assert load_config([], environ={"BATCH_SHAPE": "square"}).batch_shape == "square"
    with pytest.raises(UserError, match="--batch-shape=.squash. is not allowed; choose one of: square, rect"):
        load_config(["--batch-shape", "squash"], environ={})


def test_void_pixels_count_neither_as_predicted_nor_as_true():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 2:4, 2:4] = 1
    target[0, 0, 6:] = 255  # void: predicted foreground there costs nothing
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[0, 0, 2:4, 2:4] = 5
    logits[0, 0, 6:] = 5
    assert per_image_scores(logits, target, 1)[0, :, 0].tolist() == [1.0, 1.0]
    assert per_image_scores(logits, target, 1, ignore_index=None)[0, 0, 0] < 0.5
    multi_target = torch.zeros(1, 8, 8, dtype=torch.long)
    multi_target[0, 2:4, 2:4], multi_target[0, 6:] = 2, 255
    multi = torch.zeros(1, 3, 8, 8)
    multi[0, 2, 2:4, 2:4] = 5
    multi[0, 1, 6:] = 5  # class 1 predicted on void pixels only
    assert per_image_scores(multi, multi_target, 3)[0, 0].tolist() == [1.0, 1.0]
