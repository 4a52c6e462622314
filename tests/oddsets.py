"""A corpus of odd datasets, built by the tests (no binary data is committed): each either reads pixel-exactly or
is refused with one line, never silently misread (tests/test_datacheck.py runs every one through the data check
and the cache).

Each builder makes its files under a folder and returns an OddSet: the settings of the run, and either the class
ids every mask must read as (`truth`, by key) or the words its one-line refusal must hold (`refusal`). Images have
a long side of 64 px, the test's INPUT_SIZE, so the cache keeps them at their own size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from runtime.labelstudio import LabelStudioWriter, encode_brush

H, W = 48, 64


@dataclass
class OddSet:
    settings: dict
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    refusal: str | None = None


def photo(seed: int, h: int = H, w: int = W, disc: tuple[int, int, int] | None = None) -> np.ndarray:
    """Noise, with a bright disc (x, y, r) when given: its edge is where the photo's gradient is."""
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 60 + 60).astype(np.uint8)
    if disc:
        cv2.circle(image, disc[:2], disc[2], (230, 235, 240), -1)
    return image


def disc_mask(h: int, w: int, disc: tuple[int, int, int], value: int = 1) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, disc[:2], disc[2], value, -1)
    return mask


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, array[..., ::-1] if array.ndim == 3 else array)
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def folders(root: Path, masks: dict[str, np.ndarray], suffix: str = ".png") -> dict:
    """images/<key>.jpg (a photo with the mask's discs) and masks/<key><suffix>; the settings of that run."""
    for i, (key, mask) in enumerate(masks.items()):
        write(root / "images" / f"{key}.jpg", photo(i, *mask.shape[:2]))
        write(root / "masks" / f"{key}{suffix}", mask)
    return {"raw_img_dir": root / "images", "raw_mask_dir": root / "masks"}


# ----------------------------------------------------------------------------- masks


def voc_void_border(root: Path) -> OddSet:
    """Binary masks holding {0, 1, 255}: 1 the object, 255 its void border (VOC)."""
    masks = {}
    for i in range(3):
        mask = disc_mask(H, W, (20 + 8 * i, 24, 12))
        mask[cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0] = 255
        masks[f"v{i}"] = mask
    return OddSet(folders(root, masks), truth=masks)


def class_ids_in_a_binary_run(root: Path, one_class_each: bool) -> OddSet:
    """Class-id masks (0/1/2) with the default CLASSES=1: in one mask, or one class an image."""
    masks = {f"c{i}": disc_mask(H, W, (20 + 10 * i, 24, 8), 1 + i % 2) for i in range(3)}
    if not one_class_each:
        masks["c0"][:5, :5] = 2
    return OddSet(folders(root, masks), refusal=r"class ids \[0, 1, 2\].* but CLASSES=1 .*--classes 3")


def class_names_in_a_binary_run(root: Path) -> OddSet:
    settings = folders(root, {"a": disc_mask(H, W, (30, 24, 10), 2)})
    return OddSet({**settings, "class_names": "background,rider,horse"}, refusal=r"3 names .* CLASSES=1 .*--classes 3")


def masks_are_the_photos(root: Path) -> OddSet:
    settings = folders(root, {f"p{i}": disc_mask(H, W, (30, 24, 10)) for i in range(2)})
    for image in (root / "images").iterdir():
        (root / "masks" / image.with_suffix(".png").name).unlink()
        (root / "masks" / image.name).write_bytes(image.read_bytes())
    return OddSet(settings, refusal=r"looks like a photo")


def mask_dir_is_the_image_dir(root: Path) -> OddSet:
    settings = folders(root, {"a": disc_mask(H, W, (30, 24, 10))})
    return OddSet({**settings, "raw_mask_dir": root / "images"}, refusal=r"RAW_MASK_DIR is the image folder")


def void_beside_0_255(root: Path) -> OddSet:
    border = disc_mask(H, W, (30, 24, 10))
    border[0] = 255
    return OddSet(folders(root, {"a": border, "b": disc_mask(H, W, (20, 20, 8), 255)}),
                  refusal=r"1 masks hold 0/1/255 .* 1 hold only 0 and 255")


def palette_voc(root: Path) -> OddSet:
    """Palette PNGs (PASCAL VOC, CVAT): index = class, 255 = void; OpenCV alone would see colours."""
    masks = {}
    for i in range(3):
        mask = disc_mask(H, W, (20 + 10 * i, 24, 10), 1 + i % 2)
        mask[:2] = 255
        masks[f"voc{i}"] = mask
        write(root / "images" / f"voc{i}.jpg", photo(i))
        image = Image.fromarray(mask, "P")
        image.putpalette([v for c in range(256) for v in ((c * 64) % 256, (c * 128) % 256, 192 if c else 0)])
        (root / "masks").mkdir(parents=True, exist_ok=True)
        image.save(root / "masks" / f"voc{i}.png")
    settings = {"raw_img_dir": root / "images", "raw_mask_dir": root / "masks", "classes": 3,
                "class_names": "background,horse,rider"}
    return OddSet(settings, truth=masks)


def colour_coded(root: Path) -> OddSet:
    mask = np.zeros((H, W, 3), np.uint8)
    mask[5:20, 5:20], mask[25:40, 30:50] = (255, 0, 0), (0, 255, 0)
    return OddSet(folders(root, {"a": mask}), refusal=r"colour image of 3 colours")


def two_masks_for_one_image(root: Path) -> OddSet:
    settings = folders(root, {"a": disc_mask(H, W, (30, 24, 10))})
    write(root / "masks" / "a_mask.png", disc_mask(H, W, (10, 10, 5)))
    return OddSet(settings, refusal=r"has 2 masks")


def sixteen_bit_ids(root: Path) -> OddSet:
    mask = disc_mask(H, W, (30, 24, 10), 2).astype(np.uint16)
    settings = folders(root, {"a": mask, "b": disc_mask(H, W, (20, 20, 8), 1).astype(np.uint16)})
    return OddSet({**settings, "classes": 3}, truth={"a": mask.astype(np.uint8),
                                                     "b": disc_mask(H, W, (20, 20, 8), 1)})


def webp_images(root: Path) -> OddSet:
    masks = {f"w{i}": disc_mask(H, W, (20 + 10 * i, 24, 9)) for i in range(2)}
    for i, (key, mask) in enumerate(masks.items()):
        write(root / "images" / f"{key}.webp", photo(i))
        write(root / "masks" / f"{key}.png", mask * 255)
    return OddSet({"raw_img_dir": root / "images", "raw_mask_dir": root / "masks"}, truth=masks)


# ----------------------------------------------------------------------------- names and keys


def nested_stems(root: Path) -> OddSet:
    """s1/x.jpg and s2/x.jpg with s1/x.png and s2/x.png: paired by folder, two keys."""
    truth = {"s1/x.jpg": disc_mask(H, W, (20, 20, 8)), "s2/x.jpg": disc_mask(H, W, (44, 30, 12))}
    for i, (key, mask) in enumerate(truth.items()):
        write(root / "images" / key, photo(i))
        write(root / "masks" / key.replace(".jpg", ".png"), mask * 255)
    return OddSet({"raw_img_dir": root / "images", "raw_mask_dir": root / "masks"}, truth=truth)


def label_studio_task(ref: str, mask: np.ndarray, task_id: int) -> dict:
    region = {"id": f"r{task_id}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
              "original_width": mask.shape[1], "original_height": mask.shape[0],
              "value": {"format": "rle", "rle": encode_brush(mask), "brushlabels": ["horse"]}}
    return {"id": task_id, "data": {"image": ref}, "annotations": [{"id": task_id, "result": [region]}]}


def label_studio_stems(root: Path) -> OddSet:
    """dup.jpg + dup.png, s1/x.jpg + s2/x.jpg: four images, four keys, each mask on its own photo."""
    names = ["dup.jpg", "dup.png", "s1/x.jpg", "s2/x.jpg"]
    truth = {}
    tasks = []
    for i, name in enumerate(names):
        write(root / "images" / name, photo(i))
        truth[name] = disc_mask(H, W, (12 + 12 * i, 24, 8))
        tasks.append(label_studio_task(f"/data/local-files/?d=images/{name}", truth[name], i))
    (root / "export.json").write_text(json.dumps(tasks))
    return OddSet({"raw_img_dir": root / "images", "raw_json_path": root / "export.json"}, truth=truth)


def label_studio_url_names(root: Path) -> OddSet:
    """a+b.jpg, c&d.jpg, e#f.jpg beside a b.jpg, c.jpg, e.jpg: the writer's references, read back by the importer."""
    writer = LabelStudioWriter(root / "tasks.json", ["foreground"])
    truth = {}
    for i, name in enumerate(["a+b.jpg", "c&d.jpg", "e#f.jpg", "a b.jpg", "c.jpg", "e.jpg"]):
        write(root / "images" / name, photo(i))
        mask = disc_mask(H, W, (10 + 9 * i, 24, 6))
        writer.add(name, mask)
        truth[Path(name).stem] = mask
    writer.close()
    tasks = json.loads((root / "tasks.json").read_text())
    for task in tasks:  # reviewed in Label Studio: the predictions become annotations
        task["annotations"] = task.pop("predictions")
    (root / "export.json").write_text(json.dumps(tasks))
    return OddSet({"raw_img_dir": root / "images", "raw_json_path": root / "export.json"}, truth=truth)


def rle_stems(root: Path) -> OddSet:
    """dup.jpg and dup.png in one RLE CSV: two keys."""
    rows = ["ImageId,ClassId,EncodedPixels"]
    truth = {}
    for i, name in enumerate(["dup.jpg", "dup.png"]):
        write(root / "images" / name, photo(i))
        truth[name] = np.zeros((H, W), np.uint8)
        truth[name][:, 10 * i:10 * i + 5] = 1
        rows.append(f"{name},1,{1 + 10 * i * H} {5 * H}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return OddSet({"raw_img_dir": root / "images", "raw_rle_csv": root / "train.csv"}, truth=truth)


def rle_shared_name(root: Path) -> OddSet:
    for i, name in enumerate(["s1/x.jpg", "s2/x.jpg"]):
        write(root / "images" / name, photo(i))
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 5\n")
    return OddSet({"raw_img_dir": root / "images", "raw_rle_csv": root / "train.csv"},
                  refusal=r"names 'x.jpg', which 2 files under RAW_IMG_DIR share")


# ----------------------------------------------------------------------------- EXIF


def exif_photo(path: Path, stored: np.ndarray, orientation: int) -> None:
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, "JPEG", quality=95, exif=exif)


def exif_square(root: Path, on_stored: bool) -> OddSet:
    """Square photos with EXIF orientation 6: a mask drawn on the photo as shown reads; on the stored pixels, stops."""
    truth = {}
    for i in range(2):
        disc = (16 + 8 * i, 20, 10)
        stored = photo(i, W, W, disc)
        exif_photo(root / "images" / f"sq{i}.jpg", stored, 6)
        mask = disc_mask(W, W, disc)
        shown = np.ascontiguousarray(np.rot90(mask, -1))  # orientation 6: shown turned 90 degrees clockwise
        write(root / "masks" / f"sq{i}.png", (mask if on_stored else shown) * 255)
        truth[f"sq{i}"] = shown
    settings = {"raw_img_dir": root / "images", "raw_mask_dir": root / "masks"}
    if on_stored:
        return OddSet(settings, refusal=r"follows the photo's stored, unturned pixels.*rotated 90 degrees clockwise")
    return OddSet(settings, truth=truth)


def exif_wide_on_stored(root: Path) -> OddSet:
    disc = (20, 20, 10)
    exif_photo(root / "images" / "wide.jpg", photo(0, H, W, disc), 8)
    write(root / "masks" / "wide.png", disc_mask(H, W, disc) * 255)
    return OddSet({"raw_img_dir": root / "images", "raw_mask_dir": root / "masks"},
                  refusal=r"is 64x48, the photo's stored, unturned size.*rotated 90 degrees counter-clockwise")


# ----------------------------------------------------------------------------- COCO, YOLO


def coco_unknown_category(root: Path) -> OddSet:
    write(root / "images" / "a.jpg", photo(0))
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0,
                             "segmentation": [[5, 5, 30, 5, 30, 30]]}],
            "categories": [{"id": 1, "name": "horse"}, {"id": 2, "name": "cart"}]}
    (root / "coco.json").write_text(json.dumps(data))
    return OddSet({"raw_img_dir": root / "images", "raw_coco_json": root / "coco.json", "classes": 3,
                   "class_names": "background,horse,rider"}, refusal=r"\['cart'\] not among them")


def coco_turned_size(root: Path) -> OddSet:
    exif_photo(root / "images" / "a.jpg", photo(0), 6)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}], "annotations": [],
            "categories": [{"id": 1, "name": "horse"}]}
    (root / "coco.json").write_text(json.dumps(data))
    return OddSet({"raw_img_dir": root / "images", "raw_coco_json": root / "coco.json"},
                  refusal=r"the JSON says 64x48 but the image is 48x64 \(width and height swapped")


def yolo_box_labels(root: Path) -> OddSet:
    write(root / "images" / "train" / "a.jpg", photo(0))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [horse]\n")
    return OddSet({"raw_yolo_yaml": root / "data.yaml"}, refusal=r"is a box \(class x y w h\), a detection label")


ODD_SETS: dict[str, Callable[[Path], OddSet]] = {
    "voc_void_border": voc_void_border, "class_ids_in_one_mask": lambda root: class_ids_in_a_binary_run(root, False),
    "class_ids_one_an_image": lambda root: class_ids_in_a_binary_run(root, True),
    "class_names_in_a_binary_run": class_names_in_a_binary_run, "masks_are_the_photos": masks_are_the_photos,
    "mask_dir_is_the_image_dir": mask_dir_is_the_image_dir, "void_beside_0_255": void_beside_0_255,
    "palette_voc": palette_voc, "colour_coded": colour_coded, "two_masks_for_one_image": two_masks_for_one_image,
    "sixteen_bit_ids": sixteen_bit_ids, "webp_images": webp_images, "nested_stems": nested_stems,
    "label_studio_stems": label_studio_stems, "label_studio_url_names": label_studio_url_names,
    "rle_stems": rle_stems, "rle_shared_name": rle_shared_name,
    "exif_square_on_shown": lambda root: exif_square(root, False),
    "exif_square_on_stored": lambda root: exif_square(root, True), "exif_wide_on_stored": exif_wide_on_stored,
    "coco_unknown_category": coco_unknown_category, "coco_turned_size": coco_turned_size,
    "yolo_box_labels": yolo_box_labels,
}
