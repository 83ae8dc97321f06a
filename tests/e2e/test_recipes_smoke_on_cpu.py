"""``SMOKE=cpu bash recipes/vgpo/<script>.sh``: the cluster recipes' own configs through verl's real main_ppo on CPU.

One smoke run per recipe (7B VGPO, 7B GRPO, Qwen3-VL-8B, Qwen3.5-9B: 3 steps, save_freq 1) plus one resumed step,
shared by every check of that recipe (module-scoped fixtures). The recipes combine what the CPU run script never
does: 2 data-parallel ranks, packed sequences (Qwen2.5-VL through verl's flash-attention code with the torch
kernel stand-in), dynamic batching with a two-sequence token limit, 4 optimiser steps per rollout batch,
filter_groups, gradient checkpointing, checkpoint pruning and validation before training. Checked per recipe:

* every step logged; VGPO metrics with ``vgpo/no_signal_fraction`` 0 (GRPO: none);
* optimiser steps per rollout batch = the recipe's train_batch_size / ppo_mini_batch_size (AdamW's step count in
  the saved optimiser state, 4 per step);
* filter_groups evicted groups and refilled the batch: every trained group has differing scores;
* checkpoints pruned to ``max_actor_ckpt_to_keep`` (2 of 3); ``resume_mode=auto`` continues at step 4;
* VGPO recipes: the focus dump of step 1 (the model's initial weights) matches a teacher-forced fp32 recompute of
  every kept row within 1e-5, with rows split over 2 ranks, packed, split into micro-batches and restored.

Plus: a run whose reward is always 0 stops on its own with the filter_groups error (every estimator: GRPO here).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.e2e.focus_recompute import FOCUS_TOLERANCE, FocusRecomputer, focus_dump, focus_gap, verl_dump
from verl_vgpo.apps import runner
from verl_vgpo.apps import smoke as smoke_mode

pytestmark = pytest.mark.slow  # launches main_ppo

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO / "recipes" / "vgpo"
RECIPES = {
    "qwen2_5_vl_7b_vgpo": "run_qwen2_5_vl_7b_vgpo.sh",
    "qwen2_5_vl_7b_grpo": "run_qwen2_5_vl_7b_grpo.sh",
    "qwen3_vl_8b_vgpo": "run_qwen3_vl_8b_vgpo.sh",
    "qwen3_5_9b_vgpo": "run_qwen3_5_9b_vgpo.sh",
}
STEPS = 3
UPDATES_PER_STEP = 4  # the recipe's 512 / 128
BATCH_PROMPTS = 4  # smoke train_batch_size: 4 updates x 1 prompt
ROLLOUT_N = 8
KEEP_CHECKPOINTS = 2
RUN_TIMEOUT_S = 600


def smoke(script: str, out_dir: Path, cache: Path, extra=(), env=None, timeout_s=RUN_TIMEOUT_S) -> dict:
    """Run ``SMOKE=cpu bash recipes/vgpo/<script> extra...``; return exit code, wall time and log path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"smoke_{len(list(out_dir.glob('smoke_*.log')))}.log"
    run_env = dict(os.environ, SMOKE="cpu", OUT_DIR=str(out_dir), SMOKE_CACHE=str(cache), PYTHON=sys.executable,
                   VGPO_CPU_DTYPE="fp32", OMP_NUM_THREADS="1", **(env or {}))
    for name in ("MODEL_PATH", "TRAIN_FILES", "VAL_FILES"):
        run_env.pop(name, None)
    start = time.monotonic()
    code = runner.stream_subprocess(["bash", str(RECIPE_DIR / script), *extra], REPO, run_env, log, timeout_s,
                                    lambda line: None)
    return {"code": code, "wall_s": time.monotonic() - start, "log": log}


def _excerpt(result) -> str:
    lines = Path(result["log"]).read_text(errors="replace").splitlines()
    errors = [line for line in lines if "Error" in line and "Warning" not in line]
    return "\n".join((errors or lines)[-15:])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke_cache")


@pytest.fixture(scope="module", params=list(RECIPES))
def recipe_run(request, cache, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    first = smoke(RECIPES[name], out, cache)
    assert first["code"] == 0, f"{name}: smoke run failed:\n{_excerpt(first)}"
    metrics = runner.read_metrics(out / "metrics.jsonl")
    actor_checkpoints = sorted(p.parent.name for p in (out / "checkpoints").glob("global_step_*/actor"))
    (out / "metrics.jsonl").rename(out / "metrics_first.jsonl")  # verl's file logger truncates on the next run
    resumed = smoke(RECIPES[name], out, cache, ["trainer.resume_mode=auto", f"trainer.total_training_steps={STEPS + 1}"])
    assert resumed["code"] == 0, f"{name}: resumed smoke run failed:\n{_excerpt(resumed)}"
    print(f"{name}: smoke run {first['wall_s']:.0f} s, resumed step {resumed['wall_s']:.0f} s")
    return {"name": name, "out": out, "metrics": metrics, "resumed": runner.read_metrics(out / "metrics.jsonl"),
            "cache": cache, "logs": (first["log"], resumed["log"]), "actor_checkpoints": actor_checkpoints}


def _training_records(records: list[dict]) -> list[dict]:
    return [record for record in records if "timing_s/step" in record]


def test_every_step_runs_with_the_estimators_metrics(recipe_run):
    training = _training_records(recipe_run["metrics"])
    assert [record["step"] for record in training] == list(range(1, STEPS + 1))
    assert any(key.startswith("val-core/") for record in recipe_run["metrics"] for key in record), "no validation logged"
    vgpo = [record for record in training if "vgpo/no_signal_fraction" in record]
    if recipe_run["name"].endswith("_vgpo"):
        assert len(vgpo) == STEPS
        for record in vgpo:
            assert record["vgpo/no_signal_fraction"] == 0.0
            # inside trajectory_weight_clip [0.9, 2.0] (logged in float32: 0.9 reads 0.89999998)
            assert 0.9 - 1e-6 <= record["vgpo/trajectory_weight/min"] <= record["vgpo/trajectory_weight/max"] <= 2.0 + 1e-6
    else:
        assert vgpo == []


def test_optimiser_steps_per_rollout_batch_follow_the_recipes_ratio(recipe_run):
    """AdamW's per-parameter step count in the last checkpoint = steps x (train batch / mini-batch)."""
    shards = sorted((recipe_run["out"] / "checkpoints" / f"global_step_{STEPS}" / "actor").glob("optim_world_size_2_rank_*.pt"))
    assert len(shards) == 2, f"expected the optimiser state of 2 ranks, found {shards}"
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)
        steps = {float(entry["step"]) for entry in state["state"].values() if "step" in entry}
        assert steps == {float(STEPS * UPDATES_PER_STEP)}, f"{shard.name}: AdamW steps {steps}"


def test_filter_groups_evicts_and_refills(recipe_run):
    training = _training_records(recipe_run["metrics"])
    evicted = sum(record.get("training/filter_groups/evicted_samples", 0) for record in training)
    assert evicted > 0, f"no group evicted in {STEPS} steps"
    for step in range(1, STEPS + 1):
        groups = defaultdict(list)
        for row in verl_dump(recipe_run["out"] / "rollouts", step):
            groups[row["uid"].rsplit("_", 2)[0]].append(row["score"])
        assert len(groups) == BATCH_PROMPTS, f"step {step}: {len(groups)} groups, the batch was not refilled"
        for uid, scores in groups.items():
            assert len(scores) == ROLLOUT_N and len(set(scores)) > 1, f"step {step}: kept group {uid} {scores}"


def test_checkpoints_are_pruned_and_resume_continues(recipe_run):
    # verl prunes global_step_N/actor and leaves the step folder with its dataloader state (data.pt). A resumed
    # run prunes only its own saves (its checkpoint manager starts with an empty list), so this is checked on
    # the first run: the actor checkpoints of the last two of steps 1-3.
    assert recipe_run["actor_checkpoints"] == ["global_step_2", "global_step_3"]
    checkpoints = recipe_run["out"] / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS + 1)
    resumed = _training_records(recipe_run["resumed"])
    assert [record["step"] for record in resumed] == [STEPS + 1]
    log = recipe_run["logs"][1].read_text(errors="replace")
    assert f"Resuming from {checkpoints / f'global_step_{STEPS}'}, setting global step to {STEPS}" in log


def test_focus_dump_matches_an_fp32_recompute_of_every_kept_row(recipe_run):
    if not recipe_run["name"].endswith("_vgpo"):
        pytest.skip("GRPO writes no focus dump")
    family = smoke_mode.script_family(RECIPES[recipe_run["name"]])
    model = recipe_run["cache"] / f"tiny_{family}"
    recomputer = FocusRecomputer(model, recipe_run["cache"] / "easy_vqa" / "train.parquet")
    rows = focus_dump(recipe_run["out"] / "rollouts", 1)  # step 1: the initial weights
    assert len(rows) == BATCH_PROMPTS * ROLLOUT_N
    # Qwen2.5-VL's packed attention runs verl's flash-attention code: bf16 q / k / v even in an fp32 run (measured
    # gap 0.0 with that rounding recomputed, 5e-4 without it)
    recomputed = recomputer.recompute(rows, flash_bf16_interface=family == "qwen2_5_vl")
    gaps = [focus_gap(row["focus"], focus) for row, focus in zip(rows, recomputed)]
    assert max(gaps) <= FOCUS_TOLERANCE, f"{family}: a kept row's focus is {max(gaps):.3g} off its recompute"
    # the check separates rows: another group's recompute is far off
    shifted = [focus_gap(rows[i]["focus"], recomputed[(i + ROLLOUT_N) % len(rows)]) for i in range(len(rows))]
    assert min(shifted) > 10 * FOCUS_TOLERANCE


def test_a_reward_that_is_always_zero_stops_on_its_own(cache, tmp_path):
    result = smoke("run_qwen2_5_vl_7b_grpo.sh", tmp_path / "zero", cache, [
        "reward.custom_reward_function.name=compute_zero_score", "algorithm.filter_groups.max_num_gen_batches=2",
        "trainer.val_before_train=False",
    ])
    assert result["code"] not in (0, None), "the run with a zero reward did not stop with an error"
    log = result["log"].read_text(errors="replace")
    assert "algorithm.filter_groups: stopped after 2 generation batches (8 prompts" in log
    assert "only 0 of 8 finished prompt groups (0.0%) were kept, 4 needed" in log


def test_ulysses_sequence_parallel_focus_matches_the_recompute(cache, tmp_path):
    """The 7B recipe with Ulysses SP 2 (gloo all-to-all): every row's focus, captured per shard and gathered,
    equals the teacher-forced recompute (measured gap 0.0 on 32 rows)."""
    out = tmp_path / "ulysses"
    result = smoke("run_qwen2_5_vl_7b_vgpo.sh", out, cache, [
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "trainer.total_training_steps=1",
        "trainer.val_before_train=False",
    ])
    assert result["code"] == 0, f"Ulysses smoke run failed:\n{_excerpt(result)}"
    rows = focus_dump(out / "rollouts", 1)
    assert len(rows) == BATCH_PROMPTS * ROLLOUT_N
    recomputer = FocusRecomputer(cache / "tiny_qwen2_5_vl", cache / "easy_vqa" / "train.parquet")
    recomputed = recomputer.recompute(rows, flash_bf16_interface=True)
    gaps = [focus_gap(row["focus"], focus) for row, focus in zip(rows, recomputed)]
    assert max(gaps) <= FOCUS_TOLERANCE, f"Ulysses: a row's focus is {max(gaps):.3g} off its recompute"
