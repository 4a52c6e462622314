"""Export variants get their own names and never silently replace one another; --int8 checks its inputs first."""

import json

import cv2
import numpy as np
import pytest

import export
from exporting import build, variants
from runtime.metadata import read_metadata
from utils import UserError


@pytest.fixture
def run(run_copy):
    """The shared 2-fold run through a folder of its own, so exports land here (conftest.run_copy)."""
    return run_copy


@pytest.mark.parametrize("folds, tta, logits, name", [
    (None, "none", False, "model.onnx"),
    ([0], "none", False, "model.fold0.onnx"),
    ([0, 2], "none", False, "model.folds0_2.onnx"),
    (None, "flips", False, "model.tta-flips.onnx"),
    (None, "none", True, "model.logits.onnx"),
    ([1], "hflip", True, "model.fold1.tta-hflip.logits.onnx"),
])
def test_variant_names(tmp_path, folds, tta, logits, name):
    path = variants.variant_path(tmp_path, "model", folds, tta, logits)
    assert path == tmp_path / name
    assert variants.sibling_path(path, "fp16").name == name.replace(".onnx", ".fp16.onnx")


def test_a_fold_gets_its_own_file_and_fp16_copy(run, caplog):
    export.main(["--work-dir", str(run), "--fold", "0", "--fp16", "--no-verify"])
    assert read_metadata(run / "model.fold0.onnx")["folds"] == [0]
    assert read_metadata(run / "model.fold0.fp16.onnx")["precision"] == "fp16"
    assert not (run / "model.onnx").exists()  # the all-folds default is not touched
    caplog.set_level("WARNING", logger="seg")
    # exported again with another rule (the bytes always differ, even within the second an export's date names)
    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--min-area", "7", "--force"])
    assert "model.fold0.fp16.onnx was made from another model.fold0.onnx" in caplog.text


def test_all_folds_keep_the_default_name(run):
    export.main(["--work-dir", str(run), "--folds", "1,0", "--no-verify"])  # every fold, in any order
    assert read_metadata(run / "model.onnx")["folds"] == [1, 0]
    assert [p.name for p in run.glob("*.onnx")] == ["model.onnx"]


def test_another_variant_is_replaced_only_with_force(run, tmp_path):
    out = tmp_path / "x.onnx"
    export.export_onnx(run, folds=[0], output=out, check=False)
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"x.onnx exists and holds another export \(segment, folds \[0\], tta none, "
                                        r"probs, fp32\); this one is segment, folds \[1\], .*--force to replace it"):
        export.export_onnx(run, folds=[1], output=out, check=False)
    assert out.read_bytes() == before
    export.export_onnx(run, folds=[1], output=out, check=False, force=True)
    assert read_metadata(out)["folds"] == [1]


def test_another_rule_is_another_variant_but_a_moved_cv_threshold_is_not(run, tmp_path):
    """A retrain moves the cross-validated threshold: the same file. --threshold adaptive is another variant."""
    out = tmp_path / "x.onnx"
    export.export_onnx(run, folds=[0], output=out, check=False)
    summary = json.loads((run / "cv_summary.json").read_text())
    (run / "cv_summary.json").write_text(json.dumps({**summary, "best_threshold": 0.37}))
    export.export_onnx(run, folds=[0], output=out, check=False)  # a re-export after a retrain
    assert read_metadata(out)["rule"]["threshold"] == 0.37
    with pytest.raises(UserError, match=r"rule threshold 0.37 \(cross-validated\).*; this one is .*rule adaptive 0.5"):
        export.export_onnx(run, folds=[0], output=out, threshold="adaptive", check=False)
    export.export_onnx(run, folds=[0], output=out, threshold="adaptive", check=False, force=True)
    assert read_metadata(out)["rule"]["mode"] == "adaptive"


def test_a_file_of_someone_else_is_not_overwritten(run, tmp_path, monkeypatch):
    out = tmp_path / "notes.onnx"
    out.write_text("not a model")
    monkeypatch.setattr(build, "to_onnx_bytes", lambda *a, **k: pytest.fail("traced before the guard"))
    with pytest.raises(UserError, match="holds another export \\(not an export of ours\\)"):
        export.main(["--work-dir", str(run), "--output", str(out), "--tta", "hflip"])
    assert out.read_text() == "not a model"


def _write_val_dir(folder, images, masks):
    for sub, names in (("images", images), ("masks", masks)):
        for name in names:
            (folder / sub / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / sub / name), np.zeros((64, 64, 3), np.uint8))
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("layout, message", [
    (None, r"--val-dir .*val/images and .*val/masks not found; it needs images/ and masks/"),
    ((["train/a.png", "val/b.png"], ["train/a.png", "val/b.png"]),  # the shared horse layout: never searched into
     r"--val-dir .*images has no images at its top level, only folders \(train, val\); .*never searched into"),
    ((["a.png", "b.jpg", "c.jpg"], ["a_mask.png"]),
     r"--val-dir .*: 2 of 3 images have no mask in .*masks \(e.g. b.jpg, c.jpg\); .*a.png or a_mask.png"),
])
def test_int8_checks_the_val_dir_before_exporting(run, tmp_path, monkeypatch, layout, message):
    val = tmp_path / "val"
    if layout:
        _write_val_dir(val, *layout)
    monkeypatch.setattr(build, "to_onnx_bytes", lambda *a, **k: pytest.fail("exported before the checks"))
    with pytest.raises(UserError, match=message) as err:
        export.main(["--work-dir", str(run), "--fold", "0", "--int8", "--val-dir", str(val)])
    assert "\n" not in str(err.value)
    assert not list(run.glob("*.onnx"))


def _tiny_export(path, **meta):
    """An ONNX file carrying our metadata (the graph does not matter to the guard)."""
    import onnx
    from onnx import TensorProto, helper

    from exporting.onnx_metadata import set_metadata

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(set_metadata(proto, meta), str(path))
    return path


def test_guard_reads_variants_from_metadata(tmp_path):
    out = tmp_path / "m.onnx"
    _tiny_export(out, folds=[1, 0])  # an older file: tta/output/precision keys absent
    variants.guard_overwrite(out, {"task": "segment", "folds": [0, 1], "tta": "none", "output": "probs",
                                   "precision": "fp32"})  # the same variant: no error
    _tiny_export(tmp_path / "m.fp16.onnx", folds=[1], precision="fp16")
    with pytest.raises(UserError, match=r"m.fp16.onnx exists and holds another export .*folds \[1\]"):
        variants.guard_outputs(out, {"folds": [0, 1]}, ["fp16"])  # the fp16 copy is guarded too
    variants.guard_outputs(out, {"folds": [0, 1]}, ["fp16"], force=True)
