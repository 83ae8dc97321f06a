"""Build a tiny, random, fully offline Qwen-VL checkpoint (model + tokenizer + processor).

Tests and CPU end-to-end runs need a real vision-language model with its real processor but may not
download anything. This module makes one from scratch, for three model families (``family=``):

* ``qwen2_5_vl`` (default): ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``;
* ``qwen3_vl``: ``Qwen3VLForConditionalGeneration`` (DeepStack visual features injected into the first
  decoder layer, interleaved M-RoPE) + ``Qwen3VLProcessor`` (patch size 16, per-frame video
  timestamps, ``mm_token_type_ids``);
* ``qwen3_5``: ``Qwen3_5ForConditionalGeneration`` with Qwen3.5's hybrid decoder (one Gated DeltaNet
  linear-attention layer, then one gated full-attention layer; partial rotary factor 0.25) +
  ``Qwen3VLProcessor`` (the processor transformers maps ``qwen3_5`` to).

Shared by all families:

* a byte-level BPE tokenizer trained locally on a small built-in corpus (easy-vqa style questions and
  answers plus chat text) with Qwen's special tokens, wrapped in ``PreTrainedTokenizerFast`` with a
  Qwen2-VL chat template;
* the family's image / video processors with small pixel limits, so a 64x64 image becomes a handful
  of ``<|image_pad|>`` tokens (4 with the ``test`` preset; 16 with the ``warm`` preset, whose pixel
  normalisation is centred on easy-vqa's near-white background so that the vision input can be learned,
  see :data:`PRESETS`; ``bench`` is a larger model for timings);
* a randomly initialised model whose ``image_token_id`` / ``video_token_id`` etc. are the ids the
  tokenizer actually assigned (the vocabulary is small, so they are not Qwen's 151655 / 151656).

Everything is written with ``save_pretrained`` so ``AutoProcessor`` / ``AutoTokenizer`` /
``AutoModelForImageTextToText`` reload it offline. Building is deterministic for a given seed and
size, and idempotent: a folder already holding a build with the same settings is reused.

The tokenizer and chat templates are small stand-ins, not Qwen's (no thinking prefix for Qwen3.5,
no tool calls), so special-token ids are never Qwen's; every consumer must read them from the config.

CLI: ``vgpo-tiny-vlm --out DIR [--family qwen3_vl] [--preset bench] [--hidden-size 256 ...]`` (random, ``test``
preset by default); ``vgpo-tiny-vlm --warm-start --out DIR`` (supervised warm start, ``warm`` preset by default,
:mod:`verl_vgpo.cpu.warm_start`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Bumped whenever the build recipe changes, so an old folder is rebuilt instead of silently reused.
BUILD_FORMAT_VERSION = 1
SETTINGS_FILE = "tiny_vlm_settings.json"

# Qwen2-VL's special tokens, in Qwen's own order. They get the first ids of the vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL chat template (written for this project): a default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> block per image (the processor expands the pad to the
# right number of tokens) and the same for videos.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

# Qwen3-VL / Qwen3.5 chat template (written for this project): as above without the default system
# turn (neither family adds one). Qwen3VLProcessor expands a video's pad into per-frame
# "<t seconds><|vision_start|><|video_pad|>...<|vision_end|>" blocks itself.
CHAT_TEMPLATE_QWEN3 = CHAT_TEMPLATE.replace(
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}",
    "",
)

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")
DEFAULT_FAMILY = "qwen2_5_vl"

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "purple", "yellow", "orange")
SHAPES = ("circle", "rectangle", "triangle")
CHAT_LINES = (
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "You are a helpful assistant.",
    "Answer the question about the image.",
    "Look at the image and answer with one word.",
    "Think step by step, then give the final answer.",
    "<think> The image shows a shape. </think> <answer> yes </answer>",
    "The answer is yes.",
    "The answer is no.",
    "Please put your final answer within \\boxed{}.",
    "What is 1 + 2? The answer is 3.",
    "Hello! How can I help you today?",
    "Describe the picture in detail.",
    "This video shows a moving shape on a white background.",
    "0 1 2 3 4 5 6 7 8 9 10 100 = + - * / ( ) [ ] { } , . ? ! : ; ' \"",
)


@dataclass(frozen=True)
class TinyVLMSize:
    """Sizes of the random model and the processor's pixel limits. Defaults: the ~0.2 M parameter test model."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    # Multimodal RoPE split of head_dim/2 frequencies into (temporal, height, width).
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_num_heads: int = 2
    vision_intermediate_size: int = 64
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    # 64x64 inputs are resized to 56x56 -> 4x4 patches -> 2x2 merged -> 4 image tokens.
    min_pixels: int = 28 * 28
    max_pixels: int = 64 * 64
    tokenizer_vocab_size: int = 512
    # fraction of head_dim that is rotated (Qwen3.5 rotates a quarter; the M-RoPE split covers that part)
    partial_rotary_factor: float = 1.0
    # the image processor's per-channel normalisation (one value for all channels); None keeps the
    # processor's default (OpenAI CLIP's mean/std, as the real Qwen checkpoints)
    image_mean: float | None = None
    image_std: float | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        head_dim = self.hidden_size // self.num_attention_heads
        half_rotary_dim = int(head_dim * self.partial_rotary_factor) // 2
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != half_rotary_dim:
            what = "head_dim/2" if self.partial_rotary_factor == 1 else "head_dim*partial_rotary_factor/2"
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must have 3 entries summing to {what} = {half_rotary_dim} "
                f"(hidden_size {self.hidden_size} / num_attention_heads {self.num_attention_heads}, "
                f"partial_rotary_factor {self.partial_rotary_factor})"
            )
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError(
                f"vision_hidden_size ({self.vision_hidden_size}) must be divisible by "
                f"vision_num_heads ({self.vision_num_heads})"
            )
        if self.image_std is not None and not self.image_std > 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")


# Named size presets. "bench" is a mid-size model for timing focus capture (hidden 1024, 8 layers,
# ~0.1 B parameters without the embedding), still random and offline. "warm" is what the warm start
# (verl_vgpo.cpu.warm_start) trains and the demo runs: 16 image tokens and a normalisation centred on
# easy-vqa's near-white background, because with 4 tokens and CLIP's normalisation the background swamps the
# shape and the model never learns the colour; and a model large enough (hidden 128, 4 layers) that RL after
# the warm start moves greedy accuracy. The measurements behind these choices are in docs/cpu_demo.md.
PRESETS: dict[str, TinyVLMSize] = {
    "test": TinyVLMSize(),
    "warm": TinyVLMSize(
        hidden_size=128,
        num_hidden_layers=4,
        intermediate_size=256,
        mrope_section=(4, 6, 6),
        vision_hidden_size=64,
        vision_intermediate_size=128,
        min_pixels=112 * 112,
        max_pixels=112 * 112,
        image_mean=0.95,
        image_std=0.3,
    ),
    "bench": TinyVLMSize(
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=2816,
        mrope_section=(8, 12, 12),
        vision_hidden_size=256,
        vision_depth=2,
        vision_num_heads=4,
        vision_intermediate_size=512,
        max_pixels=112 * 112,
    ),
}


# What each family changes in every preset, from the real checkpoints' configs: Qwen3-VL and Qwen3.5 use
# 16-pixel patches (so a merged token covers 32x32 pixels, the smallest image side).
FAMILY_CHANGES: dict[str, dict] = {
    "qwen2_5_vl": {},
    "qwen3_vl": dict(patch_size=16, min_pixels=32 * 32),
    "qwen3_5": dict(patch_size=16, min_pixels=32 * 32, partial_rotary_factor=0.25),
}
# ... and per preset, where the head sizes need it: Qwen3.5 rotates a quarter of each head
# (partial_rotary_factor 0.25), so the M-RoPE split covers head_dim/8 frequencies; the tiny test model
# uses 2 wide heads so that this quarter still holds 3 non-empty sections.
FAMILY_PRESET_CHANGES: dict[str, dict[str, dict]] = {
    "qwen2_5_vl": {},
    # 16-pixel patches: the warm preset's images become 128x128, again 4x4 merged tokens = 16
    "qwen3_vl": {"warm": dict(min_pixels=128 * 128, max_pixels=128 * 128)},
    "qwen3_5": {
        "test": dict(num_attention_heads=2, num_key_value_heads=1, mrope_section=(2, 1, 1)),
        "warm": dict(num_attention_heads=2, num_key_value_heads=1, mrope_section=(3, 3, 2),
                     min_pixels=128 * 128, max_pixels=128 * 128),
        "bench": dict(mrope_section=(3, 3, 2)),
    },
}


def check_family(family: str) -> str:
    """``family`` itself, or a ValueError naming the supported ones."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {list(FAMILIES)}")
    return family


def tokenizer_corpus() -> list[str]:
    """Small built-in training text: every easy-vqa question form, the 13 answers, and chat phrases."""
    lines = list(CHAT_LINES)
    for shape in SHAPES:
        lines += [
            f"What shape is in the image? {shape}",
            f"What is the {shape}'s color?",
            f"What color is the {shape}? Is there a {shape}? Does the image contain a {shape}?",
            f"Is there not a {shape} in the image? Is no {shape} present? The shape is a {shape}.",
        ]
        for color in COLORS:
            lines += [
                f"Is there a {color} {shape}? Is the {shape} {color}? What color is the {shape}? {color}",
                f"Does the image not contain a {color} shape? Is there a {color} shape in the image?",
                f"The {shape} is {color}. Answer: {color}. A {color} {shape} is present. yes no",
            ]
    lines += [" ".join(COLORS), " ".join(SHAPES), "yes no Yes No YES NO"]
    # answers also appear right after a tag or newline (no leading space): make those whole tokens too
    for answer in COLORS + SHAPES + ("yes", "no"):
        lines += [answer, f"<answer>{answer}</answer>", f"\\boxed{{{answer}}}"]
    return lines


def _train_tokenizer(vocab_size: int):
    """Train the byte-level BPE and wrap it as a Qwen-like ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise RuntimeError(f"tokenizer training lost the special token {token!r}")
    return tokenizer


def _normalisation(size: TinyVLMSize) -> dict:
    """The processors' ``image_mean`` / ``image_std`` keyword arguments (none: the processor's default)."""
    settings = {}
    if size.image_mean is not None:
        settings["image_mean"] = [size.image_mean] * 3
    if size.image_std is not None:
        settings["image_std"] = [size.image_std] * 3
    return settings


def _build_processor(tokenizer, size: TinyVLMSize, family: str = DEFAULT_FAMILY):
    if family != "qwen2_5_vl":
        return _build_qwen3_processor(tokenizer, size)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixel_kwargs = dict(
        min_pixels=size.min_pixels,
        max_pixels=size.max_pixels,
        patch_size=size.patch_size,
        temporal_patch_size=size.temporal_patch_size,
        merge_size=size.spatial_merge_size,
    )
    image_processor = Qwen2VLImageProcessor(**pixel_kwargs, **_normalisation(size))
    video_processor = Qwen2VLVideoProcessor(**pixel_kwargs, **_normalisation(size))
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _build_qwen3_processor(tokenizer, size: TinyVLMSize):
    """``Qwen3VLProcessor`` (used by Qwen3-VL and Qwen3.5): Qwen2-VL image processor, Qwen3-VL video one."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    shared = dict(
        patch_size=size.patch_size, temporal_patch_size=size.temporal_patch_size, merge_size=size.spatial_merge_size
    )
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": size.min_pixels, "longest_edge": size.max_pixels}, **shared, **_normalisation(size)
    )
    # the video limits count all frames: up to 4 frames at the image limit (Qwen3-VL's own limit is
    # a total over frames too); frames are taken as given (no fps resampling of the tiny test clips)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": size.min_pixels, "longest_edge": 4 * size.max_pixels},
        do_sample_frames=False,
        **shared,
        **_normalisation(size),
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE_QWEN3,
    )


def _special_ids(tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def _text_config(tokenizer, size: TinyVLMSize, model_vocab_size: int | None, rope: dict) -> dict:
    """The decoder settings every family shares (sizes, rotary parameters, the tiny tokenizer's ids)."""
    ids = _special_ids(tokenizer)
    return dict(
        vocab_size=model_vocab_size or len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        head_dim=size.hidden_size // size.num_attention_heads,
        max_position_embeddings=4096,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def _vision_config(size: TinyVLMSize, **family_settings) -> dict:
    """The vision-tower settings every family shares, plus the family's own (window attention, ...)."""
    return dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=size.vision_intermediate_size,
        num_heads=size.vision_num_heads,
        out_hidden_size=size.hidden_size,
        patch_size=size.patch_size,
        spatial_merge_size=size.spatial_merge_size,
        temporal_patch_size=size.temporal_patch_size,
        **family_settings,
    )


def _vision_token_ids(tokenizer) -> dict[str, int]:
    """The top-level config's vision token ids (the ones the tiny tokenizer assigned), untied embeddings."""
    ids = _special_ids(tokenizer)
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _build_qwen3_config(tokenizer, size: TinyVLMSize, family: str, model_vocab_size: int | None):
    """Qwen3-VL / Qwen3.5 config; special-token ids are the ones the tiny tokenizer assigned."""
    head_dim = size.hidden_size // size.num_attention_heads
    rope = {
        "rope_type": "default",
        "rope_theta": 5000000.0 if family == "qwen3_vl" else 10000000.0,
        "mrope_section": list(size.mrope_section),
        "mrope_interleaved": True,
    }
    text_config = _text_config(tokenizer, size, model_vocab_size, rope)
    # learned position-embedding grid of 16x16 patches (Qwen3-VL's is 48x48), interpolated per image
    vision_config = _vision_config(size, num_position_embeddings=256)
    special = _vision_token_ids(tokenizer)
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        # DeepStack: the first vision block's features are added to the first decoder layer's output
        vision_config["deepstack_visual_indexes"] = [0]
        config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, **special)
        config.architectures = ["Qwen3VLForConditionalGeneration"]
        return config

    from transformers import Qwen3_5Config

    rope["partial_rotary_factor"] = size.partial_rotary_factor
    # Qwen3.5's hybrid stack: Gated DeltaNet (linear attention) layers, every 4th layer full attention;
    # the tiny model alternates so that both kinds exist in 2 layers
    text_config.update(
        layer_types=["linear_attention" if i % 2 == 0 else "full_attention" for i in range(size.num_hidden_layers)],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=head_dim // 2,
        linear_value_head_dim=head_dim // 2,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    config = Qwen3_5Config(text_config=text_config, vision_config=vision_config, **special)
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    return config


def _model_class(family: str):
    import transformers

    return getattr(
        transformers,
        {
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
            "qwen3_5": "Qwen3_5ForConditionalGeneration",
        }[family],
    )


def _build_model_config(tokenizer, size: TinyVLMSize, model_vocab_size: int | None = None,
                        family: str = DEFAULT_FAMILY):
    if family != "qwen2_5_vl":
        return _build_qwen3_config(tokenizer, size, family, model_vocab_size)
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(size.mrope_section)}
    vision_config = _vision_config(
        size,
        window_size=size.patch_size * size.spatial_merge_size * 4,
        # the last vision block uses full attention, the others window attention, as in Qwen2.5-VL
        fullatt_block_indexes=[size.vision_depth - 1],
    )
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, size, model_vocab_size, rope),
        vision_config=vision_config,
        **_vision_token_ids(tokenizer),
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def size_record(size: TinyVLMSize) -> dict:
    """The sizes as a JSON-able dict for settings records. Fields left at None (the processor's default
    normalisation) are not recorded, so builds made before those fields existed keep their record."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(size).items() if v is not None}


def _settings_record(seed: int, size: TinyVLMSize, model_vocab_size: int | None, family: str = DEFAULT_FAMILY) -> dict:
    import transformers

    record = {
        "family": family,
        "format_version": BUILD_FORMAT_VERSION,
        "seed": seed,
        "size": size_record(size),
        "transformers_version": transformers.__version__,
    }
    if model_vocab_size is not None:
        record["model_vocab_size"] = model_vocab_size
    return record


def resolve_size(preset: str = "test", family: str = DEFAULT_FAMILY, **overrides) -> TinyVLMSize:
    """The size of a preset for a family, with some fields replaced; unknown names are errors."""
    check_family(family)
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny VLM preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TinyVLMSize)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown tiny VLM size field(s) {unknown}; allowed: {sorted(known)}")
    if "mrope_section" in overrides:
        overrides["mrope_section"] = tuple(overrides["mrope_section"])
    changes = {**FAMILY_CHANGES[family], **FAMILY_PRESET_CHANGES[family].get(preset, {}), **overrides}
    return dataclasses.replace(PRESETS[preset], **changes)


def build_tiny_vlm(
    out_dir: str | os.PathLike,
    seed: int = 0,
    preset: str = "test",
    model_vocab_size: int | None = None,
    family: str = DEFAULT_FAMILY,
    **size_overrides,
) -> str:
    """Build (or reuse) a random offline checkpoint of a Qwen-VL ``family`` in ``out_dir``; return its path.

    ``family``: one of :data:`FAMILIES` (``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_5``); the preset's
    sizes get the family's changes (:data:`FAMILY_CHANGES`, :data:`FAMILY_PRESET_CHANGES`) before
    ``size_overrides``.

    ``size_overrides`` replace fields of :class:`TinyVLMSize` (e.g. ``hidden_size=128``).
    ``model_vocab_size`` makes the embedding and lm_head larger than the tokenizer (as real Qwen
    checkpoints do: 151936 rows for ~151k tokens), for benchmarks with a realistic output layer.
    The folder is reused when it already holds a build with identical settings; a folder holding
    anything else is refused rather than overwritten.
    """
    import torch

    size = resolve_size(preset, family=family, **size_overrides)
    out_path = Path(out_dir).resolve()
    record = _settings_record(seed, size, model_vocab_size, family)
    settings_path = out_path / SETTINGS_FILE
    if settings_path.exists():
        existing = json.loads(settings_path.read_text())
        if existing == record:
            return str(out_path)
        raise FileExistsError(
            f"{out_path} already holds a tiny VLM built with different settings ({existing}); "
            f"use another folder or delete it (wanted {record})"
        )
    if out_path.exists() and any(out_path.iterdir()):
        raise FileExistsError(f"{out_path} exists, is not empty and holds no tiny VLM build; refusing to overwrite it")

    tokenizer = _train_tokenizer(size.tokenizer_vocab_size)
    if model_vocab_size is not None and model_vocab_size < len(tokenizer):
        raise ValueError(f"model_vocab_size {model_vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    if family != "qwen2_5_vl":
        tokenizer.chat_template = CHAT_TEMPLATE_QWEN3  # saved last, so the tokenizer's template is the one kept
    processor = _build_processor(tokenizer, size, family)
    config = _build_model_config(tokenizer, size, model_vocab_size, family)

    # Seed a private generator state so building does not disturb (or depend on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(family)._from_config(config, dtype=torch.float32)
    model.eval()

    # Build into a sibling temp folder and rename at the end, so a concurrent or interrupted build
    # never leaves a half-written folder that looks finished.
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SETTINGS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        # mkdtemp creates the folder private to its owner; a checkpoint is shared read-only data
        staging.chmod(0o755)
        for written in staging.iterdir():
            written.chmod(0o644)
        if out_path.exists():
            out_path.rmdir()  # empty (checked above)
        try:
            os.rename(staging, out_path)
        except OSError:
            # another process finished the same build first: accept it if it is identical
            if settings_path.exists() and json.loads(settings_path.read_text()) == record:
                return str(out_path)
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(out_path)
