#!/usr/bin/env bash
# VGPO on Qwen2.5-VL-32B-Instruct with the 7B recipe's training settings (config/vgpo_trainer.yaml).
# Memory: full fine-tuning of 32B parameters with AdamW needs ~16 bytes/parameter (~512 GB) for weights,
# gradients and optimizer state: ~32 GB per GPU when sharded over 2 nodes x 8 GPUs (the default NNODES=2).
# Parameters and optimizer state are offloaded to CPU while vLLM generates, so the rollout's KV cache has
# room, and rollouts use 4-way tensor parallelism. Switch the offload off on GPUs with more memory:
#   bash run_qwen2_5_vl_32b_vgpo.sh actor_rollout_ref.actor.fsdp_config.param_offload=false ...
#
# Usage: NNODES=2 bash recipes/vgpo/run_qwen2_5_vl_32b_vgpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-32B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/virl39k/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/mmk12/test.parquet}
NNODES=${NNODES:-2}
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
    actor_rollout_ref.actor.fsdp_config.param_offload=true \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=6144 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=4 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.experiment_name=qwen2_5_vl_32b_vgpo \
    "$@"
