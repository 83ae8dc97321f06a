#!/usr/bin/env bash
# DAPO baseline for the VGPO 7B recipe, expressed with verl 0.9.1's own switches on top of the identical
# settings of config/vgpo_trainer.yaml (which already has DAPO's clip-higher 0.2/0.28, token-mean loss,
# no KL and dynamic sampling: algorithm.filter_groups drops prompt groups whose 8 rollouts all have the
# same accuracy and refills the batch, as the VGPO authors' online filtering does for every method).
# What this script adds is DAPO's overlong reward shaping: the "dapo" reward manager subtracts up to
# penalty_factor for responses that run into the last OVERLONG_BUFFER tokens before max_response_length.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen2_5_vl_7b_dapo.sh [extra hydra overrides...]
set -euo pipefail

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}
MAX_RESPONSE_LENGTH=2048
OVERLONG_BUFFER=512

# shared defaults (data paths, NNODES, GPUS_PER_NODE), the GPU-count check and run_main_ppo
source "$RECIPE_DIR/common.sh"

run_main_ppo \
    data.max_response_length="$MAX_RESPONSE_LENGTH" \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    algorithm.adv_estimator=grpo \
    reward.reward_manager.name=dapo \
    +reward.reward_kwargs.max_resp_len="$MAX_RESPONSE_LENGTH" \
    +reward.reward_kwargs.overlong_buffer_cfg.enable=true \
    +reward.reward_kwargs.overlong_buffer_cfg.len="$OVERLONG_BUFFER" \
    +reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0 \
    +reward.reward_kwargs.overlong_buffer_cfg.log=true \
    trainer.experiment_name=qwen2_5_vl_7b_dapo \
    "$@"
