#!/usr/bin/env bash
# VGPO on Qwen2.5-VL-7B-Instruct: the paper's main setup (arXiv 2604.09349).
# ViRL39K train, MMK12 validation, 8 rollouts per prompt, 512 prompts per rollout batch, 128 per update,
# lr 1e-6, weight decay 1e-2, clip 0.2/0.28, no KL, token-mean loss, prompt 4096 / response 2048 tokens,
# temperature 1.0, 2 epochs, VGPO beta 0.3 gamma 0.5 kappa 0.2. Most of it lives in config/vgpo_trainer.yaml.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen2_5_vl_7b_vgpo.sh [extra hydra overrides...]
# Data: python examples/data_preprocess/virl39k.py && python examples/data_preprocess/mmk12.py
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.experiment_name=qwen2_5_vl_7b_vgpo \
    "$@"
