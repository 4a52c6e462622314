import copy
import json

import pytest
import torch

from model import (
    ComboLoss, build_loss, build_model, build_model_from_checkpoint, load_checkpoint, model_args, save_checkpoint,
)
from utils import UserError


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_model("Unet", "resnet18", None, classes=1).eval()


@pytest.mark.parametrize("arch", ["Unet", "UnetPlusPlus", "FPN"])
@pytest.mark.parametrize("classes", [1, 3])
def test_build_model_output_shape(arch, classes):
    model = build_model(arch, "resnet18", "none", classes).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, classes, 64, 96)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(UserError, match="UnetPlusPlus.*DeepLabV3Plus"):
        build_model("Foo", "resnet18", None)


def test_unknown_encoder_is_a_user_error():
    with pytest.raises(UserError, match="ENCODER='resnet_nonexistent'"):
        build_model("Unet", "resnet_nonexistent", None)


def test_missing_local_encoder_weights_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        build_model("Unet", "resnet18", str(tmp_path / "missing.pth"))


def test_local_encoder_weights_are_loaded(tmp_path, unet):
    path = tmp_path / "encoder.pth"
    torch.save(unet.encoder.state_dict(), path)
    fresh = build_model("Unet", "resnet18", str(path))
    for key, value in unet.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[key], value)


def _target():
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 16:48, 16:48] = 1
    return target


@pytest.mark.parametrize("dice_weight, bce_weight", [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.3, 0.7)])
def test_combo_loss_prefers_good_prediction(dice_weight, bce_weight):
    loss = ComboLoss(dice_weight, bce_weight)
    target = _target()
    good = (target * 2 - 1) * 6  # confident and right
    bad = -good  # confident and wrong
    unsure = torch.zeros_like(target)
    assert loss(good, target) < loss(unsure, target) < loss(bad, target)


def test_combo_loss_weights_mix_the_two_terms():
    target, logits = _target(), torch.randn(2, 1, 64, 64)
    dice_only, bce_only = ComboLoss(1, 0)(logits, target), ComboLoss(0, 1)(logits, target)
    assert torch.allclose(ComboLoss(0.5, 0.5)(logits, target), 0.5 * dice_only + 0.5 * bce_only)
    assert torch.allclose(bce_only, torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def test_multiclass_loss_prefers_good_prediction():
    loss = build_loss(3)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, :16] = 1
    target[:, 16:, 16:] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 8
    assert loss(good, target) < loss(-good, target)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix", "nested_module"])
def test_load_checkpoint_wrapper_forms(tmp_path, unet, wrap):
    state = unet.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    payload = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
               "module_prefix": prefixed, "nested_module": {"state_dict": prefixed}}[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    fresh = build_model("Unet", "resnet18", None)
    load_checkpoint(fresh, path)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_load_checkpoint_mismatch_lists_missing_and_unexpected(unet):
    state = dict(unet.state_dict())
    state.pop("segmentation_head.0.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        load_checkpoint(build_model("Unet", "resnet18", None), state)
    message = str(err.value)
    assert "missing keys (1): segmentation_head.0.weight" in message
    assert "unexpected keys (1): extra.weight" in message


def test_load_checkpoint_shape_mismatch_is_reported(unet):
    three_class = build_model("Unet", "resnet18", None, classes=3)
    with pytest.raises(UserError, match=r"shape mismatch: .*segmentation_head.0.weight \(1, 16, 3, 3\) vs \(3, 16, 3, 3\)"):
        load_checkpoint(three_class, unet.state_dict())


class _NotATensor:
    pass


def test_load_checkpoint_refuses_pickled_objects(tmp_path, unet):
    path = tmp_path / "evil.pt"
    torch.save({"model": unet.state_dict(), "payload": _NotATensor()}, path)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(build_model("Unet", "resnet18", None), path)


def test_checkpoint_rebuilds_model_without_config(tmp_path, unet):
    path = tmp_path / "models" / "fold0_best.pt"
    save_checkpoint(path, {"model": unet.state_dict(), "model_args": model_args("Unet", "resnet18", 1)})
    assert [p.name for p in path.parent.iterdir()] == ["fold0_best.pt"]  # no temp file left behind
    model, _ = build_model_from_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), unet(x))


# A representative encoder for every architecture; PAN's pyramid pooling needs >= 128 px.
ARCH_CASES = [
    ("Unet", "resnet18", 64), ("UnetPlusPlus", "resnet18", 64), ("MAnet", "resnet18", 64),
    ("Linknet", "resnet18", 64), ("FPN", "resnet18", 64), ("PSPNet", "resnet18", 64),
    ("DeepLabV3", "resnet18", 64), ("DeepLabV3Plus", "resnet18", 64), ("PAN", "resnet18", 128),
    ("UPerNet", "resnet18", 64), ("Segformer", "resnet18", 64), ("DPT", "tu-vit_tiny_patch16_224", 64),
    ("HRNetLite", "hrnet_w18_small", 64),
]


def test_every_architecture_has_a_case():
    from config import ARCHITECTURES

    assert [a for a, _, _ in ARCH_CASES] == list(ARCHITECTURES)


@pytest.mark.parametrize("arch, encoder, size", ARCH_CASES)
def test_every_architecture_trains_a_step(arch, encoder, size):
    """One step in the default layout, then the same step in channels-last (CHANNELS_LAST, the default): the same
    logits and gradients, so no architecture breaks on, or silently changes under, NHWC weights and batches."""
    torch.manual_seed(0)
    model = build_model(arch, encoder, None, classes=2).train()
    ref, twin = copy.deepcopy(model).eval(), copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, size, size + 32)
    logits = model(x)
    assert logits.shape == (2, 2, size, size + 32)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    # PSPNet uses only 3 encoder stages and DPT skips the ViT's own head: not every tensor gets a grad
    assert sum(g is not None for g in grads) > 0.6 * len(grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    nchw, nhwc = ref(x), twin(x.contiguous(memory_format=torch.channels_last))  # eval: no dropout draws
    assert torch.allclose(nhwc, nchw, atol=1e-4, rtol=1e-3)
    nchw.mean().backward()
    nhwc.mean().backward()
    pairs = [(mine.grad, theirs.grad) for mine, theirs in zip(ref.parameters(), twin.parameters())]
    assert all((mine is None) == (theirs is None) for mine, theirs in pairs)
    pairs = [(mine.flatten(), theirs.flatten()) for mine, theirs in pairs if mine is not None]
    # fp32 sums in another order: deep random-init layers differ by up to ~3 % per tensor (Unet++ layer4), the whole
    # gradient by ~0.2 %; a layout bug (a wrong permute or view) would point the gradients elsewhere
    whole = [torch.cat(side) for side in zip(*pairs)]
    assert (whole[1] - whole[0]).norm() <= 1e-2 * whole[0].norm()
    assert all(torch.nn.functional.cosine_similarity(mine, theirs, dim=0) > 0.99 for mine, theirs in pairs
               if mine.norm() > 1e-6 * whole[0].norm())  # not the biases a BatchNorm after them zeroes (~1e-9)


def test_hrnet_needs_an_hrnet_encoder():
    with pytest.raises(UserError, match="--encoder hrnet_w48"):
        build_model("HRNetLite", "resnet34", None)


@pytest.mark.slow
def test_hrnet_w48_builds():
    model = build_model("HRNetLite", "hrnet_w48", None, classes=1).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_class_weighted_multiclass_loss_uses_the_weights():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, :2] = 1
    logits = torch.zeros(1, 3, 8, 8)
    plain = build_loss(3, dice_weight=0, bce_weight=1)(logits, target)
    weighted = build_loss(3, dice_weight=0, bce_weight=1, class_weights=[1.0, 5.0, 1.0])(logits, target)
    assert torch.allclose(plain, weighted)  # uniform logits: weighted CE equals plain CE...
    logits[:, 1] = 2.0  # ...but once class 1 is predicted well, its larger weight dominates
    assert build_loss(3, 0, 1, [1.0, 5.0, 1.0])(logits, target) < build_loss(3, 0, 1)(logits, target)


# ----------------------------------------------------------------------------- damaged files and full disks


def test_truncated_checkpoint_is_named_as_damaged(tmp_path, unet):
    path = tmp_path / "fold0_best.pt"
    save_checkpoint(path, {"model": unet.state_dict()})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cannot read checkpoint .*fold0_best\.pt .*truncated, corrupt"):
        load_checkpoint(unet, path)


def test_out_of_space_keeps_the_previous_checkpoint(tmp_path, unet, monkeypatch):
    import errno

    path = tmp_path / "fold0_last.pt"
    save_checkpoint(path, {"model": unet.state_dict(), "epoch": 1})
    before = path.read_bytes()

    def full_disk(obj, target):
        target.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*fold0_last\.pt: No space left on device .*intact"):
        save_checkpoint(path, {"model": unet.state_dict(), "epoch": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["fold0_last.pt"]


def test_a_real_full_disk_keeps_the_previous_checkpoint_and_artifacts(tiny_disk):
    """A 1 MiB tmpfs, not a monkeypatch: torch.save's own error path on ENOSPC, and utils' atomic writes."""
    import utils

    path = tiny_disk / "fold0_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "epoch": 1})  # ~400 KB
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"cannot write .*fold0_last\.pt: No space left on device .*intact"):
        save_checkpoint(path, {"model": {"w": torch.ones(200_000)}, "epoch": 2})  # ~800 KB: no room beside the old
    assert path.read_bytes() == before and [p.name for p in tiny_disk.iterdir()] == ["fold0_last.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1

    utils.atomic_write_json(tiny_disk / "metrics.json", {"epoch": 1})
    with pytest.raises(UserError, match=r"cannot write .*metrics\.json: No space left"):
        utils.atomic_write_json(tiny_disk / "metrics.json", {"epoch": 2, "pad": "x" * 700_000})
    assert json.loads((tiny_disk / "metrics.json").read_text()) == {"epoch": 1}
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["fold0_last.pt", "metrics.json"]


@pytest.mark.parametrize("classes", [1, 3])
def test_void_pixels_are_left_out_of_the_loss(classes):
    """IGNORE_INDEX: whatever the model says on void pixels, the loss is the same; without void it would not be."""
    torch.manual_seed(0)
    target = torch.randint(0, classes + (classes == 1), (2, 32, 32))
    target[:, :8] = 255  # void rows
    logits = torch.randn(2, classes, 32, 32)
    other = logits.clone()
    other[:, :, :8] = torch.randn(2, classes, 8, 32) * 10  # changed on void pixels only
    target = target[:, None].float() if classes == 1 else target
    loss = build_loss(classes, ignore_index=255)
    assert torch.allclose(loss(logits, target), loss(other, target))
    valid_only = build_loss(classes)(logits[..., 8:, :], target[..., 8:, :])
    assert torch.allclose(loss(logits, target), valid_only, atol=1e-5)  # as if the void rows were not there
    assert loss(torch.zeros_like(logits), torch.full_like(target, 255)).item() == 0.0  # all void: no NaN
