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
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-32B-Instruct}
NNODES=${NNODES:-2}

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    actor_rollout_ref.actor.fsdp_config.param_offload=true \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=6144 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=4 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.experiment_name=qwen2_5_vl_32b_vgpo \
    "$@"
