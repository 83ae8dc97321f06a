"""verl_vgpo.apps.evaluate: protocols, scoring and the accuracy table, and the CLI on the tiny offline VLM.

Generation with the model runs in child processes (the CLI, as users run it): verl's class-level
patch of the Qwen-VL forward, applied by engine tests earlier in the same pytest process, breaks HF
``generate``, and a fresh interpreter is also what the CLI gets in practice.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from verl_vgpo.apps.evaluate import (
    EvaluateError,
    Example,
    Protocol,
    RewardError,
    evaluate,
    format_table,
    load_reward,
    mostly_unparsed,
    parse_protocol,
    rewards_by_source,
)
from verl_vgpo.rewards.math_boxed import compute_score
from verl_vgpo.rewards.paper_scoring import compute_score as paper_score

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# (data_source, question, answer, image height): three sources, unequal sizes
ROWS = [
    ("mmk12", "What is 1 + 2?", "3", 30),
    ("mmk12", "What is 2 + 2?", "4", 40),
    ("mmk12", "Which option? A. 1 B. 2", "B", 50),
    ("geometry3k", "Find x.", "5", 36),
    ("virl39k", "What is the angle?", "60^\\circ", 44),
]


@pytest.fixture(scope="module")
def benchmark_parquet(tmp_path_factory):
    from verl_vgpo.data.vl_math import make_row, output_features

    rows = []
    for index, (source, question, answer, height) in enumerate(ROWS):
        pixels = np.random.RandomState(index).randint(0, 256, (height, 40, 3), dtype=np.uint8)
        rows.append(
            make_row(
                data_source=source,
                split="test",
                index=index,
                question=question,
                answer=answer,
                images=[Image.fromarray(pixels)],
                image_root=None,
                extra={},
            )
        )
    path = tmp_path_factory.mktemp("bench") / "bench.parquet"
    datasets.Dataset.from_list(rows, features=output_features(())).to_parquet(str(path))
    return path


def _examples():
    return [
        Example(data_source=source, index=i, messages=[], images=[], ground_truth=answer)
        for i, (source, _, answer, _) in enumerate(ROWS)
    ]


class ScriptedResponses:
    """Stands in for the model in the table test: fixed response texts per protocol and prompt."""

    def __init__(self, by_protocol):
        self.by_protocol = by_protocol

    def __call__(self, examples, protocol):
        return self.by_protocol[protocol.name]


def test_accuracy_table_from_known_responses():
    greedy = [["\\boxed{3}"], ["\\boxed{5}"], ["\\boxed{(B) 2}"], ["no box: 5"], ["\\boxed{60}"]]
    avg = [
        ["\\boxed{3}", "\\boxed{3}", "\\boxed{1}", "x"],  # 2/4
        ["\\boxed{4}"] * 4,  # 4/4
        ["\\boxed{A}"] * 4,  # 0/4
        ["\\boxed{5}", "\\boxed{6}", "\\boxed{6}", "\\boxed{6}"],  # 1/4
        ["\\boxed{60^\\circ}", "\\boxed{60}", "\\boxed{30}", "\\boxed{60°}"],  # 3/4
    ]
    protocols = [Protocol("greedy", 1, 0.0), Protocol("avg@4", 4, 1.0)]
    rows, records, _ = evaluate(_examples(), ScriptedResponses({"greedy": greedy, "avg@4": avg}), protocols)
    table = {row["data_source"]: row for row in rows}
    assert [row["data_source"] for row in rows] == ["geometry3k", "mmk12", "virl39k", "all", "mean_of_sources"]
    assert table["mmk12"]["prompts"] == 3
    # mmk12 is one of the paper's benchmarks: the paper protocol (PAPO-Eval's rule) does not read "(B) 2" as B
    assert table["mmk12"]["greedy"] == pytest.approx(100 * 1 / 3)
    assert table["geometry3k"]["greedy"] == 0.0 and table["virl39k"]["greedy"] == 100.0
    assert table["mmk12"]["avg@4"] == pytest.approx(100 * (0.5 + 1.0 + 0.0) / 3)
    assert table["geometry3k"]["avg@4"] == pytest.approx(25.0) and table["virl39k"]["avg@4"] == pytest.approx(75.0)
    # "all" weighs prompts equally, "mean_of_sources" weighs benchmarks equally
    assert table["all"]["greedy"] == pytest.approx(100 * 2 / 5)
    assert table["mean_of_sources"]["greedy"] == pytest.approx((100 / 3 + 0 + 100) / 3)
    assert table["all"]["avg@4"] == pytest.approx(100 * (0.5 + 1 + 0 + 0.25 + 0.75) / 5)
    assert len(records) == 10 and records[5]["acc"] == [1.0, 1.0, 0.0, 0.0]
    assert "| mmk12 | 3 | 33.33 | 50.00 |" in format_table(rows, ["greedy", "avg@4"])


def test_wrong_number_of_responses_is_an_error():
    with pytest.raises(ValueError, match="expected 4 responses"):
        evaluate(_examples(), ScriptedResponses({"avg@4": [["\\boxed{1}"]] * 5}), [Protocol("avg@4", 4, 1.0)])


def test_protocols():
    assert parse_protocol("greedy", 1.0) == Protocol("greedy", 1, 0.0)
    assert parse_protocol("avg@8", 1.0) == Protocol("avg@8", 8, 1.0)
    for bad in ("avg@0", "pass@8", "avg8", "Greedy"):
        with pytest.raises(ValueError, match="unknown protocol"):
            parse_protocol(bad, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        parse_protocol("avg@8", 0.0)


def test_easy_vqa_rows_are_scored_by_exact_match_not_the_boxed_math_reward():
    """Regression: every easy-vqa answer used to score 0 (the CLI always used the boxed-math reward)."""
    examples = [
        Example(data_source="easy_vqa", index=0, messages=[], images=[], ground_truth="yes"),
        Example(data_source="easy_vqa", index=1, messages=[], images=[], ground_truth="circle"),
        Example(data_source="easy_vqa", index=2, messages=[], images=[], ground_truth="red"),
        Example(data_source="mmk12", index=3, messages=[], images=[], ground_truth="3"),
    ]
    greedy = [["I see a red circle. Answer: yes"], ["I see a red circle. Answer: circle"], ["I see a blue"], ["\\boxed{3}"]]
    rows, records, _ = evaluate(examples, ScriptedResponses({"greedy": greedy}), [Protocol("greedy", 1, 0.0)])
    table = {row["data_source"]: row for row in rows}
    assert table["easy_vqa"]["greedy"] == pytest.approx(200 / 3)
    assert table["mmk12"]["greedy"] == 100.0
    # the third response has no "Answer:" line: counted, not hidden
    assert table["easy_vqa"]["parse_failure"]["greedy"] == pytest.approx(1 / 3)
    assert [r["parsed"] for r in records] == [[True], [True], [False], [True]]
    assert mostly_unparsed(rows) == []


def test_reward_routing_follows_the_data_source():
    from verl_vgpo.apps.evaluate import VERL_DEFAULT_REWARD

    def example(source, truth="4"):
        return Example(data_source=source, index=0, messages=[], images=[], ground_truth=truth)

    rewards = rewards_by_source(
        [example("easy_vqa", "yes"), example("geometry3k"), example("openai/gsm8k"), example("mmk12")]
    )
    assert rewards["easy_vqa"].name == "pkg://verl_vgpo.rewards.exact_match:compute_score"
    assert rewards["mmk12"].name == 'pkg://verl_vgpo.rewards.paper_scoring:compute_score {"scoring": "papo"}'
    assert rewards["mmk12"].parses("\\boxed{4}") and not rewards["mmk12"].parses("4")
    assert rewards_by_source([example("mmk12")], scoring="lookback")["mmk12"].name.endswith('{"scoring": "lookback"}')
    assert rewards["geometry3k"].name == "pkg://verl_vgpo.rewards.math_boxed:compute_score"
    assert rewards["openai/gsm8k"].name == VERL_DEFAULT_REWARD  # verl's own routing for verl's data sources
    gsm8k = rewards["openai/gsm8k"]
    assert gsm8k.score(example("openai/gsm8k"), "so #### 4") == (1.0, "score")
    assert gsm8k.parses("so #### 4") and not gsm8k.parses("the answer is 4")
    with pytest.raises(RewardError, match="no reward for data_source 'my_bench'.*--reward"):
        rewards_by_source([example("my_bench")])


def test_custom_reward_is_loaded_like_reward_custom_reward_function(tmp_path):
    module = tmp_path / "my_reward.py"
    module.write_text(
        "def score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):\n"
        "    return float(solution_str.strip() == ground_truth) + bonus\n"
    )
    custom = load_reward(f"{module}:score", {"bonus": 0.5})
    examples = [Example(data_source="my_bench", index=0, messages=[], images=[], ground_truth="x")]
    rewards = rewards_by_source(examples, custom)  # a custom reward needs no routing for unknown sources
    assert rewards["my_bench"].score(examples[0], "x") == (1.5, "score")  # reward_kwargs reach it, like verl's
    assert rewards["my_bench"].parses is None  # unknown format: the table says n/a, not 0 %
    rows, _, _ = evaluate(examples, ScriptedResponses({"greedy": [["x"]]}), [Protocol("greedy", 1, 0.0)], rewards)
    assert rows[0]["parse_failure"] == {"greedy": None}
    assert "| my_bench | 1 | 150.00 | n/a |" in format_table(rows, ["greedy"])
    graded = load_reward("pkg://verl_vgpo.rewards.exact_match:compute_graded_score")
    assert graded.expects is not None
    for bad in ("no_function_given", "pkg://verl_vgpo.rewards.exact_match:", f"{tmp_path}/missing.py:score"):
        with pytest.raises(RewardError):
            load_reward(bad)
    with pytest.raises(RewardError, match="cannot be loaded"):
        load_reward("pkg://verl_vgpo.rewards.exact_match:no_such_function")


def test_mostly_unparsed_sources_are_flagged():
    examples = [Example(data_source="mmk12", index=i, messages=[], images=[], ground_truth="3") for i in range(3)]
    greedy = [["3"], ["the answer is 3"], ["\\boxed{3}"]]
    rows, _, _ = evaluate(examples, ScriptedResponses({"greedy": greedy}), [Protocol("greedy", 1, 0.0)])
    assert rows[0]["parse_failure"]["greedy"] == pytest.approx(2 / 3)
    assert mostly_unparsed(rows) == [{"data_source": "mmk12", "protocol": "greedy", "rate": pytest.approx(2 / 3)}]
    assert "| mmk12 | 3 | 33.33 | 67% !! |" in format_table(rows, ["greedy"])


def test_console_script_main_returns_an_exit_code():
    from importlib.metadata import entry_points

    from verl_vgpo.apps import evaluate as evaluate_module

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "vgpo-evaluate"]
    assert script.load() is evaluate_module.main
    assert evaluate_module.main(["--model_path", "unused", "--data", "unused.parquet", "--output_dir", "unused",
                                 "--reward", "no_colon"]) == 2


def _run_cli(model, data, out_dir, *extra, expected_code=0, console_script=False):
    program = [str(Path(sys.executable).parent / "vgpo-evaluate")] if console_script else [
        sys.executable, "-m", "verl_vgpo.apps.evaluate"]
    command = [*program, "--model_path", str(model), "--data", str(data)]
    command += ["--output_dir", str(out_dir), "--backend", "hf", "--max_new_tokens", "12", *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=CHILD_ENV, cwd=REPO)
    assert completed.returncode == expected_code, completed.stderr[-3000:]
    return completed


def test_cli_on_tiny_vlm(tiny_vlm_path, benchmark_parquet, tmp_path):
    out = tmp_path / "batched"
    stdout = _run_cli(tiny_vlm_path, benchmark_parquet, out, "--protocols", "greedy", "avg@3", "--batch_size", "3").stdout
    summary = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert summary["backend"] == "hf"
    assert summary["protocols"] == [
        {"name": "greedy", "num_samples": 1, "temperature": 0.0},
        {"name": "avg@3", "num_samples": 3, "temperature": 1.0},
    ]
    assert [len(r["responses"]) for r in records] == [1] * 5 + [3] * 5
    # the saved table is exactly the rescored saved responses (mmk12 by the paper protocol, the others by
    # the project's boxed reward)
    def score(record, text):
        if record["data_source"] == "mmk12":
            return paper_score(record["data_source"], text, record["ground_truth"])["acc"]
        return compute_score(record["data_source"], text, record["ground_truth"])["acc"]

    for row in summary["table"]:
        if row["data_source"] == "mean_of_sources":
            continue
        chosen = [r for r in records if row["data_source"] in ("all", r["data_source"])]
        for protocol in ("greedy", "avg@3"):
            per_prompt = [
                np.mean([score(r, text) for text in r["responses"]])
                for r in chosen
                if r["protocol"] == protocol
            ]
            assert row[protocol] == pytest.approx(100 * np.mean(per_prompt))
    assert "| mmk12 | 3 |" in stdout and "| all | 5 |" in stdout
    # the math sources are scored by boxed rewards; a random model writes no box: loud, not silent
    assert summary["rewards"]["mmk12"]["reward"].startswith("pkg://verl_vgpo.rewards.paper_scoring:compute_score")
    assert summary["rewards"]["geometry3k"]["reward"] == "pkg://verl_vgpo.rewards.math_boxed:compute_score"
    unboxed = [r for r in records if not any("\\boxed{" in text for text in r["responses"])]
    assert unboxed, "the random tiny model wrote a box: pick another failure example"
    mmk12 = next(row for row in summary["table"] if row["data_source"] == "mmk12")
    mmk12_greedy = [r for r in records if r["data_source"] == "mmk12" and r["protocol"] == "greedy"]
    assert mmk12["parse_failure"]["greedy"] == pytest.approx(sum(not r["parsed"][0] for r in mmk12_greedy) / 3)

    # greedy decoding does not depend on how prompts are batched (left padding + multimodal positions);
    # the console script behaves like python -m, and --strict fails the run when most answers cannot be read
    single = tmp_path / "single"
    completed = _run_cli(tiny_vlm_path, benchmark_parquet, single, "--protocols", "greedy", "--batch_size", "1",
                         "--strict", expected_code=3, console_script=True)
    assert "WARNING: " in completed.stderr and "of responses lack a \\boxed{} answer" in completed.stderr
    assert "--strict: " in completed.stderr
    assert "!!" in completed.stdout
    single_records = [json.loads(line) for line in (single / "generations.jsonl").read_text().splitlines()]
    assert [r["responses"] for r in single_records] == [r["responses"] for r in records[:5]]
    assert any(r["responses"][0] for r in single_records), "the model generated nothing at all"


REFERENCE_SCRIPT = r"""
import json, sys, torch
from verl_vgpo.apps.evaluate import HFGenerator, load_examples, parse_protocol
model_path, data_path, steps = sys.argv[1], sys.argv[2], 10
examples = load_examples([data_path])
generator = HFGenerator(model_path, steps, batch_size=len(examples), seed=0)
batched = [r[0] for r in generator(examples, parse_protocol("greedy", 1.0))]
processor, model = generator.processor, generator.loaded.model
reference = []
for example in examples:
    # uncached greedy loop, one prompt at a time: every step recomputes the whole sequence
    text = processor.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=example.images, return_tensors="pt")
    sequence, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence),
                           mm_token_type_ids=types, pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"]).logits[0, -1]
        logits[generator.suppressed_token_ids] = -float("inf")
        token = logits.argmax().view(1, 1)
        sequence, types = torch.cat([sequence, token], 1), torch.cat([types, torch.zeros_like(token)], 1)
        if token.item() == processor.tokenizer.eos_token_id:
            break
    reference.append(processor.tokenizer.decode(sequence[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
tokenizer = processor.tokenizer
suppressed = tokenizer.convert_ids_to_tokens(generator.suppressed_token_ids)
print(json.dumps({"batched": batched, "reference": reference, "suppressed": suppressed}))
"""


def test_hf_generation_matches_an_uncached_single_prompt_decode(tiny_vlm_path, benchmark_parquet):
    completed = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, str(tiny_vlm_path), str(benchmark_parquet)],
        capture_output=True,
        text=True,
        timeout=300,
        env=CHILD_ENV,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["batched"] == result["reference"]
    assert {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"} <= set(result["suppressed"])
    assert "<|im_end|>" not in result["suppressed"]  # end of sequence stays possible


def test_images_stored_as_bytes_dicts_load_like_decoded_ones(tmp_path):
    # pandas-written parquet (e.g. examples/data_preprocess/easy_vqa.py) keeps images as {"bytes": ...}
    import io

    import pandas as pd
    from PIL import Image

    from verl_vgpo.apps.evaluate import load_examples

    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (56, 56, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    row = {
        "data_source": "toy",
        "prompt": [{"role": "user", "content": "<image>What colour?"}],
        "images": [{"bytes": buffer.getvalue()}],
        "reward_model": {"style": "rule", "ground_truth": "red"},
    }
    path = tmp_path / "bytes.parquet"
    pd.DataFrame([row]).to_parquet(path)
    (example,) = load_examples([str(path)])
    assert len(example.images) == 1 and example.images[0].mode == "RGB"
    assert np.array_equal(np.asarray(example.images[0]), np.asarray(image))
    with pytest.raises(EvaluateError, match="given twice"):
        load_examples([str(path), str(tmp_path / "." / "bytes.parquet")])
    os.link(path, tmp_path / "same.parquet")
    with pytest.raises(EvaluateError, match="given twice"):
        load_examples([str(path), str(tmp_path / "same.parquet")])


def test_prompts_too_long_for_max_model_len_are_refused_before_generation(tiny_vlm_path, benchmark_parquet):
    from transformers import AutoProcessor

    from verl_vgpo.apps.evaluate import check_prompt_lengths, load_examples

    processor = AutoProcessor.from_pretrained(tiny_vlm_path)
    examples = load_examples([str(benchmark_parquet)])
    check_prompt_lengths(processor, examples, max_model_len=4096, max_new_tokens=16)  # all fit
    with pytest.raises(ValueError, match=r"do not fit --max_model_len=8 .* row 0: \d+ tokens"):
        check_prompt_lengths(processor, examples, max_model_len=8, max_new_tokens=16)


@pytest.mark.parametrize("family, patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_image_patch_size_defaults_to_the_checkpoint_processor(tiny_vlm_of, monkeypatch, family, patch):
    """Without --image_patch_size the images are resized to the checkpoint's own patch size (Qwen3-VL: 16)."""
    from verl_vgpo.apps import evaluate as evaluate_module

    model = tiny_vlm_of(family)
    assert evaluate_module.checkpoint_image_patch_size(model) == patch
    seen = []

    def stop_after_loading(paths, max_rows, image_patch_size):
        seen.append(image_patch_size)
        raise RuntimeError("stop before generation")

    monkeypatch.setattr(evaluate_module, "load_examples", stop_after_loading)
    common = ["--model_path", str(model), "--data", "unused.parquet", "--output_dir", "unused"]
    for extra, expected in (([], patch), (["--image_patch_size", "28"], 28)):
        with pytest.raises(RuntimeError, match="stop before generation"):
            evaluate_module.run(common + extra)
        assert seen.pop() == expected


def test_given_responses_for_two_files_of_one_source_are_matched_by_their_file(tmp_path):
    """Two parquet files with rows of one data_source share row numbers: a record names its file in
    source_file (as generations.jsonl does), and one that does not is refused instead of scored on another row."""
    from verl_vgpo.apps.evaluate import read_responses

    examples = [Example(data_source="s", index=i, messages=[], images=[], ground_truth=str(i + 10 * k),
                        source_file=str(tmp_path / f"part{k}" / "test.parquet")) for k in (1, 2) for i in (0, 1)]

    def write(records):
        path = tmp_path / "responses.jsonl"
        path.write_text("".join(json.dumps({"protocol": "greedy", "data_source": "s", "responses": [r], **extra}) + "\n"
                                for r, extra in records))
        return str(path)

    # written in the other order; the second file named with a path of another spelling
    other_spelling = str(tmp_path / "part1" / ".." / "part2" / "test.parquet")
    records = [("b1", {"index": 1, "source_file": other_spelling}), ("b0", {"index": 0, "source_file": other_spelling}),
               ("a1", {"index": 1, "source_file": examples[1].source_file}),
               ("a0", {"index": 0, "source_file": examples[0].source_file})]
    _, responses = read_responses(write(records), examples)
    assert responses["greedy"] == [["a0"], ["a1"], ["b0"], ["b1"]]
    with pytest.raises(EvaluateError, match=r"s row 0 exists in 2 data files .*add 'source_file'"):
        read_responses(write([("a0", {"index": 0})]), examples)
    with pytest.raises(EvaluateError, match="source_file /elsewhere/train.parquet is not one of its 2 data files"):
        read_responses(write([("a0", {"index": 0, "source_file": "/elsewhere/train.parquet"})]), examples)
    with pytest.raises(EvaluateError, match="source_file /elsewhere/test.parquet is not one of its 2 data files"):
        read_responses(write([("a0", {"index": 0, "source_file": "/elsewhere/test.parquet"})]), examples)
    # written on another machine: matched by the longest shared path ending (part1/test.parquet, not test.parquet)
    remote = [("a1", {"index": 1, "source_file": "/data/part1/test.parquet"}),
              ("a0", {"index": 0, "source_file": "/data/part1/test.parquet"}),
              ("b0", {"index": 0, "source_file": "/data/part2/test.parquet"}),
              ("b1", {"index": 1, "source_file": "/data/part2/test.parquet"})]
    assert read_responses(write(remote), examples)[1]["greedy"] == [["a0"], ["a1"], ["b0"], ["b1"]]
    windows = [(text, {**extra, "source_file": "C:\\data" + extra["source_file"][5:].replace("/", "\\")})
               for text, extra in remote]  # C:\data\part1\test.parquet
    assert read_responses(write(windows), examples)[1]["greedy"] == [["a0"], ["a1"], ["b0"], ["b1"]]
    # one file per source: source_file is not needed, and a path from another machine is fine
    single = examples[:2]
    records = [("a0", {"index": 0, "source_file": "/other/machine/test.parquet"}), ("a1", {"index": 1})]
    assert read_responses(write(records), single)[1]["greedy"] == [["a0"], ["a1"]]
