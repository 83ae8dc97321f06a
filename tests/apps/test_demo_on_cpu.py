"""The demo driver's own parts: input checks before Ray starts, bounded subprocess waits, plot and summary."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from verl_vgpo.apps import demo


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
    code = demo.stream_subprocess(["bash", "-c", "echo 'step:1 - critic/score/mean:0.5'; exec sleep 120"], tmp_path,
                                  None, tmp_path / "log.txt", 2.0, seen.append)
    elapsed = time.monotonic() - start
    assert code is None
    assert elapsed < 30
    assert seen == ["step:1 - critic/score/mean:0.5\n"]
    assert "critic/score/mean" in (tmp_path / "log.txt").read_text()


def test_exit_code_and_console_metrics_are_passed_on(tmp_path):
    assert demo.stream_subprocess(["bash", "-c", "exit 3"], tmp_path, None, tmp_path / "log.txt", 30.0, print) == 3
    line = "(TaskRunnerV1 pid=1) step:2 - vgpo/focus/mean:0.25 - critic/score/mean:0.125 - num_turns/min:np.int32(2)"
    match = demo._STEP_LINE.search(line)
    assert match.group(1) == "2"
    assert demo._parse_console_metrics(match.group(2)) == {"vgpo/focus/mean": 0.25, "critic/score/mean": 0.125}


def test_plot_and_summary_from_file_logger_records(tmp_path):
    def record(step, **metrics):
        return json.dumps({"step": step, "data": metrics})

    vgpo_metrics = {key: 1.0 + 0.1 * index for index, key in enumerate(
        [demo.REWARD_METRIC, demo.FOCUS_FIRST_METRIC, demo.FOCUS_LAST_METRIC, *demo.PSI_METRICS, *demo.ALPHA_METRICS])}
    (tmp_path / "vgpo.jsonl").write_text("\n".join([record(2, **vgpo_metrics), record(1, **vgpo_metrics)]) + "\n")
    (tmp_path / "grpo.jsonl").write_text(record(1, **{demo.REWARD_METRIC: 0.5}) + "\n")
    runs = {"vgpo": demo.read_metrics(tmp_path / "vgpo.jsonl"), "grpo": demo.read_metrics(tmp_path / "grpo.jsonl")}
    assert [r["step"] for r in runs["vgpo"]] == [1, 2]

    demo.plot_runs(runs, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = demo.write_summary(runs, {"vgpo": 12.5, "grpo": 10.0}, tmp_path / "summary.md", "demo.png")
    assert "## vgpo: 2 steps, wall 12.5s" in text and "## grpo: 1 steps, wall 10.0s" in text
    assert f"| 2 | {vgpo_metrics[demo.REWARD_METRIC]:.4g} |" in text
