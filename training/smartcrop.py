"""Training-side smart crop: ultralytics YOLO11-seg finds the people, runtime/crop.py decides the ROI.

    CROP=person CROP_MODEL=weights/yolo11n-seg.pt python train.py ...

The detector is a local file (.pt, or an .onnx exported by export.py); nothing is downloaded:
the path is checked before ultralytics sees it (YOLO() would fetch an unknown name from the
internet) and ultralytics' auto-install is switched off. `export_detector` writes the ONNX file
the torch-free runtime decodes with runtime/crop.py.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from config import check_crop_model
from runtime.crop import DETECTOR_SIZE, PERSON_CLASS, Crop, CropSettings, crop_from_masks
from utils import LOG, atomic_write_bytes, file_sha1


def import_yolo():
    """ultralytics' YOLO class, imported offline: never pip-install or phone home from a training run
    (ultralytics reads these variables at import)."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    return YOLO


class SmartCropper:
    """RGB image -> Crop (square around the largest person, or the letterboxed whole image)."""

    def __init__(self, model_path: str | os.PathLike, settings: CropSettings, device: str = "cpu"):
        check_crop_model(str(model_path))  # before YOLO(): a missing name would be downloaded
        YOLO = import_yolo()

        self.model_path = Path(model_path)
        self.settings = settings
        self.device = device
        self.model = YOLO(str(self.model_path), task="segment")
        self.detector_hash = file_sha1(self.model_path)
        self.calls = 0  # detections run: the cache tests count them

    def person_masks(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) -> (person masks (N, H, W) bool at the image's size, scores (N,))."""
        self.calls += 1
        # BGR in, as ultralytics expects; rect=False: the square 640 letterbox the exported ONNX runs at
        result = self.model.predict(np.ascontiguousarray(image[..., ::-1]), conf=self.settings.conf, rect=False,
                                    classes=[PERSON_CLASS], retina_masks=True, imgsz=DETECTOR_SIZE,
                                    device=self.device, verbose=False)[0]
        if result.masks is None or len(result.boxes) == 0:
            return np.zeros((0,) + image.shape[:2], bool), np.zeros(0, np.float32)
        return result.masks.data.cpu().numpy().astype(bool), result.boxes.conf.cpu().numpy()

    def crop(self, image: np.ndarray) -> Crop:
        masks, scores = self.person_masks(image)
        return crop_from_masks(image, masks, scores, self.settings)


def export_detector(model_path: str | os.PathLike, output: str | os.PathLike, imgsz: int = DETECTOR_SIZE,
                    opset: int = 17) -> Path:
    """YOLO11-seg .pt -> ONNX (output0 (1, 4+nc+32, N), output1 (1, 32, imgsz/4, imgsz/4)).

    torch.onnx directly, not ultralytics' exporter, which may install packages at run time. The
    metadata ultralytics writes (task, stride, names, imgsz) is added so YOLO() loads the file too.
    An .onnx detector is copied as is.
    """
    import onnx
    import torch

    check_crop_model(str(model_path))
    output = Path(output)
    if Path(model_path).suffix.lower() == ".onnx":
        atomic_write_bytes(output, Path(model_path).read_bytes())
        return output
    YOLO = import_yolo()
    net = YOLO(str(model_path), task="segment").model.float().eval()

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            (boxes, protos), _ = self.net(x)
            return boxes, protos

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected here
        torch.onnx.export(Graph().eval(), (torch.zeros(1, 3, imgsz, imgsz),), buffer, dynamo=False,
                          opset_version=opset, input_names=["images"], output_names=["output0", "output1"])
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {"task": "segment", "stride": int(max(net.stride)), "batch": 1, "imgsz": [imgsz, imgsz],
            "names": {int(k): v for k, v in net.names.items()}, "description": "YOLO11-seg person detector"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    atomic_write_bytes(output, proto.SerializeToString())
    LOG.info("exported detector %s -> %s", model_path, output)
    return output


def random_detector(output: str | os.PathLike, seed: int = 0) -> Path:
    """A YOLO11n-seg .pt built from its yaml (random weights, no download) for tests and benchmarks.

    As built, activations vanish through the random layers and every score is the same ~1e-4. So
    the BatchNorm statistics are calibrated on random images (unit-variance activations, as the
    export matrix does) and the 'person' bias is zeroed: many person candidates with spread scores.
    """
    import torch

    YOLO = import_yolo()
    torch.manual_seed(seed)
    model = YOLO("yolo11n-seg.yaml")
    net = model.model
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 3, 320, 320))
        for branch in net.model[-1].cv3:
            branch[-1].weight[PERSON_CLASS] *= 0.1  # scores spread over (0, 1), not saturated at 1
            branch[-1].bias[PERSON_CLASS] = 0.0
    net.eval()
    model.save(output)
    return Path(output)
