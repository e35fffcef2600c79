#!/bin/sh
# One node of a multi-node training run: torchrun on this pod, then (node 0 only) export and evaluate.
#   NAME, PRESET, STEPS: the model, the preset, the generator steps; TRAIN_ARGS: more `train` arguments
#   NNODES, NPROC_PER_NODE, RDZV_ENDPOINT (host:port of node 0): the c10d rendezvous (Indexed Job); under a
#   Kubeflow PyTorchJob the operator's PET_* variables give torchrun the same (RDZV_ENDPOINT left empty).
#   Node 0 (the Indexed Job's JOB_COMPLETION_INDEX, the operator's PET_NODE_RANK) exports at the end.
# The run directory is on a ReadWriteMany volume: rank 0 writes it, every rank reads it on --resume. A pod
# that the Job restarts finds the checkpoint and every node resumes it (torchrun stops all nodes when one
# fails, so all restart together and agree).
set -eu
run_dir=${RUN_DIR:-/runs/$NAME}
model_dir=${MODEL_DIR:-/models}
if [ -f "$run_dir/checkpoint.pt" ]; then
    set -- --resume
else
    set -- --preset "$PRESET"
fi
if [ -n "${RDZV_ENDPOINT:-}" ]; then
    set -- --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --rdzv-backend c10d \
        --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$NAME" -m training train "$@"
else
    set -- -m training train "$@"
fi
# shellcheck disable=SC2086  # TRAIN_ARGS: words on purpose
python -m torch.distributed.run "$@" --steps "$STEPS" --run-dir "$run_dir" --no-progress ${TRAIN_ARGS:-}
if [ "${JOB_COMPLETION_INDEX:-${PET_NODE_RANK:-0}}" = 0 ]; then
    python -m training export --run-dir "$run_dir" --model-dir "$model_dir" --name "$NAME"
    python -m training evaluate --model-dir "$model_dir" --name "$NAME"
fi
