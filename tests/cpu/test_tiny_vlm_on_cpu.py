"""The tiny offline VLM builder (Qwen2.5-VL, Qwen3-VL, Qwen3.5): deterministic, idempotent, reloadable offline, ids consistent."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from verl_vgpo.cpu.tiny_vlm import COLORS, SETTINGS_FILE, SHAPES, build_tiny_vlm, resolve_size


def _random_image(seed, size=64):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def test_reloads_offline_with_consistent_special_token_ids(tiny_vlm_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path)
    config = AutoConfig.from_pretrained(tiny_vlm_path)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert config.model_type == "qwen2_5_vl"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>") == processor.video_token_id
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert config.text_config.vocab_size == len(tokenizer)
    head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2


def test_vocabulary_covers_easy_vqa_answers(tiny_vlm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_path)
    for word in COLORS + SHAPES + ("yes", "no"):
        # each answer is one token both after a space and at the start of an answer
        assert len(tokenizer.tokenize(" " + word)) == 1, word
        assert len(tokenizer.tokenize(word)) == 1, word
        assert tokenizer.decode(tokenizer.encode(f"The answer is {word}.")) == f"The answer is {word}."


def test_chat_template_and_processor_expand_images_and_videos(tiny_vlm_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_path, attn_implementation="sdpa").eval()
    merge = processor.image_processor.merge_size

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("What color is the circle?<|im_end|>\n<|im_start|>assistant\n")
    encoded = processor(text=[text], images=[_random_image(0)], return_tensors="pt")
    n_image_tokens = int((encoded["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(encoded["image_grid_thw"].prod()) // merge**2
    assert 1 <= n_image_tokens <= 16  # a 64x64 image stays a handful of tokens
    with torch.no_grad():
        logits = model(**encoded).logits
    assert logits.shape == (1, encoded["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()

    video = np.random.RandomState(1).randint(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], videos=[video], return_tensors="pt")
    n_video_tokens = int((encoded["input_ids"] == model.config.video_token_id).sum())
    assert n_video_tokens == int(encoded["video_grid_thw"].prod()) // merge**2 > 0
    with torch.no_grad():
        assert torch.isfinite(model(**encoded).logits).all()


def test_build_is_deterministic_and_idempotent(tiny_vlm_path, tmp_path):
    from safetensors.torch import load_file

    again = build_tiny_vlm(tmp_path / "again", seed=0)
    first = load_file(os.path.join(tiny_vlm_path, "model.safetensors"))
    second = load_file(os.path.join(again, "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    with open(os.path.join(tiny_vlm_path, "tokenizer.json")) as a, open(os.path.join(again, "tokenizer.json")) as b:
        assert json.load(a) == json.load(b)

    # a rebuild into the same folder with the same settings reuses it untouched
    stamp = os.stat(os.path.join(again, "model.safetensors")).st_mtime_ns
    assert build_tiny_vlm(tmp_path / "again", seed=0) == again
    assert os.stat(os.path.join(again, "model.safetensors")).st_mtime_ns == stamp

    # another seed gives other weights; different settings never overwrite an existing build
    other = load_file(os.path.join(build_tiny_vlm(tmp_path / "seed1", seed=1), "model.safetensors"))
    assert not all(torch.equal(first[k], other[k]) for k in first)
    with pytest.raises(FileExistsError, match="different settings"):
        build_tiny_vlm(tmp_path / "again", seed=1)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "note.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_tiny_vlm(tmp_path / "foreign")
    assert json.loads((tmp_path / "again" / SETTINGS_FILE).read_text())["seed"] == 0


def test_size_validation_and_cli(tmp_path):
    with pytest.raises(ValueError, match="mrope_section"):
        resolve_size(hidden_size=128)  # head_dim 32 needs an mrope_section summing to 16
    with pytest.raises(ValueError, match="unknown tiny VLM size field"):
        resolve_size(hiden_size=64)
    with pytest.raises(ValueError, match="unknown tiny VLM preset"):
        resolve_size("huge")
    assert resolve_size("bench").hidden_size > resolve_size("test").hidden_size

    from transformers import AutoConfig

    from verl_vgpo.cpu.tiny_vlm_cli import main

    main(
        ["--out", str(tmp_path / "cli"), "--hidden-size", "128", "--mrope-section", "4", "6", "6",
         "--num-hidden-layers", "1", "--model-vocab-size", "640"]
    )
    config = AutoConfig.from_pretrained(tmp_path / "cli")
    assert config.text_config.hidden_size == 128 and config.text_config.num_hidden_layers == 1
    assert config.text_config.vocab_size == 640
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_tiny_vlm(tmp_path / "small_vocab", model_vocab_size=16)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_other_families_use_their_real_classes_and_config_ids(tiny_vlm_of, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = tiny_vlm_of(family)
    processor = AutoProcessor.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    model_class = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_5": "Qwen3_5ForConditionalGeneration"}
    assert config.model_type == family and type(model) is getattr(transformers, model_class[family])
    assert isinstance(processor, transformers.Qwen3VLProcessor)
    assert processor.image_processor.patch_size == processor.video_processor.patch_size == 16
    tokenizer = processor.tokenizer
    for kind in ("image", "video"):
        token_id = getattr(config, f"{kind}_token_id")
        assert token_id == tokenizer.convert_tokens_to_ids(f"<|{kind}_pad|>") == getattr(processor, f"{kind}_token_id")
    assert config.image_token_id != 248056  # tiny vocabulary: never Qwen's ids, so they must be read from the config
    if family == "qwen3_5":
        # the hybrid decoder: Gated DeltaNet linear attention and (gated) full attention layers
        assert config.text_config.layer_types == ["linear_attention", "full_attention"]
        assert type(model.model.language_model.layers[0].linear_attn).__name__ == "Qwen3_5GatedDeltaNet"
    else:
        assert config.vision_config.deepstack_visual_indexes == [0]
    assert json.loads((open(os.path.join(path, SETTINGS_FILE)).read()))["family"] == family

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is the circle?<|im_end|>\n<|im_start|>assistant\n"
    encoded = processor(text=[text], images=[_random_image(0)], return_tensors="pt")
    assert "mm_token_type_ids" in encoded  # Qwen3VLProcessor's extra output
    assert int((encoded["input_ids"] == config.image_token_id).sum()) == 4  # 64x64 at patch 16, merge 2
    with torch.no_grad():
        assert torch.isfinite(model(**encoded).logits).all()

    video = np.random.RandomState(1).randint(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], videos=[video], return_tensors="pt")
    grid = encoded["video_grid_thw"][0]
    assert int((encoded["input_ids"] == config.video_token_id).sum()) == int(grid.prod()) // 4 > 0
    assert processor.tokenizer.decode(encoded["input_ids"][0]).count("seconds>") == int(grid[0])  # per-frame times
    with torch.no_grad():
        assert torch.isfinite(model(**encoded).logits).all()


def test_family_is_part_of_the_settings_key_and_cli(tiny_vlm_path, tmp_path):
    from transformers import AutoConfig

    from verl_vgpo.cpu.tiny_vlm_cli import main

    with pytest.raises(FileExistsError, match="different settings"):
        build_tiny_vlm(tiny_vlm_path, seed=0, family="qwen3_vl")
    with pytest.raises(ValueError, match="unknown tiny VLM family"):
        resolve_size(family="qwen4")
    assert resolve_size(family="qwen3_5").partial_rotary_factor == 0.25
    main(["--out", str(tmp_path / "cli"), "--family", "qwen3_vl", "--num-hidden-layers", "1"])
    config = AutoConfig.from_pretrained(tmp_path / "cli")
    assert config.model_type == "qwen3_vl" and config.text_config.num_hidden_layers == 1


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_warm_preset_gives_16_image_tokens_and_background_centred_pixels(family, tmp_path):
    """The warm preset (what the warm start trains): a 64x64 easy-vqa image becomes 4x4 merged image tokens
    whatever the family's patch size, and its near-white background normalises to about 0, so the shape is
    what the patch embedding sees (with the test preset the background dominates; see tiny_vlm.PRESETS)."""
    from transformers import AutoProcessor

    from verl_vgpo.cpu.warm_start import _images
    from verl_vgpo.data.easy_vqa import load_split

    processor = AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path / "m", preset="warm", family=family))
    sample = load_split("train")[0]
    pixels = processor.image_processor(images=_images(processor, [sample]), return_tensors="pt")
    merge = processor.image_processor.merge_size
    assert int(pixels["image_grid_thw"].prod()) // merge**2 == 16
    values = pixels["pixel_values"].abs()
    # most patch values are background: near 0 with the warm normalisation, ~1.9 with CLIP's default
    assert float(values.median()) < 0.3, float(values.median())
    record = json.loads((tmp_path / "m" / SETTINGS_FILE).read_text())
    assert record["size"]["image_mean"] == 0.95 and record["size"]["image_std"] == 0.3


def test_test_preset_record_has_no_normalisation_fields(tiny_vlm_path):
    """Builds with the processor's default normalisation keep the settings record they had before the
    image_mean / image_std fields existed (None fields are not recorded), so cached folders stay valid."""
    with open(os.path.join(tiny_vlm_path, SETTINGS_FILE)) as settings_file:
        record = json.load(settings_file)
    assert "image_mean" not in record["size"] and "image_std" not in record["size"]
