"""The demo end to end, tiny: generate -> train 2 folds -> export -> inference.py CLI -> Dice."""

import csv

import cv2

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
