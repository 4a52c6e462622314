"""The Segmenter: one ONNX Runtime session, RGB images in, Result(mask, probs, info) out. No torch.

    seg = Segmenter("model.onnx", tta="hflip", threshold="adaptive", fill_holes=True)
    result = seg.predict(rgb_image)            # Result(mask, probs, info)
    for result in seg.predict_paths(paths):    # a generator; bad files give info["status"] == "error"
        ...

Predict is preprocess (utils.preprocess, the rule training's out-of-fold scoring uses too), then
one batched session run per input shape (flip TTA copies included), then postprocess
(utils.restore_size, runtime/postprocess.py), each timed in `Segmenter.timing`. A smart-crop
stage (runtime/crop.py) and a clean/defect gate (runtime/gate.py) plug in around it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from runtime.backend import choose_backend, open_session, session_backend
from runtime.crop import load_crop_stage
from runtime.e2e import is_end_to_end, load_e2e_metadata, predict_e2e
from runtime.foreign import load_segmenter_metadata  # noqa: F401 - also imported from here
from runtime.gate import Gate, clean_prediction
from runtime.lineage import check_lineage
from runtime.metadata import TILE_OVERLAP, decode_metadata, untrained_flips
from runtime.postprocess import PostOptions, otsu_level, postprocess
from runtime.rule import apply_overrides, describe_rule, post_fields, recorded_rule
from runtime.precision import choose_precision
from runtime.tiling import predict_tiled
from runtime.session import CPU, DEFAULT_SPINNING, create_session, select_providers
from utils import LOG, UserError, match_input_size, preprocess, read_image, restore_size

# Flip TTA: the (H, W) axes of a (C, H, W) tensor each copy is flipped along; () is the original.
TILE_BATCH = 4  # tiles per session.run: memory bounded by the output canvas plus one batch, whatever the image size
TTA_FLIPS = {"none": ((),), "hflip": ((), (2,)), "flips": ((), (2,), (1,), (1, 2))}


@dataclass
class Result:
    """One prediction. mask: (H, W) uint8, {0, 1} or class ids; probs: (C, H, W) float32; info: stats."""

    mask: np.ndarray | None
    probs: np.ndarray | None
    info: dict


def to_probs(output: np.ndarray, kind: str) -> np.ndarray:
    """(C, H, W) model output -> probabilities. Our exports already hold probs."""
    if kind != "logits":
        return output
    if output.shape[0] == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * output))  # the sigmoid, without exp overflow
    shifted = np.exp(output - output.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def flip_valid(chw: np.ndarray, axes: tuple, valid_hw: tuple[int, int]) -> np.ndarray:
    """(C, H', W') padded tensor with its valid (h, w) top-left region flipped along `axes`.

    The padding stays at the bottom/right, so a flipped copy is padded like the original (and a
    flipped output flips back onto the image). () returns the tensor itself.
    """
    if not axes:
        return chw
    h, w = valid_hw
    flipped = chw.copy()
    flipped[:, :h, :w] = np.flip(chw[:, :h, :w], axis=axes)
    return flipped


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W) grey or (H, W, 3|4) uint8; return (H, W, 3) RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"image must be uint8, got {image.dtype} (scale it to 0..255 first)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image of shape {image.shape} is not an RGB image (H, W, 3)")
    return image


def resolve_tiles(tile: str | None, overlap: float | None, meta: dict) -> tuple[tuple[int, int] | None, float]:
    """((H, W) of the tiles large images run as, or None for whole images; their overlap). `tile`: None or 'auto'
    (the model's metadata), 'off', or 'HxW' (multiples of the model's stride)."""
    recorded = meta.get("tile") or {}
    overlap = float(recorded.get("overlap", TILE_OVERLAP) if overlap is None else overlap)
    if not 0 <= overlap <= 0.9:
        raise UserError(f"--tile-overlap {overlap} is not valid; use a fraction from 0 to 0.9 (0.5: half a tile)")
    text = "auto" if tile is None else str(tile).strip().lower()
    if text == "off":
        return None, overlap
    if text == "auto":
        size = recorded.get("size")
        if size:
            LOG.info("tiles: images larger than %dx%d run as overlapping tiles (the model was trained on patches)",
                     size[1], size[0])
        return (tuple(size) if size else None), overlap
    parts = text.replace("*", "x").split("x")
    stride = int(meta.get("stride", 32))
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= stride and int(p) % stride == 0 for p in parts):
        raise UserError(f"--tile {tile!r} is not valid; use auto, off or HxW in multiples of {stride} (e.g. 512x512)")
    return (int(parts[0]), int(parts[1])), overlap


def fixed_input_size(name: str, shape) -> tuple[int, int] | None:
    """(H, W) of an (N, 3, H, W) model input exported with a static size, else None (dynamic). The layout
    itself was checked at load (runtime.foreign.check_io)."""
    if isinstance(shape[2], int) and isinstance(shape[3], int):
        LOG.info("model has a fixed %dx%d input; images are letterboxed to it", shape[3], shape[2])
        return shape[2], shape[3]
    return None


class Segmenter:
    """Owns one ONNX Runtime session: RGB images in, Result(mask, probs, info) out.

    Pre-processing, the batched (TTA) run and post-processing are separate steps, each timed in
    `timing`. `session` can be injected (tests, or a session the caller built). `**post` are
    the PostOptions fields (threshold, min_area, close, open, fill_holes, ...): each one given (not None)
    overrides that part of the model's recorded rule (runtime/rule.py), the rest of which applies;
    `rule` is the rule in force.

    `gate` (a gate .onnx path or a runtime.gate.Gate) runs first on every batch: images below its
    threshold (`gate_threshold`, default the gate's own) are not segmented (empty mask, status gated_clean).

    `precision` (auto, fp32, int8; runtime/precision.py) may run the measured <stem>.int8.onnx beside the model
    on the CPU: `model_path`, `precision` and `precision_reason` say what runs. `backend` (auto, onnxruntime,
    openvino; runtime/backend.py) picks the engine of the model's session: `backend` and `backend_reason` say which.
    Files made from the same model that no longer match it (runtime/lineage.py) are named in warnings and `lineage`;
    `strict` refuses them.
    """

    def __init__(self, model_path, device: str = "auto", threads: int = 0, tta: str | None = None,
                 session=None, providers: str | None = None, detector=None, gate=None,
                 gate_threshold: float | None = None, description: dict | None = None, precision: str = "auto",
                 spinning: bool | None = None, backend: str = "auto", strict: bool = False, tile: str | None = None,
                 tile_overlap: float | None = None, **post):
        self.model_path = Path(model_path) if model_path is not None else None
        given = self.model_path if session is None else None  # a session given: no files to compare
        self.spinning = DEFAULT_SPINNING if spinning is None else bool(spinning)  # onnxruntime's spin-waiting
        self.precision, self.precision_reason = None, "session given"
        if session is None:
            self.wanted = select_providers(providers or device)  # --providers is the old name
            self.model_path, self.precision, self.precision_reason = choose_precision(self.model_path, precision,
                                                                                      self.wanted)
            self.backend, self.backend_reason = choose_backend(backend, self.model_path, self.precision, self.wanted)
            session = open_session(self.backend, self.model_path, self.wanted, threads, self.spinning)
        else:
            self.wanted = list(session.get_providers())
            self.backend, self.backend_reason = session_backend(session), "session given"
        self.session = session
        self.providers = list(self.session.get_providers())
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self.end_to_end = is_end_to_end(self.session)  # a .e2e.onnx: the uint8 image in, probs at its size out
        if self.end_to_end:
            self.meta, self.has_metadata = load_e2e_metadata(self.session, self.model_path, tta)
            self.fixed_hw = None
        else:
            self.meta, self.has_metadata = load_segmenter_metadata(self.session, self.model_path, description,
                                                                   self._probe_classes)
            self.fixed_hw = fixed_input_size(self.input_name, model_input.shape)
            self._check_output_channels()
        self.precision = self.precision or str(self.meta.get("precision") or "fp32")
        self.max_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else 0  # 0: any
        self.tta = self._resolve_tta(tta)
        self.tile_hw, self.tile_overlap = resolve_tiles(tile, tile_overlap, self.meta)
        self.post = self._post_options(post)
        self.lineage = check_lineage(given, self.model_path, strict) if given else []
        self.timing = {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0}
        # smart crop (metadata crop_mode 'person'): the YOLO detector runs on the same providers
        self.crop_stage = load_crop_stage(self.meta, self.model_path,
                                          lambda path: create_session(path, self.wanted, threads, self.spinning),
                                          detector)
        self._report_provider()
        self.gate = self._load_gate(gate, threads, gate_threshold)

    def _load_gate(self, gate, threads: int, threshold: float | None) -> Gate | None:
        """The gate on the segmenter's providers and threads; a Gate object is used as given."""
        if gate is None:
            if threshold is not None:
                raise UserError("--gate-threshold needs --gate (the gate .onnx)")
            return None
        if isinstance(gate, Gate):
            return gate if threshold is None else gate.with_threshold(threshold)
        return Gate(gate, create_session(Path(gate), self.wanted, threads, self.spinning), threshold)

    def _probe_classes(self) -> int:
        """The output channels of a model whose output shape does not say: one run on a small black image."""
        shape = self.session.get_inputs()[0].shape
        hw = [d if isinstance(d, int) and d > 0 else 64 for d in shape[2:4]]
        try:
            out = self.session.run(None, {self.input_name: np.zeros((1, 3, *hw), self.input_dtype)})[0]
        except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot run
            raise UserError(f"model {self.model_path} does not run on a (1, 3, {hw[0]}, {hw[1]}) image "
                            f"({str(exc).splitlines()[0]}); segpipe feeds NCHW float images") from None
        return int(out.shape[1]) if np.ndim(out) == 4 else 1

    def _check_output_channels(self) -> None:
        """A static output channel count must match the metadata's num_classes."""
        outputs = self.session.get_outputs() if self.has_metadata and hasattr(self.session, "get_outputs") else []
        shape = list(outputs[0].shape) if outputs else []
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != self.meta["num_classes"]:
            raise UserError(f"model output '{outputs[0].name}' has shape {shape} ({shape[1]} channels) but its "
                            f"metadata says num_classes={self.meta['num_classes']}; re-export the model with export.py")

    def _resolve_tta(self, tta: str | None) -> str:
        """The TTA to apply. Flips already baked into the graph are not repeated unless asked for."""
        baked = str(self.meta.get("tta") or "none")
        if tta is None:
            if baked != "none":
                LOG.info("model already applies '%s' TTA inside the graph; no extra TTA", baked)
            return "none"
        tta = str(tta).strip().lower()
        if tta not in TTA_FLIPS:
            raise UserError(f"--tta {tta!r} is not valid; use one of: {', '.join(TTA_FLIPS)}")
        if tta != "none" and baked != "none":
            LOG.warning("model already applies '%s' TTA inside the graph; applying '%s' on top as asked", baked, tta)
        if warning := untrained_flips(self.meta, tta):
            LOG.warning("%s", warning)
        return tta

    def _post_options(self, post: dict, log: bool = True) -> PostOptions:
        """The model's recorded rule with the given (not None) options in; logs the rule in force."""
        self.overrides = {key: value for key, value in post.items() if value is not None}
        recorded, origin = recorded_rule(self.meta)
        self.rule = apply_overrides(recorded, self.overrides, self.meta)
        if log:
            LOG.info("rule: %s (%s)", describe_rule(self.rule), origin if self.rule == recorded else
                     f"given; the model's own: {describe_rule(recorded)}")
        return PostOptions(**post_fields(self.rule), background=bool(self.meta.get("background", True)))

    def run_info(self) -> dict:
        """Which file ran, at which precision and why, under which rule, and what lineage problems were seen
        (metrics.json's "model")."""
        path = getattr(self, "model_path", None)
        rule = getattr(self, "rule", None)
        return {"file": path.name if path else None, "precision": self.precision,
                "precision_reason": self.precision_reason, "rule": rule,
                "rule_text": describe_rule(rule) if rule else None, "lineage": list(getattr(self, "lineage", []))}

    def _report_provider(self) -> None:
        used = self.providers[0]
        LOG.info("model %s running on %s", self.model_path or "(a session given)", used)
        if self.wanted[0] != CPU and used == CPU:
            LOG.warning("%s failed to start (see onnxruntime's message); running on CPU", self.wanted[0])

    def with_options(self, **post) -> "Segmenter":
        """A copy sharing the session, with some post-processing options replaced (None: keep)."""
        clone = copy.copy(self)
        clone.post = clone._post_options({**self.overrides, **post}, log=False)
        return clone

    def with_gate_threshold(self, threshold: float | None) -> "Segmenter":
        """A copy sharing both sessions, with another gate threshold (None: the gate's own)."""
        if self.gate is None:
            raise UserError("no gate is loaded; pass gate=... (--gate) first")
        clone = copy.copy(self)
        clone.gate = self.gate.with_threshold(threshold)
        return clone

    # -- pre-processing

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB image -> ((3, H', W') model input, (h, w) of its unpadded part), as utils.preprocess makes it."""
        return preprocess(image, self.meta, self.fixed_hw)

    # -- inference

    def _run(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """Run (3, H', W') tensors, one session.run per group of equal shapes; (C, h, w) outputs in order."""
        groups: dict[tuple, list[int]] = {}
        for index, x in enumerate(tensors):
            groups.setdefault(x.shape, []).append(index)
        outputs: list = [None] * len(tensors)
        for indices in groups.values():
            step = self.max_batch or len(indices)
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                batch = np.stack([tensors[i] for i in chunk]).astype(self.input_dtype)  # (B, 3, H', W')
                out = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
                if out.ndim == 3:  # (B, h, w): a single-channel model that dropped its C axis
                    out = out[:, None]
                if out.ndim != 4 or out.shape[0] != len(chunk):
                    raise UserError(f"model output has shape {out.shape}; a segmentation output (N, C, h, w) is needed")
                for i, o in zip(chunk, out):
                    outputs[i] = o
        return outputs

    def _to_probs(self, output: np.ndarray) -> np.ndarray:
        kind = self.meta.get("output", "probs")
        if not self.has_metadata and (output.min() < -1e-3 or output.max() > 1 + 1e-3):
            kind = "logits"  # a foreign model: values outside [0, 1] cannot be probabilities
        return to_probs(output, kind)

    def _merge_flips(self, outputs: list[np.ndarray], x: np.ndarray, valid_hw, orig_hw) -> np.ndarray:
        """The outputs of one input `x` and its TTA flips -> averaged (C, H, W) probabilities at `orig_hw`."""
        flips = TTA_FLIPS[self.tta]
        total = None
        for out, axes in zip(outputs, flips):
            probs = self._to_probs(match_input_size(out, valid_hw, x.shape[1:]))  # (C, H', W')
            probs = flip_valid(probs, axes, valid_hw)  # back onto the image
            total = probs if total is None else total + probs
        probs = restore_size(total / len(flips), valid_hw, orig_hw, input_hw=x.shape[1:])  # (C, H, W)
        return np.ascontiguousarray(probs, dtype=np.float32)

    def tiles_for(self, valid_hw: tuple[int, int]) -> bool:
        """Whether an image of this (resized) size runs as tiles: tiling is on and the image is larger than one."""
        return self.tile_hw is not None and (valid_hw[0] > self.tile_hw[0] or valid_hw[1] > self.tile_hw[1])

    def _run_tiles(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """(3, th, tw) tiles -> (C, th, tw) probabilities each, their TTA flips averaged."""
        flips = TTA_FLIPS[self.tta]
        outputs = self._run([flip_valid(t, axes, t.shape[1:]) for t in tiles for axes in flips])
        return [self._merge_flips(outputs[k * len(flips):(k + 1) * len(flips)], t, t.shape[1:], t.shape[1:])
                for k, t in enumerate(tiles)]

    def predict_probs_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB images -> (C, H, W) float32 probabilities at each image's own size."""
        return self._predict_cropped(images)[0]

    def _predict_cropped(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict]]:
        """Probabilities plus per-image crop columns; with smart crop the model sees the person crops."""
        if getattr(self, "crop_stage", None) is None:
            return self._predict_probs(images), [{} for _ in images]
        t0 = time.perf_counter()
        images = [as_rgb(image) for image in images]
        crops = self.crop_stage.crop(images)
        crop_ms = (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        probs = self._predict_probs([crop.image for crop in crops])
        self.timing["crop_ms"] = crop_ms
        return ([self.crop_stage.paste(p, crop, image.shape[:2]) for p, crop, image in zip(probs, crops, images)],
                [self.crop_stage.crop_columns(crop) for crop in crops])

    def _predict_probs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB images -> (C, H, W) float32 probabilities at each image's own size.

        All images and their TTA flips go through the model together (one session.run per input
        shape); flipped outputs are flipped back and the probabilities averaged.
        """
        if getattr(self, "end_to_end", False):
            return self._predict_probs_e2e(images)
        t0 = time.perf_counter()
        images = [as_rgb(image) for image in images]
        prepared = [self.prepare(image) for image in images]  # ((3, H', W'), (h, w)) each
        tiled = [self.tiles_for(valid_hw) for _, valid_hw in prepared]
        flips = TTA_FLIPS[self.tta]
        whole = [i for i, t in enumerate(tiled) if not t]
        tensors = [flip_valid(prepared[i][0], axes, prepared[i][1]) for i in whole for axes in flips]
        t1 = time.perf_counter()
        outputs = self._run(tensors)
        results: list = [None] * len(images)
        for i in (i for i, t in enumerate(tiled) if t):  # larger than a tile: tiles at the model's scale, blended
            x, valid_hw = prepared[i]
            results[i] = predict_tiled(x, valid_hw, self.tile_hw, self._run_tiles, self.tile_overlap, TILE_BATCH)
        t2 = time.perf_counter()
        n_flips = len(flips)
        for k, i in enumerate(whole):
            x, valid_hw = prepared[i]
            results[i] = self._merge_flips(outputs[k * n_flips:(k + 1) * n_flips], x, valid_hw, images[i].shape[:2])
        for i in (i for i, t in enumerate(tiled) if t):
            probs = restore_size(results[i], prepared[i][1], images[i].shape[:2])  # (C, H, W)
            results[i] = np.ascontiguousarray(probs, dtype=np.float32)
        t3 = time.perf_counter()
        n = max(len(images), 1)
        self.timing = {"pre_ms": (t1 - t0) * 1e3 / n, "infer_ms": (t2 - t1) * 1e3 / n, "post_ms": (t3 - t2) * 1e3 / n}
        return results

    def _predict_probs_e2e(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """An end-to-end graph does the pre-processing, the model and the resize back itself: its `probs`
        (C, H, W) go through the engine's post-processing like any model's."""
        t0 = time.perf_counter()
        probs = [predict_e2e(self.session, as_rgb(image))[1].astype(np.float32) for image in images]
        n = max(len(images), 1)
        self.timing = {"pre_ms": 0.0, "infer_ms": (time.perf_counter() - t0) * 1e3 / n, "post_ms": 0.0}
        return probs

    def predict_probs(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 probabilities (C, H, W) at the image's own size."""
        return self.predict_probs_batch([image])[0]

    def predict_batch(self, images: list[np.ndarray]) -> list[Result]:
        """Results in order. With a gate, only the images it passes are segmented (one batched call)."""
        if getattr(self, "gate", None) is None:
            return self._segment_batch(images)
        images = [as_rgb(image) for image in images]
        probs = self.gate.predict(images)
        gate_ms = self.gate.timing["gate_ms"]
        keep = [i for i, p in enumerate(probs) if p >= self.gate.threshold]
        segmented = dict(zip(keep, self._segment_batch([images[i] for i in keep]) if keep else []))
        results = []
        for i, (image, prob) in enumerate(zip(images, probs)):
            result = segmented.get(i)
            if result is None:
                result = Result(*clean_prediction(image.shape[:2], int(self.meta.get("num_classes", 1)), float(prob)))
            result.info["gate_prob"] = float(prob)
            result.info["timing"] = {**result.info.get("timing", {}), "gate_ms": gate_ms}
            results.append(result)
        return results

    def _segment_batch(self, images: list[np.ndarray]) -> list[Result]:
        probs_list, crop_infos = self._predict_cropped(images)
        t0 = time.perf_counter()
        results = []
        for probs, crop_info in zip(probs_list, crop_infos):
            mask, info = postprocess(probs, self.post)
            info.update(crop_info, status="ok" if info["detected"] else "no_detection",
                        backend=getattr(self, "backend", ""))
            results.append(Result(mask, probs, info))
        self.timing["post_ms"] += (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        for result in results:
            result.info["timing"] = dict(self.timing)
        return results

    def predict(self, image: np.ndarray) -> Result:
        """RGB uint8 (H, W, 3) -> Result(mask (H, W), probs (C, H, W), info)."""
        return self.predict_batch([image])[0]

    def predict_paths(self, paths, batch_size: int = 1):
        """Yield a Result per image path, in order; an unreadable file gives info status 'error'."""
        paths = iter(paths)
        while chunk := list(islice(paths, max(1, batch_size))):
            loaded = []
            for path in chunk:
                try:
                    loaded.append((path, read_image(path), None))
                except Exception as exc:  # noqa: BLE001 - any bad file becomes an error result
                    loaded.append((path, None, str(exc)))
            good = [image for _, image, error in loaded if error is None]
            results = iter(self.predict_batch(good) if good else [])
            for path, _, error in loaded:
                result = Result(None, None, {"status": "error", "error": error}) if error else next(results)
                result.info["file"] = str(path)
                yield result


class OtsuSegmenter(Segmenter):
    """Model-free baseline: Otsu's threshold on the grey image, the side touching the border less is foreground."""

    def __init__(self, **post):
        self.model_path, self.session, self.providers, self.wanted = None, None, ["none (Otsu)"], ["none"]
        self.precision, self.precision_reason = "none", "no model"
        self.backend, self.backend_reason = "none", "no model"
        self.meta, self.has_metadata = decode_metadata({})[0], False
        self.tta, self.fixed_hw, self.max_batch, self.crop_stage, self.gate = "none", None, 0, None, None
        post["threshold"] = "otsu"
        self.post = self._post_options(post)
        self.timing = {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0}
        LOG.info("method otsu: no model, Otsu threshold on the grey image")

    def _predict_probs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        results = []
        for image in images:
            grey = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0  # (H, W)
            level = otsu_level(grey)
            if level is not None:
                bright = grey > level
                border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
                if border.mean() > 0.5:
                    grey = 1.0 - grey  # objects sit inside the frame: the border side is background
            results.append(grey[None])
        self.timing = {"pre_ms": 0.0, "infer_ms": (time.perf_counter() - t0) * 1e3 / max(len(images), 1),
                       "post_ms": 0.0}
        return results
