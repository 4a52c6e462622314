"""Data in: the labelled sources (training/sources/) -> a disk cache -> a torch Dataset.

Sources are read once, resized (long side = INPUT_SIZE, masks nearest-neighbour) and written
to WORK_DIR/images and WORK_DIR/masks with a manifest. A re-run reuses every entry whose source content and
settings are unchanged; writes are atomic, so a killed run resumes. Training reads from the cache one sample at
a time, so RAM stays flat however large the set; with CACHE=ram (training/ramcache.py) the decoded cache is held
in memory instead, shared with the DataLoader workers.

The cached images keep their aspect ratio (no padding on disk). With BATCH_SHAPE=square SegDataset pads each one
to an INPUT_SIZE square; with BATCH_SHAPE=rect, AspectBatchSampler batches images of one shape together and
pad_collate pads them to a multiple of 32 only, as the runtime pads; with TRAIN_PATCH, PatchDataset cuts random
HxW training crops instead (a third of them centred on a defect). Outside square, validation images are padded
to a multiple of 32 only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from config import AUGMENTS
from runtime.crop import crop_square
from runtime.metadata import STRIDE
from training.sources import Source
from utils import (
    IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, LOG, UserError, atomic_write_json, normalize, read_image,
    resize_long_side, write_png,
)

# 3: EXIF orientation applied when decoding; 4: crop box, status and smart-crop settings; 5: the sample contract
# (void = IGNORE_INDEX kept in the mask PNG, class_pixels without void, palette PNGs by index, keys unique)
CACHE_VERSION = 5
MANIFEST_NAME = "cache_manifest.json"
FOREGROUND_FRACTION = 1 / 3  # TRAIN_PATCH: share of crops centred on a foreground pixel (nnU-Net's 0.33)


@dataclass(frozen=True)
class CacheEntry:
    key: str
    image: Path
    mask: Path
    empty: bool
    source: str
    class_pixels: tuple[int, ...] = ()  # pixel count per class id in the cached mask
    crop_box: tuple[int, int, int, int] | None = None  # smart crop: the square cut from the source image
    # CACHE=ram (training/ramcache.py): the decoded RGB image and mask, read-only views of one shared buffer
    pixels: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)


def check_mask_labels(entries: list, class_names: list[str], num_classes: int, segment: bool = True) -> list[str]:
    """Stop when every mask is empty (nothing to learn); warn about each configured foreground class without a
    pixel in any cached mask and return their names. A gate (`segment` False) checks its own labels instead
    (classify.check_labels: it needs defective and clean images)."""
    if segment and entries and all(entry.empty for entry in entries):
        raise UserError(f"all {len(entries)} masks are empty: nothing to learn. Binary masks are 0/255 or 0/1, "
                        "multi-class masks hold class ids 1..CLASSES-1; check RAW_MASK_DIR (or the export) and CLASSES")
    if num_classes == 1:
        return []
    pixels = np.zeros(num_classes, np.int64)
    for entry in entries:
        counts = np.asarray(entry.class_pixels[:num_classes], np.int64)
        pixels[:len(counts)] += counts
    absent = [c for c in range(1, num_classes) if pixels[c] == 0]
    for c in absent:
        LOG.warning("class %r (id %d) has no pixels in any training mask: the model cannot learn it; "
                    "check the labels or CLASS_NAMES", class_names[c], c)
    return [class_names[c] for c in absent]


# ----------------------------------------------------------------------------- disk cache


def _settings(input_size: int, num_classes: int, cropper=None, ignore_index: int | None = IGNORE_INDEX) -> dict:
    settings = {"cache_version": CACHE_VERSION, "input_size": input_size, "num_classes": num_classes,
                "ignore_index": ignore_index}
    if cropper is not None:  # a new detector file or crop setting invalidates every crop
        settings.update(crop=cropper.settings.to_dict(), detector_hash=cropper.detector_hash)
    return settings


def _load_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("entries", {})
    except (json.JSONDecodeError, AttributeError):
        LOG.warning("cache manifest %s is unreadable; rebuilding the cache", path)
        return {}


def _load_pair(source: Source, num_classes: int, max_pixels: int | None, ignore_index: int | None = IGNORE_INDEX
               ) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(source.image_path, max_pixels)
    mask = source.load_mask(num_classes, max_pixels, image.shape[:2], ignore_index)
    if mask.shape[:2] != image.shape[:2]:
        raise UserError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                        f"{image.shape[1]}x{image.shape[0]} for {source.image_path}")
    return image, mask


def _pixel_counts(mask: np.ndarray, num_classes: int, ignore_index: int | None) -> dict:
    """class_pixels (the pixels of each class id, void left out) and void_pixels of a cached mask."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return {"class_pixels": counts[:max(num_classes, 2)].tolist(),
            "void_pixels": int(counts[ignore_index]) if ignore_index is not None else 0}


def _write_entry(source: Source, image_out: Path, mask_out: Path, input_size: int, num_classes: int,
                 max_pixels: int | None, ignore_index: int | None = IGNORE_INDEX) -> dict:
    """Resize one source into the cache. Returns the record fields it decided."""
    image, mask = _load_pair(source, num_classes, max_pixels, ignore_index)
    mask = resize_long_side(mask, input_size, nearest=True)
    write_png(image_out, resize_long_side(image, input_size))
    write_png(mask_out, mask, rgb=False)
    return {"status": "ok", "crop_box": None, **_pixel_counts(mask, num_classes, ignore_index)}


def _write_crop_entry(source: Source, image_out: Path, mask_out: Path, num_classes: int, cropper,
                      max_pixels: int | None, ignore_index: int | None = IGNORE_INDEX) -> dict:
    """Smart-crop one source into the cache: the detector's box cuts both the image and its mask.

    A source that cannot be read or cropped becomes an `error` record with the reason; the run goes on.
    """
    try:
        image, mask = _load_pair(source, num_classes, max_pixels, ignore_index)
        crop = cropper.crop(image)
    except Exception as exc:  # noqa: BLE001 - a bad file is a manifest row, not a crash
        LOG.warning("crop: %s skipped: %s", source.image_path, exc)
        # a bad file stays an error until it changes; anything else (e.g. out of GPU memory) is retried
        return {"status": "error", "error": str(exc), "retry": not isinstance(exc, UserError), "crop_box": None,
                "class_pixels": []}
    mask = crop_square(mask, crop.box, cropper.settings.input_size, 0, nearest=True)
    write_png(image_out, crop.image)
    write_png(mask_out, mask, rgb=False)
    return {"status": crop.status, "crop_box": list(crop.box), **_pixel_counts(mask, num_classes, ignore_index)}


def _is_valid(record: dict | None, digest: str, settings: dict, image_out: Path, mask_out: Path) -> bool:
    if not record or record.get("hash") != digest or record.get("settings") != settings:
        return False
    if record.get("status") == "error":
        return not record.get("retry", False)
    return image_out.is_file() and mask_out.is_file()


def build_cache(sources: Iterable[Source], work_dir: str | Path, input_size: int, num_classes: int = 1,
                progress: Callable[[Iterable], Iterable] | None = None, cropper=None,
                write: bool = True, max_pixels: int | None = None, ignore_index: int | None = IGNORE_INDEX
                ) -> list[CacheEntry]:
    """Bring WORK_DIR/images, WORK_DIR/masks and the manifest up to date with `sources`.

    With a `cropper` (training.smartcrop.SmartCropper, or anything with .settings, .detector_hash and
    .crop(image)), each source is cut to the square around its person first. A record is reused
    when the source content, the settings and (cropping) the detector file are unchanged; errors
    are recorded per file and left out of the returned entries.

    write=False (DDP ranks other than 0, after rank 0 built it): only read the manifest, without hashing the
    sources again; a missing entry is an error. Sources claiming more than `max_pixels` (MAX_IMAGE_PIXELS)
    are refused from their header. Masks are cached as class ids with void pixels = `ignore_index`
    (IGNORE_INDEX); class_pixels counts the classes only.
    """
    work_dir = Path(work_dir)
    manifest_path = work_dir / MANIFEST_NAME
    old = _load_manifest(manifest_path)
    settings = _settings(input_size, num_classes, cropper, ignore_index)
    entries, records, counts = [], {}, dict.fromkeys(("cached", "computed", "fallback", "error"), 0)
    sources = list(sources)
    bar = progress(sources) if progress else sources
    for i, source in enumerate(bar):
        image_out = work_dir / "images" / f"{source.key}.png"
        mask_out = work_dir / "masks" / f"{source.key}.png"
        record = old.get(source.key)
        # a reader trusts the hash rank 0 has just checked instead of reading every file again
        digest = source.content_hash() if write else (record or {}).get("hash")
        if _is_valid(record, digest, settings, image_out, mask_out):
            counts["cached"] += 1
        elif not write:
            raise UserError(f"cache entry {source.key} in {work_dir} is missing after rank 0 built it; "
                            "under torchrun on several nodes WORK_DIR must be on a filesystem every node shares")
        else:
            fields = (_write_crop_entry(source, image_out, mask_out, num_classes, cropper, max_pixels, ignore_index)
                      if cropper else
                      _write_entry(source, image_out, mask_out, input_size, num_classes, max_pixels, ignore_index))
            counts["computed"] += 1
            record = {"source": str(source.image_path), "mask_source": source.describe(),
                      "hash": digest, "settings": settings, **fields,
                      "empty": sum(fields["class_pixels"][1:]) == 0}
        records[source.key] = record
        counts[record.get("status", "ok")] = counts.get(record.get("status", "ok"), 0) + 1
        if hasattr(bar, "set_postfix") and cropper:
            bar.set_postfix({k: counts[k] for k in ("cached", "computed", "fallback")}, refresh=False)
        if record.get("status") != "error":
            box = tuple(record["crop_box"]) if record.get("crop_box") else None
            entries.append(CacheEntry(source.key, image_out, mask_out, record["empty"], record["source"],
                                      tuple(record["class_pixels"]), box))
        if write and (i + 1) % 200 == 0:  # checkpoint the manifest so a killed run keeps its work
            atomic_write_json(manifest_path, {"entries": {**old, **records}})
    if write:
        atomic_write_json(manifest_path, {"entries": records})
    LOG.info("cache: %d samples (%d reused, %d written) in %s", len(entries), counts["cached"], counts["computed"],
             work_dir)
    if cropper:
        LOG.info("crop: %d computed, %d cached, %d fallback, %d error", counts["computed"], counts["cached"],
                 counts["fallback"], counts["error"])
    return entries


# ----------------------------------------------------------------------------- torch side


def mean_fill(mean=IMAGENET_MEAN) -> tuple[int, ...]:
    """The mean colour as uint8 RGB: zero after normalisation, what the runtime pads with."""
    return tuple(round(m * 255) for m in mean)


def augmentations(augment: str = "full") -> list:
    """AUGMENT: full = horizontal flip, affine (scale 0.85-1.15, shift 5 %, rotation 15°), brightness/contrast
    and hue/saturation; flip = the horizontal flip only; none = nothing."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment {augment!r} is not one of {AUGMENTS}")
    if augment == "none":
        return []
    if augment == "flip":
        return [A.HorizontalFlip(p=0.5)]
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
        A.HueSaturationValue(8, 12, 8, p=0.3),
    ]


def get_transform(train: bool, input_size: int, mean=IMAGENET_MEAN, seed: int | None = None,
                  patch: bool = False, square: bool = True, augment: str = "full") -> A.Compose:
    """Pad bottom/right to a square (as the runtime pads), plus augmentation (AUGMENT) when training.

    patch=True (TRAIN_PATCH): training gets the augmentation only (PatchDataset crops first) and
    validation pads to the next multiple of STRIDE only, as the runtime does, not to a square.
    square=False (the gate) leaves the size as cached: its batches are padded to the stride by
    pad_collate, as the runtime pads, so global pooling sees no extra padding.
    """
    fill = mean_fill(mean)
    if patch:
        pad = [A.PadIfNeeded(None, None, pad_height_divisor=STRIDE, pad_width_divisor=STRIDE, position="top_left",
                             border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0)]
    elif square:
        pad = [A.PadIfNeeded(input_size, input_size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                             fill=fill, fill_mask=0)]
    else:
        pad = []
    if not train:
        return A.Compose(pad)
    return A.Compose(seed=seed, transforms=[*augmentations(augment), *([] if patch else pad)])


class SegDataset(Dataset):
    """Reads cached samples from disk. Returns image (3, S, S) float32 and mask:
    binary -> (1, S, S) float32 in {0, 1}; multi-class -> (S, S) int64 class ids."""

    def __init__(self, entries: list[CacheEntry], transform: A.Compose, num_classes: int = 1,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixels: int | None = None):
        self.entries = entries
        self.transform = transform
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.max_pixels = max_pixels  # MAX_IMAGE_PIXELS, as for the sources

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, entry: CacheEntry) -> tuple[np.ndarray, np.ndarray]:
        """The cached RGB image and mask: from memory (CACHE=ram) or decoded from the PNGs."""
        if entry.pixels is not None:
            return entry.pixels
        return read_image(entry.image, self.max_pixels), cv2.imread(str(entry.mask), cv2.IMREAD_GRAYSCALE)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(self.entries[index])
        out = self.transform(image=image, mask=mask)
        image_t = torch.from_numpy(normalize(out["image"], self.mean, self.std))
        if self.num_classes == 1:
            return image_t, torch.from_numpy(out["mask"][None].astype(np.float32))
        return image_t, torch.from_numpy(out["mask"].astype(np.int64))


def crop_origin(mask: np.ndarray, patch_hw: tuple[int, int], rng: np.random.Generator,
                foreground_classes: list[int] | None = None) -> tuple[int, int]:
    """(y0, x0) of an HxW crop of `mask`'s image: uniform, or around a foreground pixel.

    With `foreground_classes` (the ids present in this mask) one class is drawn uniformly, so a
    rare class is as likely as a common one, then one of its pixels, which lands in the central
    half of the crop (nnU-Net's foreground oversampling, with some jitter). The origin is clipped
    so the crop stays inside the image where it fits.
    """
    h, w = mask.shape
    ph, pw = patch_hw
    max_y, max_x = max(h - ph, 0), max(w - pw, 0)
    if foreground_classes:
        cls = int(rng.choice(foreground_classes))
        ys, xs = np.nonzero(mask == cls)
        if ys.size:
            k = int(rng.integers(ys.size))
            y0 = int(ys[k]) - int(rng.integers(ph // 4, ph - ph // 4))
            x0 = int(xs[k]) - int(rng.integers(pw // 4, pw - pw // 4))
            return int(np.clip(y0, 0, max_y)), int(np.clip(x0, 0, max_x))
    return int(rng.integers(max_y + 1)), int(rng.integers(max_x + 1))


def cut_patch(image: np.ndarray, mask: np.ndarray, origin: tuple[int, int], patch_hw: tuple[int, int],
              fill: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The HxW crop at `origin`; where the image is smaller than the patch, padded bottom/right
    with `fill` (mask 0), as the runtime pads."""
    (y0, x0), (ph, pw) = origin, patch_hw
    image, mask = image[y0:y0 + ph, x0:x0 + pw], mask[y0:y0 + ph, x0:x0 + pw]
    dy, dx = ph - image.shape[0], pw - image.shape[1]
    if dy or dx:
        image = cv2.copyMakeBorder(image, 0, dy, 0, dx, cv2.BORDER_CONSTANT, value=fill)
        mask = cv2.copyMakeBorder(mask, 0, dy, 0, dx, cv2.BORDER_CONSTANT, value=0)
    return image, mask


class PatchDataset(SegDataset):
    """TRAIN_PATCH: random HxW crops of the cached (unpadded) images, `patches_per_image` per image
    and epoch. A share `foreground_fraction` of the crops (1/3, as nnU-Net) is centred on a pixel
    of a class present in the image (see crop_origin), so rare, small classes are seen; the rest
    are uniform. The crop is then augmented by `transform`. Same outputs as SegDataset, (H, W) sized."""

    def __init__(self, entries: list[CacheEntry], transform: A.Compose, num_classes: int, patch_hw: tuple[int, int],
                 patches_per_image: int = 1, foreground_fraction: float = FOREGROUND_FRACTION, seed: int = 0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixels: int | None = None):
        super().__init__(entries, transform, num_classes, mean, std, max_pixels)
        self.patch_hw, self.patches_per_image = tuple(patch_hw), patches_per_image
        self.foreground_fraction = foreground_fraction
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """A new crop stream; DataLoader workers get their own (seed_worker)."""
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.entries) * self.patches_per_image

    def foreground_classes(self, entry: CacheEntry) -> list[int]:
        return [c for c, n in enumerate(entry.class_pixels) if c > 0 and n > 0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[index % len(self.entries)]
        image, mask = self.read(entry)
        forced = self.rng.random() < self.foreground_fraction
        origin = crop_origin(mask, self.patch_hw, self.rng, self.foreground_classes(entry) if forced else None)
        image, mask = cut_patch(image, mask, origin, self.patch_hw, mean_fill(self.mean))
        out = self.transform(image=image, mask=mask)
        image_t = torch.from_numpy(normalize(out["image"], self.mean, self.std))
        if self.num_classes == 1:
            return image_t, torch.from_numpy(out["mask"][None].astype(np.float32))
        return image_t, torch.from_numpy(out["mask"].astype(np.int64))


def pad_collate(batch: list, stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image (3, h, w), mask) samples of different sizes (TRAIN_PATCH validation, the gate): zero-pad
    bottom/right to the batch's largest size rounded up to `stride`, as the runtime pads. Zero is the mean
    colour after normalisation; masks get 0 (background)."""
    images, masks = zip(*batch)
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    h, w = h + (-h) % stride, w + (-w) % stride
    out_images = images[0].new_zeros((len(images), 3, h, w))
    out_masks = masks[0].new_zeros((len(masks), *masks[0].shape[:-2], h, w))  # (B, 1, h, w) or (B, h, w)
    for i, (image, mask) in enumerate(batch):
        out_images[i, :, :image.shape[1], :image.shape[2]] = image
        out_masks[i, ..., :mask.shape[-2], :mask.shape[-1]] = mask
    return out_images, out_masks


def png_hw(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG from its header (the cache's files), without decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise UserError(f"{path} is not a PNG; delete WORK_DIR's cache to rebuild it")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


class AspectBatchSampler(Sampler[list[int]]):
    """BATCH_SHAPE=rect: batches of images that share a shape, so a batch is padded to a multiple of STRIDE only
    (pad_collate), as the runtime pads, instead of to an INPUT_SIZE square.

    Each epoch: a random order, stably sorted by the padded shape's aspect ratio (so images of one shape are
    together, in random order), cut into batches, and the batches shuffled; a batch that straddles two shapes is
    padded to the larger. Under DDP every rank builds the same list from (seed, epoch) and takes every world-th
    batch, the same number on each rank. `set_epoch` as with DistributedSampler; without it each pass advances the
    epoch itself."""

    def __init__(self, shapes: list[tuple[int, int]], batch_size: int, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world: int = 1, stride: int = STRIDE):
        if not shapes:
            raise ValueError("no images to batch")
        self.keys = [self.shape_key(h, w, stride) for h, w in shapes]
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.rank, self.world, self.epoch = rank, world, 0

    @staticmethod
    def shape_key(h: int, w: int, stride: int = STRIDE) -> tuple[float, int, int]:
        ph, pw = h + (-h) % stride, w + (-w) % stride
        return ph / pw, ph, pw

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> int:
        n = len(self.keys)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self._all_batches() // self.world

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = sorted(rng.permutation(len(self.keys)).tolist(), key=self.keys.__getitem__)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = batches[:self._all_batches()]  # drop_last: the one short batch
        rng.shuffle(batches)
        yield from batches[:len(self) * self.world][self.rank::self.world]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a distinct, reproducible augmentation (and crop) stream per worker."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(torch.initial_seed() % 2**32)
