"""vgpo-experiment: bad inputs refused before anything runs or is overwritten, the report writers on synthetic
file-logger records, and the driver end to end (1 seed, 1 step per algorithm through verl's main_ppo)."""

from __future__ import annotations

import json
from pathlib import Path
import math

import pytest

from verl_vgpo.apps import demo, experiment

ACC = "val-core/easy_vqa/acc/mean@1"


def _records(before, after, rewards, focus=True):
    records = [{"step": 0, ACC: before}]
    for step, reward in enumerate(rewards, start=1):
        record = {"step": step, demo.REWARD_METRIC: reward, demo.STEP_TIME_METRIC: 2.0}
        if focus:
            record.update({demo.FOCUS_FIRST_METRIC: 0.4, demo.FOCUS_LAST_METRIC: 0.2,
                           **{demo.FOCUS_BIN_METRIC.format(k): 0.4 - 0.05 * k for k in range(demo.FOCUS_BINS)}})
        records.append(record)
    records[-1][ACC] = after
    return records


def _report(vgpo_after=(0.7, 0.72), grpo_after=(0.6, 0.62)):
    runs = {}
    for algo, afters in (("grpo", grpo_after), ("vgpo", vgpo_after)):
        runs[algo] = [{"seed": seed, "metrics_file": f"runs/{algo}_seed{seed}/metrics.jsonl",
                       **experiment.collect_run(_records(0.5, after, [0.4, 0.5, 0.6], focus=algo == "vgpo"), 10.0)}
                      for seed, after in enumerate(afters)]
    settings = {"seeds": [0, 1], "steps": 3, "knobs": {"VAL_SIZE": 200}, "machine": "test", "total_wall_s": 40.0}
    return experiment.assemble_report(settings, runs)


def test_report_json_has_one_entry_per_seed_in_order():
    report = _report()
    vgpo = report["algorithms"]["vgpo"]
    assert vgpo["seeds"] == [0, 1]
    assert vgpo["val_acc_before"] == [0.5, 0.5] and vgpo["val_acc_after"] == [0.7, 0.72]
    assert vgpo["reward"] == [[0.4, 0.5, 0.6]] * 2
    assert vgpo["focus_pos_bins"][0][0] == pytest.approx([0.4, 0.35, 0.3, 0.25, 0.2])
    assert report["algorithms"]["grpo"]["focus_pos_bins"] == [None, None]
    json.dumps(report)  # serialisable as written


def test_table_and_difference_statement():
    row = experiment.algorithm_table_row(_report()["algorithms"]["vgpo"])
    assert row["val_acc_after"][0] == pytest.approx(0.71)
    assert row["val_acc_after"][1] == pytest.approx(math.sqrt(2) * 0.01)
    assert row["focus_last_over_first"][0] == pytest.approx(0.5)
    assert row["train_reward"][0] == pytest.approx(0.5)
    assert experiment.algorithm_table_row(_report()["algorithms"]["grpo"])["focus_first_third"] is None

    assert "+10.0 points" in experiment.difference_statement(_report()) and "exceeds the spread" in \
        experiment.difference_statement(_report())
    close = experiment.difference_statement(_report(vgpo_after=(0.6, 0.7), grpo_after=(0.62, 0.66)))
    assert "+1.0 points" in close and "does not exceed" in close


def test_report_md_and_plots(tmp_path):
    report = _report()
    plots = experiment.plot_report(report, tmp_path)
    for name in plots:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    text = experiment.write_report_md(report, tmp_path / "report.md", plots)
    assert "| vgpo | 0.500 ± 0.000 | 0.710 ± 0.014 |" in text
    assert "| grpo |" in text and "n/a" in text
    assert "![curves](curves.png)" in text


@pytest.mark.parametrize("kwargs, message", [
    (dict(algorithms=["grpo", "ppo"]), r"unknown algorithm\(s\) \['ppo'\]"),
    (dict(steps=0), "budget too small to train: --steps"),
    (dict(knobs={"TRAIN_SIZE": 8}), "budget too small to train: 2 steps of 16 prompts"),
    (dict(timeout_s=30), "budget too small to train: --timeout"),
    (dict(seeds=[]), "seeds must be distinct"),
])
def test_bad_settings_are_refused(kwargs, message):
    arguments = dict(algorithms=["grpo", "vgpo"], seeds=[0], steps=2, knobs=dict(demo.DEMO_SETTINGS), timeout_s=600)
    if "knobs" in kwargs:
        arguments["knobs"].update(kwargs.pop("knobs"))
    arguments.update(kwargs)
    with pytest.raises(experiment.ExperimentError, match=message):
        experiment.check_settings(**arguments)


def test_an_output_folder_of_another_experiment_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"steps": 99}))
    (out / "report.json").write_text("{}")
    code = experiment.main(["--out", str(out), "--seeds", "0", "--steps", "1"])
    assert code == 1
    assert "already holds an experiment's results (other settings" in capsys.readouterr().err
    assert (out / "report.json").read_text() == "{}"

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    assert experiment.main(["--out", str(unrelated), "--steps", "1", "--overwrite"]) == 1
    assert "holds no experiment" in capsys.readouterr().err
    assert (unrelated / "notes.txt").read_text() == "mine"


def test_unknown_algorithm_on_the_command_line(tmp_path, capsys):
    assert experiment.main(["--out", str(tmp_path / "x"), "--algorithms", "grpo", "dapo"]) == 1
    assert "unknown algorithm(s) ['dapo']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _final_focus(bins):
    first, last = bins[0], bins[-1]
    return {"bins": list(bins), "first_third": first, "last_third": last, "last_over_first": last / first,
            "responses": 10, "tokens": 400}


def test_forgetting_table_of_final_checkpoints(tmp_path):
    report = _report()
    report["settings"]["analyze_rows"] = 10
    report["before_rl_focus"] = _final_focus([0.2, 0.2, 0.15, 0.1, 0.1])
    report["algorithms"]["grpo"]["final_focus"] = [_final_focus([0.2, 0.2, 0.1, 0.1, 0.1]),
                                                   _final_focus([0.2, 0.2, 0.1, 0.1, 0.12])]
    report["algorithms"]["vgpo"]["final_focus"] = [_final_focus([0.2, 0.2, 0.2, 0.2, 0.2]),
                                                   _final_focus([0.2, 0.2, 0.2, 0.2, 0.18])]
    lines = experiment.forgetting_table(report)
    text = "\n".join(lines)
    assert "| model | 0.0-0.2 | 0.2-0.4 | 0.4-0.6 | 0.6-0.8 | 0.8-1.0 | first third | last third | last/first |" in text
    assert "| warm start (before RL) | 0.200 ± 0.000 |" in text
    assert "| grpo final | 0.200 ± 0.000 | 0.200 ± 0.000 | 0.100 ± 0.000 | 0.100 ± 0.000 | 0.110 ± 0.014 |" in text
    # last/first: grpo 0.5, 0.6 (mean 0.55); vgpo 1.0, 0.9 (mean 0.95): +0.400 against sd 0.071
    assert "VGPO minus GRPO: +0.400" in text and "0.071, so the difference exceeds the spread" in text
    plots = experiment.plot_report(report, tmp_path)
    assert "final_forgetting.png" in plots and (tmp_path / "final_forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Forgetting curve of the final checkpoints" in experiment.write_report_md(report, tmp_path / "r.md", plots)

    report["algorithms"]["vgpo"]["final_focus"] = [None, None]
    assert "were not analysed" in experiment.forgetting_statement(report)
    assert experiment.forgetting_table(_report()) == []  # no analysis ran: no section


def test_analyze_checkpoint_reads_the_curve_of_a_model(tmp_path, grid_inputs):
    """The helper the driver calls after each run: vgpo-analyze on the held-out parquet, bins from curve.csv."""
    model, data = grid_inputs
    focus = experiment.analyze_checkpoint(model, "m", data, tmp_path / "analysis", rows=2, max_new_tokens=6)
    assert focus["responses"] == 2 and len(focus["bins"]) == experiment.POSITION_BINS
    assert all(isinstance(value, float) for value in focus["bins"])
    assert focus["last_over_first"] == pytest.approx(focus["last_third"] / focus["first_third"])
    with pytest.raises(experiment.ExperimentError, match="no Hugging Face checkpoint of step 3"):
        experiment.final_hf_checkpoint(tmp_path, 3)


def test_forgetting_statement_with_one_algorithm():
    report = _report()
    del report["algorithms"]["grpo"]
    report["algorithms"]["vgpo"]["final_focus"] = [_final_focus([0.2, 0.1, 0.1, 0.1, 0.1])] * 2
    assert experiment.forgetting_statement(report) == "Only one algorithm was run: no difference to state."


@pytest.mark.parametrize("override, analyze_rows", [
    ("trainer.save_freq=-1", 100),
    ("actor_rollout_ref.actor.checkpoint.save_contents=[model]", 100),
    ("trainer.default_local_dir=/elsewhere", 100),
    ("+trainer.resume_mode=auto", 0),
])
def test_overrides_of_checkpoint_keys_are_refused(override, analyze_rows):
    with pytest.raises(experiment.ExperimentError, match="change how runs save or resume checkpoints"):
        experiment.check_overrides(["actor_rollout_ref.actor.optim.lr=2e-4", override], analyze_rows)
    if analyze_rows:  # without the analysis the run saves nothing, so only resume_mode matters
        experiment.check_overrides([override], 0)


@pytest.fixture(scope="module")  # read-only for the tests: built once
def grid_inputs(tmp_path_factory):
    from verl_vgpo.cpu import warm_start
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm
    from verl_vgpo.data import grid

    root = tmp_path_factory.mktemp("grid_inputs")
    model = build_tiny_vlm(root / "model", seed=0, preset="warm",
                           **warm_start.task_size_overrides(warm_start.task_settings("grid")))
    grid.write_splits(root / "data", train_size=8, val_size=3, quiet=True)
    return model, root / "data"


def _fake_main_ppo(calls, save_checkpoint):
    """Stands in for runner.run_main_ppo (no Ray here): records the overrides, writes two steps of metrics and,
    like main_ppo with the experiment's checkpoint overrides, the last step's Hugging Face copy of the model."""
    import shutil

    def run(algo, steps, out_dir, model_dir, data_dir, timeout_s, overrides, knobs=None, run_name=None, **_):
        calls.append(list(overrides))
        run_dir = out_dir / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = run_dir / "metrics.jsonl"
        dumps = any(item.startswith("trainer.validation_data_dir=") for item in overrides)
        before, after = (0.25, 0.5) if dumps else (0.4, 0.45)  # with dumps: the accuracy of the dumps below
        lines = [{"step": 0, "data": {"val-core/grid/acc/mean@1": before}}]
        lines += [{"step": s, "data": {demo.REWARD_METRIC: 0.3, demo.STEP_TIME_METRIC: 1.0}} for s in range(1, steps + 1)]
        lines[-1]["data"]["val-core/grid/acc/mean@1"] = after
        metrics.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        for override in overrides:  # verl's validation dumps (easy-vqa answers), where the override says
            key, _, value = override.partition("=")
            if key == "trainer.validation_data_dir":
                for step, answer in ((0, "circle"), (steps, "triangle")):
                    Path(value).mkdir(parents=True, exist_ok=True)
                    (Path(value) / f"{step}.jsonl").write_text("".join(
                        json.dumps({"output": f"Answer: {answer}", "gts": truth, "acc": float(answer == truth)}) + "\n"
                        for truth in ("triangle", "triangle", "circle", "rectangle")))
        if save_checkpoint and f"trainer.save_freq={steps}" in overrides:
            shutil.copytree(model_dir, run_dir / "checkpoints" / f"global_step_{steps}" / "actor" / "huggingface",
                            dirs_exist_ok=True)
        return {"wall_s": 1.0, "metrics_path": metrics, "log_path": run_dir / "main_ppo.log", "run_dir": run_dir}

    return run


def test_driver_analyses_final_checkpoints_and_keeps_user_overrides_last(tmp_path, grid_inputs, monkeypatch):
    model, data = grid_inputs
    calls = []
    monkeypatch.setattr(experiment.runner, "run_main_ppo", _fake_main_ppo(calls, save_checkpoint=True))
    out = tmp_path / "exp"
    args = ["--task", "grid", "--out", str(out), "--seeds", "0", "--steps", "2", "--model-dir", str(model),
            "--data-dir", str(data), "--train-size", "8", "--val-size", "3", "--set", "BATCH_SIZE=4",
            "RESPONSE_LENGTH=6", "--analyze-rows", "2", "actor_rollout_ref.actor.optim.lr=3e-4"]
    assert experiment.main(args) == 0
    assert calls == [["trainer.resume_mode=disable", "trainer.save_freq=2",
                      "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]",
                      "actor_rollout_ref.actor.optim.lr=3e-4"]] * 2
    report = json.loads((out / "report.json").read_text())
    assert report["before_rl_focus"]["responses"] == 2
    for algo in ("grpo", "vgpo"):
        assert report["algorithms"][algo]["final_focus"][0]["responses"] == 2
        assert (out / "runs" / f"{algo}_seed0" / "analysis" / "curve.csv").is_file()
    assert "| grpo final |" in (out / "report.md").read_text()

    # --analyze-rows 0: no checkpoint saved, no analysis
    calls.clear()
    assert experiment.main([*args[:-3], "--analyze-rows", "0", "--overwrite"]) == 0
    assert calls == [["trainer.resume_mode=disable"]] * 2
    report = json.loads((out / "report.json").read_text())
    assert report["before_rl_focus"] is None and report["algorithms"]["vgpo"]["final_focus"] == [None]
    assert "Forgetting curve" not in (out / "report.md").read_text()


def test_a_failed_analysis_keeps_the_runs_results(tmp_path, grid_inputs, monkeypatch, capsys):
    model, data = grid_inputs
    monkeypatch.setattr(experiment.runner, "run_main_ppo", _fake_main_ppo([], save_checkpoint=False))
    out = tmp_path / "exp"
    assert experiment.main(["--task", "grid", "--out", str(out), "--seeds", "0", "--steps", "2", "--algorithms",
                            "vgpo", "--model-dir", str(model), "--data-dir", str(data), "--train-size", "8",
                            "--val-size", "3", "--set", "BATCH_SIZE=4", "RESPONSE_LENGTH=6",
                            "--analyze-rows", "2"]) == 0
    assert "forgetting analysis failed" in capsys.readouterr().err
    vgpo = json.loads((out / "report.json").read_text())["algorithms"]["vgpo"]
    assert vgpo["val_acc_after"] == [0.45] and vgpo["final_focus"] == [None]
    assert "no Hugging Face checkpoint of step 2" in vgpo["final_focus_error"][0]


def test_easy_vqa_runs_report_accuracy_by_question_kind(tmp_path, grid_inputs, monkeypatch):
    """easy-vqa runs get verl's validation dumps in runs/<name>/validation (before the user's overrides) and
    report.json / report.md the accuracy by kind with the answer given most often; grid runs get neither."""
    from verl_vgpo.data import easy_vqa

    model, _ = grid_inputs
    data = tmp_path / "easy_vqa"
    easy_vqa.write_splits(data, train_size=8, val_size=3, quiet=True)
    calls = []
    monkeypatch.setattr(experiment.runner, "run_main_ppo", _fake_main_ppo(calls, save_checkpoint=False))
    out = tmp_path / "exp"
    assert experiment.main(["--out", str(out), "--seeds", "0", "1", "--steps", "2", "--model-dir", str(model),
                            "--data-dir", str(data), "--train-size", "8", "--val-size", "3", "--set", "BATCH_SIZE=4",
                            "--analyze-rows", "0", "trainer.test_freq=2"]) == 0
    assert calls[0] == [f"trainer.validation_data_dir={out / 'runs' / 'grpo_seed0' / 'validation'}",
                        "trainer.resume_mode=disable", "trainer.test_freq=2"]
    vgpo = json.loads((out / "report.json").read_text())["algorithms"]["vgpo"]
    shape = [kinds["after"]["shape"] for kinds in vgpo["val_by_kind"]]
    assert shape == [{"n": 4, "acc": 0.5, "answers": {"triangle": 4},
                      "truth": {"triangle": 2, "circle": 1, "rectangle": 1}}] * 2
    assert vgpo["val_by_kind"][0]["before"]["shape"]["acc"] == 0.25
    text = (out / "report.md").read_text()
    assert "| vgpo | shape | 4 | 0.250 ± 0.000 | 0.500 ± 0.000 | seed 0: triangle 1.00, seed 1: triangle 1.00 |" in text


def test_by_kind_table_counts_questions_from_before_only_runs():
    report = {"algorithms": {"vgpo": {"seeds": [0, 1], "val_by_kind": [
        {"before": {"shape": {"n": 32, "acc": 0.25, "answers": {"circle": 32}, "truth": {"circle": 8}}}}, None]}}}
    assert "| vgpo | shape | 32 | 0.250 ± 0.000 | n/a |  |" in experiment.by_kind_table(report)


def test_a_validation_dump_override_is_refused():
    with pytest.raises(experiment.ExperimentError, match="writes each run's validation dumps"):
        experiment.check_overrides(["trainer.validation_data_dir=/tmp/x"], analyze_rows=0)
