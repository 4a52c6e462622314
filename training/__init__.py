"""Training, split along its seams; `train.py` is the entry point that runs it.

    distributed  torchrun helpers: rank, world size, barrier, sums and gathers over the ranks
    splits       K folds (stratified, grouped), the split lists, class weights
    metrics      per-image Dice/IoU, running sums, out-of-fold statistics, logs/metrics.json, trackers
    loop         the one fold loop: loaders, optimizer step, evaluation, checkpoints, resume, cross-validation
    tasks        what the segmenter and the clean/defect gate put into that loop
    scoring      out-of-fold scoring as the runtime scores, and cv_summary.json
    budget       TIME_BUDGET: parse a duration, plan the epochs from measured times, the run's clock (no torch)
    progress     a bar on a terminal, a log line every LOG_EVERY seconds elsewhere
    sources/     where labelled samples come from: folders, Label Studio, RLE CSV (no torch)
    classify     the clean/defect gate: its labels, metrics and out-of-fold threshold
    smartcrop    the YOLO11-seg person cropper (ultralytics) and its ONNX export
    loaders, precision, ema, ramcache: a fold's DataLoaders, AMP, the weight average, the cache in RAM
"""
