"""vgpo-analyze: aggregation on hand-made inputs, the CLI on two tiny VLMs, parity with the training
engine's focus, and the inputs it must refuse.

The CLI runs in a child process (as users run it). The engine-parity test runs verl's real TrainingWorker
(FSDP2, padded layout, CPU platform, one gloo process) as tests/wiring does; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verl_vgpo.apps.analyze import (
    AnalyzeError,
    clustered_mean_ci,
    curve_rows,
    index_curve,
    main,
    model_summary,
    resolve_labels,
)

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
Z95 = 1.959963984540054

# hand-made responses: T = 6 (u = 0, .2, .4, .6, .8, 1 -> bins 0,1,2,3,4,4), T = 1 (u = 0), T = 2 (u = 0, 1), empty
HAND_MADE = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [10.0], [0.0, 1.0], []]


def test_bins_means_and_clustered_confidence_intervals_by_hand():
    rows = curve_rows("m", HAND_MADE, bins=5)
    assert [row["bin"] for row in rows] == [0, 1, 2, 3, 4]
    assert [(row["position_lo"], row["position_hi"]) for row in rows] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6),
                                                                            (0.6, 0.8), (0.8, 1.0)]
    assert [row["tokens"] for row in rows] == [3, 1, 1, 1, 3]
    # bin 0: tokens 1 (A), 10 (B), 0 (C); clustered variance 3/2 * (64 + 361 + 121) / 9 / 3^2
    bin0 = rows[0]
    assert bin0["mean_focus"] == pytest.approx(11 / 3)
    half = Z95 * math.sqrt(1.5 * (546 / 9) / 9)
    assert (bin0["ci_low"], bin0["ci_high"]) == (pytest.approx(11 / 3 - half), pytest.approx(11 / 3 + half))
    # bin 4: A contributes 5 + 6 (two tokens), C contributes 1: mean 4, residuals 3 and -3
    bin4 = rows[4]
    assert bin4["mean_focus"] == pytest.approx(4.0)
    assert bin4["ci_high"] - bin4["mean_focus"] == pytest.approx(Z95 * math.sqrt(2 * 18 / 9))
    # one response only: no interval (NaN), the mean stays
    assert rows[1]["mean_focus"] == 2.0 and math.isnan(rows[1]["ci_low"]) and math.isnan(rows[1]["ci_high"])

    summary = model_summary("m", "path", HAND_MADE, rows=4)
    assert summary["responses"] == 4 and summary["empty_responses"] == 1 and summary["tokens"] == 9
    assert summary["mean_focus"] == pytest.approx(32 / 9)
    assert summary["first_third"] == pytest.approx((1 + 2 + 10 + 0) / 4)  # u < 1/3
    assert summary["last_third"] == pytest.approx((5 + 6 + 1) / 3)  # u >= 2/3
    assert summary["last_over_first"] == pytest.approx(4 / (13 / 4))
    # token-weighted mean of the bin means is the mean over tokens
    weighted = sum(row["mean_focus"] * row["tokens"] for row in rows) / sum(row["tokens"] for row in rows)
    assert weighted == pytest.approx(summary["mean_focus"])

    by_index = index_curve(HAND_MADE)
    assert by_index["index"] == [1, 2, 3, 4, 5, 6]
    assert by_index["mean"][:2] == [pytest.approx(11 / 3), pytest.approx(1.5)]
    assert by_index["responses"] == [3, 2, 1, 1, 1, 1]


def test_bins_match_the_training_metric_definition():
    from verl_vgpo.advantage import FOCUS_POSITION_BINS, focus_position_bins, position_fractions

    focus = [[float(t) for t in range(length)] for length in (2, 3, 7, 11)]
    rows = curve_rows("m", focus, bins=FOCUS_POSITION_BINS)
    mask = torch.zeros(4, 11)
    for row, values in enumerate(focus):
        mask[row, : len(values)] = 1
    bins = focus_position_bins(position_fractions(mask))
    expected = [int(((bins == k) & (mask > 0)).sum()) for k in range(FOCUS_POSITION_BINS)]
    assert [row["tokens"] for row in rows] == expected


def test_confidence_interval_of_identical_responses_has_zero_width():
    sums = torch.tensor([[2.0], [2.0], [2.0]], dtype=torch.float64)
    counts = torch.tensor([[4.0], [4.0], [4.0]], dtype=torch.float64)
    mean, half, tokens = clustered_mean_ci(sums, counts)
    assert float(mean[0]) == 0.5 and float(half[0]) == 0.0 and float(tokens[0]) == 12.0


def test_labels():
    assert resolve_labels(["a/base", "b/base"], None) == ["base", "base_2"]
    assert resolve_labels(["x", "y"], ["before"]) == ["before", "y"]
    with pytest.raises(AnalyzeError, match="3 --label values for 2 --model values"):
        resolve_labels(["x", "y"], ["a", "b", "c"])
    with pytest.raises(AnalyzeError, match="distinct"):
        resolve_labels(["x", "y"], ["a", "a"])


@pytest.fixture(scope="module")
def easy_vqa_parquet(tmp_path_factory):
    from verl_vgpo.data.easy_vqa import write_splits

    out = tmp_path_factory.mktemp("analyze_data")
    return Path(write_splits(out, train_size=2, val_size=16, seed=0, quiet=True)["test"])


@pytest.fixture(scope="module")
def second_vlm(tmp_path_factory):
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm_seed1") / "model", seed=1)


def test_cli_two_models_outputs_agree(tiny_vlm_path, second_vlm, easy_vqa_parquet, tmp_path):
    out = tmp_path / "analysis"
    command = [str(Path(sys.executable).parent / "vgpo-analyze"), "--model", str(tiny_vlm_path), "--model",
               str(second_vlm), "--label", "seed0", "--label", "seed1", "--data", str(easy_vqa_parquet),
               "--out", str(out), "--max_rows", "12", "--bins", "4", "--max_new_tokens", "12"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=CHILD_ENV, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "seed1: generate" in completed.stderr  # the progress bar

    records = [json.loads(line) for line in (out / "tokens.jsonl").read_text().splitlines()]
    with open(out / "curve.csv", newline="") as handle:
        curve = list(csv.DictReader(handle))
    summary = json.loads((out / "summary.json").read_text())
    assert list(curve[0]) == ["model", "bin", "position_lo", "position_hi", "mean_focus", "ci_low", "ci_high", "tokens"]
    assert (out / "forgetting.png").stat().st_size > 10_000
    responses = {}
    for label in ("seed0", "seed1"):
        mine = [r for r in records if r["model"] == label]
        assert sorted(r["row"] for r in mine) == list(range(12))
        assert all(len(r["focus"]) == r["response_tokens"] >= 1 for r in mine)
        assert all(-1.0 - 1e-6 <= value <= 1.0 + 1e-6 for r in mine for value in r["focus"])
        rows = [row for row in curve if row["model"] == label]
        assert [int(row["bin"]) for row in rows] == [0, 1, 2, 3]
        tokens = sum(r["response_tokens"] for r in mine)
        assert sum(int(row["tokens"]) for row in rows) == tokens == summary["models"][label]["tokens"]
        weighted = sum(float(row["mean_focus"]) * int(row["tokens"]) for row in rows) / tokens
        token_mean = sum(value for r in mine for value in r["focus"]) / tokens
        assert weighted == pytest.approx(token_mean, rel=1e-9, abs=1e-12)
        assert summary["models"][label]["mean_focus"] == pytest.approx(token_mean, rel=1e-9, abs=1e-12)
        assert summary["models"][label]["responses"] == 12 and summary["models"][label]["empty_responses"] == 0
        assert all(float(row["ci_low"]) <= float(row["mean_focus"]) <= float(row["ci_high"]) for row in rows)
        responses[label] = [r["response"] for r in sorted(mine, key=lambda r: r["row"])]
    assert responses["seed0"] != responses["seed1"], "two different models gave identical responses"


# ---------------------------------------------------------------------------------------------------
# the tool's focus is the training engine's focus
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_platform():
    from tests.wiring.vlm_batches import cpu_platform_with_process_group

    with cpu_platform_with_process_group():
        yield


def test_tool_focus_equals_the_training_engine_focus(tiny_vlm_path, easy_vqa_parquet, cpu_platform):
    from tests.wiring.vlm_batches import (
        Sample,
        build_batch,
        build_training_worker,
        mm_token_type_ids,
        restore_qwen_methods,
        snapshot_qwen_methods,
        using_methods,
    )
    from verl_vgpo.apps import analyze
    from verl_vgpo.cpu import generation
    from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY

    # the tool first: it loads its model before verl's engine patches the Qwen-VL classes
    loaded = generation.load_model(str(tiny_vlm_path), device="cpu")
    visual_ids, norm = analyze.check_model(loaded, str(tiny_vlm_path))
    examples = analyze.load_rows(str(easy_vqa_parquet), 4, 14)
    features = [analyze.prompt_features(loaded.processor, example) for example in examples]
    responses = [samples[0] for samples in analyze.hf_responses(loaded, examples, 1, 0.0, 0, 10, batch_size=4)]
    responses[1] = responses[1][:4]  # unequal lengths: the tool's right padding is exercised
    tool = analyze.teacher_forced_focus(loaded, norm, visual_ids, features, responses)
    # an empty response is scored as no tokens (counted by the summary), not dropped
    assert analyze.teacher_forced_focus(loaded, norm, visual_ids, features[:2], [responses[0], []])[1] == []

    before = snapshot_qwen_methods()
    try:
        worker = build_training_worker(str(tiny_vlm_path), use_remove_padding=False)
        engine_methods = snapshot_qwen_methods()
        samples = []
        for feature, response in zip(features, responses):
            input_ids = torch.cat([feature.input_ids, torch.tensor(response)])
            with using_methods(before):
                rope, _ = loaded.model.model.get_rope_index(
                    input_ids=input_ids[None], mm_token_type_ids=mm_token_type_ids(input_ids[None], loaded.hf_config),
                    image_grid_thw=feature.image_grid_thw)
            position_ids = torch.cat([torch.arange(len(input_ids))[None], rope[:, 0]], dim=0)
            samples.append(Sample("row", input_ids, position_ids, {"pixel_values": feature.pixel_values,
                                                                  "image_grid_thw": feature.image_grid_thw},
                                  len(response)))
        batch = build_batch(samples, **{CAPTURE_FOCUS_FLAG: True, "use_dynamic_bsz": False,
                                        "micro_batch_size_per_gpu": 2})
        with using_methods(engine_methods):
            output = worker.infer_batch(batch)
    finally:
        restore_qwen_methods(before)
    for row, response in enumerate(responses):
        engine_focus = output[FOCUS_OUTPUT_KEY][row][-len(response):]
        torch.testing.assert_close(torch.tensor(tool[row]), engine_focus.float(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# inputs the tool refuses
# ---------------------------------------------------------------------------------------------------


def test_more_labels_than_models_fails_before_loading_anything(tmp_path, capsys):
    code = main(["--model", "missing_dir", "--label", "a", "--label", "b", "--data", "x.parquet",
                 "--out", str(tmp_path)])
    assert code == 2 and "2 --label values for 1 --model values" in capsys.readouterr().err


def test_model_without_visual_tokens_is_refused(tiny_vlm_path, easy_vqa_parquet, tmp_path, capsys):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    text_only = tmp_path / "text_only"
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(text_only)
    tokenizer.save_pretrained(text_only)
    code = main(["--model", str(text_only), "--data", str(easy_vqa_parquet), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "needs a vision-language model" in capsys.readouterr().err


def test_parquet_without_images_is_refused(tiny_vlm_path, tmp_path, capsys):
    import pandas as pd

    rows = [{"data_source": "text", "prompt": [{"role": "user", "content": f"Question {i}?"}],
             "reward_model": {"style": "rule", "ground_truth": "yes"}} for i in range(3)]
    path = tmp_path / "text.parquet"
    pd.DataFrame(rows).to_parquet(path)
    code = main(["--model", str(tiny_vlm_path), "--data", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "3 of 3 rows have no images (rows 0, 1, 2)" in capsys.readouterr().err
