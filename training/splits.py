"""Which images train and which validate: K folds (stratified, optionally grouped) or the split lists, and
the class weights of a training split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from config import Config, parse_class_weights
from dataset import CacheEntry
from utils import LOG, UserError

Split = tuple[list[int], list[int]]  # (train indices, val indices) into the cache entries
# SEARCH_FILES=true: the split lists, one image stem (or file name) a line
SPLIT_FILES = {"train": "training_dataset.txt", "val": "validation_dataset.txt", "test": "test_dataset.txt"}


def read_split_lists(split_dir: str | None, raw_img_dir: str | None) -> dict[str, list[str]]:
    """Names in the split lists (--search-files): image stems, file names or keys; a missing list is an empty split."""
    candidates = [Path(split_dir)] if split_dir else [Path(raw_img_dir), Path(raw_img_dir).parent] if raw_img_dir \
        else [Path(".")]
    folder = next((d for d in candidates if (d / SPLIT_FILES["train"]).is_file()), None)
    if folder is None:
        raise UserError(f"--search-files: no {SPLIT_FILES['train']} in {' or '.join(map(str, candidates))}; "
                        "set SPLIT_DIR to the folder holding the split lists")
    splits = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        splits[split] = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    LOG.info("split lists in %s: %s", folder, {k: len(v) for k, v in splits.items()})
    return splits


def key_index(entries: list[CacheEntry]) -> dict[str, int]:
    """Entry index by key, and by the key's stem where that is unique (keys are stems, or relative paths where
    stems collide: training/sources.unique_keys)."""
    index: dict[str, int] = {}
    stems: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        stems.setdefault(Path(entry.key).stem, []).append(i)
    index.update({stem: hits[0] for stem, hits in stems.items() if len(hits) == 1})
    index.update({entry.key: i for i, entry in enumerate(entries)})
    return index


def find_entry(index: dict[str, int], name: str) -> int | None:
    """The entry a list names: its key, its file name or its stem."""
    name = name.replace("\\", "/")
    return index.get(name, index.get(Path(name).stem))


def split_indices(entries: list[CacheEntry], names: list[str], list_name: str) -> list[int]:
    index = key_index(entries)
    found = [find_entry(index, n) for n in names]
    unknown = [n for n, i in zip(names, found) if i is None]
    if unknown:
        raise UserError(f"{list_name} names {len(unknown)} image(s) not in the dataset, e.g. {unknown[:3]}; "
                        "fix the list or the image folder")
    return found


def read_groups(path: str, entries: list[CacheEntry]) -> list[str]:
    """Group label per entry from a CSV of '<image stem>,<group>'; unlisted images are their own group."""
    groups = {}
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = [p.strip() for p in line.split(",")]
        if not line.strip() or (line_no == 1 and parts[0].lower() in ("stem", "image", "file")):
            continue
        if len(parts) < 2:
            raise UserError(f"GROUPS={path} line {line_no}: expected '<image stem>,<group>', got {line!r}")
        groups[parts[0]] = parts[1]
    index = key_index(entries)
    by_entry = {find_entry(index, name): group for name, group in groups.items()}
    missing = sum(i not in by_entry for i in range(len(entries)))
    if missing:
        LOG.info("GROUPS: %d image(s) not listed; each forms its own group", missing)
    return [by_entry.get(i, f"__{e.key}") for i, e in enumerate(entries)]


def make_folds(entries: list[CacheEntry], folds: int, seed: int, groups: list[str] | None = None) -> list[Split]:
    """K folds stratified on empty vs non-empty masks; grouped when groups are given.

    Falls back to plain KFold when one kind (empty or not) has fewer samples than folds.
    """
    if len(entries) < folds:
        raise UserError(f"{len(entries)} samples cannot be split into FOLDS={folds}; add data or lower FOLDS")
    labels = np.array([int(e.empty) for e in entries])
    index = np.arange(len(entries))
    stratify = np.bincount(labels, minlength=2).min() >= folds
    if groups is not None:
        if len(set(groups)) < folds:
            raise UserError(f"GROUPS has {len(set(groups))} groups, fewer than FOLDS={folds}")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels if stratify else np.zeros_like(labels), groups)
    elif stratify:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, labels)
    else:
        LOG.info("too few empty or non-empty masks to stratify; using plain KFold")
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(index)
    return [(tr.tolist(), va.tolist()) for tr, va in splits]


def resolve_splits(cfg: Config, entries: list[CacheEntry]) -> tuple[list[Split], list[int], list[int]]:
    """(splits, folds to train, test indices). Split lists replace CV when a validation list is given."""
    if not cfg.search_files:
        groups = read_groups(cfg.groups, entries) if cfg.groups else None
        return make_folds(entries, cfg.folds, cfg.seed, groups), cfg.selected_folds(), []
    lists = read_split_lists(cfg.split_dir, cfg.raw_img_dir)
    test = split_indices(entries, lists["test"], SPLIT_FILES["test"])
    train = split_indices(entries, lists["train"], SPLIT_FILES["train"])
    if lists["val"]:
        LOG.info("validation_dataset.txt given: one train/val split replaces %d-fold CV", cfg.folds)
        return [(train, split_indices(entries, lists["val"], SPLIT_FILES["val"]))], [0], test
    subset = [entries[i] for i in train]
    splits = [([train[i] for i in tr], [train[i] for i in va]) for tr, va in make_folds(subset, cfg.folds, cfg.seed)]
    return splits, cfg.selected_folds(), test


# CLASS_WEIGHTS=auto: no class weighs more than this many times the most frequent one (background).
MAX_CLASS_WEIGHT_RATIO = 10.0


def auto_class_weights(entries: list[CacheEntry], classes: int) -> list[float]:
    """Inverse square-root pixel frequency from the cached pixel counts, relative to the most frequent
    class and capped at MAX_CLASS_WEIGHT_RATIO, then scaled to mean 1.

    Weighted cross-entropy moves the argmax towards a class by its weight ratio, so on defect data
    (background ~98 %, a tiny class ~0.02 %) full inverse or median-frequency weights (ratios of
    hundreds) paint the rare classes all over clean images; the square root and the cap keep the
    boost for rare classes while leaving the background a say. Classes absent from the training
    split get the largest weight (it only matters if they appear).
    """
    pixels = np.sum([e.class_pixels[:classes] for e in entries], axis=0).astype(np.float64)
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones(classes)
    weights[present] = np.minimum(np.sqrt(freq[present].max() / freq[present]), MAX_CLASS_WEIGHT_RATIO)
    weights[~present] = weights[present].max() if present.any() else 1.0
    return (weights / weights.mean()).round(4).tolist()


def resolve_class_weights(cfg: Config, entries: list[CacheEntry], train_idx: list[int]) -> list[float] | None:
    weights = parse_class_weights(cfg.class_weights, cfg.classes) if cfg.classes > 1 else None
    if weights == "auto":
        train_entries = [entries[i] for i in train_idx]
        weights = auto_class_weights(train_entries, cfg.classes)
        pixels = np.sum([e.class_pixels[:cfg.classes] for e in train_entries], axis=0)
        # a class without pixels gets a placeholder weight that never acts: say it is absent instead
        shown = {name: (w if c >= len(pixels) or pixels[c] else "absent")
                 for c, (name, w) in enumerate(zip(cfg.names(), weights))}
        LOG.info("class weights (auto, from pixel counts of the training images): %s", shown)
    return weights
