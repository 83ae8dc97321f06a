"""The demo driver's own parts: input checks before Ray starts, bounded subprocess waits, the run script it
ships, validation accuracy / summary.json / plot from verl's file-logger records."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from verl_vgpo.apps import demo, runner


def _rows(with_images=True, with_placeholder=True):
    content = ("<image>" if with_placeholder else "") + "what color is the shape?"
    return [{
        "data_source": "easy_vqa",
        "prompt": [{"role": "user", "content": content}],
        **({"images": [{"bytes": b"\x89PNG"}]} if with_images else {}),
        "reward_model": {"style": "rule", "ground_truth": "red"},
    } for _ in range(3)]


def test_dataset_checks(tmp_path):
    good = tmp_path / "good.parquet"
    pd.DataFrame(_rows()).to_parquet(good)
    demo.check_dataset_has_images(good)

    text_only = tmp_path / "text.parquet"
    pd.DataFrame(_rows(with_images=False, with_placeholder=False)).to_parquet(text_only)
    with pytest.raises(demo.DemoError, match="no 'images' column"):
        demo.check_dataset_has_images(text_only)

    some_empty = tmp_path / "empty.parquet"
    rows = _rows()
    rows[1]["images"] = []
    pd.DataFrame(rows).to_parquet(some_empty)
    with pytest.raises(demo.DemoError, match="1 of 3 rows have no image"):
        demo.check_dataset_has_images(some_empty)

    no_placeholder = tmp_path / "no_placeholder.parquet"
    pd.DataFrame(_rows(with_placeholder=False)).to_parquet(no_placeholder)
    with pytest.raises(demo.DemoError, match="no <image> placeholder"):
        demo.check_dataset_has_images(no_placeholder)

    with pytest.raises(demo.DemoError, match="does not exist"):
        demo.check_dataset_has_images(tmp_path / "missing.parquet")


def test_model_checks(tmp_path):
    (tmp_path / "vlm").mkdir()
    (tmp_path / "vlm" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "image_token_id": 12}))
    demo.check_model_has_image_tokens(tmp_path / "vlm")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(demo.DemoError, match=r"\(qwen2\) declares no image_token_id"):
        demo.check_model_has_image_tokens(tmp_path / "lm")
    with pytest.raises(demo.DemoError, match="no config.json"):
        demo.check_model_has_image_tokens(tmp_path)


def test_a_hanging_run_is_stopped_at_the_deadline(tmp_path):
    seen = []
    start = time.monotonic()
    code = runner.stream_subprocess(["bash", "-c", "echo 'step:1 - critic/score/mean:0.5'; exec sleep 120"], tmp_path,
                                  None, tmp_path / "log.txt", 2.0, seen.append)
    elapsed = time.monotonic() - start
    assert code is None
    assert elapsed < 120  # stopped, not waited out (the command sleeps 120 s)
    assert seen == ["step:1 - critic/score/mean:0.5\n"]
    assert "critic/score/mean" in (tmp_path / "log.txt").read_text()


def test_exit_code_and_console_metrics_are_passed_on(tmp_path):
    assert runner.stream_subprocess(["bash", "-c", "exit 3"], tmp_path, None, tmp_path / "log.txt", 30.0, print) == 3
    line = "(TaskRunnerV1 pid=1) step:2 - vgpo/focus/mean:0.25 - critic/score/mean:0.125 - num_turns/min:np.int32(2)"
    match = runner._STEP_LINE.search(line)
    assert match.group(1) == "2"
    assert runner._parse_console_metrics(match.group(2)) == {"vgpo/focus/mean": 0.25, "critic/score/mean": 0.125,
                                                           "num_turns/min": 2.0}
    assert runner._parse_console_metrics("a:np.float64(0.5) - b:x") == {"a": 0.5}


def _record(step, **metrics):
    return json.dumps({"step": step, "data": metrics})


def test_summary_json_and_plot_from_file_logger_records(tmp_path):
    acc = "val-core/easy_vqa/acc/mean@1"
    bins = {demo.FOCUS_BIN_METRIC.format(k): 0.1 * k for k in range(demo.FOCUS_BINS)}
    vgpo_metrics = {key: 1.0 + 0.1 * index for index, key in enumerate(
        [demo.REWARD_METRIC, demo.FOCUS_FIRST_METRIC, demo.FOCUS_LAST_METRIC, *demo.PSI_METRICS, *demo.ALPHA_METRICS])}
    lines = [_record(0, **{acc: 0.5}), _record(2, **vgpo_metrics, **bins, **{acc: 0.625}), _record(1, **vgpo_metrics, **bins)]
    (tmp_path / "vgpo.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "grpo.jsonl").write_text(_record(1, **{demo.REWARD_METRIC: 0.5}) + "\n")
    runs = {"vgpo": demo.read_metrics(tmp_path / "vgpo.jsonl"), "grpo": demo.read_metrics(tmp_path / "grpo.jsonl")}
    assert [r["step"] for r in runs["vgpo"]] == [0, 1, 2]
    assert demo.validation_accuracy(runs["vgpo"]) == [(0, 0.5), (2, 0.625)]
    steps, matrix = demo.focus_position_matrix(runs["vgpo"])
    assert steps == [1, 2] and matrix[0] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert demo.focus_position_matrix(runs["grpo"]) is None

    summaries = {"vgpo": demo.run_summary(runs["vgpo"], 12.54), "grpo": demo.run_summary(runs["grpo"], 10.0)}
    assert summaries["vgpo"] == {"val_acc_before": 0.5, "val_acc_after": 0.625, "steps": 2, "wall_s": 12.5}
    # no validation logged: None, never a made-up number
    assert summaries["grpo"] == {"val_acc_before": None, "val_acc_after": None, "steps": 1, "wall_s": 10.0}
    demo.write_summary_json(summaries, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == summaries

    demo.plot_runs(runs, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    demo.plot_runs({"grpo": runs["grpo"]}, tmp_path / "no_focus.png")  # no pos_bin metrics: still a plot
    text = demo.write_summary(runs, summaries, tmp_path / "summary.md", "demo.png")
    assert "## vgpo: 2 steps, wall 12.5s" in text and "## grpo: 1 steps, wall 10.0s" in text
    assert "| vgpo | 2 | 0.5 | 0.625 | 12.5 |" in text
    assert f"| 2 | {vgpo_metrics[demo.REWARD_METRIC]:.4g} |" in text


def test_missing_easy_vqa_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_easy_vqa(name, *args, **kwargs):
        if name == "easy_vqa":
            raise ImportError("No module named 'easy_vqa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_easy_vqa)
    with pytest.raises(demo.DemoError, match="easy-vqa package is not installed"):
        demo.prepare_inputs(tmp_path / "model", tmp_path / "data", "qwen2_5_vl", 8, 4)
    assert not (tmp_path / "model").exists()


def test_an_existing_model_dir_is_used_as_it_is(tmp_path, monkeypatch):
    """--model-dir holding a checkpoint is not rebuilt to the default warm start; a missing one is built."""
    calls = []

    def record_and_stop(model_dir, data_dir, family, train_size, val_size, **kwargs):
        calls.append((model_dir, kwargs))
        raise demo.DemoError("stop before main_ppo")

    monkeypatch.setattr(demo, "prepare_inputs", record_and_stop)
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    for model_dir in (existing, tmp_path / "missing"):
        assert demo.main(["--out", str(tmp_path / "out"), "--model-dir", str(model_dir), "--steps", "1"]) == 1
    assert [kwargs["warm_start"] for _, kwargs in calls] == [False, True]
    assert all(kwargs["questions"] == demo.DEMO_QUESTIONS for _, kwargs in calls)
    assert all(kwargs["build_data"] for _, kwargs in calls)  # no --data-dir: the demo's own folder


def test_given_data_built_with_other_questions_is_refused(tmp_path):
    """A --data-dir used as it is must hold the asked question kinds (its record says which it holds)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "easy_vqa_settings.json").write_text(json.dumps({"train_size": 8, "val_size": 4, "seed": 0,
                                                              "questions": "all"}))
    with pytest.raises(demo.DemoError, match="built with all questions, not open"):
        demo.prepare_inputs(tmp_path / "model", data, "qwen2_5_vl", 8, 4, warm_start=False, build_data=False,
                            questions="open")


def _dump(path, rows):
    """A verl validation dump (trainer.validation_data_dir/<step>.jsonl): one record per question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"input": "q", "output": output, "gts": truth, "score": acc, "acc": acc,
                                        "step": 0}) + "\n" for output, truth, acc in rows))


def test_accuracy_by_kind_shows_answers_moved_toward_one_shape(tmp_path):
    rows = [("I see a red circle. Answer: circle", "circle", 1.0), ("I see a red circle. Answer: circle", "triangle", 0.0),
            ("I see a red circle. Answer: Circle.", "circle", 1.0), ("I see a blue square. Answer: yes", "no", 0.0),
            ("I see a teal triangle. Answer: teal", "teal", 1.0)]
    _dump(tmp_path / "0.jsonl", rows)
    by_kind = demo.validation_by_kind(tmp_path / "0.jsonl")
    assert by_kind == {
        "yes/no": {"n": 1, "acc": 0.0, "answers": {"yes": 1}, "truth": {"no": 1}},
        "colour": {"n": 1, "acc": 1.0, "answers": {"teal": 1}, "truth": {"teal": 1}},
        "shape": {"n": 3, "acc": 0.6667, "answers": {"circle": 3}, "truth": {"circle": 2, "triangle": 1}}}
    _dump(tmp_path / "bad" / "0.jsonl", [("Answer: x", "maybe", 0.0)])
    with pytest.raises(ValueError, match="'maybe' is not an easy-vqa answer"):
        demo.validation_by_kind(tmp_path / "bad" / "0.jsonl")
    assert demo.by_kind_summary(tmp_path / "none", 3, 0.5, 0.5) is None


def test_the_demo_reports_accuracy_by_kind_from_verls_validation_dumps(tmp_path, monkeypatch, capsys):
    """demo.main with stand-ins for the inputs and for main_ppo (which writes verl's file-logger records and
    validation dumps where the demo's override tells it): summary.json and summary.md get the accuracy by kind."""
    seen = {}

    def fake_run(algo, steps, out_dir, model_dir, data_dir, timeout_s, extra_overrides, knobs):
        seen["overrides"] = extra_overrides
        value = demo.validation_dir_of(extra_overrides, None, out_dir / algo)  # where verl writes: the last override
        _dump(Path(value) / "0.jsonl", [("Answer: circle", "triangle", 0.0), ("Answer: yes", "yes", 1.0)])
        _dump(Path(value) / f"{steps}.jsonl", [("Answer: triangle", "triangle", 1.0), ("Answer: yes", "yes", 1.0)])
        metrics = out_dir / algo / "metrics.jsonl"
        acc = "val-core/easy_vqa/acc/mean@1"
        metrics.write_text("\n".join([_record(0, **{acc: 0.5}), _record(1, **{acc: 1.0})]) + "\n")
        return {"wall_s": 1.0, "metrics_path": metrics, "run_dir": out_dir / algo}

    monkeypatch.setattr(demo, "prepare_inputs", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "run_main_ppo", fake_run)
    out = tmp_path / "out"
    _dump(out / "grpo" / demo.VALIDATION_DIR / "7.jsonl", [("Answer: yes", "no", 0.0)])  # an earlier run's
    assert demo.main(["--out", str(out), "--steps", "1", "--algo", "grpo", "trainer.test_freq=1"]) == 0
    assert not (out / "grpo" / demo.VALIDATION_DIR / "7.jsonl").exists()
    assert seen["overrides"] == [f"trainer.validation_data_dir={out / 'grpo' / demo.VALIDATION_DIR}", "trainer.test_freq=1"]
    summary = json.loads((out / "summary.json").read_text())["grpo"]
    assert (summary["val_acc_before"], summary["val_acc_after"]) == (0.5, 1.0)
    assert summary["val_by_kind"]["after"]["shape"] == {"n": 1, "acc": 1.0, "answers": {"triangle": 1},
                                                          "truth": {"triangle": 1}}
    assert summary["val_by_kind"]["before"]["shape"]["answers"] == {"circle": 1}
    assert "| grpo | shape | 1 | 0 | 1 | triangle 1 | circle 1 | triangle 1 |" in (out / "summary.md").read_text()
    assert "[grpo]   shape (1 questions): 0 -> 1; answers after: triangle 1" in capsys.readouterr().out

    # the user's own trainer.validation_data_dir is where verl writes, and what is read
    mine = tmp_path / "mine"
    assert demo.main(["--out", str(out), "--steps", "1", "--algo", "grpo", f"trainer.validation_data_dir={mine}"]) == 0
    assert (mine / "1.jsonl").is_file()
    assert json.loads((out / "summary.json").read_text())["grpo"]["val_by_kind"]["after"]["yes/no"]["n"] == 1


def test_a_stale_or_unreadable_dump_is_reported_not_raised(tmp_path, capsys):
    """A dump whose accuracy is not the logged one (another run's file) or that cannot be read costs only the
    breakdown; a response without the answer marker is counted as no answer; a before-only run still prints."""
    _dump(tmp_path / "0.jsonl", [("I see a red circle.", "circle", 0.0), ("Answer: yes", "yes", 1.0)])
    assert demo.read_by_kind(tmp_path, 3, {"val_acc_before": 0.5})["val_by_kind"]["before"]["shape"]["answers"] == {
        demo.NO_ANSWER: 1}
    stale = demo.read_by_kind(tmp_path, 3, {"val_acc_before": 0.75})
    assert stale["val_by_kind"] is None and "is not the 0.75 verl logged for step 0" in stale["val_by_kind_error"]
    _dump(tmp_path / "bad" / "3.jsonl", [("Answer: x", "maybe", 0.0)])
    assert "not an easy-vqa answer" in demo.read_by_kind(tmp_path / "bad", 3, {"val_acc_after": 0.0})["val_by_kind_error"]
    assert "not reported" in capsys.readouterr().err
    assert demo.validation_dir_of(["a=1", "+trainer.validation_data_dir=/x", "trainer.validation_data_dir='/y z'"],
                                  tmp_path, tmp_path / "run") == Path("/y z")
    assert demo.validation_dir_of(["trainer.validation_data_dir=val"], tmp_path, tmp_path / "run") == tmp_path / "run" / "val"
    assert demo.validation_dir_of(["a=1"], tmp_path, tmp_path / "run") == tmp_path
    # no accuracy logged at a step (val_before_train off): a dump found there is another run's, never read
    assert demo.read_by_kind(tmp_path, 3, {"val_acc_before": None}) == {"val_by_kind": None}
