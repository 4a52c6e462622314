"""Training, split along its seams; `train.py` is the entry point that runs it.

    distributed  torchrun helpers: rank, world size, barrier, sums and gathers over the ranks
    splits       K folds (stratified, grouped), the split lists, class weights
    metrics      per-image Dice/IoU, running sums, out-of-fold statistics, logs/metrics.json, trackers
    loop         the one fold loop: loaders, optimizer step, evaluation, checkpoints, resume, cross-validation
    tasks        what the segmenter and the clean/defect gate put into that loop
    scoring      out-of-fold scoring as the runtime scores, and cv_summary.json
    budget       TIME_BUDGET: parse a duration, plan the epochs from measured times, the run's clock (no torch)
"""
