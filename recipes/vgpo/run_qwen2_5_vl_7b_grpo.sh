#!/usr/bin/env bash
# GRPO baseline for the VGPO 7B recipe: identical settings (config/vgpo_trainer.yaml), plain GRPO advantage.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen2_5_vl_7b_grpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=grpo \
    trainer.experiment_name=qwen2_5_vl_7b_grpo \
    "$@"
