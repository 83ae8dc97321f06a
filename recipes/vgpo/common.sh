# Sourced by the run_*.sh scripts of this recipe: shared defaults, a start-up check and the main_ppo call.
# A script sets MODEL_PATH (and NNODES where its default is not 1), sources this file, then calls
#   run_main_ppo <its own overrides> "$@"

PYTHON=${PYTHON:-python3}
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

run_main_ppo() {
    "$PYTHON" -m verl.trainer.main_ppo \
        --config-path="$RECIPE_DIR/config" \
        --config-name=vgpo_trainer \
        data.train_files="$TRAIN_FILES" \
        data.val_files="$VAL_FILES" \
        actor_rollout_ref.model.path="$MODEL_PATH" \
        trainer.nnodes="$NNODES" \
        trainer.n_gpus_per_node="$GPUS_PER_NODE" \
        "$@"
}
