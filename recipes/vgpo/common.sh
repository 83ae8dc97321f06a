# Sourced by the run_*.sh scripts of this recipe: shared defaults, a start-up check and the main_ppo call.
# A script sets MODEL_PATH (and NNODES where its default is not 1), sources this file, then calls
#   run_main_ppo <its own overrides> "$@"
# SMOKE=cpu runs the same config on a CPU-only machine with only the hardware swapped (verl_vgpo.apps.smoke).

PYTHON=${PYTHON:-python3}
# sourced without arguments, this file sees the script's own: the user's extra overrides (they come last)
USER_ARGC=$#
DATA_DIR=${DATA_DIR:-$HOME/data}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/virl39k/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/mmk12/test.parquet}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# validation during training: "greedy" (the VGPO paper's protocol, temperature 0) or "avg8" (PAPO's:
# 8 samples per prompt at temperature 1.0, verl logs val-core/<source>/acc/mean@8)
VAL_PROTOCOL=${VAL_PROTOCOL:-greedy}

case "$VAL_PROTOCOL" in
    greedy) VAL_OVERRIDES=() ;;
    avg8)
        VAL_OVERRIDES=(
            actor_rollout_ref.rollout.val_kwargs.n=8
            actor_rollout_ref.rollout.val_kwargs.do_sample=true
            actor_rollout_ref.rollout.val_kwargs.temperature=1.0
            actor_rollout_ref.rollout.val_kwargs.top_p=1.0
        ) ;;
    *)
        echo "$(basename "$0"): VAL_PROTOCOL must be greedy or avg8, got '$VAL_PROTOCOL'" >&2
        exit 2 ;;
esac

# with dynamic batching verl checks this only at the first update, after a full rollout: check it here.
# Each update step takes 128 prompts x 8 rollouts (config/vgpo_trainer.yaml), split over all GPUs.
if (( (128 * 8) % (NNODES * GPUS_PER_NODE) != 0 )); then
    echo "$(basename "$0"): 128 prompts x 8 rollouts per update must split evenly over NNODES x GPUS_PER_NODE" \
         "= $((NNODES * GPUS_PER_NODE)) GPUs (use 1, 2, 4 or 8 nodes of 8 GPUs)" >&2
    exit 2
fi

run_main_ppo() {
    local main=(-m verl.trainer.main_ppo)
    if [[ -n "${SMOKE:-}" ]]; then
        main=(-m verl_vgpo.apps.smoke --script "$0" --user-args "$USER_ARGC" --)
    fi
    "$PYTHON" "${main[@]}" \
        --config-path="$RECIPE_DIR/config" \
        --config-name=vgpo_trainer \
        data.train_files="$TRAIN_FILES" \
        data.val_files="$VAL_FILES" \
        actor_rollout_ref.model.path="$MODEL_PATH" \
        trainer.nnodes="$NNODES" \
        trainer.n_gpus_per_node="$GPUS_PER_NODE" \
        ${VAL_OVERRIDES[@]+"${VAL_OVERRIDES[@]}"} \
        "$@"
}
