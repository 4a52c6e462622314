"""CACHE=auto|ram|disk (training/ramcache.py): the decoded cache in one read-only buffer gives training exactly the
samples the PNGs give, shared with the DataLoader workers; auto falls back to disk when memory is short, and ram that
cannot fit stops before allocating."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

import train
from config import config_hash, load_config
from conftest import tiny_argv, write_blobs
from dataset import PatchDataset, SegDataset, build_cache, get_transform
from training.sources.folders import pair_by_stem
from training import ramcache
from training.loaders import make_loader
from training.tasks import make_task
from utils import UserError

GB = 2 ** 30


def test_auto_takes_ram_within_half_the_available_memory_and_ram_that_cannot_fit_stops():
    assert ramcache.choose("auto", GB, 4 * GB)[0] == "ram"
    assert ramcache.choose("auto", GB, 4 * GB, n_copies=3) == (
        "disk", "CACHE=auto: 3.00 GB (3 copies) is more than half of the 4.00 GB available")
    assert ramcache.choose("auto", GB, None)[0] == "disk"
    assert ramcache.choose("disk", 1, 4 * GB)[0] == "disk"
    assert ramcache.choose("ram", 3 * GB, 4 * GB)[0] == "ram"
    with pytest.raises(UserError, match=r"CACHE=ram: the decoded cache needs 5.00 GB but only 4.00 GB"):
        ramcache.choose("ram", 5 * GB, 4 * GB)


def test_copies_count_the_ranks_and_the_workers_that_do_not_fork():
    assert ramcache.copies(2, 1, "fork") == 1
    assert ramcache.copies(2, 2, "fork") == 2
    assert ramcache.copies(2, 1, "spawn") == 3
    assert ramcache.copies(2, 2, "forkserver") == 6
    assert ramcache.copies(0, 1, "spawn") == 1


def test_the_available_memory_is_read_from_the_os():
    assert ramcache.available_memory() > 2 ** 20


def test_cache_parses_and_does_not_change_the_config_hash(tmp_path):
    plain = load_config(tiny_argv(tmp_path, tmp_path / "work"), environ={})
    assert plain.cache == "auto"
    for mode in ("ram", "disk"):
        cfg = load_config(tiny_argv(tmp_path, tmp_path / "work", cache=mode), environ={})
        assert cfg.cache == mode and config_hash(cfg) == config_hash(plain)
    with pytest.raises(UserError, match="cache"):
        load_config(tiny_argv(tmp_path, tmp_path / "work", cache="gpu"), environ={})


@pytest.fixture
def entries(tmp_path):
    data = write_blobs(tmp_path / "data", 6, size=(70, 100))
    return build_cache(pair_by_stem(data / "images", data / "masks"), tmp_path / "work", 64)


def test_ram_entries_hold_the_decoded_pixels_as_read_only_views_of_one_buffer(entries):
    ram = ramcache.load(entries)
    disk = SegDataset(entries, get_transform(False, 64))
    for on_disk, in_ram in zip(entries, ram):
        image, mask = disk.read(on_disk)
        assert image.shape == (45, 64, 3) and mask.shape == (45, 64)
        assert np.array_equal(in_ram.pixels[0], image) and np.array_equal(in_ram.pixels[1], mask)
        assert in_ram == on_disk and not in_ram.pixels[0].flags.writeable and not in_ram.pixels[1].flags.writeable
        assert in_ram.pixels[0].base is ram[0].pixels[0].base
    assert any(e.pixels[1].any() for e in ram)
    with pytest.raises(ValueError, match="read-only"):
        ram[0].pixels[0][0, 0, 0] = 1  # an in-place transform would corrupt every later epoch


@pytest.mark.parametrize("patch", [False, True])
def test_a_dataset_draws_the_same_augmented_samples_from_ram_as_from_disk(entries, patch):
    def dataset(items):
        transform = get_transform(True, 64, seed=3, patch=True)
        if patch:
            return PatchDataset(items, transform, 1, (32, 32), patches_per_image=2, seed=3)
        return SegDataset(items, transform)

    disk, ram = dataset(entries), dataset(ramcache.load(entries))
    for _ in range(2):
        for i in range(len(disk)):
            (a, m), (b, n) = disk[i], ram[i]
            assert torch.equal(a, b) and torch.equal(m, n)


def test_the_loaders_workers_get_the_same_batches_from_ram_as_from_disk(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 10, size=(70, 100))

    def batches(mode: str) -> list:
        cfg = load_config(tiny_argv(data, tmp_path / "work", cache=mode, workers=2), environ={})
        with caplog.at_level(logging.INFO, logger="seg"):
            entries, _, device = train.prepare(cfg)
        assert (entries[0].pixels is not None) == (mode == "ram")
        loader = make_loader(make_task(cfg), entries, list(range(len(entries))), True, device)
        return [batch for _ in range(2) for batch in loader]

    ram, disk = batches("ram"), batches("disk")
    assert "cache: 10 images decoded into memory" in caplog.text and "(CACHE=disk)" in caplog.text
    assert len(ram) == len(disk) == 4
    for (a, m), (b, n) in zip(ram, disk):
        assert torch.equal(a, b) and torch.equal(m, n)


def test_auto_reads_from_disk_when_memory_is_short(entries, monkeypatch, caplog):
    monkeypatch.setattr(ramcache, "available_memory", lambda: 50_000)
    with caplog.at_level(logging.INFO, logger="seg"):
        out = ramcache.apply(entries, "auto", 0)
    assert out is entries and all(e.pixels is None for e in out)
    assert "more than half of the 0.00 GB available" in caplog.text
    with pytest.raises(UserError, match="CACHE=ram: the decoded cache needs"):
        ramcache.apply(entries, "ram", 0)


def test_a_cached_file_that_does_not_match_its_header_stops_with_its_name(entries):
    cv2.imwrite(str(entries[2].mask), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match=f"cache entry {entries[2].key}: .* do not match"):
        ramcache.load(entries)
