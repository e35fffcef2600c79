#!/bin/sh
# Train, evaluate and export one model into the shared model directory, resuming when the run exists.
#   train-and-export NAME PRESET STEPS [extra `train` arguments...]
# Environment: MODEL_DIR (default /models), RUN_DIR (default /runs/NAME).
set -eu
name=$1 preset=$2 steps=$3
shift 3
model_dir=${MODEL_DIR:-/models}
run_dir=${RUN_DIR:-/runs/$name}
if [ -f "$run_dir/checkpoint.pt" ]; then
    python -m training train --resume --run-dir "$run_dir" --steps "$steps" --no-progress
else
    python -m training train --preset "$preset" --steps "$steps" --run-dir "$run_dir" --no-progress "$@"
fi
python -m training export --run-dir "$run_dir" --model-dir "$model_dir" --name "$name"
python -m training evaluate --model-dir "$model_dir" --name "$name"
