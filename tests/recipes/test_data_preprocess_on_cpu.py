"""The ViRL39K / MMK12 / Geometry3K converters, run offline on small in-schema samples built here.

Each sample mimics its hub dataset's columns (tiny PIL images, real-looking questions and answers),
is written in the hub's layout (``data/<split>-*.parquet``) and converted through the converter's
``--local_dataset_path`` option. The output is then read by verl's own ``RLHFDataset`` and its
multimodal step (``qwen_vl_utils`` resizing, as verl's agent loop runs it) with a Qwen2.5-VL processor,
the way the trainer reads it. The converter scripts are loaded from their files (no ``sys.path`` edit);
their shared code is ``verl_vgpo.data.vl_math``.
"""

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from verl_vgpo.data import vl_math

REPO = Path(__file__).resolve().parents[2]
PREPROCESS_DIR = REPO / "examples" / "data_preprocess"


def _converter(name):
    """The converter script ``examples/data_preprocess/<name>.py`` as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"vgpo_converter_{name}", PREPROCESS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decoded(entry):
    """An image entry of the output parquet ({"bytes": PNG, ...}) as a PIL image."""
    return Image.open(io.BytesIO(entry["bytes"]))


def _image(seed, size=(40, 30)):
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _write_hub_layout(root, split_rows, features):
    for split, rows in split_rows.items():
        table = datasets.Dataset.from_list(rows, features=features)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def _read_output(path):
    return datasets.load_dataset("parquet", data_files=str(path))["train"]


# Qwen2.5-VL-7B-Instruct's preprocessor_config.json bounds (min_pixels 3136, max_pixels 12845056); the tiny
# test processor caps images at 64 x 64 pixels, which would hide the converters' bounds
QWEN2_5_VL_PROCESSOR_PIXELS = {"shortest_edge": 3136, "longest_edge": 12845056}


def _verl_rows(parquet_path, tiny_vlm_path, tmp_path, processor_pixels=None):
    """Load the parquet as the trainer does and render each prompt through the processor.

    Images go through ``RLHFDataset._process_multi_modal_info`` (``qwen_vl_utils.process_vision_info``: the
    resize verl's agent loop applies before the processor), so the image-token count is the trainer's.
    """
    from omegaconf import OmegaConf
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    processor = AutoProcessor.from_pretrained(tiny_vlm_path)
    if processor_pixels is not None:
        processor.image_processor.size = dict(processor_pixels)
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 8192,
            # the trainer filters too (recipe: filter_overlong_prompts=true); skipped here, it only doubles the work
            "filter_overlong_prompts": False,
            "cache_dir": str(tmp_path / "verl_cache"),
            "return_raw_chat": True,
        }
    )
    dataset = RLHFDataset(str(parquet_path), processor.tokenizer, config, processor=processor)
    rendered = []
    for index in range(len(dataset)):
        item = dataset[index]
        messages = item["raw_prompt"]
        images, _, _ = RLHFDataset._process_multi_modal_info(messages, dataset.image_patch_size, config)
        images = images or []
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images or None, return_tensors="pt")
        image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
        rendered.append((item, len(images), image_tokens))
    return rendered


GEOMETRY3K_FEATURES = datasets.Features(
    {"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"), "answer": datasets.Value("string")}
)


def test_geometry3k(tmp_path, tiny_vlm_path):
    rows = {
        "train": [
            {"images": [_image(0)], "problem": "<image>Find x. Round to the nearest tenth.", "answer": "7.5"},
            {"images": [_image(1)], "problem": "<image>Find the area of the figure.", "answer": "\\frac{25}{2}"},
        ],
        "test": [{"images": [_image(2)], "problem": "<image>Find m \\angle 2.", "answer": "34"}],
    }
    source = _write_hub_layout(tmp_path / "geometry3k", rows, GEOMETRY3K_FEATURES)
    _converter("geometry3k").main(
        ["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "out"), "--splits", "train", "test"]
    )
    train = _read_output(tmp_path / "out" / "train.parquet")
    assert len(train) == 2
    first = train[0]
    assert first["data_source"] == "geometry3k"
    assert first["reward_model"] == {"style": "rule", "ground_truth": "7.5"}
    assert first["prompt"][0]["role"] == "user"
    content = first["prompt"][0]["content"]
    assert content.startswith("<image>Find x.") and content.count("<image>") == 1
    assert content.endswith("\n\n" + vl_math.VGPO_AUTHORS_INSTRUCTION)
    assert first["extra_info"]["split"] == "train" and first["extra_info"]["index"] == 0
    entry = first["images"][0]
    assert (entry["min_pixels"], entry["max_pixels"]) == (262_144, 4_194_304)
    assert _decoded(entry).size == (40, 30)
    assert np.array_equal(np.asarray(_decoded(entry).convert("RGB")), np.asarray(_image(0)))
    assert train[1]["reward_model"]["ground_truth"] == "\\frac{25}{2}"

    rendered = _verl_rows(tmp_path / "out" / "test.parquet", tiny_vlm_path, tmp_path)
    assert len(rendered) == 1
    item, num_images, image_tokens = rendered[0]
    assert num_images == 1 and image_tokens > 0
    assert item["reward_model"]["ground_truth"] == "34" and item["data_source"] == "geometry3k"


MMK12_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "subject": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }
)


def test_mmk12(tmp_path, tiny_vlm_path):
    rows = {
        "test": [
            {
                "id": "math_17",
                "subject": "math",
                "image": _image(3, (64, 48)),
                "question": "As shown in the figure, AB = 6 and BC = 8. What is AC?",
                "answer": "10",
            },
            {
                "id": "physics_4",
                "subject": "physics",
                "image": _image(4),
                "question": "Which graph shows uniform motion?\nA. 1\nB. 2\nC. 3\nD. 4",
                "answer": "B",
            },
        ]
    }
    source = _write_hub_layout(tmp_path / "mmk12", rows, MMK12_FEATURES)
    _converter("mmk12").main(
        ["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "out"), "--splits", "test"]
    )
    out = _read_output(tmp_path / "out" / "test.parquet")
    assert [row["reward_model"]["ground_truth"] for row in out] == ["10", "B"]
    assert out[0]["prompt"][0]["content"].startswith("<image>As shown in the figure")
    assert out[1]["extra_info"]["subject"] == "physics" and out[1]["extra_info"]["source_id"] == "physics_4"
    rendered = _verl_rows(tmp_path / "out" / "test.parquet", tiny_vlm_path, tmp_path)
    assert [(num_images, tokens > 0) for _, num_images, tokens in rendered] == [(1, True), (1, True)]


def test_virl39k_cli_with_relative_image_paths(tmp_path, tiny_vlm_path):
    """ViRL39K ships image paths relative to its extracted images.zip; answers are boxed."""
    image_root = tmp_path / "raw"
    (image_root / "images").mkdir(parents=True)
    for seed in (5, 6, 7):
        _image(seed).save(image_root / "images" / f"img_{seed}.png")
    rows = {
        "train": [
            {
                "question": "<image>What is the measure of angle ABC?",
                "answer": "\\boxed{17^\\circ}",
                "image": "['images/img_5.png']",
                "category": "(GradeSchool) Geometric",
                "source": "MM-Math",
                "qid": "q1",
                "PassRate_32BTrained": 0.25,
                "PassRate_7BTrained": None,
            },
            {
                "question": "Compare the two charts <image> and <image>: which is larger?",
                "answer": "\\boxed{A}",
                "image": "['images/img_6.png', 'images/img_7.png']",
                "category": "Charts",
                "source": "new",
                "qid": "q2",
                "PassRate_32BTrained": 0.5,
                "PassRate_7BTrained": 0.125,
            },
        ]
    }
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image": datasets.Value("string"),
            "category": datasets.Value("string"),
            "source": datasets.Value("string"),
            "qid": datasets.Value("string"),
            "PassRate_32BTrained": datasets.Value("float64"),
            "PassRate_7BTrained": datasets.Value("float64"),
        }
    )
    source = _write_hub_layout(tmp_path / "virl39k", rows, features)
    out_dir = tmp_path / "out"
    command = [sys.executable, str(PREPROCESS_DIR / "virl39k.py"), "--local_dataset_path", str(source)]
    completed = subprocess.run(
        [*command, "--image_root", str(image_root), "--output_dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    out = _read_output(out_dir / "train.parquet")
    assert [row["reward_model"]["ground_truth"] for row in out] == ["17^\\circ", "A"]
    assert [len(row["images"]) for row in out] == [1, 2]
    assert out[1]["prompt"][0]["content"].count("<image>") == 2
    assert out[0]["extra_info"]["pass_rate_32b_trained"] == "0.25"
    assert out[0]["extra_info"]["pass_rate_7b_trained"] == ""
    assert np.array_equal(np.asarray(_decoded(out[1]["images"][1]).convert("RGB")), np.asarray(_image(7)))
    rendered = _verl_rows(out_dir / "train.parquet", tiny_vlm_path, tmp_path)
    assert [num_images for _, num_images, _ in rendered] == [1, 2]

    # without --image_root the relative paths cannot be resolved: a clear error, not a silent skip
    failed = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out2")], capture_output=True, text=True, timeout=300
    )
    assert failed.returncode != 0 and "--image_root" in failed.stderr and "row 0" in failed.stderr


def test_bad_rows_fail_with_the_row_and_reason(tmp_path):
    common = vl_math
    with pytest.raises(common.ConversionError, match="2 <image> placeholders but 1 images"):
        common.build_prompt("<image><image>two?", 1)
    rows = {"train": [{"images": [], "problem": "no picture", "answer": "1"}]}
    source = _write_hub_layout(tmp_path / "g", rows, GEOMETRY3K_FEATURES)
    with pytest.raises(common.ConversionError, match="geometry3k train row 0: no image"):
        _converter("geometry3k").main(
            ["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "o"), "--splits", "train"]
        )
    assert common.strip_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert common.strip_boxed("\\boxed{1} and \\boxed{2}") == "\\boxed{1} and \\boxed{2}"


def test_papo_preprocessed_layout_is_accepted(tmp_path):
    """The VGPO/PAPO authors' copies (PAPOGalaxy/PAPO_*) carry embedded ``images`` and ``problem``."""
    rows = {"train": [{"images": [_image(8)], "problem": "<image>How many sides?", "answer": "\\boxed{6}"}]}
    source = _write_hub_layout(tmp_path / "papo", rows, GEOMETRY3K_FEATURES)
    _converter("virl39k").main(["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "v")])
    _converter("mmk12").main(
        ["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "m"), "--splits", "train"]
    )
    for out_dir, data_source in ((tmp_path / "v", "virl39k"), (tmp_path / "m", "mmk12")):
        (row,) = _read_output(out_dir / "train.parquet")
        assert row["data_source"] == data_source and row["reward_model"]["ground_truth"] == "6"
        assert row["prompt"][0]["content"].startswith("<image>How many sides?")


def test_importing_the_converters_leaves_sys_path_alone():
    before = list(sys.path)
    for name in ("virl39k", "mmk12", "geometry3k"):
        _converter(name)
    assert sys.path == before


def test_default_prompt_is_the_vgpo_authors_template_and_ours_is_an_option(tmp_path):
    """The authors render ``{{ content | trim }}`` + blank line + their sentence (math_format_perception.jinja)."""
    question = "  <image>Find the value of x.  "
    (message,) = vl_math.build_prompt(question, 1)
    assert message["content"] == (
        "<image>Find the value of x.\n\nYou first think through the reasoning process as an internal monologue, "
        "enclosed within <think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
    )
    (ours,) = vl_math.build_prompt(question, 1, instruction="verl_vgpo")
    assert ours["content"].endswith("\n\n" + vl_math.VERL_VGPO_INSTRUCTION)
    with pytest.raises(vl_math.ConversionError, match="unknown instruction"):
        vl_math.build_prompt(question, 1, instruction="mine")
    rows = {"test": [{"images": [_image(9)], "problem": "<image>How many sides?", "answer": "6"}]}
    source = _write_hub_layout(tmp_path / "g", rows, GEOMETRY3K_FEATURES)
    _converter("geometry3k").main(["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "o"),
                                   "--splits", "test", "--instruction", "verl_vgpo", "--processor_pixel_limits"])
    (row,) = _read_output(tmp_path / "o" / "test.parquet")
    assert row["prompt"][0]["content"] == "<image>How many sides?\n\n" + vl_math.VERL_VGPO_INSTRUCTION
    assert (row["images"][0]["min_pixels"], row["images"][0]["max_pixels"]) == (None, None)
    with pytest.raises(vl_math.ConversionError, match="min_pixels 9 is larger than max_pixels 4"):
        _converter("geometry3k").main(["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "o"),
                                       "--min_pixels", "9", "--max_pixels", "4"])


def test_verl_gives_small_and_large_images_the_papers_number_of_visual_tokens(tmp_path, tiny_vlm_path):
    """verl's dataset + multimodal step honour the bounds the converters write into every image entry.

    Qwen2.5-VL: one visual token per 28 x 28 pixels after resizing to multiples of 28 (14-pixel patches,
    2 x 2 merge). A 64 x 64 diagram is upscaled to at least 262,144 pixels: ceil(64 * 8 / 28) = 19 -> 19 x 19 =
    361 tokens (with the processor's own bounds it keeps 56 x 56: 4 tokens). A 3000 x 3000 image is cut down
    to at most 4,194,304 pixels: floor(3000 / sqrt(9e6 / 4194304) / 28) = 73 -> 73 x 73 = 5,329 tokens (the
    processor's bounds would keep round(3000 / 28) = 107 -> 11,449).
    """
    small, large = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (3000, 3000), (30, 30, 200))
    rows = {"test": [{"images": [small], "problem": "<image>Small?", "answer": "1"},
                     {"images": [large], "problem": "<image>Large?", "answer": "2"}]}
    source = _write_hub_layout(tmp_path / "g", rows, GEOMETRY3K_FEATURES)
    _converter("geometry3k").main(["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "paper"),
                                   "--splits", "test"])
    rendered = _verl_rows(tmp_path / "paper" / "test.parquet", tiny_vlm_path, tmp_path, QWEN2_5_VL_PROCESSOR_PIXELS)
    assert [tokens for _, _, tokens in rendered] == [361, 5329]
    # the same small image without bounds in its entry: the processor's minimum applies (the large one is
    # left out here only to keep the test fast)
    _converter("geometry3k").main(["--local_dataset_path", str(source), "--output_dir", str(tmp_path / "processor"),
                                   "--splits", "test", "--max_rows", "1", "--processor_pixel_limits"])
    rendered = _verl_rows(tmp_path / "processor" / "test.parquet", tiny_vlm_path, tmp_path, QWEN2_5_VL_PROCESSOR_PIXELS)
    assert [tokens for _, _, tokens in rendered] == [4]
