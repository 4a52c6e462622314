"""Predictions in the formats other tools read: Label Studio tasks and a Severstal-style RLE CSV. No torch.

    python inference.py --model model.onnx --source images/ --output preds/ --labelstudio preds/tasks.json
    python inference.py --model model.onnx --source images/ --output preds/ --rle-csv preds/submission.csv

`run_items` (runtime/pipeline.py) hands every image's prediction to `PredictionWriters.add` in input
order. The Label Studio file (runtime/labelstudio.LabelStudioWriter) is written once, by `close`,
which the CLI calls in a `finally`, so an interrupted run still leaves a file with what it did; the
RLE CSV (runtime/rle.RleCsvWriter) is flushed image by image. A model without background (class 0
is a real class, e.g. ADE20k's wall) is written with its class ids one up: Label Studio gets every
class as a label, and the CSV's ClassId k is class k-1 (Severstal's ClassId starts at 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.labelstudio import LabelStudioWriter
from runtime.rle import RleCsvWriter
from runtime.sources import Item
from utils import UserError

LABEL_STUDIO_PREFIX = "/data/local-files/?d="
NO_CLASS = "_none_"  # the stand-in background of a model without one (never a label)


@dataclass(frozen=True)
class WriterOptions:
    """--labelstudio*, --model-version and --rle-csv."""

    labelstudio: str | None = None  # OUT.json: one Label Studio task per image
    labelstudio_config: str | None = None  # the project's labelling config (XML file); None: from the class names
    labelstudio_polygons: bool = False  # also polygons (brush RLE is always written, pixel-exact)
    labelstudio_image_prefix: str = LABEL_STUDIO_PREFIX  # + the image's relative path = what Label Studio opens
    model_version: str | None = None  # None: the model file's stem and its metadata name
    rle_csv: str | None = None  # OUT.csv: ImageId, ClassId, EncodedPixels

    def __post_init__(self):
        for flag, value in (("--labelstudio", self.labelstudio), ("--rle-csv", self.rle_csv)):
            if value is not None and Path(value).is_dir():
                raise UserError(f"{flag} {value} is a folder; give a file name such as "
                                f"{'tasks.json' if flag == '--labelstudio' else 'submission.csv'}")
        if self.labelstudio_config is not None and not Path(self.labelstudio_config).is_file():
            raise UserError(f"--labelstudio-config {self.labelstudio_config}: no such file (the project's labelling "
                            "config: Settings > Labeling Interface > Code, saved as .xml)")
        unused = [f for f, v in (("--labelstudio-config", self.labelstudio_config),
                                 ("--labelstudio-polygons", self.labelstudio_polygons)) if v]
        if unused and self.labelstudio is None:
            raise UserError(f"{' and '.join(unused)} need --labelstudio OUT.json")

    @property
    def wanted(self) -> bool:
        return self.labelstudio is not None or self.rle_csv is not None


def model_version(model_path, meta: dict) -> str:
    """Label Studio's model_version: the model file's stem plus its metadata name, when that says more."""
    if model_path is None:
        return "otsu"
    stem, name = Path(model_path).stem, str(meta.get("name") or "")
    return stem if name in ("", "model", stem) else f"{stem}-{name}"


class PredictionWriters:
    """The extra outputs of one run, fed in input order; `close` writes what is still held."""

    def __init__(self, options: WriterOptions, meta: dict, model_path=None):
        self.num_classes = int(meta.get("num_classes", 1))
        self.shift = int(self.num_classes > 1 and not meta.get("background", True))  # no background: ids one up
        names = [str(n) for n in meta.get("class_names") or []]
        if len(names) != self.num_classes:
            names = ["foreground"] if self.num_classes == 1 else [str(c) for c in range(self.num_classes)]
        self.labelstudio = self.rle = None
        if options.labelstudio is not None:
            config = options.labelstudio_config and Path(options.labelstudio_config).read_text(encoding="utf-8")
            self.labelstudio = LabelStudioWriter(
                options.labelstudio, [NO_CLASS] * self.shift + names, config,
                options.model_version or model_version(model_path, meta), options.labelstudio_polygons,
                options.labelstudio_image_prefix)
        if options.rle_csv is not None:
            self.rle = RleCsvWriter(options.rle_csv)

    def add(self, item: Item, result) -> None:
        """One image's Result: a task (empty for an image the gate judged clean) and its RLE rows."""
        mask, probs = result.mask, result.probs
        if result.info.get("gated"):  # nothing was looked for: an empty prediction, whatever class 0 means
            mask, probs, shift = np.zeros_like(mask), None, 0
        else:
            shift = self.shift
        mask = mask + np.uint8(shift) if shift else mask
        if self.labelstudio is not None:
            self.labelstudio.add(item.name, mask, probs)
        if self.rle is not None:
            image_id = item.out.with_suffix(Path(item.name).suffix).as_posix()
            self.rle.write(image_id, mask, self.num_classes + self.shift)

    def close(self) -> list[Path]:
        """Write the Label Studio file and close the CSV; returns the files written."""
        written = []
        if self.labelstudio is not None:
            self.labelstudio.close()
            written.append(self.labelstudio.path)
        if self.rle is not None:
            self.rle.close()
            written.append(self.rle.path)
        return written
