"""Checkpoint, resume and in-loop validation of ``main_ppo algorithm.adv_estimator=vgpo`` on CPU.

Two real runs of ``examples/run_vgpo_tiny_cpu.sh`` (verl's V1 trainer, Ray, FSDP2 on gloo, the ``hf_cpu``
rollout; only what cannot exist on CPU is swapped, through verl's registries) share one checkpoint folder:

1. steps 1-2 with ``trainer.save_freq=2`` and ``trainer.test_freq=2`` (validation inside the loop);
2. ``trainer.resume_mode=auto`` up to step 4: it must start at step 3 from ``global_step_2``.

Checked: the step counter continues (3, 4, not 1, 2), the optimiser state was restored (AdamW's per-parameter
step count in the step-4 checkpoint is the step-2 count plus the updates of the resumed run; a fresh optimiser
would hold only the latter), the resumed run logs finite VGPO metrics with a focus signal, and validation ran
at its test_freq step and at the last step. verl's file logger truncates its file when a run starts, so each run
writes its own metrics file (the runner sets ``VERL_FILE_LOGGER_PATH`` per run folder).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_vgpo.apps import runner

pytestmark = pytest.mark.slow  # launches main_ppo or trains a warm start


RUN_TIMEOUT_S = 300
BATCH_SIZE = 4  # prompts per step, also the script's ppo_mini_batch_size: one optimiser update per step


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory, tiny_vlm_path):
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "easy_vqa"
    subprocess.run([sys.executable, "-m", "verl_vgpo.data.easy_vqa", "--local_save_dir", str(data_dir),
                    "--train_size", "16", "--val_size", "4"], check=True, timeout=300)
    checkpoints = root / "checkpoints"
    # the random tiny VLM needs the graded reward (strict 0/1 rewards would all be 0: no gradient to restore)
    knobs = {"REWARD_FN": "compute_graded_score", "TEST_FREQ": 2, "BATCH_SIZE": BATCH_SIZE, "RESPONSE_LENGTH": 16}
    shared = [f"trainer.default_local_dir={checkpoints}", "trainer.save_freq=2"]
    first = runner.run_main_ppo("vgpo", 2, root, Path(tiny_vlm_path), data_dir, RUN_TIMEOUT_S, shared, quiet=True,
                              knobs=knobs, run_name="first")
    first_records = runner.read_metrics(first["metrics_path"])
    second = runner.run_main_ppo("vgpo", 4, root, Path(tiny_vlm_path), data_dir, RUN_TIMEOUT_S,
                               [*shared, "trainer.resume_mode=auto"], quiet=True, knobs=knobs, run_name="resumed")
    return {"first": first_records, "resumed": runner.read_metrics(second["metrics_path"]),
            "resumed_log": Path(second["log_path"]).read_text(), "checkpoints": checkpoints}


def _adam_step_counts(optimizer_file: Path) -> set[float]:
    """The per-parameter ``step`` counters of a saved AdamW state (one value when all parameters trained)."""
    state = torch.load(optimizer_file, map_location="cpu", weights_only=False)
    if "optimizer" in state:  # some verl versions wrap the optimiser state dict
        state = state["optimizer"]
    steps = set()
    for param_state in state["state"].values():
        step = param_state["step"]
        step = step.full_tensor() if hasattr(step, "full_tensor") else step
        steps.add(float(torch.as_tensor(step).item()))
    return steps


def test_resume_continues_the_step_counter(resumed_runs):
    assert [record["step"] for record in resumed_runs["first"]] == [1, 2]
    assert [record["step"] for record in resumed_runs["resumed"]] == [3, 4], (
        "the resumed run did not start after the saved step 2"
    )
    assert (resumed_runs["checkpoints"] / "global_step_2" / "actor").is_dir()
    assert (resumed_runs["checkpoints"] / "global_step_4" / "actor").is_dir()
    assert "global_step_2" in resumed_runs["resumed_log"]


def test_resume_restores_the_optimiser_state(resumed_runs):
    files = {step: sorted((resumed_runs["checkpoints"] / f"global_step_{step}" / "actor").glob("optim_*.pt"))
             for step in (2, 4)}
    assert files[2] and files[4], f"no optimiser state saved: {files}"
    saved, resumed = _adam_step_counts(files[2][0]), _adam_step_counts(files[4][0])
    assert saved == {2.0}, f"2 steps of 1 update each should leave AdamW step 2, got {saved}"
    # a fresh optimiser after resume would hold 2 (the resumed run's own updates), not 4
    assert resumed == {4.0}, f"AdamW step after resume is {resumed}: the saved optimiser state was not loaded"


def test_vgpo_metrics_continue_after_resume(resumed_runs):
    assert [record["step"] for record in resumed_runs["resumed"]] == [3, 4]
    for record in resumed_runs["resumed"]:
        vgpo_metrics = {key: value for key, value in record.items() if key.startswith("vgpo/")}
        for key in ("vgpo/focus/mean", "vgpo/token_weight/mean", "vgpo/trajectory_weight/mean",
                    "vgpo/no_signal_fraction"):
            assert key in vgpo_metrics, f"step {record['step']}: {key} missing after resume"
        assert all(math.isfinite(float(value)) for value in vgpo_metrics.values()), vgpo_metrics
        assert record["vgpo/no_signal_fraction"] == 0.0  # every easy-vqa prompt has an image


def test_validation_runs_inside_the_training_loop(resumed_runs):
    def validated_steps(records):
        return [record["step"] for record in records if any(key.startswith("val-") for key in record)]

    # test_freq=2: step 2 (also the first run's last step) and step 4 (the resumed run's last step)
    assert validated_steps(resumed_runs["first"]) == [2]
    assert validated_steps(resumed_runs["resumed"]) == [4]
    for record in (resumed_runs["first"][-1], resumed_runs["resumed"][-1]):
        scores = [value for key, value in record.items() if key.startswith("val-core/")]
        assert scores and all(0.0 <= float(value) <= 1.0 for value in scores), record
