"""Smoke tests of the bench/ scripts: tiny sizes, one repeat, so that none of them silently rots.

They run each script's main() in-process (torch is imported once) and check the JSON it writes;
timings are never asserted, only that every row was measured and the derived numbers add up.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED_DATA

BENCH = ROOT / "bench"
HORSE = SHARED_DATA / "weizmann_horse"
ISBI = SHARED_DATA / "isbi_membrane"
needs_horse = pytest.mark.skipif(not (HORSE / "images" / "val").is_dir(), reason="needs ../shared/data/weizmann_horse")
needs_isbi = pytest.mark.skipif(not (ISBI / "images").is_dir(), reason="needs ../shared/data/isbi_membrane")


@pytest.fixture
def run_script(monkeypatch, tmp_path):
    """Run bench/<name>.py with argv + --out; return its JSON."""
    threads = torch.get_num_threads()
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(ROOT)

    def run(name: str, *argv: str) -> dict:
        out = tmp_path / f"{name}.json"
        monkeypatch.setattr(sys, "argv", [str(BENCH / f"{name}.py"), *argv, "--out", str(out)])
        runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
        return json.loads(out.read_text())

    yield run
    torch.set_num_threads(threads)


@pytest.fixture
def run_script_apart(tmp_path):
    """Run bench/<name>.py in a process of its own (OpenVINO's runtime, once loaded into the test process, leaves it
    unable to fork later tests' workers: the suite was killed for memory two tests on); return its JSON."""

    def run(name: str, *argv: str) -> dict:
        out = tmp_path / f"{name}.json"
        done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *argv, "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return json.loads(out.read_text())

    return run


def positive(series: dict) -> bool:
    return series["runs"] >= 1 and 0 < series["min_ms"] <= series["median_ms"] <= series["max_ms"]


def test_common_helpers():
    sys.path.insert(0, str(BENCH))
    import common

    calls = []
    times = common.side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round, then alternating rounds
    assert [len(t) for t in times.values()] == [3, 3]
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    info = common.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and len(info["load_average"]) == 3
    assert set(info["cpu_flags"]) <= set(common.SIMD_FLAGS) and info["matmul_gflops"] > 0
    assert common.verdict(2.0, 1.6).startswith("met") and common.verdict(1.2, 1.15, False).startswith("MISSED")


def test_load_report_warns_when_the_run_was_not_alone(capsys, tmp_path):
    sys.path.insert(0, str(BENCH))
    import common

    def info(load, clock, machine, own):
        return {"load_average": [load, 0.3, 0.4],
                "cpu_seconds": {"clock_s": clock, "machine_busy_s": machine, "own_s": own}}

    start = info(0.2, 100.0, 1000.0, 5.0)
    alone = info(1.9, 110.0, 1020.5, 25.0)  # 20 of the 20.5 busy seconds were the run's own: its 2 threads
    assert common.others_cores(start, alone) == 0.05
    assert common.load_report(start, alone) == {"start": 0.2, "end": 1.9, "others_cores": 0.05, "limit": 1.5,
                                                 "others_limit": 0.25, "busy": False, "matmul_gflops": [None, None],
                                                 "host_drift": None, "host_unsteady": False}
    out = capsys.readouterr().out
    assert "0.2 at start, 1.9 at end (own threads included); other processes: 0.05 cores" in out
    assert "WARNING" not in out
    shared = info(1.9, 110.0, 1020.0, 15.0)  # 20 busy s, 10 of them the run's: others used a whole core
    assert common.others_cores(start, shared) == 1.0 and common.load_report(start, shared)["busy"]
    assert common.load_report(info(1.6, 100.0, 1000.0, 5.0), alone)["busy"]  # busy before it started
    no_proc = {"load_average": [0.2, 0.3, 0.4]}  # no /proc/stat: the end load decides
    assert common.others_cores(no_proc, no_proc) is None
    assert not common.load_report(no_proc, no_proc)["busy"]
    assert common.load_report(no_proc, {"load_average": [1.6, 0.3, 0.4]})["busy"]
    assert capsys.readouterr().out.count("rerun this table on an idle machine") == 3
    begun = common.machine_info()
    begun["cpu_seconds"]["clock_s"] -= 1.0  # a run of a second, not of the microseconds this test takes
    path = common.write_result("x", {"value": 1}, tmp_path / "x.json", begun)  # every script's JSON has it
    result = json.loads(path.read_text())
    assert set(result["load"]) == {"start", "end", "others_cores", "limit", "others_limit", "busy", "matmul_gflops",
                                   "host_drift", "host_unsteady"}
    assert result["load"]["others_cores"] is not None and result["load"]["others_cores"] >= 0
    assert all(rate > 0 for rate in result["load"]["matmul_gflops"]) and result["load"]["host_drift"] is not None


def test_load_report_warns_when_the_host_speed_drifted(capsys):
    """A VM's host can slow down mid-run without any sign in the load average: the matmul probe at both ends
    catches it."""
    sys.path.insert(0, str(BENCH))
    import common

    start = {"load_average": [0.2, 0.3, 0.4], "matmul_gflops": 180.0}
    steady = common.load_report(start, {"load_average": [0.9, 0.3, 0.4], "matmul_gflops": 171.0})
    assert steady["host_drift"] == -0.05 and not steady["host_unsteady"] and not steady["busy"]
    assert "180.0 GFLOP/s at start, 171.0 at end (-5%)" in capsys.readouterr().out
    slowed = common.load_report(start, {"load_average": [0.9, 0.3, 0.4], "matmul_gflops": 131.0})
    assert slowed["host_drift"] == -0.272 and slowed["host_unsteady"]
    assert "the host's speed changed by -27%" in capsys.readouterr().out


def test_latency(run_script):
    result = run_script("latency", "--size", "64", "--models", "Unet/resnet18", "--batches", "1", "2",
                        "--repeats", "1", "--threads", "1", "--calib-images", "2")
    assert [(r["model"], r["batch"]) for r in result["rows"]] == [("Unet/resnet18", 1), ("Unet/resnet18", 2)]
    for row in result["rows"]:
        assert positive(row["torch"]) and positive(row["onnxruntime"]) and positive(row["int8"])
        assert row["max_abs_diff"] < 1e-3  # same weights on both sides
        assert row["speedup"] == pytest.approx(row["torch"]["median_ms"] / row["onnxruntime"]["median_ms"])
        assert row["int8_vs_fp32"] == pytest.approx(row["onnxruntime"]["median_ms"] / row["int8"]["median_ms"])
        assert row["int8_vs_torch"] == pytest.approx(row["torch"]["median_ms"] / row["int8"]["median_ms"])
    assert result["int8_calibration"].startswith("2 ")
    rows = result["rows"]
    assert rows[1]["gflop"] == pytest.approx(2 * rows[0]["gflop"], rel=1e-6)  # FLOPs scale with the batch
    assert result["sgemm_gflops"] > 0 and result["target"] == "not measured"


def test_latency_without_int8(run_script, tmp_path):
    result = run_script("latency", "--size", "64", "--models", "Unet/resnet18", "--batches", "1", "--repeats", "1",
                        "--threads", "1", "--no-int8")
    assert "int8" not in result["rows"][0] and "int8_vs_fp32" not in result["rows"][0]


def test_latency_calibrates_on_random_images_without_the_folder(tmp_path):
    sys.path.insert(0, str(BENCH))
    import latency

    images, what = latency.calibration_images(tmp_path / "missing", 2, tmp_path)
    assert len(images) == 2 and all(p.suffix == ".png" for p in images) and "random" in what


def ratios_add_up(result: dict, precision: str) -> None:
    runs, suffix = result["runs"], {"fp32": "", "int8": "_int8"}[precision]
    engine = runs["engine" + suffix]["median_ms"]
    assert result["overhead" + suffix] == pytest.approx(engine / runs["model" + suffix]["median_ms"])
    assert result["speedup_vs_eager" + suffix] == pytest.approx(runs["eager"]["median_ms"] / engine)
    verdicts = result["targets"][precision]
    assert verdicts["overhead"].endswith("<= 1.1)")
    assert verdicts["speedup_vs_eager"].endswith(f">= {2.0 if precision == 'fp32' else 3.0})")


@needs_horse
def test_end_to_end(run_script):
    result = run_script("end_to_end", "--limit", "3", "--size", "64", "--repeats", "1", "--threads", "1",
                        "--calib-images", "2")
    assert result["images"] == 3 and result["data"] == "horse" and result["model"] == "Unet/resnet18"
    assert set(result["runs"]) == {"engine", "engine_int8", "eager", "model", "model_int8", "stubbed"}
    assert all(positive(series) for series in result["runs"].values())
    ratios_add_up(result, "fp32")
    ratios_add_up(result, "int8")
    assert result["int8_vs_fp32_model"] > 0 and set(result["load"]) >= {"start", "end"}


@needs_horse
def test_end_to_end_fp32_only(run_script):
    result = run_script("end_to_end", "--limit", "2", "--size", "64", "--repeats", "1", "--threads", "1",
                        "--precisions", "fp32")
    assert set(result["runs"]) == {"engine", "eager", "model", "stubbed"} and set(result["targets"]) == {"fp32"}
    ratios_add_up(result, "fp32")


@needs_isbi
def test_end_to_end_isbi(run_script):
    """The ISBI preset picks the greyscale slices; int8 only; a small model to stay fast."""
    result = run_script("end_to_end", "--data", "isbi", "--arch", "Unet", "--encoder", "resnet18", "--size", "64",
                        "--limit", "2", "--repeats", "1", "--threads", "1", "--precisions", "int8",
                        "--calib-images", "2")
    assert result["data"] == "isbi" and result["images"] == 2 and result["model"] == "Unet/resnet18"
    assert set(result["runs"]) == {"engine_int8", "eager", "model_int8", "stubbed"}
    ratios_add_up(result, "int8")


@needs_isbi
def test_end_to_end_isbi_preset_model(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import end_to_end

    monkeypatch.setattr(sys, "argv", ["end_to_end.py", "--data", "isbi"])
    args = end_to_end.parse_args()
    assert (args.arch, args.encoder, args.size, args.images.name) == ("UnetPlusPlus", "resnet34", 512, "images")
    assert args.precisions == ["fp32", "int8"]
    monkeypatch.setattr(sys, "argv", ["end_to_end.py", "--images", "x", "--size", "256"])
    args = end_to_end.parse_args()
    assert (args.arch, args.size, str(args.images)) == ("Unet", 256, "x")


# ----------------------------------------------------------------------------- backends (OpenVINO)

ZEN4 = "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nphysical id\t: 0\ncore id\t\t: {i}\n" \
       "cpu MHz\t\t: 2596.0\nflags\t\t: avx2 avx512f avx512_vnni\n"


def test_int8_limit_is_cores_times_clock_times_ops_per_cycle():
    sys.path.insert(0, str(BENCH))
    import common

    zen4 = "\n".join(ZEN4.format(i=i) for i in range(2))
    limit = common.int8_limit(zen4, ghz=2.5)
    assert (limit["cores"], limit["isa"], limit["int8_ops_per_cycle"], limit["int8_gops"]) == (2, "avx512_vnni", 128,
                                                                                             640.0)
    intel = zen4.replace("AuthenticAMD", "GenuineIntel").replace("core id\t\t: 1", "core id\t\t: 0")  # SMT pair
    assert common.int8_limit(intel, ghz=2.5)["int8_gops"] == 1 * 2.5 * 256
    amx = zen4.replace("avx512_vnni", "avx512_vnni amx_int8")
    assert common.int8_limit(amx, ghz=2.0)["int8_ops_per_cycle"] == 2048
    assert common.int8_limit(zen4, ops_per_cycle=100, ghz=1.0)["int8_gops"] == 200.0


needs_openvino = pytest.mark.skipif(not __import__("importlib").util.find_spec("openvino"),
                                    reason="OpenVINO is not installed (pip install -r requirements-openvino.txt)")


@needs_openvino
def test_backends(run_script_apart):
    result = run_script_apart("backends", "--size", "64", "--model", "Unet/resnet18", "--repeats", "1", "--threads", "1",
                        "--batch", "2", "--calib-images", "2")
    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == {"torch", "onnxruntime", "int8", "openvino", "openvino_int8", "openvino_int8_static",
                         "openvino_bf16", "int8_x2", "openvino_int8_x2_latency", "openvino_int8_x2_streams"}
    assert all(positive(row) for row in rows.values())
    assert rows["openvino"]["max_abs_diff"] < 1e-3  # float32 on both: the same answer
    assert rows["openvino_int8_x2_streams"]["ms_per_image"] == pytest.approx(rows["openvino_int8_x2_streams"][
        "median_ms"] / 2)
    assert result["ratios"]["openvino_int8_vs_onnxruntime_int8"] == pytest.approx(
        rows["int8"]["median_ms"] / rows["openvino_int8"]["median_ms"])
    assert result["int8_limit"]["int8_gops"] > 0 and rows["int8"]["limit"] == "int8"
    assert result["auto"]["fp32"][0] == "onnxruntime" and set(result["compile_s"]) >= {"openvino_int8_static"}


@needs_openvino
@needs_horse
def test_end_to_end_with_backends(run_script_apart):
    result = run_script_apart("end_to_end", "--limit", "2", "--size", "64", "--repeats", "1", "--threads", "1",
                        "--precisions", "int8", "--calib-images", "2", "--backends", "openvino", "--batch-size", "2")
    assert set(result["runs"]) == {"engine_int8", "model_int8", "engine_openvino_int8", "model_openvino_int8", "eager",
                                   "stubbed"}
    assert result["backends_ran"]["_openvino_int8"][0] == "openvino"
    runs = result["runs"]
    assert result["vs_onnxruntime_openvino_int8"] == pytest.approx(runs["engine_int8"]["median_ms"]
                                                                   / runs["engine_openvino_int8"]["median_ms"])
    assert set(result["targets"]["openvino_int8"]) == {"vs_onnxruntime_int8", "speedup_vs_eager"}


@needs_openvino
def test_backend_parity(run_script_apart, trained_run):
    result = run_script_apart("backend_parity", str(trained_run / "model.onnx"), "--images", str(trained_run / "images"),
                        "--masks", str(trained_run / "masks"), "--threshold", "0.5", "--batch-size", "3")
    assert result["images"] == 12 and list(result["results"]) == ["fp32"]  # no int8 file beside the model
    fp32 = result["results"]["fp32"]
    assert fp32["ran"] == {"onnxruntime": ["onnxruntime", "as asked (--backend onnxruntime)"],
                           "openvino": ["openvino", "as asked (--backend openvino)"]}
    assert fp32["min_iou"] >= 0.99 and abs(fp32["dice_delta"]) < 1e-3 and result["target"].startswith("not measured")


def test_quantization(run_script, tmp_path):
    """Dice at the model's own size, plus --size's latency side by side; the load recorded."""
    from conftest import write_blobs

    sys.path.insert(0, str(BENCH))
    import common

    data = write_blobs(tmp_path / "blobs", 3, size=(40, 56))
    model = common.random_model("Unet", "resnet18", calibrate_size=64)
    fp32 = common.export_model(model, "Unet", "resnet18", 64, tmp_path / "m.onnx")
    int8 = common.quantize_copy(fp32, tmp_path / "m.int8.onnx", sorted((data / "images").iterdir()))
    result = run_script("quantization", "--fp32", str(fp32), "--int8", str(int8), "--val-dir", str(data),
                        "--rounds", "1", "--threads", "1", "--size", "96")
    assert result["images"] == 3 and result["input_shape"] == [1, 3, 64, 64]
    assert result["at_size"]["input_shape"] == [1, 3, 96, 96] and result["at_size"]["speedup"] > 0
    assert all(0 <= d <= 1 for d in result["dice"].values())
    assert result["machine"]["start"]["load_average"] and result["machine"]["end"]["load_average"]


def test_rule_dice_scores_every_rule_on_one_set_of_probabilities(run_script, tmp_path):
    from conftest import write_blobs

    sys.path.insert(0, str(BENCH))
    import common
    import rule_dice

    data = write_blobs(tmp_path / "blobs", 3, size=(40, 56))
    fp32 = common.export_model(common.random_model("Unet", "resnet18", calibrate_size=64), "Unet", "resnet18", 64,
                               tmp_path / "m.onnx")
    result = run_script("rule_dice", "--model", str(fp32), "--images", str(data / "images"), "--masks",
                        str(data / "masks"))
    rules = result["rules"]
    assert list(rules) == ["cv (the default)", "fixed 0.5", "adaptive, total area", rule_dice.OLD_DEFAULT]
    assert result["images"] == 3 and all(0 <= r["mean_dice"] <= 1 for r in rules.values())
    assert rules[rule_dice.OLD_DEFAULT]["min_iou_vs_old_default"] == 1.0
    specks = np.zeros((20, 20), np.float32)
    specks[::5, ::5] = 0.9  # 16 one-pixel specks: 16 px in all, no region of 10
    masks = rule_dice.rule_masks(specks, 0.5, 10)
    assert masks["adaptive, total area"].sum() == 16 and masks[rule_dice.OLD_DEFAULT].sum() == 0


@pytest.mark.parametrize("recorded, code", [(0.01, 0), (1000.0, 1), (None, 2)])
def test_int8_speedup_recheck(tmp_path, monkeypatch, recorded, code):
    """bench/int8_speedup.py: met when the stored speed-up is within 15 % of an idle re-measurement, else missed."""
    import onnx

    from conftest import write_blobs
    from exporting.onnx_metadata import set_metadata
    from runtime.metadata import read_metadata

    monkeypatch.syspath_prepend(str(BENCH))
    import common
    import int8_speedup

    monkeypatch.setattr(int8_speedup.evidence, "load_1m", lambda: 0.0)  # an idle machine, whatever this one is doing
    data = write_blobs(tmp_path / "blobs", 2, size=(40, 56))
    images = sorted((data / "images").iterdir())
    fp32 = common.export_model(common.random_model("Unet", "resnet18", calibrate_size=64), "Unet", "resnet18", 64,
                               tmp_path / "m.onnx")
    int8 = common.quantize_copy(fp32, tmp_path / "m.int8.onnx", images)
    proto = onnx.load(str(int8))
    stored = {"int8_speedup": recorded} if recorded else {}
    onnx.save(set_metadata(proto, {**read_metadata(proto), **stored, "int8_timing": {"images": 2}}), str(int8))
    out = tmp_path / "check.json"
    assert int8_speedup.main([str(fp32), "--images", str(data / "images"), "--rounds", "1", "--quiet", "1000",
                              "--wait", "0", "--out", str(out)]) == code
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["measured"]["rounds"] == 1 and result["recorded"] == recorded
    assert result["verdict"].split()[0] == {0: "met", 1: "MISSED", 2: "no"}[code]


def test_eager_baseline_matches_the_engine(tmp_path, monkeypatch):
    """Same weights, same work: the baseline's masks agree with inference.py's on almost every pixel."""
    monkeypatch.syspath_prepend(str(BENCH))
    import common
    import eager_baseline
    import inference

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        import cv2

        cv2.imwrite(str(images / f"im{i}.png"), (rng.random((50 + 10 * i, 70, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(images / "im2.png"), (rng.random((64, 64)) * 255).astype(np.uint8))  # greyscale, at --size
    model = common.random_model("Unet", "resnet18", calibrate_size=64)
    onnx_path = common.export_model(model, "Unet", "resnet18", 64, tmp_path / "m.onnx", tmp_path / "m.pt")
    eager_baseline.run_folder(eager_baseline.load_model(tmp_path / "m.pt"), sorted(images.iterdir()),
                              tmp_path / "eager", size=64, threshold=0.5, close=5)
    segmenter = inference.Segmenter(onnx_path, device="cpu", threshold=0.5, close=5, min_area=0)
    inference.run(segmenter, str(images), tmp_path / "engine")
    for i in range(3):
        a = cv2.imread(str(tmp_path / "eager" / "masks" / f"im{i}.png"), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(tmp_path / "engine" / "masks" / f"im{i}.png"), cv2.IMREAD_GRAYSCALE)
        assert a.shape == b.shape
        assert np.mean(a != b) < 0.02
    rows = (tmp_path / "eager" / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].startswith("im0.png,ok,")


def test_cost_growth(run_script):
    result = run_script("cost_growth", "--encoder", "resnet18", "--folds", "2", "--base", "32", "--sizes", "32", "64",
                        "--tta-sizes", "32", "--repeats", "1", "--threads", "1")
    assert [(r["folds"], r["tta"], r["units"]) for r in result["folds_tta"]] == [
        (1, "none", 1), (1, "hflip", 2), (1, "flips", 4), (2, "none", 2), (2, "hflip", 4), (2, "flips", 8)]
    assert [r["side"] for r in result["sides"]] == [32, 64]
    assert math.isfinite(result["folds_tta_slope"]) and math.isfinite(result["side_slope"])
    assert result["tta_batching"][0]["gain"] > 0


def test_video(run_script):
    result = run_script("video", "--frames", "4", "--width", "96", "--height", "64", "--size", "64", "--repeats", "1",
                        "--threads", "1")
    assert set(result["frames_per_s"]) == {"decode only", "model only (x frames)", "inference, --vid-stride 1",
                                           "inference, --vid-stride 3"}
    assert all(positive(series) for series in result["runs"].values())


@needs_horse
def test_training(run_script):
    result = run_script("train_speed", "--limit", "10", "--size", "64", "--batch-size", "2", "--warmup", "1",
                        "--steps", "1", "--blocks", "1", "--repeats", "1")
    assert result["training"]["images_per_s"] > 0 and result["training"]["batch_size"] == 2
    variants = result["training"]["variants"]
    assert list(variants) == ["square", "rect", "rect+channels_last", "rect+bf16", "rect+bf16+channels_last", "plain"]
    assert all(positive(v["blocks"]) and v["images_per_s"] > 0 for v in variants.values())
    assert variants["square"]["vs_first"] == 1.0
    assert result["etl"]["images"] == 10 and positive(result["etl"]["first"]) and positive(result["etl"]["second"])
    assert result["smart_crop"] == "measured by bench/smart_crop.py"


@needs_horse
def test_training_loader_alone(run_script):
    """loader / loader+workers0 and their CACHE=ram twins: the DataLoader's batches timed without a model step,
    beside a training variant."""
    names = ["rect", "loader", "loader+workers0", "loader+ram", "loader+ram+workers0"]
    result = run_script("train_speed", "--limit", "10", "--size", "64", "--batch-size", "2", "--warmup", "1",
                        "--steps", "2", "--blocks", "1", "--repeats", "1", "--variants", ",".join(names))
    variants = result["training"]["variants"]
    assert list(variants) == names
    assert all(positive(v["blocks"]) and v["images_per_s"] > 0 for v in variants.values())


def test_ramcache_memory(run_script):
    """Each mode's main process and workers, with their shared and private memory from /proc."""
    result = run_script("ramcache_memory", "--images", "12", "--size", "64", "--epochs", "1")
    runs = result["runs"]
    assert set(runs) == {"disk", "ram"} and runs["disk"]["buffer_mib"] == 0 < runs["ram"]["buffer_mib"]
    for run in runs.values():
        assert len(run["workers"]) == 2
        assert all(m["Rss"] > 0 and m["Shared_Dirty"] >= 0 for m in [run["main"], *run["workers"]])


@needs_horse
def test_footprint(run_script):
    result = run_script("footprint", "--no-venv", "--arch", "Unet", "--encoder", "resnet18", "--size", "64", "--rss-size", "64", "--rss-images", "2", "4",
                        "--repeats", "1", "--rss-repeats", "1")
    infer, train = result["install"]["infer"], result["install"]["train"]
    assert 0 < infer["bytes"] < train["bytes"] and infer["packages"] < train["packages"]
    assert positive(result["cold_start"]["import"]) and positive(result["cold_start"]["session"])
    peaks = [v[0] for v in result["peak_rss_mib"].values()]
    assert all(40 < p < 4000 for p in peaks)  # the child's own peak, not the benchmark process's


def plain_unet_splits(tmp_path: Path, val_images: int = 6) -> list[str]:
    """--train of 6 blob images and --val of `val_images` (images/<split> pairs with masks/<split>)."""
    from conftest import write_blobs

    for split, seed, count in (("train", 0, 6), ("val", 1, val_images)):
        data = write_blobs(tmp_path / f"blobs_{split}", count, size=(40, 56), seed=seed)
        for kind in ("images", "masks"):
            (tmp_path / kind).mkdir(exist_ok=True)
            (data / kind).rename(tmp_path / kind / split)
    return ["--train", str(tmp_path / "images" / "train"), "--val", str(tmp_path / "images" / "val")]


def test_plain_unet_baseline(run_script, tmp_path):
    result = run_script("plain_unet", *plain_unet_splits(tmp_path), "--size", "32", "--epochs", "1",
                        "--batch-size", "3")
    assert result["train_images"] == 6 and result["val_images"] == 6
    assert 0.0 <= result["val_iou"] <= result["val_dice"] <= 1.0
    assert result["train_seconds"] > 0 and result["recipe"]["epochs"] == 1
    assert result["epochs_reached"] == result["epochs_planned"] == 1 and result["time_budget_seconds"] == 0
    assert 0.0 <= result["val_pixel_dice"] <= 1.0


def test_plain_unet_pixel_dice_pools_the_val_pixels(run_script, tmp_path):
    """With one val image, the pixel-pooled Dice is that image's Dice: the pooling adds up the right counts."""
    result = run_script("plain_unet", *plain_unet_splits(tmp_path, val_images=1), "--size", "32", "--epochs", "2",
                        "--batch-size", "3")
    assert result["val_images"] == 1
    assert result["val_pixel_dice"] == pytest.approx(result["val_dice"], abs=1e-9)


def test_plain_unet_stops_by_the_clock(run_script, tmp_path):
    """--time-budget 15s with no real epoch limit: the epochs are planned from timed steps, the run (scoring
    included) ends within the budget + 10 %, and the JSON says how far it got."""
    result = run_script("plain_unet", *plain_unet_splits(tmp_path), "--size", "32", "--epochs", "100000",
                        "--batch-size", "3", "--time-budget", "15s")
    assert result["time_budget_seconds"] == 15 and result["recipe"]["time_budget"] == 15
    assert 2 <= result["epochs_planned"] < 100000 and 1 <= result["epochs_reached"] <= result["epochs_planned"]
    assert result["epochs_reached"] == result["epochs_planned"] or result["stopped_early"].startswith("stopped by")
    assert result["wall_seconds"] <= 15 * 1.1


def test_gate_tradeoff(run_script, tmp_path):
    from conftest import build_gate_onnx
    from test_app import build_model

    seg, gate = build_model(tmp_path / "seg.onnx"), build_gate_onnx(tmp_path / "gate.onnx")
    result = run_script("gate", "--model", str(seg), "--gate", str(gate), "--clean", "0.75", "--count", "4",
                        "--width", "128", "--height", "32", "--repeats", "1")
    row = result["sets"]["75% clean"]
    assert set(row["images_per_s"]) == {"segmenter", "gated", "oracle"} and all(v > 0 for v in row["images_per_s"].values())
    oracle = row["oracle"]
    assert oracle["defective"] == 1 and oracle["defective_segmented"] == 1  # the truth's decisions: 3 clean, 1 not
    assert oracle["gated_fraction"] == 0.75
    # the oracle segments the one defective strip exactly as the segmenter does: the same Dice on it
    assert oracle["defective_dice"]["oracle"] == oracle["defective_dice"]["segmenter"] is not None
    costs = result["model_costs"]  # the two models alone, at the set's size and twice it
    # each model gets what the runtime feeds it: this segmenter's 64 px metadata size, doubled at twice the strip
    assert [c["strip"] for c in costs] == ["128x32", "256x64"] and costs[1]["segmenter_input"] == "128x32"
    assert all(c["segmenter_ms"] > 0 and c["gate_ms"] > 0 for c in costs)
    assert 0 <= row["gated"]["gated_fraction"] <= 1 and all(0 <= d <= 1 for d in row["dice"].values())


@needs_isbi
def test_session_options(run_script):
    result = run_script("session_options", "--size", "64", "--limit", "2", "--repeats", "1")
    names = [v["name"] for v in result["variants"]]
    assert result["default"] == names[0] and len(set(names)) == len(names) >= 3
    assert {v["spinning"] for v in result["variants"]} == {True, False}
    assert [v["inter_op"] for v in result["variants"]].count(2) == 1
    for part in ("latency", "folder"):
        assert list(result[part]) == names and all(positive(series) for series in result[part].values())
        assert result["speedup"][part][result["default"]] == 1.0
    assert result["images"] == 2
    for name, series in result["folder"].items():
        assert result["images_per_s"][name] == pytest.approx(2 / (series["median_ms"] / 1e3))
    assert len(result["machine"]["start"]["load_average"]) == 3 and result["machine"]["end"]["load_average"]


def test_no_bench_script_shadows_a_repo_module():
    """`python bench/x.py` puts bench/ first on sys.path: a bench/training.py would hide the training package from
    every script that imports config."""
    root = BENCH.parent
    modules = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    assert not {p.stem for p in BENCH.glob("*.py")} & modules


def test_equal_budget(run_script, tmp_path):
    """Both sides run by the clock on tiny blobs in the images/<split> + masks/<split> layout, and are scored."""
    import shutil

    from conftest import write_blobs

    data = tmp_path / "data"
    for split, count, seed in (("train", 12, 0), ("val", 4, 1)):
        write_blobs(tmp_path / split, count, seed=seed)
        for kind in ("images", "masks"):
            (data / kind).mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp_path / split / kind), str(data / kind / split))
    result = run_script("equal_budget", "--budget", "30s", "--seeds", "0", "--size", "64", "--quiet", "100",
                        "--variant", "rect=--batch-shape rect", "--recipe=--folds 2 --batch-size 4",
                        "--train", str(data / "images" / "train"), "--val", str(data / "images" / "val"))
    assert list(result["runs"]) == ["rect", "plain"] and result["budget"] == "30s"
    for side in ("rect", "plain"):
        [one] = result["runs"][side]
        assert 0.0 <= one["dice"] <= 1.0 and one["epochs"] >= 1 and one["wall_s"] > 0
        assert one["before"]["matmul_gflops"] > 0 and one["after"]["matmul_gflops"] > 0
    assert result["summary"]["rect"]["mean_dice"] == result["runs"]["rect"][0]["dice"]
    for side in ("rect", "plain"):  # both sides report the pixel-pooled Dice too
        assert result["summary"][side]["mean_pixel_dice"] == result["runs"][side][0]["pixel_dice"]
        assert 0.0 <= result["runs"][side][0]["pixel_dice"] <= 1.0
    assert result["runs"]["rect"][0]["plan"].startswith("budget 30 s → ")  # the plan's log line, kept
    assert result["runs"]["rect"][0]["precision"].startswith("AMP ")


def test_equal_budget_holds_out_the_last_images_in_natural_order(tmp_path):
    """--holdout N (ISBI has no val set): the last N of a stack by number, '10' after '9', with their masks."""
    sys.path.insert(0, str(BENCH))
    import equal_budget

    for kind in ("images", "masks"):
        (tmp_path / "data" / kind).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "data" / kind / f"{i}.png").write_bytes(f"{kind} {i}".encode())
    train, val = equal_budget.hold_out(tmp_path / "data" / "images", 3, tmp_path / "split")
    assert sorted(p.name for p in val.iterdir()) == ["10.png", "11.png", "9.png"]
    assert len(list(train.iterdir())) == 9 and (tmp_path / "split" / "masks" / "val" / "10.png").read_text() == "masks 10"
    with pytest.raises(SystemExit, match="hold out 1 to 11"):
        equal_budget.hold_out(tmp_path / "data" / "images", 12, tmp_path / "again")
