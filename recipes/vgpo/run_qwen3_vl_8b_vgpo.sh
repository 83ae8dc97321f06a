#!/usr/bin/env bash
# VGPO on Qwen3-VL-8B-Instruct with the 7B recipe's training settings (config/vgpo_trainer.yaml).
# Qwen3-VL's vision encoder uses 16-pixel patches (Qwen2.5-VL: 14); verl's data config defaults to 14,
# so the patch size is set here. Qwen3-VL's image pad token is the same <|image_pad|> VGPO looks for.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen3_vl_8b_vgpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-VL-8B-Instruct}

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    data.image_patch_size=16 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.experiment_name=qwen3_vl_8b_vgpo \
    "$@"
