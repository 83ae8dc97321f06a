#!/usr/bin/env bash
# VGPO on Qwen3.5-9B (natively multimodal, hybrid Gated-DeltaNet / attention layers) with the 7B recipe's
# training settings (config/vgpo_trainer.yaml) and the Qwen3-VL-8B script's parallelism (1 node x 8 GPUs,
# rollout TP 2). verl 0.9.1 patches the dense "qwen3_5" model type for its FSDP engine
# (verl/models/transformers/qwen3_5.py). Like Qwen3-VL, its vision encoder uses 16-pixel patches, so the
# patch size is set here; its image pad token (<|image_pad|>, id 248056) and vocabulary differ from
# Qwen2.5-VL's, which VGPO handles because it reads every token id from the model's config.
# Packed sequences (use_remove_padding) run the linear-attention layers per sequence unless
# flash-linear-attention is installed (pip install flash-linear-attention: fused varlen kernels, faster).
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen3_5_9b_vgpo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3.5-9B}

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    data.image_patch_size=16 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    algorithm.adv_estimator=vgpo \
    algorithm.vgpo.compensation_strength=0.3 \
    algorithm.vgpo.gate_start=0.5 \
    algorithm.vgpo.gate_top_ratio=0.2 \
    trainer.experiment_name=qwen3_5_9b_vgpo \
    "$@"
