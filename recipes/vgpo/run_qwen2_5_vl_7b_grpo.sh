#!/usr/bin/env bash
# GRPO baseline for the VGPO 7B recipe: identical settings (config/vgpo_trainer.yaml), plain GRPO advantage.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen2_5_vl_7b_grpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/virl39k/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/mmk12/test.parquet}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# with dynamic batching verl checks this only at the first update, after a full rollout: check it here.
# Each update step takes 128 prompts x 8 rollouts (config/vgpo_trainer.yaml), split over all GPUs.
if (( (128 * 8) % (NNODES * GPUS_PER_NODE) != 0 )); then
    echo "$(basename "$0"): 128 prompts x 8 rollouts per update must split evenly over NNODES x GPUS_PER_NODE" \
         "= $((NNODES * GPUS_PER_NODE)) GPUs (use 1, 2, 4 or 8 nodes of 8 GPUs)" >&2
    exit 2
fi

"$PYTHON" -m verl.trainer.main_ppo \
    --config-path="$RECIPE_DIR/config" \
    --config-name=vgpo_trainer \
    data.train_files="$TRAIN_FILES" \
    data.val_files="$VAL_FILES" \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=grpo \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.experiment_name=qwen2_5_vl_7b_grpo \
    "$@"
