#!/usr/bin/env bash
# The two models bench/gate.py compares, trained on the same generated steel strips (issue 11):
#   800 half-scale 800x128 strips (50 % clean, seed 5), 4 folds (stratified on clean vs defective),
#   fold 0 trained (600 strips), fold 0's 200 strips held back for the scores and the gate threshold.
#
#   bash bench/steel_models.sh [OUT]        # OUT defaults to runs/steel_bench; ~25 min on 2 idle cores
#   python bench/gate.py --model OUT/seg/steel.onnx --gate OUT/gate/gate.onnx --width 800 --height 128 --count 60
set -euo pipefail
out=${1:-runs/steel_bench}
py=${PYTHON:-python}
"$py" -m demos.steel --out "$out/data" --count 800 --clean-fraction 0.5 --seed 5 --width 800 --height 128 --ext jpg
common=(--raw-img-dir "$out/data/images" --raw-mask-dir "$out/data/masks" --classes 5
        --classes-file "$out/data/classes.txt" --encoder resnet18 --encoder-weights none --input-size 800
        --folds 4 --fold-ids 0 --scheduler onecycle --patience 20)
# the segmenter: Unet/resnet18, 2 crops of 128x256 per strip and epoch, whole-strip validation
"$py" train.py "${common[@]}" --work-dir "$out/seg" --name steel --model Unet --class-weights auto \
    --train-patch 128x256 --patches-per-image 2 --epochs 10 --lr 2e-3 --batch-size 8 --min-area 16
# the gate: resnet18 + avg/max pooling at 384 px (INPUT_SIZE / 2), threshold for recall >= 0.99 out of fold
"$py" train.py "${common[@]}" --work-dir "$out/gate" --task classify --gate-pool avgmax \
    --epochs 15 --lr 1e-3 --batch-size 16
