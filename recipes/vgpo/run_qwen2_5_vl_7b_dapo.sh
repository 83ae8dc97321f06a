#!/usr/bin/env bash
# DAPO baseline for the VGPO 7B recipe, expressed with verl 0.9.1's own switches on top of the identical
# settings of config/vgpo_trainer.yaml (which already has DAPO's clip-higher 0.2/0.28, token-mean loss
# and no KL):
#   - dynamic sampling: algorithm.filter_groups drops prompt groups whose 8 rollouts all have the same
#     accuracy and refills the batch (the v1 ReplayBuffer; max_inflight_gen_batches bounds refills);
#   - overlong reward shaping: the "dapo" reward manager subtracts up to penalty_factor for responses
#     that run into the last OVERLONG_BUFFER tokens before max_response_length.
#
# Usage: NNODES=1 bash recipes/vgpo/run_qwen2_5_vl_7b_dapo.sh [extra hydra overrides...]
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
MAX_RESPONSE_LENGTH=2048
OVERLONG_BUFFER=512

"$PYTHON" -m verl.trainer.main_ppo \
    --config-path="$RECIPE_DIR/config" \
    --config-name=vgpo_trainer \
    data.train_files="$TRAIN_FILES" \
    data.val_files="$VAL_FILES" \
    data.max_response_length="$MAX_RESPONSE_LENGTH" \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.28 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    algorithm.adv_estimator=grpo \
    algorithm.filter_groups.enable=true \
    algorithm.filter_groups.metric=acc \
    algorithm.filter_groups.max_inflight_gen_batches=3 \
    reward.reward_manager.name=dapo \
    +reward.reward_kwargs.max_resp_len="$MAX_RESPONSE_LENGTH" \
    +reward.reward_kwargs.overlong_buffer_cfg.enable=true \
    +reward.reward_kwargs.overlong_buffer_cfg.len="$OVERLONG_BUFFER" \
    +reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0 \
    +reward.reward_kwargs.overlong_buffer_cfg.log=true \
    trainer.nnodes="$NNODES" \
    trainer.n_gpus_per_node="$GPUS_PER_NODE" \
    trainer.experiment_name=qwen2_5_vl_7b_dapo \
    "$@"
