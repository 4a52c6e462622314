"""The demo end to end, tiny: generate -> train 2 folds -> export -> inference.py CLI -> Dice."""

import csv

import cv2
import pytest

import demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    demo.main(["--work-dir", str(work), "--count", "16", "--heldout", "5", "--size", "64",
               "--input-size", "64", "--epochs", "1", "--folds", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("held-out dice: ")
    assert 0.0 <= float(out[-1].split()[-1]) <= 1.0
    rows = list(csv.DictReader(open(work / "predictions" / "summary.csv")))
    assert len(rows) == 5 and all(r["status"] in ("ok", "no_detection") for r in rows)
    for row in rows:
        image = cv2.imread(str(work / "data" / "heldout" / "images" / row["file"]))
        mask = cv2.imread(str(work / "predictions" / "masks" / row["file"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == image.shape[:2] and row["dice"] != ""
    assert (work / "run" / "demo.onnx").is_file()


def test_runtime_reproduces_the_trainers_original_resolution_dice(trained_run, tmp_path):
    """inference.py --gt on a fold's validation images == train.py's original-size scoring of that fold."""
    import json
    import shutil

    import torch

    import export
    import inference
    from config import Config
    from training.sources.folders import pair_by_stem
    from training.metrics import OOFStats
    from training.scoring import score_original_resolution
    from training.tasks import SegmentTask

    cfg = Config.load(trained_run / "config.json")
    val_keys = json.loads((trained_run / "folds.json").read_text())["0"]
    sources = {s.key: s for s in pair_by_stem(cfg.raw_img_dir, cfg.raw_mask_dir)}
    val_dir = tmp_path / "val"
    for folder in ("images", "masks"):
        (val_dir / folder).mkdir(parents=True)
    for key in val_keys:
        shutil.copy(sources[key].image_path, val_dir / "images")
        shutil.copy(sources[key].mask_path, val_dir / "masks")

    oof = OOFStats()
    best = trained_run / "models" / "fold0_best.pt"
    score_original_resolution(SegmentTask(cfg), best, [sources[k] for k in val_keys], torch.device("cpu"), oof)
    onnx_path = export.export_onnx(trained_run, folds=[0], output=tmp_path / "fold0.onnx")
    result = inference.run(inference.Segmenter(onnx_path, device="cpu"), val_dir / "images",
                           tmp_path / "out", threshold=0.5, min_area=0, gt_dir=val_dir / "masks")
    assert abs(result["mean_dice"] - oof.at(0.5)[0]) < 1e-3


@pytest.mark.parametrize("tile", ["", "64x64"])
def test_multiclass_patch_run_train_oof_equals_runtime_gt_per_class(tmp_path, tile):
    """Patch-trained strips: cv_summary.json's out-of-fold per-class Dice/IoU == inference.py --gt on the same
    images, whole or (TILE) as tiles on both sides."""
    import json
    import shutil

    import inference
    import train
    from config import load_config
    from conftest import tiny_argv
    from demos.steel import generate_steel

    data = tmp_path / "data"
    generate_steel(data, count=10, clean_fraction=0.3, seed=1, width=256, height=64)
    work = tmp_path / "work"
    train.run(load_config(tiny_argv(data, work, classes=5, classes_file=data / "classes.txt", class_weights="auto",
                                    input_size=256, train_patch="64x64", patches_per_image=2, epochs=2,
                                    fold_ids="0", tile=tile), environ={}))
    trained = json.loads((work / "cv_summary.json").read_text())["folds"]["0"]["oof"]
    import export

    meta = export.read_metadata(work / "model.onnx")  # whole images at inference: input_size is the long side
    assert (meta["input_size"], meta["train_patch"], meta["num_classes"]) == (256, "64x64", 5)
    assert meta["class_names"] == ["background", "pits", "scratch", "scale", "blotch"]
    assert meta.get("tile") == ({"size": [64, 64], "overlap": 0.5} if tile else None)
    val_dir = tmp_path / "val"
    for folder in ("images", "masks"):
        (val_dir / folder).mkdir(parents=True)
    for key in json.loads((work / "folds.json").read_text())["0"]:
        shutil.copy(data / "images" / f"{key}.png", val_dir / "images")
        shutil.copy(data / "masks" / f"{key}.png", val_dir / "masks")

    result = inference.run(inference.Segmenter(work / "model.onnx", device="cpu"), val_dir / "images",
                           tmp_path / "out", gt_dir=val_dir / "masks")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result["with_gt"] == trained["images"] == 5
    assert abs(metrics["mean_dice"] - trained["dice"]) < 1e-3 and abs(metrics["mean_iou"] - trained["iou"]) < 1e-3
    assert list(metrics["per_class"]) == list(trained["per_class"]) == ["pits", "scratch", "scale", "blotch"]
    for name, runtime in metrics["per_class"].items():
        assert abs(runtime["mean_dice"] - trained["per_class"][name]["dice"]) < 1e-3, name
        assert abs(runtime["mean_iou"] - trained["per_class"][name]["iou"]) < 1e-3, name
    # not a trivial agreement of empty predictions on empty truth
    assert min(v["mean_dice"] for v in metrics["per_class"].values()) < 1.0
    assert (tmp_path / "out" / "masks_color").is_dir() and (tmp_path / "out" / "legend.png").is_file()


def test_steel_demo_runs_end_to_end(tmp_path, capsys):
    work = tmp_path / "steel"
    demo.main(["--steel", "--work-dir", str(work), "--count", "8", "--heldout", "3", "--size", "320",
               "--epochs", "1", "--folds", "2", "--train-patch", "64x64", "--patches-per-image", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("held-out dice: ") and 0.0 <= float(out[-1].split()[-1]) <= 1.0
    per_class = next(line for line in out if line.startswith("held-out dice per class: "))
    names = [part.split()[0] for part in per_class.split(": ", 1)[1].split(", ")]
    assert names == ["pits", "scratch", "scale", "blotch"]
    assert any(line.startswith("predicting nothing would score: ") for line in out)
    rows = list(csv.DictReader(open(work / "predictions" / "summary.csv")))
    assert len(rows) == 3 and {"dice_pits", "dice_blotch"} <= set(rows[0])
    for row in rows:
        mask = cv2.imread(str(work / "predictions" / "masks" / row["file"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 320) and mask.max() <= 4  # class ids at the strip's own size
        assert (work / "predictions" / "masks_color" / row["file"]).is_file()
    assert (work / "predictions" / "legend.png").is_file() and (work / "run" / "steel.onnx").is_file()
