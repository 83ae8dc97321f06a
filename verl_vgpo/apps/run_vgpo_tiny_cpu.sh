#!/usr/bin/env bash
# VGPO (or GRPO) with verl's real `main_ppo` on a CPU-only machine: tiny Qwen2.5-VL, easy-vqa images.
#
#   bash examples/run_vgpo_tiny_cpu.sh                      # VGPO, 4 steps, warm-started tiny VLM
#   ALGO=grpo STEPS=2 bash examples/run_vgpo_tiny_cpu.sh    # GRPO for comparison
#   bash examples/run_vgpo_tiny_cpu.sh trainer.rollout_data_dir=/tmp/rollouts   # extra Hydra overrides
#   WARM_START=0 REWARD_FN=compute_graded_score bash examples/run_vgpo_tiny_cpu.sh   # random model (CI smoke)
#   MODEL_FAMILY=qwen3_vl bash examples/run_vgpo_tiny_cpu.sh   # tiny Qwen3-VL (or qwen3_5; default qwen2_5_vl)
#
# One file: examples/run_vgpo_tiny_cpu.sh is a link to verl_vgpo/apps/run_vgpo_tiny_cpu.sh, which the package
# ships (vgpo-demo and vgpo-experiment run it from a non-editable install). It uses no repository path.
# Everything is offline: the model is built by verl_vgpo.cpu.warm_start (supervised on easy-vqa, cached) or
# verl_vgpo.cpu.tiny_vlm (random), the data by verl_vgpo.data.easy_vqa from the easy-vqa wheel.
# What differs from a GPU run, and why:
#   VERL_PLATFORM=cpu                      verl_vgpo's CPU platform (gloo, device "cpu"); exported here and passed
#                                          to every Ray worker through ray_init.runtime_env (also on a running cluster)
#   rollout.name=hf_cpu (tp=1)             verl_vgpo's HF-generate rollout server; vllm/sglang need a GPU
#   use_remove_padding=False, sdpa         the packed VLM attention path needs flash-attn
#   ray num_cpus=16                        Ray would deadlock scheduling verl's actors on 2 logical CPUs
#   ray resources verl_cpu_device=1        the CPU platform's placement-group resource (one "device")
#   ray num_gpus=1                         verl's resource check counts only GPU/NPU; a declared, unused GPU
#                                          slot satisfies it (nothing requests a GPU: the CPU platform asks for
#                                          verl_cpu_device)
#   agent/reward workers=1, TQ units=1     defaults start 8 of each: minutes of imports on 2 cores
#   sampler.poll_interval=0.2              verl's replay buffer checks for finished rollouts every 2 s (no
#                                          setting; verl_vgpo.wiring.compat adds one): gen 6.0 -> 5.3 s a step
#                                          (change it with trainer.v1.sampler.poll_interval=X, without '+')
#   actor/ref param_dtype=fp32             verl's bf16 default is slower on every CPU measured, by far without
#                                          native bf16 (docs/benchmarks.md); verl_vgpo.cpu.dtype prints the choice;
#                                          VGPO_CPU_DTYPE=bf16 keeps bf16, an explicit param_dtype override wins
set -euo pipefail

ALGO=${ALGO:-vgpo}
STEPS=${STEPS:-4}
OUT_DIR=${OUT_DIR:-artifacts/demo/${ALGO}}
MODEL_FAMILY=${MODEL_FAMILY:-qwen2_5_vl}         # tiny VLM family: qwen2_5_vl, qwen3_vl or qwen3_5
case "$MODEL_FAMILY" in
  qwen2_5_vl) IMAGE_PATCH_SIZE=14; MODEL_DIR=${MODEL_DIR:-artifacts/tiny_vlm} ;;
  # Qwen3-VL / Qwen3.5 processors use 16-pixel patches; verl's dataset defaults to 14 (data.image_patch_size)
  qwen3_vl|qwen3_5) IMAGE_PATCH_SIZE=16; MODEL_DIR=${MODEL_DIR:-artifacts/tiny_vlm_${MODEL_FAMILY}} ;;
  *) echo "run_vgpo_tiny_cpu.sh: MODEL_FAMILY must be qwen2_5_vl, qwen3_vl or qwen3_5, got '$MODEL_FAMILY'" >&2; exit 2 ;;
esac
DATA_DIR=${DATA_DIR:-artifacts/easy_vqa}
TRAIN_SIZE=${TRAIN_SIZE:-64}
VAL_SIZE=${VAL_SIZE:-16}
BATCH_SIZE=${BATCH_SIZE:-4}
ROLLOUT_N=${ROLLOUT_N:-4}
RESPONSE_LENGTH=${RESPONSE_LENGTH:-32}
LR=${LR:-1e-4}
SEED=${SEED:-0}                                # data order (data.seed); the model build has its own seed
WARM_START=${WARM_START:-1}                    # 1: build MODEL_DIR warm-started, 0: random tiny VLM
REWARD_FN=${REWARD_FN:-compute_score}          # strict 0/1; compute_graded_score for random models
VAL_BEFORE_TRAIN=${VAL_BEFORE_TRAIN:-False}
TEST_FREQ=${TEST_FREQ:--1}                     # validate every N steps (and after the last); -1: never
PYTHON=${PYTHON:-python}

case "$ALGO" in
  vgpo|grpo) ;;
  *) echo "run_vgpo_tiny_cpu.sh: ALGO must be vgpo or grpo, got '$ALGO'" >&2; exit 2 ;;
esac

if [ ! -f "$MODEL_DIR/config.json" ]; then
  if [ "$WARM_START" = 1 ]; then "$PYTHON" -m verl_vgpo.cpu.warm_start --out "$MODEL_DIR" --family "$MODEL_FAMILY"
  else "$PYTHON" -m verl_vgpo.cpu.tiny_vlm_cli --out "$MODEL_DIR" --family "$MODEL_FAMILY"; fi
fi
MODEL_TYPE=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model_type"])' "$MODEL_DIR/config.json")
if [ "$MODEL_TYPE" != "$MODEL_FAMILY" ]; then
  echo "run_vgpo_tiny_cpu.sh: MODEL_DIR=$MODEL_DIR holds a $MODEL_TYPE model but MODEL_FAMILY=$MODEL_FAMILY" >&2; exit 2
fi
[ -f "$DATA_DIR/train.parquet" ] || "$PYTHON" -m verl_vgpo.data.easy_vqa \
  --local_save_dir "$DATA_DIR" --train_size "$TRAIN_SIZE" --val_size "$VAL_SIZE"

mkdir -p "$OUT_DIR"
DTYPE_OVERRIDES=()
case " $* " in
  *mixed_precision.param_dtype=*) echo "run_vgpo_tiny_cpu.sh: actor/ref dtype as given in the overrides" >&2 ;;
  *) DTYPE_LINES=$("$PYTHON" -m verl_vgpo.cpu.dtype --describe); DTYPE_OVERRIDES=($DTYPE_LINES) ;;
esac
export VERL_PLATFORM=cpu
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TOKENIZERS_PARALLELISM=false
# machine-readable per-step metrics (verl's "file" logger): one JSON object per step
export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$OUT_DIR/metrics.jsonl}

exec "$PYTHON" -m verl.trainer.main_ppo \
  algorithm.adv_estimator="$ALGO" \
  algorithm.use_kl_in_reward=False \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$DATA_DIR/test.parquet" \
  data.train_batch_size="$BATCH_SIZE" \
  data.max_prompt_length=128 \
  data.max_response_length="$RESPONSE_LENGTH" \
  data.dataloader_num_workers=0 \
  data.seed="$SEED" \
  data.image_patch_size="$IMAGE_PATCH_SIZE" \
  actor_rollout_ref.model.path="$MODEL_DIR" \
  actor_rollout_ref.model.use_remove_padding=False \
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
  actor_rollout_ref.actor.strategy=fsdp2 \
  actor_rollout_ref.ref.strategy=fsdp2 \
  actor_rollout_ref.actor.optim.lr="$LR" \
  actor_rollout_ref.actor.ppo_mini_batch_size="$BATCH_SIZE" \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.rollout.name=hf_cpu \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.n="$ROLLOUT_N" \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
  reward.num_workers=1 \
  reward.custom_reward_function.path=pkg://verl_vgpo.rewards.exact_match \
  reward.custom_reward_function.name="$REWARD_FN" \
  transfer_queue.backend.SimpleStorage.num_data_storage_units=1 \
  +trainer.v1.sampler.poll_interval=0.2 \
  trainer.device=cpu \
  trainer.n_gpus_per_node=1 \
  trainer.nnodes=1 \
  trainer.total_training_steps="$STEPS" \
  trainer.val_before_train="$VAL_BEFORE_TRAIN" \
  trainer.test_freq="$TEST_FREQ" \
  trainer.save_freq=-1 \
  trainer.logger='[console,file]' \
  trainer.project_name=vgpo_tiny_cpu \
  trainer.experiment_name="$ALGO" \
  trainer.default_local_dir="$OUT_DIR/checkpoints" \
  ray_kwargs.ray_init.num_cpus=16 \
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=cpu \
  +ray_kwargs.ray_init.num_gpus=1 \
  +ray_kwargs.ray_init.resources.verl_cpu_device=1 \
  "${DTYPE_OVERRIDES[@]}" \
  "$@"
