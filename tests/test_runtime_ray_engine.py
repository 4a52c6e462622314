"""--engine ray: Ray Data on a local 2-CPU Ray writes what the single-machine engine writes."""

import csv
import json
import zipfile

import pytest

import inference
from runtime.ray_engine import RayOptions, check_fits
from utils import UserError

from conftest import write_blobs


def _rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "ms"} for row in csv.DictReader(fh)]  # ms: timing


def test_ray_engine_matches_the_local_engine(trained_run, tmp_path):
    data = write_blobs(tmp_path / "data", 40, seed=5)
    images = data / "images"
    (images / "broken.jpg").write_bytes(b"not an image")  # a per-file error stays a status row
    common = ["--model", str(trained_run / "model.onnx"), "--source", str(images), "--threads", "1",
              "--batch-size", "2", "--close", "3", "--gt", str(data / "masks")]
    inference.main([*common, "--output", str(tmp_path / "local")])
    inference.main([*common, "--output", str(tmp_path / "ray"), "--engine", "ray", "--ray-num-cpus", "2",
                    "--ray-actors", "2", "--ray-block-size", "4"])

    local_rows, ray_rows = _rows(tmp_path / "local" / "summary.csv"), _rows(tmp_path / "ray" / "summary.csv")
    assert len(ray_rows) == 41 and ray_rows == local_rows  # same order, same values
    assert [r["status"] for r in ray_rows].count("error") == 1 and all(r["dice"] for r in ray_rows[1:])
    metrics = [json.loads((tmp_path / engine / "metrics.json").read_text()) for engine in ("local", "ray")]
    assert metrics[0] == metrics[1]
    for folder in ("masks", "overlays"):
        local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / folder).iterdir())
        assert len(local) == 40
        assert sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / folder).iterdir()) == local
        for rel in local:
            assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel


def test_ray_engine_refuses_sources_it_does_not_run(trained_run, tmp_path):
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(UserError, match="use --engine local"):
        inference.main(["--model", str(trained_run / "model.onnx"), "--source", str(archive),
                        "--output", str(tmp_path / "out"), "--engine", "ray"])


@pytest.mark.parametrize("bad", [{"actors": 0}, {"cpus_per_actor": 0}, {"gpus_per_actor": -1}, {"block_size": 0}])
def test_bad_ray_options_are_user_errors(bad):
    with pytest.raises(UserError, match="--ray-"):
        RayOptions(**bad)


def test_a_pool_the_local_cluster_cannot_hold_is_refused(caplog):
    with pytest.raises(UserError, match="need 3 CPUs but the Ray cluster has 2"):
        check_fits({"CPU": 2.0}, RayOptions(actors=3), gpus=0, strict=True)
    with pytest.raises(UserError, match="--ray-gpus-per-actor"):
        check_fits({"CPU": 8.0}, RayOptions(actors=2), gpus=1, strict=True)
    check_fits({"CPU": 2.0, "GPU": 2.0}, RayOptions(actors=2), gpus=1, strict=True)  # fits exactly
    check_fits({"CPU": 1.0}, RayOptions(actors=2), gpus=0, strict=False)  # a remote cluster may grow
    assert "waiting for the cluster to grow" in caplog.text
