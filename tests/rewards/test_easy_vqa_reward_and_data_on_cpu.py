"""easy-vqa parquet converter (read back through verl's real RLHFDataset) and the exact-match reward."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from verl_vgpo.rewards import exact_match

CONVERTER = Path(__file__).resolve().parents[2] / "examples" / "data_preprocess" / "easy_vqa.py"


def _load_converter():
    # loaded under another module name: "easy_vqa" is the data package the converter reads
    spec = importlib.util.spec_from_file_location("easy_vqa_converter", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_converter_writes_verl_rl_parquet(tmp_path):
    import easy_vqa

    converter = _load_converter()
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
    assert train["extra_info"].map(lambda info: info["image_id"]).is_unique
    # seeded: the same flags give the same rows
    again = converter.build_rows("train", 6, seed=1)
    assert [row["extra_info"]["question"] for row in again] == list(train["extra_info"].map(lambda i: i["question"]))


def test_converter_refuses_bad_sizes():
    converter = _load_converter()
    with pytest.raises(ValueError, match="must be positive"):
        converter.build_rows("train", 0, seed=0)
    with pytest.raises(ValueError, match="only 1000 images"):
        converter.build_rows("test", 1001, seed=0)
    with pytest.raises(ValueError, match="unknown easy-vqa split"):
        converter.build_rows("validation", 2, seed=0)


def test_rows_load_through_verls_dataset_with_the_tiny_vlm_processor(tmp_path):
    from omegaconf import OmegaConf

    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    converter = _load_converter()
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
