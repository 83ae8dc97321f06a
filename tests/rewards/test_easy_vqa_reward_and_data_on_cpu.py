"""easy-vqa format (verl_vgpo.data.easy_vqa: prompt, rationale target, answer extraction, parquet rows read
back through verl's real RLHFDataset), its converter script, and the exact-match reward."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from verl_vgpo.data import easy_vqa as converter
from verl_vgpo.rewards import exact_match

CONVERTER = Path(__file__).resolve().parents[2] / "examples" / "data_preprocess" / "easy_vqa_shapes.py"


# ---- reward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("circle", "circle", 1.0),
        ("  Circle.\n", "circle", 1.0),
        ("Answer: yes", "yes", 1.0),
        ("The answer is Teal!", "teal", 1.0),
        ("circles", "circle", 0.0),
        ("a circle", "circle", 0.0),
        ("", "no", 0.0),
        ("no", "yes", 0.0),
        # the rationale format: only the text after the last "Answer:" counts
        ("I see a red circle. Answer: circle", "circle", 1.0),
        ("I see a red circle. answer: Red.", "red", 1.0),
        ("I see a red circle. Answer: circle", "red", 0.0),
        ("Answer: red. Answer: blue", "red", 0.0),
        ("I see a red circle. Answer: circle red", "circle", 0.0),
        ("I see a red circle.", "circle", 0.0),
    ],
)
def test_exact_match(response, answer, expected):
    assert exact_match.compute_score("easy_vqa", response, answer) == {"score": expected, "acc": expected}


def test_graded_score_keeps_exact_match_on_top_and_orders_by_closeness():
    exact = exact_match.compute_graded_score("easy_vqa", "Rectangle", "rectangle")
    close = exact_match.compute_graded_score("easy_vqa", "rectangel", "rectangle")
    far = exact_match.compute_graded_score("easy_vqa", "xyz", "rectangle")
    assert exact == {"score": 1.0, "acc": 1.0}
    assert close["acc"] == far["acc"] == 0.0
    assert exact_match.PARTIAL_CREDIT_SCALE > close["score"] > far["score"] >= 0.0


def test_reward_refuses_a_missing_ground_truth():
    with pytest.raises(ValueError, match="ground truth"):
        exact_match.compute_score("easy_vqa", "yes", None)
    with pytest.raises(ValueError, match="ground truth"):
        exact_match.compute_graded_score("easy_vqa", "yes", "  ")
    assert exact_match.compute_score("easy_vqa", "yes", ["yes"])["score"] == 1.0


def test_reward_loads_through_verls_custom_reward_hook():
    from omegaconf import OmegaConf

    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": "pkg://verl_vgpo.rewards.exact_match", "name": "compute_score", "reward_kwargs": {}}}})
    score_fn = get_custom_reward_fn(config)
    assert score_fn(data_source="easy_vqa", solution_str="blue", ground_truth="blue", extra_info={}) == {
        "score": 1.0, "acc": 1.0}


# ---- data ------------------------------------------------------------------------------------------


def test_target_format_round_trips_through_the_answer_extraction():
    for color in converter.COLORS:
        for shape in converter.SHAPES:
            for answer in ("yes", "no", color, shape):
                target = converter.target_text(color, shape, answer)
                assert f"{color} {shape}" in target
                assert converter.extract_answer(target) == answer
                assert exact_match.compute_score("easy_vqa", target, answer)["score"] == 1.0
    assert converter.prompt_text("what shape?").startswith("<image>what shape? ")


def test_image_attributes_come_from_the_questions():
    questions = ["what color is the triangle?", "is there not a blue shape?", "what shape is in the image?",
                 "does the image not contain a red shape?", "is there a circle?"]
    answers = ["blue", "no", "circle", "no", "no"]
    image_ids = [0, 1, 1, 2, 2]
    # image 0: both from one question; image 1: colour from a negated "no", shape from a shape question;
    # image 2: colour known ("not contain red" -> no), shape never determined ("is there a circle?" no)
    assert converter.image_attributes(questions, answers, image_ids) == {0: ("blue", "triangle"), 1: ("blue", "circle")}


def test_every_kept_easy_vqa_rationale_agrees_with_the_images_own_answers():
    samples = converter.load_split("train") + converter.load_split("test")
    colour_questions = [s for s in samples if s["answer"] in converter.COLORS]
    shape_questions = [s for s in samples if s["answer"] in converter.SHAPES]
    assert colour_questions and shape_questions
    assert [s["color"] for s in colour_questions] == [s["answer"] for s in colour_questions]
    assert [s["shape"] for s in shape_questions] == [s["answer"] for s in shape_questions]


def test_converter_script_does_not_shadow_the_easy_vqa_package(tmp_path):
    assert not (CONVERTER.parent / "easy_vqa.py").exists()
    subprocess.run([sys.executable, str(CONVERTER), "--local_save_dir", str(tmp_path), "--train_size", "2",
                    "--val_size", "1"], check=True, timeout=120)
    assert len(pd.read_parquet(tmp_path / "train.parquet")) == 2


def test_converter_writes_verl_rl_parquet(tmp_path):
    import easy_vqa

    outputs = converter.main(["--local_save_dir", str(tmp_path), "--train_size", "6", "--val_size", "3", "--seed", "1"])
    train = pd.read_parquet(outputs["train"])
    test = pd.read_parquet(outputs["test"])
    assert len(train) == 6 and len(test) == 3
    assert set(train.columns) == {"data_source", "prompt", "images", "ability", "reward_model", "extra_info"}
    answers = set(easy_vqa.get_answers())
    for row in train.itertuples():
        assert row.data_source == "easy_vqa"
        assert row.prompt[0]["role"] == "user" and row.prompt[0]["content"].startswith("<image>")
        image = Image.open(io.BytesIO(row.images[0]["bytes"]))
        assert image.size == (64, 64)
        assert row.reward_model["ground_truth"] in answers
        assert row.reward_model["ground_truth"] == row.extra_info["answer"]
        assert row.extra_info["question"] in row.prompt[0]["content"]
        assert row.extra_info["target"] == converter.target_text(row.extra_info["color"], row.extra_info["shape"],
                                                                 row.extra_info["answer"])
    assert train["extra_info"].map(lambda info: info["image_id"]).is_unique
    # seeded: the same flags give the same rows
    again = converter.build_rows("train", 6, seed=1)
    assert [row["extra_info"]["question"] for row in again] == list(train["extra_info"].map(lambda i: i["question"]))


def test_converter_refuses_bad_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        converter.build_rows("train", 0, seed=0)
    with pytest.raises(ValueError, match=r"only \d+ usable images with all questions; asked for 1001"):
        converter.build_rows("test", 1001, seed=0)
    with pytest.raises(ValueError, match=r"only \d+ usable images with open questions; asked for 870"):
        converter.build_rows("test", 870, seed=0, kinds="open")
    with pytest.raises(ValueError, match="unknown easy-vqa split"):
        converter.build_rows("validation", 2, seed=0)
    with pytest.raises(ValueError, match="unknown easy-vqa question kinds 'closed'"):
        converter.build_rows("train", 2, seed=0, kinds="closed")


def test_open_questions_keep_only_colour_and_shape_answers(tmp_path):
    outputs = converter.main(["--local_save_dir", str(tmp_path), "--train_size", "40", "--val_size", "20",
                              "--questions", "open"])
    for split in ("train", "test"):
        frame = pd.read_parquet(outputs[split])
        answers = frame["reward_model"].map(lambda reward: reward["ground_truth"])
        assert set(answers) <= set(converter.COLORS + converter.SHAPES), set(answers)
        assert frame["extra_info"].map(lambda info: info["image_id"]).is_unique
    # the default keeps every kind: yes/no questions are most of easy-vqa
    every_kind = converter.build_rows("train", 40, seed=0)
    assert {row["reward_model"]["ground_truth"] for row in every_kind} & set(converter.YES_NO)


def test_rows_load_through_verls_dataset_with_the_tiny_vlm_processor(tmp_path):
    from omegaconf import OmegaConf

    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    outputs = converter.main(["--local_save_dir", str(tmp_path / "data"), "--train_size", "2", "--val_size", "1"])
    model_dir = build_tiny_vlm(tmp_path / "model")
    tokenizer, processor = hf_tokenizer(model_dir), hf_processor(model_dir)
    assert processor is not None
    config = OmegaConf.create({"max_prompt_length": 256, "filter_overlong_prompts": False, "image_key": "images",
                               "prompt_key": "prompt", "return_raw_chat": True})
    dataset = RLHFDataset(data_files=[outputs["train"]], tokenizer=tokenizer, processor=processor, config=config)
    item = dataset[0]
    content = item["raw_prompt"][0]["content"]
    assert [part["type"] for part in content] == ["image", "text"]
    assert isinstance(content[0]["image"], Image.Image)
    assert item["data_source"] == "easy_vqa"
    assert content[1]["text"].endswith(converter.INSTRUCTION)
