"""The metadata contract (runtime/metadata.py): one table of keys, the builders, the checks, the generated docs."""

from __future__ import annotations

import json

import pytest

from runtime import metadata as contract
from runtime.metadata import (
    DEFAULT_METADATA, GATE, KEYS, METADATA_KEY, SEGMENT, build_gate_metadata, build_metadata, check_metadata,
    decode_metadata, metadata_problems, preprocess_metadata, read_metadata,
)
from utils import UserError

CKPT = {"config": {"name": "horse", "input_size": 192, "class_names": ["background", "horse"], "min_area": 10},
        "model_args": {"arch": "Unet", "encoder": "resnet18", "classes": 2}, "config_hash": "abc"}


def test_docs_are_generated_from_the_key_table():
    assert contract.DOCS_PATH.read_text() == contract.docs_markdown(), \
        "docs/metadata.md is stale: run  python -m runtime.metadata --write-docs"
    for key in KEYS:
        assert f"| `{key.name}` |" in contract.docs_markdown()


def test_segmenter_metadata_is_valid_and_carries_the_training_preprocessing():
    meta = build_metadata(CKPT, [0, 1], 0.35, None, versions={"torch": "x"})
    check_metadata(meta)
    assert {k: meta[k] for k in preprocess_metadata(192)} == preprocess_metadata(192)
    assert meta["num_classes"] == 2 and meta["class_names"] == ["background", "horse"] and meta["min_area"] == 10
    assert meta["threshold"] == 0.35 and meta["versions"] == {"torch": "x"} and meta["crop_mode"] == "off"
    assert set(meta) <= {k.name for k in KEYS if SEGMENT in k.tasks}


def test_gate_metadata_keeps_only_gate_keys_and_passes_the_gate_rules():
    ckpt = {**CKPT, "model_args": {"arch": "Gate", "encoder": "resnet18", "classes": 1, "pool": "avgmax"}}
    meta = build_gate_metadata(ckpt, [0], {"oof": {"threshold": 0.0, "recall_target": 0.99, "auc": 0.9}}, None)
    assert meta["task"] == GATE and meta["threshold"] == 0.0 and meta["threshold_source"] == "oof"
    assert meta["oof"] == {"threshold": 0.0, "auc": 0.9} and meta["pool"] == "avgmax"
    assert not metadata_problems(meta, GATE)  # a gate may keep every image (threshold 0) ...
    assert metadata_problems({"threshold": 0.0}, SEGMENT)  # ... a segmenter's threshold is in (0, 1)
    assert set(meta) <= {k.name for k in KEYS if GATE in k.tasks}


def test_defaults_are_valid_and_round_trip_through_json():
    check_metadata(DEFAULT_METADATA)
    meta, found = decode_metadata({METADATA_KEY: json.dumps({"num_classes": 3})})
    assert found and meta["num_classes"] == 3 and meta["stride"] == DEFAULT_METADATA["stride"]
    assert decode_metadata({}) == (DEFAULT_METADATA, False)


@pytest.mark.parametrize("key, value, words", [
    ("num_classes", 0, "'num_classes' = 0 must be an integer from 1 to 255"),
    ("mean", [0.5], "'mean' = [0.5] must be 3 numbers"),
    ("task", "gate", "'task' = 'gate' must be 'segment'"),
    ("crop_mode", "face", "'crop_mode' = 'face' must be one of off, person"),
])
def test_a_bad_key_is_named_with_what_it_must_be(key, value, words):
    with pytest.raises(UserError, match="re-export|Re-export") as info:
        check_metadata({**DEFAULT_METADATA, key: value})
    assert words in str(info.value) and str(info.value).count("must be") == 1


def test_read_metadata_from_a_file_and_a_file_without_it(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probs"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph)
    save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(UserError, match="has no 'segmentation' metadata"):
        read_metadata(tmp_path / "plain.onnx")
    helper.set_model_props(model, {METADATA_KEY: json.dumps({"num_classes": 4})})
    save(model, str(tmp_path / "ours.onnx"))
    assert read_metadata(tmp_path / "ours.onnx")["num_classes"] == 4


@pytest.mark.parametrize("augment, flips", [("full", "h"), ("flip", "h"), ("none", "none")])
def test_train_flips_records_the_augmentations_flips(augment, flips):
    meta = build_metadata({**CKPT, "config": {**CKPT["config"], "augment": augment}}, [0], None, None)
    check_metadata(meta)
    assert meta["train_flips"] == flips
    assert build_metadata(CKPT, [0], None, None)["train_flips"] == "h"  # a run from before AUGMENT: full
    assert "train_flips" not in build_metadata({**CKPT, "config": {}}, [0], None, None)  # trained elsewhere


@pytest.mark.parametrize("trained, tta, unseen", [
    ("h", "flips", "vertical"), ("h", "hflip", None), ("h", "none", None), ("h", None, None),
    ("none", "hflip", "horizontal"), ("none", "flips", "horizontal and vertical"), ("hv", "flips", None),
    (None, "flips", None),  # unknown: no warning
])
def test_tta_that_adds_an_untrained_flip_is_named(trained, tta, unseen):
    warning = contract.untrained_flips({} if trained is None else {"train_flips": trained}, tta)
    if unseen is None:
        assert warning is None
    else:
        assert f"--tta {tta} adds {unseen} flips that this model never saw in training" in warning
        assert f"use --tta {'hflip' if trained == 'h' else 'none'}" in warning
