"""Warm start (verl_vgpo.cpu.warm_start): deterministic for a seed, cached by its settings, and clearly above
the best constant answer on held-out questions after a small budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verl_vgpo.cpu import warm_start
from verl_vgpo.data import easy_vqa

pytestmark = pytest.mark.slow  # launches main_ppo or trains a warm start


# a small budget: 120 optimiser steps of 32 samples of the default (warm) preset (about 40-60 s on one core)
SMALL = warm_start.WarmStartSettings(steps=120, eval_size=100)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm_start")
    first = Path(warm_start.build_warm_start(root / "a", SMALL, progress=False))
    second = Path(warm_start.build_warm_start(root / "b", SMALL, progress=False))
    return root, first, second


def test_same_settings_same_weights(built):
    from safetensors.torch import load_file

    _, first, second = built
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(bool((weights_a[name] == weights_b[name]).all()) for name in weights_a)
    record_a = json.loads((first / warm_start.SETTINGS_FILE).read_text())
    record_b = json.loads((second / warm_start.SETTINGS_FILE).read_text())
    assert record_a["hash"] == record_b["hash"] and record_a["held_out"] == record_b["held_out"]


def test_cached_folder_is_reused_and_other_settings_rebuild(built, monkeypatch):
    root, first, _ = built

    def no_training(*args, **kwargs):
        raise AssertionError("a cached warm start was trained again")

    monkeypatch.setattr(warm_start, "train", no_training)
    assert warm_start.build_warm_start(first, SMALL, progress=False) == str(first)
    # changed settings: the cache key differs, so the folder would be rebuilt (training is called)
    with pytest.raises(AssertionError, match="trained again"):
        warm_start.build_warm_start(first, warm_start.WarmStartSettings(steps=121, eval_size=100), progress=False)
    assert json.loads((first / warm_start.SETTINGS_FILE).read_text())["settings"]["steps"] == 120  # untouched
    assert warm_start.settings_record(SMALL)["hash"] != warm_start.settings_record(
        warm_start.WarmStartSettings(steps=120, eval_size=100, lr=1e-3))["hash"]

    unrelated = root / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no warm start"):
        warm_start.build_warm_start(unrelated, SMALL, progress=False)


def test_held_out_accuracy_is_clearly_above_chance(built):
    _, first, _ = built
    held_out = json.loads((first / warm_start.SETTINGS_FILE).read_text())["held_out"]
    answers = {sample["answer"] for sample in easy_vqa.load_split("test")}
    chance = 1.0 / len(answers)  # 13 possible answers
    assert held_out["n"] == SMALL.eval_size
    # measured 0.53 on 100 questions after 120 steps (a random model scores 0: it never writes "Answer:")
    assert held_out["accuracy"] >= 3 * chance, (held_out["accuracy"], chance)
    # responses follow the shared format: rationale, then the answer after the marker
    assert all(easy_vqa.ANSWER_MARKER in example["response"] for example in held_out["examples"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        warm_start.WarmStartSettings(steps=0)
    with pytest.raises(ValueError, match="lr must be a positive"):
        warm_start.WarmStartSettings(lr=float("nan"))


def test_tiny_vlm_cli_builds_the_warm_start(tmp_path, monkeypatch):
    from verl_vgpo.cpu import tiny_vlm_cli
    from verl_vgpo.cpu.tiny_vlm import PRESETS, SETTINGS_FILE

    calls = []
    monkeypatch.setattr(warm_start, "build_warm_start", lambda out, settings, **kw: calls.append((out, settings, kw)))
    tiny_vlm_cli.main(["--warm-start", "--out", str(tmp_path / "m"), "--warm-steps", "7", "--family", "qwen2_5_vl"])
    (out, settings, overrides), = calls
    assert out == str(tmp_path / "m") and settings.steps == 7 and settings.family == "qwen2_5_vl" and overrides == {}
    assert settings.preset == "warm"  # the warm start's default preset; the random build's default stays "test"
    tiny_vlm_cli.main(["--out", str(tmp_path / "random")])
    record = json.loads((tmp_path / "random" / SETTINGS_FILE).read_text())
    assert record["size"]["min_pixels"] == PRESETS["test"].min_pixels and "image_mean" not in record["size"]


def test_supervised_images_are_resized_as_verls_rl_dataset_resizes_them(tiny_vlm_path):
    """The warm start feeds the processor the same pixels verl's RLHFDataset does (qwen_vl_utils' resize via
    verl's process_image), so supervised and RL inputs of one image match exactly."""
    import numpy as np
    from transformers import AutoProcessor
    from verl.utils.dataset.vision_utils import process_image

    processor = AutoProcessor.from_pretrained(tiny_vlm_path)
    sample = easy_vqa.load_split("train")[0]
    with open(sample["image_path"], "rb") as image_file:
        verl_image = process_image({"bytes": image_file.read()}, image_patch_size=processor.image_processor.patch_size)
    ours, = warm_start._images(processor, [sample])
    assert ours.size == verl_image.size
    assert np.array_equal(np.asarray(ours), np.asarray(verl_image))


def test_warm_preset_model_learns_to_see_the_colour(tmp_path):
    """The point of the warm preset: the vision pathway learns. After the default warm start's 250 supervised
    steps the rationale names the shape's colour right far above chance (1 in 10): measured 84 % on these 100
    test questions (8 % after 120 steps); with the test preset (4 image tokens, CLIP normalisation) it stayed at
    chance (9.5 % after 400 steps). About 80-130 s on one core."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    settings = warm_start.WarmStartSettings(steps=250, eval_size=8)
    path = warm_start.build_warm_start(tmp_path / "m", settings, progress=False)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    samples = easy_vqa.sample_questions("test", 100, seed=1)
    responses = warm_start.greedy_answers(model, processor, samples)
    named = sum(f"a {sample['color']} " in response for sample, response in zip(samples, responses)) / len(samples)
    assert named >= 0.5, (named, responses[:3])
