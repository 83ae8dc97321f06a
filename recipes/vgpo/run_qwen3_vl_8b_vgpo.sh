#!/usr/bin/env bash
# VGPO on Qwen3-VL-8B-Instruct with the 7B recipe's training settings (config/vgpo_trainer.yaml).
# Qwen3-VL's vision encoder uses 16-pixel patches (Qwen2.5-VL: 14); verl's data config defaults to 14,
# so the patch size is set here. Qwen3-VL's image pad token is the same <|image_pad|> VGPO looks for.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen3_vl_8b_vgpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-VL-8B-Instruct}
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
    data.image_patch_size=16 \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.experiment_name=qwen3_vl_8b_vgpo \
    "$@"
