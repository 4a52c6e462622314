"""End-to-end ONNX vs the Python engine on a folder: mask parity, Dice against the truth, and cost.

    python bench/e2e_parity.py runs/horse/horse.onnx ../shared/data/weizmann_horse/images/val \\
        ../shared/data/weizmann_horse/masks/val --e2e runs/horse/horse.e2e.onnx   # both defaults: the model's rule
    python bench/e2e_parity.py MODEL.onnx IMAGES MASKS --threshold adaptive --name horse_adaptive
    python bench/e2e_parity.py MODEL.onnx IMAGES MASKS --tta hflip --repeats 5 --large 3000x4000

MODEL is the plain export; its end-to-end graph is built in a temporary folder (or give --e2e FILE, e.g. the one
export.py --end-to-end wrote). The engine is inference.Segmenter on MODEL in fp32 (inference.py --precision fp32)
with the same TTA; without --threshold both apply the model's recorded rule (their defaults), with it both apply
that threshold; both get the same decoded RGB images.

- parity: per image, IoU between the two masks (binary: foreground; multi-class: the mean over the
  classes either mask holds), the pixels that differ and where: on the engine mask's border (1 px) or
  inside, and how close the engine's probability is to the threshold there. Mean Dice of each side against
  the ground truth (utils.MULTICLASS_RULE for multi-class models).
- resize: the graph's resize stage alone (exporting.e2e_ops.resize_model) vs utils.resize_long_side.
- resize, for comparison: onnxruntime's Resize (linear, opset-18 antialias) on the same images and sizes.
- cost: e2e session.run on the uint8 image vs Segmenter.predict (pre-processing, model, post-processing,
  each timed by the engine), alternating on every image, --repeats rounds; per image the median, then the
  mean. The e2e graph's own pre+post: the same conversion around a 1x1-conv stand-in with MODEL's
  metadata, less the stand-in's own time on the engine's tensors. onnxruntime's profiler splits the e2e
  graph's time by stage (node names pre/, model/, post/; its layout reorders count as model) on one pass.
  --large HxW adds the same comparison on one photo scaled to that size (resizing is per pixel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import ROOT, add_run_args, machine_info, median, print_table, side_by_side, verdict, write_result
from exporting.e2e import TTA_VIEWS, convert
from exporting.e2e_ops import resize_model
from inference import Segmenter
from runtime.session import create_session
from runtime.e2e import predict_e2e
from utils import (index_masks, list_images, mask_dice, mask_iou, read_image, read_mask, resize_long_side,
                   setup_logging)

CPU = ["CPUExecutionProvider"]
TARGET_PREPOST = 1.10  # e2e pre+post time / engine pre+post time


def load_pairs(image_dir: Path, mask_dir: Path, classes: int, limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    masks = index_masks(mask_dir)
    pairs = [(p.stem, read_image(p), read_mask(masks[p.stem], classes)) for p in list_images(image_dir)
             if p.stem in masks]
    return pairs[:limit] if limit else pairs


def explain(e2e_mask, engine_mask, engine_probs, cut: float | None) -> dict:
    """Where the two masks differ: on the engine mask's 1 px border or inside; how close to the threshold."""
    differ = e2e_mask != engine_mask
    fg = (engine_mask > 0).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(fg, kernel).astype(bool) & ~cv2.erode(fg, kernel).astype(bool)
    info = {"pixels": int(differ.sum()), "on_border": int((differ & border).sum())}
    if cut is not None and differ.any():
        info["max_prob_gap_to_threshold"] = float(np.abs(engine_probs[0][differ] - cut).max())
    return info


def parity(pairs, session, engine: Segmenter, classes: int, cut: float | None) -> tuple[list[dict], dict]:
    rows = []
    for name, image, truth in pairs:
        e2e_mask, e2e_probs = predict_e2e(session, image)
        result = engine.predict(image)
        engine_mask = result.mask * 255 if classes == 1 else result.mask
        rows.append({"image": name, "size": list(image.shape[:2]), "iou": mask_iou(e2e_mask, engine_mask, classes),
                     "probs_max_diff": float(np.abs(e2e_probs - result.probs).max()),
                     "dice_e2e": mask_dice(e2e_mask, truth, classes),
                     "dice_engine": mask_dice(engine_mask, truth, classes),
                     "differ": explain(e2e_mask, engine_mask, result.probs, cut)})
    worst = min(rows, key=lambda r: r["iou"])
    differ = sum(r["differ"]["pixels"] for r in rows)
    summary = {"images": len(rows), "min_iou": worst["iou"], "mean_iou": float(np.mean([r["iou"] for r in rows])),
               "below_0.995": sum(r["iou"] < 0.995 for r in rows), "worst": worst,
               "dice_e2e": float(np.mean([r["dice_e2e"] for r in rows])),
               "dice_engine": float(np.mean([r["dice_engine"] for r in rows])),
               "pixels_differing": differ, "pixels_total": int(sum(np.prod(r["size"]) for r in rows)),
               "differing_on_border": sum(r["differ"]["on_border"] for r in rows),
               "probs_max_diff": max(r["probs_max_diff"] for r in rows)}
    summary["dice_diff"] = summary["dice_e2e"] - summary["dice_engine"]
    return rows, summary


def antialias_model() -> bytes:
    """uint8 (H, W, 3) + target sizes (4,) -> onnxruntime's antialiased bilinear Resize, rounded (opset 18)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["image"], ["chw"], perm=[2, 0, 1]),
             helper.make_node("Cast", ["chw"], ["float"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["float", "zero"], ["batch"]),
             helper.make_node("Resize", ["batch", "", "", "sizes"], ["resized"], mode="linear", antialias=1,
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Round", ["resized"], ["out"])]
    graph = helper.make_graph(nodes, "antialias", [helper.make_tensor_value_info("image", TensorProto.UINT8, None),
                                                   helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()


def level_stats(diffs: list[np.ndarray]) -> dict:
    values = np.concatenate([d.ravel() for d in diffs])
    return {"max_level_diff": float(values.max()), "mean_level_diff": float(values.mean()),
            "fraction_differing": float(np.mean(values > 0))}


def resize_fidelity(pairs, size: int) -> dict:
    """The graph's resize stage and onnxruntime's antialiased Resize vs cv2 (utils.resize_long_side), grey levels."""
    graph = create_session_from_bytes(resize_model(size).SerializeToString())
    antialias = create_session_from_bytes(antialias_model())
    wanted = [resize_long_side(image, size).transpose(2, 0, 1) for _, image, _ in pairs]
    ours = [np.abs(graph.run(None, {"image": image})[0] - want) for (_, image, _), want in zip(pairs, wanted)]
    theirs = [np.abs(antialias.run(None, {"image": image, "sizes": np.array((1, *want.shape), np.int64)})[0][0] - want)
              for (_, image, _), want in zip(pairs, wanted)]
    return {**level_stats(ours), "antialias": level_stats(theirs)}


def create_session_from_bytes(model: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=CPU)


# ----------------------------------------------------------------------------- other runtimes


def node_masks(e2e_path: Path, image_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """examples/node/segment.js on every image of a folder -> {stem: mask}."""
    paths = [str(path.resolve()) for path in (e2e_path, image_dir, out)]
    done = subprocess.run(["node", "node/segment.js", *paths], cwd=ROOT / "examples", capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"node example failed: {done.stderr.strip()[-500:]}")
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in out.glob("*.png")}


def opencv_masks(e2e_path: Path, pairs) -> dict[str, np.ndarray]:
    net = cv2.dnn.readNetFromONNX(str(e2e_path))
    masks = {}
    for name, image, _ in pairs:
        net.setInput(image)
        masks[name] = net.forward("mask")
    return masks


def compare_runtime(label: str, masks: dict, reference: dict, classes: int) -> list:
    """[runtime, images, identical masks, min IoU, mean IoU, pixels differing] against Python onnxruntime."""
    ious = [mask_iou(masks[k], reference[k], classes) for k in reference]
    same = sum(np.array_equal(masks[k], reference[k]) for k in reference)
    differ = sum(int(np.count_nonzero(masks[k] != reference[k])) for k in reference)
    return [label, len(reference), same, f"{min(ious):.4f}", f"{np.mean(ious):.5f}", differ]


def runtime_parity(e2e_path: Path, image_dir: Path, pairs, session, classes: int, runtimes: list[str],
                   tmp: Path) -> list:
    """Masks of the same e2e file in other runtimes vs Python onnxruntime's (images decoded by OpenCV)."""
    reference = {name: predict_e2e(session, image)[0] for name, image, _ in pairs}
    rows = []
    if "node" in runtimes:
        lossless = tmp / "png"
        lossless.mkdir()
        for name, image, _ in pairs:  # the same pixels: PNG re-encodes of the decoded images
            cv2.imwrite(str(lossless / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append(compare_runtime("onnxruntime-node, same pixels (PNG)",
                                    node_masks(e2e_path, lossless, tmp / "node_png"), reference, classes))
        originals = node_masks(e2e_path, image_dir, tmp / "node_files")  # JPEGs decoded by jpeg-js
        rows.append(compare_runtime("onnxruntime-node, the files (pure-JS decoders)",
                                    {k: originals[k] for k in reference}, reference, classes))
    if "opencv" in runtimes:
        rows.append(compare_runtime(f"OpenCV {cv2.__version__} DNN", opencv_masks(e2e_path, pairs), reference, classes))
    return rows


# ----------------------------------------------------------------------------- cost


def interleaved(fns: dict, items: list, repeats: int) -> dict[str, list[list[float]]]:
    """Seconds of fn(item) for each fn, item and round: the fns alternate on every item (order flipped each
    time), so load changes on a shared machine hit all of them alike. One untimed warm-up round."""
    names = list(fns)
    times = {name: [[] for _ in items] for name in names}
    for round_ in range(repeats + 1):
        for i, item in enumerate(items):
            for name in names if (round_ + i) % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                fns[name](item)
                if round_:
                    times[name][i].append(time.perf_counter() - start)
    return times


def per_image_ms(samples: list[list[float]]) -> float:
    """Mean over the images of each image's median: ms per image."""
    return 1e3 * float(np.mean([median(s) for s in samples]))


def timed_passes(images, session, engine: Segmenter, repeats: int) -> dict:
    """ms per image of each side, interleaved; the engine's own pre/model/post split (medians per image)."""
    split = [[] for _ in images]

    def run_engine(i):
        split[i].append(engine.predict(images[i]).info["timing"])

    times = interleaved({"e2e": lambda i: predict_e2e(session, images[i]), "engine": run_engine},
                        list(range(len(images))), repeats)
    parts = {f"engine_{key}": float(np.mean([median([t[key] for t in s[1:]]) for s in split]))
             for key in ("pre_ms", "infer_ms", "post_ms")}  # s[0]: the warm-up round
    return {"e2e_ms": per_image_ms(times["e2e"]), "engine_ms": per_image_ms(times["engine"]), **parts}


def stand_in(plain_path: Path, out: Path) -> Path:
    """MODEL's metadata and I/O around a 1x1 convolution (+ its sigmoid/softmax when MODEL outputs probs, so
    that the e2e graph adds the same nodes as around MODEL): the graph's pre+post cost with almost no model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    plain = onnx.load(str(plain_path), load_external_data=False)
    meta = json.loads(next(p.value for p in plain.metadata_props if p.key == "segmentation"))
    classes = int(meta["num_classes"])
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (classes, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"])]
    if meta.get("output", "probs") == "probs":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["probs"]) if classes == 1 else
                     helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, "stand_in", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["batch", classes, "height", "width"])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.extend(plain.metadata_props)
    onnx.save(model, str(out))
    return out


def prepost_cost(plain_path: Path, images, engine: Segmenter, tta: str, threshold, threads: int, repeats: int,
                 tmp: Path) -> dict:
    """ms per image of the e2e graph around the stand-in (its pre+post) vs the engine's pre_ms + post_ms."""
    plain = stand_in(plain_path, tmp / "stand_in.onnx")
    session = create_session(convert(plain, tmp / "stand_in.e2e.onnx", tta, threshold), CPU, threads)
    model = create_session(plain, CPU, threads)
    views = len(TTA_VIEWS[tta])  # the e2e graph runs every view through the model in one batch
    tensors = [np.repeat(engine.prepare(image)[0][None], views, 0) for image in images]  # padded (views, 3, H', W')
    times = interleaved({"e2e": lambda i: predict_e2e(session, images[i]),
                         "stand_in": lambda i: model.run(None, {"image": tensors[i]})},
                        list(range(len(images))), repeats)
    return {"e2e_stand_in_ms": per_image_ms(times["e2e"]), "stand_in_model_ms": per_image_ms(times["stand_in"])}


def profile_stages(e2e_path: Path, images, threads: int) -> dict:
    """Share of the e2e graph's node time per stage (pre/, model/, post/), from onnxruntime's profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, threads
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "e2e")
        session = ort.InferenceSession(str(e2e_path), options, providers=CPU)
        for image in images:
            predict_e2e(session, image)
        events = json.loads(Path(session.end_profiling()).read_text())
    stages: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            stage = event["name"].split("/", 1)[0] if "/" in event["name"] else "model"  # ORT's layout reorders
            stages[stage] = stages.get(stage, 0.0) + event["dur"]
    total = sum(stages.values()) or 1.0
    return {stage: value / total for stage, value in sorted(stages.items())}


def large_image_cost(image: np.ndarray, hw: tuple[int, int], session, engine: Segmenter, repeats: int) -> dict:
    big = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    engine.predict(big)
    split = []

    def run_engine():
        split.append(engine.predict(big).info["timing"])

    times = side_by_side({"e2e": lambda: predict_e2e(session, big), "engine": run_engine}, repeats=repeats)
    split = split[1:]
    return {"size": list(hw), "e2e_ms": 1e3 * median(times["e2e"]), "engine_ms": 1e3 * median(times["engine"]),
            **{f"engine_{key}": median([s[key] for s in split]) for key in ("pre_ms", "infer_ms", "post_ms")}}


# ----------------------------------------------------------------------------- report


def print_report(summary: dict, resize: dict, cost: dict, stages: dict, large: dict | None) -> None:
    worst = summary["worst"]
    print("\nparity (e2e graph vs inference.Segmenter, same model, same images)")
    print_table(["images", "min IoU", "mean IoU", "IoU < 0.995", "Dice e2e", "Dice engine", "Dice diff",
                 "pixels differing", "of them on the mask border", "max probs diff"],
                [[summary["images"], f"{summary['min_iou']:.4f}", f"{summary['mean_iou']:.5f}", summary["below_0.995"],
                  f"{summary['dice_e2e']:.4f}", f"{summary['dice_engine']:.4f}", f"{summary['dice_diff']:+.5f}",
                  f"{summary['pixels_differing']} of {summary['pixels_total']}",
                  summary["differing_on_border"], f"{summary['probs_max_diff']:.1e}"]])
    print(f"worst: {worst['image']} {worst['size']}: IoU {worst['iou']:.4f}, {worst['differ']}, "
          f"max probs diff {worst['probs_max_diff']:.1e}")
    for label, stats in (("the graph's resize", resize), ("onnxruntime Resize, antialias", resize["antialias"])):
        print(f"{label} vs cv2: max {stats['max_level_diff']:.0f} grey levels, mean {stats['mean_level_diff']:.4f}, "
              f"{100 * stats['fraction_differing']:.4f} % of values differ")
    engine_prepost = cost["engine_pre_ms"] + cost["engine_post_ms"]
    e2e_prepost = cost["e2e_stand_in_ms"] - cost["stand_in_model_ms"]
    print("\ncost per image (ms, mean of per-image medians, sides alternating on every image; e2e pre+post: the "
          "same graph around a 1x1-conv stand-in model, less that model's own time)")
    print_table(["side", "images/s", "total ms", "pre ms", "model ms", "post ms", "pre+post ms"],
                [["Python engine", 1e3 / cost["engine_ms"], cost["engine_ms"], cost["engine_pre_ms"],
                  cost["engine_infer_ms"], cost["engine_post_ms"], engine_prepost],
                 ["e2e graph", 1e3 / cost["e2e_ms"], cost["e2e_ms"], "-", "-", "-", e2e_prepost]])
    print("e2e graph time by stage (onnxruntime profiler): "
          + ", ".join(f"{stage} {100 * share:.1f} %" for stage, share in stages.items()))
    print("e2e pre+post vs engine pre+post:", verdict(e2e_prepost / engine_prepost, TARGET_PREPOST, False))
    if large:
        print(f"large {large['size'][1]}x{large['size'][0]}: e2e {large['e2e_ms']:.0f} ms, engine "
              f"{large['engine_ms']:.0f} ms (pre {large['engine_pre_ms']:.0f}, model {large['engine_infer_ms']:.0f}, "
              f"post {large['engine_post_ms']:.0f})")


def shown(path: Path) -> str:
    """A path for the committed results, without this machine's folders: relative as given, inside the
    repository relative to it, anywhere else its last two parts."""
    if not path.is_absolute():
        return str(path)
    if path.resolve().is_relative_to(ROOT):
        return str(path.resolve().relative_to(ROOT))
    return str(Path(*path.parts[-2:]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="the plain exported .onnx")
    parser.add_argument("images", type=Path, help="image folder")
    parser.add_argument("masks", type=Path, help="ground-truth mask folder (paired by file stem)")
    parser.add_argument("--e2e", type=Path, default=None, help="an existing e2e file (default: built from MODEL)")
    parser.add_argument("--tta", default="none", choices=("none", "hflip", "flips"))
    parser.add_argument("--threshold", default=None, help="a number, or 'adaptive' (default: the model's rule, as "
                        "both inference.py and the e2e export apply it)")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--large", default="", help="also time one photo scaled to HxW, e.g. 3000x4000")
    parser.add_argument("--runtimes", default="", help="comma list of node,opencv: the same e2e file's masks there "
                        "vs Python onnxruntime's")
    parser.add_argument("--name", default=None, help="results name (default e2e_parity_<model stem>)")
    add_run_args(parser, repeats=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    setup_logging()
    start = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        e2e_path = args.e2e or convert(args.model, Path(tmp) / "model.e2e.onnx", args.tta, args.threshold)
        session = create_session(Path(e2e_path), CPU, args.threads)
        engine = Segmenter(args.model, device="cpu", threads=args.threads, tta=args.tta, precision="fp32",
                           threshold=args.threshold)
        adaptive = engine.rule["mode"] == "adaptive"
        classes = int(engine.meta["num_classes"])
        pairs = load_pairs(args.images, args.masks, classes, args.limit)
        cut = None if adaptive or classes > 1 else float(engine.post.threshold)
        rows, summary = parity(pairs, session, engine, classes, cut)
        resize = resize_fidelity(pairs, int(engine.meta["input_size"]))
        runtimes = runtime_parity(Path(e2e_path), args.images, pairs, session, classes,
                                  [r for r in args.runtimes.split(",") if r], Path(tmp))
        images = [image for _, image, _ in pairs]
        cost = timed_passes(images, session, engine, args.repeats)
        cost.update(prepost_cost(args.model, images, engine, args.tta, args.threshold, args.threads, args.repeats,
                                 Path(tmp)))
        stages = profile_stages(Path(e2e_path), images, args.threads)
        large = None
        if args.large:
            hw = tuple(int(v) for v in args.large.lower().split("x"))
            large = large_image_cost(images[0], hw, session, engine, args.repeats)
    print_report(summary, resize, cost, stages, large)
    if runtimes:
        print("\nthe same e2e file in other runtimes vs Python onnxruntime (masks)")
        print_table(["runtime", "images", "identical masks", "min IoU", "mean IoU", "pixels differing"], runtimes)
    result = {"model": shown(args.model), "images": shown(args.images), "tta": args.tta,
              "threshold": "adaptive" if adaptive else engine.post.threshold, "rule": engine.rule,
              "e2e": shown(Path(args.e2e)) if args.e2e else "built from MODEL", "threads": args.threads,
              "summary": summary, "resize": resize, "runtimes": runtimes, "cost": cost, "stages": stages,
              "large": large, "rows": rows}
    write_result(args.name or f"e2e_parity_{args.model.stem}", result, args.out, start)


if __name__ == "__main__":
    main()
