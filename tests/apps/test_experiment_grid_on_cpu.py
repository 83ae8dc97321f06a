"""vgpo-experiment --task grid: an unknown task and a data folder of another task are refused before
anything runs; (slow) the driver runs the grid task end to end, 1 seed x 1 step, and records the task."""

from __future__ import annotations

import json

import pytest

from verl_vgpo.apps import experiment
from verl_vgpo.data import easy_vqa, grid


def test_unknown_task_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--out", str(tmp_path / "x"), "--task", "shapes"])
    assert exit_info.value.code == 2 and "invalid choice: 'shapes'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_data_folder_of_another_task_is_refused_before_anything_runs(tmp_path, capsys):
    easy_dir = tmp_path / "easy"
    easy_vqa.write_splits(easy_dir, train_size=2, val_size=2, quiet=True)
    out = tmp_path / "exp"
    args = ["--out", str(out), "--seeds", "0", "--steps", "1", "--data-dir"]
    assert experiment.main(["--task", "grid", *args, str(easy_dir), "--model-dir", str(tmp_path / "none")]) == 1
    assert "data_source ['easy_vqa'], not 'grid'" in capsys.readouterr().err
    grid_dir = tmp_path / "grid"
    grid.write_splits(grid_dir, train_size=2, val_size=2, quiet=True)
    assert experiment.main([*args, str(grid_dir), "--model-dir", str(tmp_path / "none")]) == 1  # default task
    assert "another task than 'easy-vqa'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "none").exists()


@pytest.mark.slow  # launches main_ppo
def test_grid_experiment_one_seed_one_step(tmp_path):
    """The driver on the grid task with a random tiny VLM at the grid's image size (a warm start would take
    minutes): data built, one VGPO run of one step through main_ppo, the report records the task (104 s on the
shared 2-core machine)."""
    from verl_vgpo.cpu import warm_start
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    settings = warm_start.task_settings("grid")
    model = build_tiny_vlm(tmp_path / "model", seed=0, preset="warm", **warm_start.task_size_overrides(settings))
    out = tmp_path / "exp"
    # BATCH_SIZE x ROLLOUT_N = 16 samples: one micro-batch of the run script
    code = experiment.main(["--task", "grid", "--out", str(out), "--seeds", "0", "--steps", "1", "--algorithms",
                            "vgpo", "--model-dir", str(model), "--data-dir", str(tmp_path / "data"), "--train-size",
                            "4", "--val-size", "4", "--set", "BATCH_SIZE=4", "ROLLOUT_N=4", "RESPONSE_LENGTH=48",
                            "--analyze-rows", "2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["task"] == "grid" and report["settings"]["knobs"]["RESPONSE_LENGTH"] == "48"
    vgpo = report["algorithms"]["vgpo"]
    assert vgpo["seeds"] == [0] and vgpo["steps"] == [1]
    assert vgpo["val_acc_before"][0] is not None and vgpo["val_acc_after"][0] is not None
    assert any(value is not None for value in vgpo["focus_first_third"][0])  # VGPO scored the grid's image tokens
    data = json.loads((tmp_path / "data" / grid.SETTINGS_FILE).read_text())
    assert data["task"] == "grid" and data["train_size"] == 4
    # the forgetting curve of the final checkpoint (saved by main_ppo as a Hugging Face copy) and of the start
    final = vgpo["final_focus"][0]
    assert final["responses"] == 2 and len(final["bins"]) == experiment.POSITION_BINS
    assert (out / "runs" / "vgpo_seed0" / "checkpoints" / "global_step_1" / "actor" / "huggingface").is_dir()
    assert report["before_rl_focus"]["responses"] == 2
    text = (out / "report.md").read_text()
    assert "(warm-started tiny VLM, grid)" in text and "| vgpo final |" in text and "| warm start (before RL) |" in text
