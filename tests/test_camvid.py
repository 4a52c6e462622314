"""bench/camvid.py on a tiny fake CamVid tree: binary masks, split folders, SOURCE.txt, one-line failures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import camvid  # noqa: E402

COUNTS = {"train": 3, "val": 2, "test": 2}


def fake_camvid(root: Path, label_value: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """root/CamVid/{split,splitannot}/<stem>.png: 12x16 photos, class ids 0..11 with a `label_value` block."""
    rng = np.random.default_rng(0)
    labels_by_split: dict[str, dict[str, np.ndarray]] = {}
    for split, count in COUNTS.items():
        (root / "CamVid" / split).mkdir(parents=True)
        (root / "CamVid" / f"{split}annot").mkdir(parents=True)
        labels_by_split[split] = {}
        for i in range(count):
            stem = f"0001TP_{split}_{i:03d}"
            photo = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            labels = rng.choice([0, 1, 3, 5, 11], size=(12, 16)).astype(np.uint8)
            if i != 1:  # image 1 of each split has no foreground
                labels[2:5 + i, 3:9] = label_value
            Image.fromarray(photo, "RGB").save(root / "CamVid" / split / f"{stem}.png")
            Image.fromarray(labels, "L").save(root / "CamVid" / f"{split}annot" / f"{stem}.png")
            labels_by_split[split][stem] = labels
    return labels_by_split


def test_masks_splits_and_source(tmp_path, capsys):
    labels = fake_camvid(tmp_path / "src")
    out = tmp_path / "out"
    fractions = camvid.main(["--source", str(tmp_path / "src"), "--out", str(out), "--origin", "fake @ 123"])
    for split, count in COUNTS.items():
        assert len(list((out / "images" / split).glob("*.png"))) == count
        assert len(list((out / "masks" / split).glob("*.png"))) == count
        for stem, label in labels[split].items():
            with Image.open(out / "masks" / split / f"{stem}.png") as im:
                assert im.mode == "L" and im.size == (16, 12)
                mask = np.asarray(im)
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask == 255, label == 8)
            # the photo is copied byte for byte
            assert (out / "images" / split / f"{stem}.png").read_bytes() == \
                (tmp_path / "src" / "CamVid" / split / f"{stem}.png").read_bytes()
        assert fractions[split][1] == 0 and fractions[split][0] > 0
    text = (out / "SOURCE.txt").read_text()
    assert "fake @ 123" in text and "train: 3 images" in text and "val: 2 images" in text and "licence" in text
    assert "12x16" in text
    assert "train 3" in capsys.readouterr().out


def test_the_camvid_folder_itself_and_another_label(tmp_path):
    labels = fake_camvid(tmp_path / "src", label_value=9)
    camvid.main(["--source", str(tmp_path / "src" / "CamVid"), "--out", str(tmp_path / "out"),
                 "--label", "9", "--name", "pedestrian"])
    stem = next(iter(labels["val"]))
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "val" / f"{stem}.png"))
    assert np.array_equal(mask == 255, labels["val"][stem] == 9)


def test_missing_annotation_fails_clearly(tmp_path):
    fake_camvid(tmp_path / "src")
    victim = sorted((tmp_path / "src" / "CamVid" / "valannot").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(SystemExit, match=f"{victim.stem}.png has no annotation"):
        camvid.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass


def test_label_that_never_occurs_fails_clearly(tmp_path):
    fake_camvid(tmp_path / "src")
    with pytest.raises(SystemExit, match="label 10 never occurs in the train split"):
        camvid.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--label", "10"])


def test_missing_subfolders_and_size_mismatch_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no CamVid tree"):
        camvid.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    fake_camvid(tmp_path / "src")
    annot = sorted((tmp_path / "src" / "CamVid" / "testannot").glob("*.png"))[0]
    Image.fromarray(np.full((10, 16), 8, np.uint8), "L").save(annot)
    with pytest.raises(SystemExit, match="is 16x12 but its annotation is 16x10"):
        camvid.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
