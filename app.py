"""Web page on the runtime engine: single image, batch ZIP and video, for people who never open a terminal.

Run book (needs requirements-app.txt: the runtime side plus streamlit; never torch):

    pip install -r requirements-app.txt
    MODEL_PATH=runs/horse/horse.onnx streamlit run app.py        # the model path can also be typed in the sidebar
    MODEL_PATH=runs/steel/steel.onnx GATE_PATH=runs/gate/gate.onnx streamlit run app.py   # + the clean/defect gate
    streamlit run app.py --server.port 8502 --server.headless true

Everything runs through `inference.Segmenter` and `inference.run`, exactly as the CLI does: the page
adds widgets, progress bars and downloads, never a second copy of pre- or post-processing.
Upload limits live in .streamlit/config.toml (server.maxUploadSize) and UPLOAD_LIMIT_MB below.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from inference import Segmenter, run
from runtime.backend import BACKENDS
from runtime.pipeline import RunOptions
from runtime.foreign import parse_class_names
from runtime.postprocess import colorize, draw_legend
from runtime.precision import PRECISIONS
from runtime.preview import PREVIEW_FORMAT, browser_preview, compare_gt, predict_image, safe_name, strip_folder
from runtime.rule import describe_rule
from runtime.segmenter import TTA_FLIPS
from runtime.session import PROVIDER_CHOICES
from utils import LOG, UserError, read_image, setup_logging, write_png

# Upload limits per mode, in MB; the server-wide cap (.streamlit/config.toml) must be at least the largest.
UPLOAD_LIMIT_MB = {"image": 25, "mask": 25, "zip": 200, "video": 200}
IMAGE_TYPES = ["jpg", "jpeg", "png"]
MASK_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
VIDEO_TYPES = ["mp4", "avi", "mov", "mkv"]
MODES = ("Single image", "Batch ZIP", "Video")
RULE = "model's rule"  # the threshold mode that applies what export.py recorded (runtime/rule.py)
THRESHOLD_MODES = (RULE, "adaptive", "fixed")


@dataclass(frozen=True)
class Settings:
    """Everything the sidebar decides; hashable, so it keys the cached results of a run."""

    model_path: str
    device: str = "auto"
    threads: int = 0
    tta: str = "none"
    threshold: str | float | None = None  # None: the model's rule
    close: int = 0  # 0 / False: as the model's rule says
    open: int = 0
    fill_holes: bool = False
    alpha: float = 0.5
    image_max_side: int = 2048  # 0: as is
    video_max_side: int = 640
    vid_stride: int = 1
    gate_path: str = ""  # the clean/defect gate .onnx; empty: none
    gate_threshold: float | None = None  # None: the gate's own (out-of-fold) threshold
    class_names: str = ""  # comma-separated, one per output channel; empty: the model's (or the files beside it)
    background: bool | None = None  # False: class 0 is a class like any other (--no-background); None: the model's
    precision: str = "auto"  # auto, fp32, int8 (runtime/precision.py)
    backend: str = "auto"  # the model's engine: auto, onnxruntime, openvino (inference.py --backend)
    tile: str = "auto"  # large images as tiles: auto (the model's metadata) or off (inference.py --tile)

    def post(self) -> dict:
        """The Segmenter's post-processing options: None leaves that part of the model's rule as it is."""
        return dict(threshold=self.threshold, close=self.close or None, open=self.open or None,
                    fill_holes=True if self.fill_holes else None)


def read_env(environ) -> dict:
    """The page's only config read: defaults from the environment (the page is an entry point)."""
    return {"model_path": environ.get("MODEL_PATH", "model.onnx"), "gate_path": environ.get("GATE_PATH", "")}


# ----------------------------------------------------------------------------- engine glue


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def load_segmenter(model_path: str, stamp: tuple, device: str, threads: int, tta: str, gate_path: str | None = None,
                   gate_stamp: tuple = (), class_names: str = "", background: bool | None = None,
                   precision: str = "auto", backend: str = "auto", tile: str = "auto") -> Segmenter:
    """One ONNX Runtime session per model file (and its mtime/size stamp), device, threads, TTA and description
    (class names, background: inference.py's --class-names / --no-background), plus the gate's session when a
    gate file is given.

    Post-processing options and the gate threshold are not part of the key: `with_options` and
    `with_gate_threshold` copy the segmenter around the same sessions, so a slider never reloads a model.
    """
    description = {"class_names": parse_class_names(class_names or None), "background": background}
    return Segmenter(model_path, device=device, threads=threads, tta=tta, gate=gate_path, description=description,
                     precision=precision, backend=backend, tile=tile)


@st.cache_resource
def configure_logging() -> bool:
    setup_logging()
    return True


def open_segmenter(settings: Settings) -> Segmenter:
    path = Path(settings.model_path).expanduser()
    if not settings.model_path.strip() or not path.is_file():
        raise UserError(f"model file not found: {settings.model_path!r}. Type the path of an .onnx file from "
                        "export.py in the sidebar, or start the page with MODEL_PATH=path/to/model.onnx")
    gate, gate_stamp = None, ()
    if settings.gate_path.strip():
        gate = Path(settings.gate_path).expanduser()
        if not gate.is_file():
            raise UserError(f"gate file not found: {settings.gate_path!r}. Type the path of a gate.onnx from "
                            "`train.py --task classify` in the sidebar, or leave the gate field empty")
        gate_stamp = (gate.stat().st_mtime_ns, gate.stat().st_size)
    segmenter = load_segmenter(str(path), folder_stamp(path), settings.device, settings.threads,
                               settings.tta, str(gate) if gate else None, gate_stamp, settings.class_names,
                               settings.background, settings.precision, settings.backend, settings.tile)
    if gate is not None and settings.gate_threshold is not None:
        segmenter = segmenter.with_gate_threshold(settings.gate_threshold)
    return segmenter.with_options(**settings.post())


def folder_stamp(path: Path) -> tuple:
    """The model's and its neighbours' (name, mtime, size): a new int8 copy or a re-export beside it reloads the
    model, so the file that runs and the stale-file warnings stay true."""
    files = [path] + sorted(p for p in path.parent.glob("*.onnx") if p != path)
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


def save_upload(upload, folder: Path, kind: str) -> Path:
    """Write an uploaded file into `folder`, refusing it when over the mode's limit."""
    limit = UPLOAD_LIMIT_MB[kind]
    if upload.size > limit * 2**20:
        raise UserError(f"{upload.name} is {upload.size / 2**20:.1f} MB, more than the {limit} MB limit for "
                        f"{kind} uploads; upload a smaller file")
    path = folder / safe_name(upload.name)
    path.write_bytes(upload.getvalue())
    return path


@contextmanager
def shown_errors(folder: Path | None = None):
    """Turn any failure into a readable st.error (never a traceback); hide our temporary folder in it."""
    try:
        yield
    except UserError as exc:
        st.error(strip_folder(str(exc), folder))
    except Exception as exc:  # noqa: BLE001 - the page must keep running
        LOG.exception("unexpected error in the app")
        st.error(f"Something went wrong: {strip_folder(str(exc), folder) or type(exc).__name__}. "
                 "Check the input and the sidebar settings; the server log has the details.")


def png_bytes(image: np.ndarray, folder: Path, name: str) -> bytes:
    """PNG bytes through the engine's own writer."""
    write_png(folder / name, image)
    return (folder / name).read_bytes()


def progress_callback(bar, unit: str):
    def update(done: int, total: int | None) -> None:
        fraction = min(done / total, 1.0) if total else 0.0
        bar.progress(fraction, text=f"{done}/{total} {unit}" if total else f"{done} {unit}")
    return update


# ----------------------------------------------------------------------------- sidebar


def sidebar(defaults: dict) -> Settings:
    st.sidebar.header("Model")
    model_path = st.sidebar.text_input("Model (.onnx path)", value=defaults["model_path"], key="model_path")
    device = st.sidebar.selectbox("Device", PROVIDER_CHOICES, key="device",
                                  help="auto tries TensorRT > CUDA > CPU; a GPU that cannot run falls back to CPU")
    backend = st.sidebar.selectbox("Backend", BACKENDS, key="backend",
                                   help="auto: OpenVINO for int8 models on a CPU with VNNI/AMX when it is installed "
                                   "(requirements-openvino.txt), else onnxruntime")
    threads = int(st.sidebar.number_input("CPU threads (0 = automatic)", 0, 64, 0, key="threads"))
    precision = st.sidebar.selectbox("Precision", PRECISIONS, key="precision",
                                     help="auto: on the CPU, the int8 copy export.py measured beside the model when it "
                                     "lost at most 0.01 Dice and was faster; fp32: always the float32 file")
    tta = st.sidebar.selectbox("Flip TTA", tuple(TTA_FLIPS), key="tta")
    tile = st.sidebar.selectbox("Tiles", ("auto", "off"), key="tile",
                                help="auto: images larger than the tiles a patch-trained model records run as "
                                "overlapping tiles at its scale; off: whole images")
    gate_path = st.sidebar.text_input("Gate (.onnx path, optional)", value=defaults.get("gate_path", ""),
                                      key="gate_path", help="a clean/defect gate from train.py --task classify: images "
                                      "it judges clean are not segmented (status gated_clean)")
    gate_threshold = None
    if gate_path.strip() and st.sidebar.checkbox("Override the gate's threshold", key="gate_override"):
        gate_threshold = float(st.sidebar.slider("Gate threshold", 0.0, 1.0, 0.5, 0.001, key="gate_threshold",
                                                 format="%.3f", help="segment images whose gate probability is >= this"))
    class_names = st.sidebar.text_input("Class names (optional)", key="class_names",
                                        help="comma-separated, class 0 first: for a model without names in its "
                                        "metadata (labels.txt or config.json beside it are read as well)")
    no_background = st.sidebar.checkbox("Class 0 is a class (no background)", key="no_background",
                                        help="e.g. ADE20k's wall: argmax over all classes, class 0 drawn and counted")
    st.sidebar.header("Threshold")
    mode = st.sidebar.radio("Threshold mode", THRESHOLD_MODES, key="threshold_mode", horizontal=True,
                            help="model's rule: what export.py recorded (the cross-validated threshold unless told "
                            "otherwise), as inference.py and the .e2e.onnx apply it; adaptive: the cascade (e.g. "
                            "0.5 -> 0.3 -> 0.15)")
    threshold = None if mode == RULE else "adaptive"
    if mode == "fixed":
        threshold = float(st.sidebar.slider("Fixed threshold", 0.01, 0.99, 0.5, 0.01, key="threshold"))
    st.sidebar.header("Post-processing")
    close = int(st.sidebar.number_input("Closing kernel (px, 0 = the model's rule)", 0, 101, 0, key="close"))
    open_ = int(st.sidebar.number_input("Opening kernel (px, 0 = the model's rule)", 0, 101, 0, key="open"))
    fill = st.sidebar.checkbox("Fill holes", key="fill_holes", help="unchecked: as the model's rule says")
    alpha = float(st.sidebar.slider("Overlay alpha", 0.0, 1.0, 0.5, 0.05, key="alpha"))
    st.sidebar.header("Size")
    image_max = int(st.sidebar.number_input("Image max long side (px, 0 = as is)", 0, 16384, 2048, 64,
                                            key="image_max_side"))
    video_max = int(st.sidebar.number_input("Video max long side (px, 0 = as is)", 0, 8192, 640, 64,
                                            key="video_max_side"))
    stride = int(st.sidebar.number_input("Video: infer every Nth frame", 1, 100, 1, key="vid_stride"))
    return Settings(model_path.strip(), device, threads, tta, threshold, close, open_, fill, alpha, image_max,
                    video_max, stride, gate_path.strip(), gate_threshold, class_names.strip(),
                    False if no_background else None, precision, backend, tile)


def show_running(segmenter: Segmenter) -> None:
    """Which file runs, at which precision and why, under which rule; the files beside it that no longer match."""
    path = segmenter.model_path
    st.caption(f"Running **{path.name if path else 'a given session'}** ({segmenter.precision}: "
               f"{segmenter.precision_reason}). Rule: {describe_rule(segmenter.rule)}.")
    if segmenter.precision == "int8":
        st.caption("Choose fp32 under Precision in the sidebar to run the float32 file instead.")
    for problem in segmenter.lineage:
        st.warning(problem)


def show_metadata(segmenter: Segmenter) -> None:
    meta = segmenter.meta
    with st.sidebar.expander("Model metadata"):
        if not segmenter.has_metadata:
            st.warning("This model has no 'segmentation' metadata; defaults are used. Re-export it with export.py.")
        st.markdown(
            f"- **arch**: {meta.get('arch')} / {meta.get('encoder')}\n"
            f"- **classes**: {meta.get('num_classes')} ({', '.join(map(str, meta.get('class_names') or []))})"
            f"{'; class 0 is a class (no background)' if meta.get('background') is False else ''}\n"
            f"- **threshold** (CV): {meta.get('threshold', 'n/a')}\n"
            f"- **folds**: {meta.get('folds', 'n/a')}\n"
            f"- **file running**: {segmenter.model_path.name if segmenter.model_path else 'n/a'} on "
            f"{segmenter.providers[0]}\n"
            f"- **backend**: {segmenter.backend} ({segmenter.backend_reason})\n"
            f"- **precision**: {segmenter.precision} ({segmenter.precision_reason})\n"
            f"- **rule**: {describe_rule(segmenter.rule)}"
        )
        st.json(meta, expanded=False)
    gate = segmenter.gate
    if gate is not None:
        oof = gate.meta.get("oof") or {}
        skipped = "n/a" if oof.get("specificity") is None else f"{oof['specificity']:.1%}"
        with st.sidebar.expander("Gate metadata"):
            st.markdown(
                f"- **gate**: {gate.meta.get('arch')} / {gate.meta.get('encoder')} at {gate.meta.get('input_size')} px\n"
                f"- **threshold in use**: {gate.threshold:.4g} (out-of-fold: {gate.meta.get('threshold', 'n/a')}, "
                f"recall target {gate.meta.get('recall_target', 'n/a')})\n"
                f"- **clean images skipped out of fold**: {skipped}"
            )
            st.json(gate.meta, expanded=False)


# ----------------------------------------------------------------------------- single image


def single_image_mode(settings: Settings, segmenter: Segmenter) -> None:
    upload = st.file_uploader("Image (JPG/PNG)", type=IMAGE_TYPES, key="image_upload",
                              max_upload_size=UPLOAD_LIMIT_MB["image"])
    gt_upload = st.file_uploader("Ground-truth mask (optional)", type=MASK_TYPES, key="gt_upload",
                                 max_upload_size=UPLOAD_LIMIT_MB["mask"])
    if upload is None:
        st.info("Upload an image to segment it.")
        return
    with tempfile.TemporaryDirectory(prefix="segapp-") as tmp, shown_errors(Path(tmp)):
        folder = Path(tmp)
        out = predict_image(segmenter, read_image(save_upload(upload, folder, "image")), settings.image_max_side,
                            settings.alpha)
        show_prediction(out, upload.name, folder)
        if out["multi"]:
            names = list(segmenter.meta.get("class_names") or range(segmenter.meta["num_classes"]))
            st.image(draw_legend([str(n) for n in names], palette=out["palette"]), caption="Class colours")
        if gt_upload is not None:
            gt, dice, iou = compare_gt(out["mask"], save_upload(gt_upload, folder, "mask"),
                                       int(segmenter.meta.get("num_classes", 1)), out["original_hw"],
                                       out["background"])
            show_gt(out, gt, dice, iou)


def show_prediction(out: dict, name: str, folder: Path) -> None:
    row, (h, w) = out["row"], out["image"].shape[:2]
    columns = st.columns(3)
    columns[0].image(out["image"], caption=f"Input {w}x{h}", width="stretch")
    columns[1].image(out["mask_view"], caption="Mask", width="stretch")
    columns[2].image(out["overlay"], caption="Overlay", width="stretch")
    if tuple(out["original_hw"]) != (h, w):
        st.caption(f"Downscaled from {out['original_hw'][1]}x{out['original_hw'][0]} (image max long side).")
    gated = row["status"] == "gated_clean"
    threshold = "n/a (gated)" if gated else "n/a (argmax)" if row["threshold"] == "" else f"{float(row['threshold']):.3f}"
    metrics = st.columns(5 if row["gate_prob"] != "" else 4)
    metrics[0].metric("Area", f"{row['area_px']} px")
    metrics[1].metric("Area %", f"{row['area_pct']:.2f} %")
    metrics[2].metric("Threshold used", threshold)
    metrics[3].metric("Components", row["components"])
    if row["gate_prob"] != "":
        metrics[4].metric("Gate prob", f"{float(row['gate_prob']):.4f}")
    if gated:
        st.info(f"gated_clean: the gate judged this image clean (probability {float(row['gate_prob']):.4f} below "
                f"its threshold {out['gate_threshold']:.4g}), so it was not segmented and the mask is empty.")
    elif row["status"] == "no_detection":
        st.warning("Nothing detected: try a fixed, lower threshold in the sidebar.")
    stem = Path(safe_name(name)).stem
    downloads = st.columns(2)
    downloads[0].download_button("Download mask PNG", png_bytes(out["mask"] if out["multi"] else out["mask_view"],
                                 folder, "mask.png"), f"{stem}_mask.png", "image/png", on_click="ignore")
    downloads[1].download_button("Download overlay PNG", png_bytes(out["overlay"], folder, "overlay.png"),
                                 f"{stem}_overlay.png", "image/png", on_click="ignore")


def show_gt(out: dict, gt: np.ndarray, dice: float, iou: float) -> None:
    st.subheader("Prediction vs ground truth")
    gt_view = colorize(gt, out["palette"]) if out["multi"] else gt * 255
    columns = st.columns(2)
    columns[0].image(out["mask_view"], caption="Prediction", width="stretch")
    columns[1].image(gt_view, caption="Ground truth", width="stretch")
    scores = st.columns(2)
    scores[0].metric("Dice", f"{dice:.4f}")
    scores[1].metric("IoU", f"{iou:.4f}")


# ----------------------------------------------------------------------------- batch ZIP and video


def cached_run(kind: str, upload, settings: Settings, segmenter: Segmenter) -> dict | None:
    """Run `inference.run` on an upload once; reruns of the page (a widget, a download) reuse the result."""
    key = (kind, upload.file_id, dataclasses.astuple(settings))
    stored = st.session_state.get("last_run")
    if stored is not None and stored["key"] == key:
        return stored
    st.session_state.pop("last_run", None)  # free the previous result's bytes
    with tempfile.TemporaryDirectory(prefix="segapp-") as tmp, shown_errors(Path(tmp)):
        folder = Path(tmp)
        source = save_upload(upload, folder, kind)
        bar = st.progress(0.0, text="starting")
        options = RunOptions(alpha=settings.alpha, video_max_side=settings.video_max_side,
                             vid_stride=settings.vid_stride)
        result = run(segmenter, source, folder / "out", options,
                     progress=progress_callback(bar, "frames" if kind == "video" else "images"))
        bar.progress(1.0, text="done")
        stored = collect_outputs(kind, result, folder)
        stored["key"] = key
        st.session_state["last_run"] = stored
        return stored
    return None


def collect_outputs(kind: str, result: dict, folder: Path) -> dict:
    """Read what a run wrote into memory (the temporary folder goes away) and clean its messages."""
    import pandas as pd  # streamlit's own dependency; only needed here

    table = pd.read_csv(result["summary_csv"])  # empty cells (no GT, no error) become NaN: numeric columns
    reasons = table["error"].dropna() if "error" in table else []
    stored = {"result": {k: v for k, v in result.items() if not isinstance(v, Path)}, "table": table,
              "errors": [strip_folder(str(reason), folder) for reason in reasons]}
    if result.get("predictions_zip"):
        stored["zip"] = Path(result["predictions_zip"]).read_bytes()
    if result.get("video"):
        video = Path(result["video"])
        stored["video"], stored["video_name"] = video.read_bytes(), video.name
        stored["preview"] = browser_preview(video)
    return stored


def upload_and_run(kind: str, label: str, types: list[str], hint: str, settings: Settings, segmenter: Segmenter):
    """The uploader of a batch mode ('zip' or 'video') and its cached run: (upload, stored or None)."""
    upload = st.file_uploader(label, type=types, key=f"{kind}_upload", max_upload_size=UPLOAD_LIMIT_MB[kind])
    if upload is None:
        st.info(hint)
        return None, None
    return upload, cached_run(kind, upload, settings, segmenter)


def zip_mode(settings: Settings, segmenter: Segmenter) -> None:
    upload, stored = upload_and_run(
        "zip", "ZIP of images", ["zip"],
        "Upload a .zip of JPG/PNG images; you get masks, overlays and summary.csv in predictions.zip.", settings, segmenter)
    if stored is None:
        return
    result = stored["result"]
    if result["images"] == result["errors"]:
        st.error("No image could be segmented: " + "; ".join(stored["errors"][:3]))
    elif result["errors"]:
        st.warning(f"{result['errors']} of {result['images']} file(s) failed; see the error column.")
    shown = [("Images", "images"), ("OK", "ok"), ("No detection", "no_detection"), ("Errors", "errors")]
    if segmenter.gate is not None:
        shown.insert(3, ("Gated clean", "gated_clean"))
    for column, (label, key) in zip(st.columns(len(shown)), shown):
        column.metric(label, result.get(key, 0))
    st.dataframe(stored["table"], hide_index=True)
    if "zip" in stored and result["images"] > result["errors"]:
        st.download_button("Download predictions.zip", stored["zip"], "predictions.zip", "application/zip",
                           on_click="ignore")


def video_mode(settings: Settings, segmenter: Segmenter) -> None:
    upload, stored = upload_and_run(
        "video", "Video (MP4/AVI/MOV/MKV)", VIDEO_TYPES,
        "Upload a video; every Nth frame is segmented (sidebar) and the annotated video comes back.", settings, segmenter)
    if stored is None:
        return
    result = stored["result"]
    if not stored.get("video"):
        reason = "; ".join(stored["errors"][:1]) or "no frames could be read"
        st.error(f"Cannot decode the video {upload.name}: {reason}. Upload an MP4/AVI/MOV/MKV file that plays.")
        return
    gated = f", {result.get('gated_clean', 0)} gated clean" if segmenter.gate is not None else ""
    st.caption(f"{result['images']} frames, {result['inferences']} inferred, {result['errors']} errors{gated}.")
    name = stored["video_name"]
    if stored.get("preview"):
        st.video(stored["preview"], format=PREVIEW_FORMAT[2])
    elif name.endswith(".mp4"):
        st.video(stored["video"], format="video/mp4")
    if name.endswith(".avi"):
        st.info("No MP4 encoder was available, so the annotated video is an AVI; browsers cannot play AVI "
                "files" + (" (the player above shows a WebM copy)" if stored.get("preview") else "")
                + ". Download it and open it in a video player.")
    mime = "video/mp4" if name.endswith(".mp4") else "video/x-msvideo"
    st.download_button(f"Download {name}", stored["video"], name, mime, on_click="ignore")
    with st.expander("Per-frame table"):
        st.dataframe(stored["table"], hide_index=True)


# ----------------------------------------------------------------------------- page


def main() -> None:
    defaults = read_env(os.environ)
    st.set_page_config(page_title="Segmentation", layout="wide")
    configure_logging()
    settings = sidebar(defaults)
    st.title("Segmentation")
    mode = st.radio("Mode", MODES, horizontal=True, key="mode", label_visibility="collapsed")
    segmenter = None
    with shown_errors():
        segmenter = open_segmenter(settings)
    if segmenter is None:
        return
    show_metadata(segmenter)
    show_running(segmenter)
    {"Single image": single_image_mode, "Batch ZIP": zip_mode, "Video": video_mode}[mode](settings, segmenter)


if __name__ == "__main__":
    main()
