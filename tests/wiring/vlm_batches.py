"""Helpers of the engine tests: real processor inputs for the tiny VLMs, verl batches, plain-HF references.

Everything here uses each family's real processor and model classes (Qwen2.5-VL, Qwen3-VL, Qwen3.5);
the references run the model's ORIGINAL transformers forward (verl's engine monkey-patches the classes,
so the test session snapshots the original methods before any engine exists: see conftest.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from verl_vgpo.cpu.training_worker import (  # noqa: F401  (the engine tests import them from here)
    build_training_worker,
    ensure_single_process_group,
    free_port,
)

@contextlib.contextmanager
def cpu_platform_with_process_group():
    """verl's platform set to this project's CPU platform, with a one-process gloo group, for one block.

    What was there before is put back: the previous verl platform and ``VERL_PLATFORM``, and no process
    group when none existed (a group created elsewhere is left alone).
    """
    import os

    import torch.distributed as dist
    import verl.plugin.platform.platform_manager as platform_manager

    from verl_vgpo.cpu import enable_cpu_platform

    previous_platform, previous_env = platform_manager._current_platform, os.environ.get("VERL_PLATFORM")
    enable_cpu_platform()
    created_group = not dist.is_initialized()
    ensure_single_process_group()
    try:
        yield
    finally:
        if created_group:
            dist.destroy_process_group()
        platform_manager._current_platform = previous_platform
        if previous_env is None:
            os.environ.pop("VERL_PLATFORM", None)
        else:
            os.environ["VERL_PLATFORM"] = previous_env


# the tiny-VLM families the engine tests run on (verl_vgpo.cpu.tiny_vlm.FAMILIES)
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")

# what verl's apply_monkey_patch replaces for the Qwen-VL families (verl 0.9.1 monkey_patch.py):
# (module, class or None for a module-level function, attribute); snapshotted and restored
_QWEN3_VL = "transformers.models.qwen3_vl.modeling_qwen3_vl"
_QWEN3_VL_MOE = "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe"
_QWEN3_5 = "transformers.models.qwen3_5.modeling_qwen3_5"
_QWEN3_5_MOE = "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe"
PATCHED_QWEN_METHODS = (
    # packed layout (use_remove_padding) for every family but Qwen2-VL's own attention patch
    ("transformers.integrations.flash_attention", None, "_flash_attention_forward"),
    (_QWEN3_VL, "Qwen3VLForConditionalGeneration", "forward"),
    (_QWEN3_VL, "Qwen3VLModel", "forward"),
    (_QWEN3_VL, "Qwen3VLTextModel", "forward"),
    (_QWEN3_VL, "Qwen3VLVisionModel", "fast_pos_embed_interpolate"),
    (_QWEN3_VL_MOE, "Qwen3VLMoeForConditionalGeneration", "forward"),
    (_QWEN3_VL_MOE, "Qwen3VLMoeModel", "forward"),
    (_QWEN3_VL_MOE, "Qwen3VLMoeTextModel", "forward"),
    (_QWEN3_VL_MOE, "Qwen3VLMoeVisionModel", "fast_pos_embed_interpolate"),
    (_QWEN3_5, "Qwen3_5ForConditionalGeneration", "forward"),
    (_QWEN3_5, "Qwen3_5Model", "forward"),
    (_QWEN3_5, "Qwen3_5TextModel", "forward"),
    (_QWEN3_5, "Qwen3_5DecoderLayer", "forward"),
    (_QWEN3_5, "Qwen3_5GatedDeltaNet", "forward"),
    (_QWEN3_5, "Qwen3_5VisionModel", "fast_pos_embed_interpolate"),
    (_QWEN3_5_MOE, "Qwen3_5MoeForConditionalGeneration", "forward"),
    (_QWEN3_5_MOE, "Qwen3_5MoeModel", "forward"),
    (_QWEN3_5_MOE, "Qwen3_5MoeTextModel", "forward"),
    (_QWEN3_5_MOE, "Qwen3_5MoeDecoderLayer", "forward"),
    (_QWEN3_5_MOE, "Qwen3_5MoeGatedDeltaNet", "forward"),
    (_QWEN3_5_MOE, "Qwen3_5MoeVisionModel", "fast_pos_embed_interpolate"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "forward"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel", "forward"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLAttention", "forward"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLTextModel", "forward"),
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLForConditionalGeneration", "forward"),
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLModel", "forward"),
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLAttention", "forward"),
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLTextModel", "forward"),
)


def snapshot_qwen_methods() -> dict:
    import importlib

    snapshot = {}
    for module_name, class_name, attribute in PATCHED_QWEN_METHODS:
        module = importlib.import_module(module_name)
        owner = module if class_name is None else getattr(module, class_name)
        snapshot[(owner, attribute)] = owner.__dict__[attribute]
    return snapshot


def restore_qwen_methods(snapshot: dict) -> None:
    for (cls, attribute), value in snapshot.items():
        setattr(cls, attribute, value)


@contextlib.contextmanager
def using_methods(snapshot: dict):
    """Run the block with transformers' own Qwen-VL methods, then put back whatever was there."""
    current = {key: key[0].__dict__[key[1]] for key in snapshot}
    restore_qwen_methods(snapshot)
    try:
        yield
    finally:
        restore_qwen_methods(current)


@dataclass
class Sample:
    name: str
    input_ids: torch.Tensor  # (L,)
    position_ids: torch.Tensor  # (4, L): text positions + 3 M-RoPE rows, as verl's agent loop builds them
    multi_modal_inputs: dict  # processor outputs without input_ids / attention_mask / mm_token_type_ids
    response_length: int


def random_image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def random_video(seed: int, frames: int = 4, size: int = 64) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (frames, size, size, 3), dtype=np.uint8)


def mm_token_type_ids(input_ids: torch.Tensor, config) -> torch.Tensor:
    types = torch.zeros_like(input_ids)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def make_sample(name, processor, model, content, response, images=None, videos=None) -> Sample:
    """Chat prompt (+ images/videos) and a response, tokenised by the real processor."""
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], images=images, videos=videos, return_tensors="pt")
    response_ids = processor.tokenizer(response, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([encoded["input_ids"], response_ids], dim=1)
    multi_modal_inputs = {
        k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    length = input_ids.shape[1]
    if images or videos:
        rope, _ = model.model.get_rope_index(
            input_ids=input_ids,
            mm_token_type_ids=mm_token_type_ids(input_ids, model.config),
            image_grid_thw=multi_modal_inputs.get("image_grid_thw"),
            video_grid_thw=multi_modal_inputs.get("video_grid_thw"),
            second_per_grid_ts=multi_modal_inputs.get("second_per_grid_ts"),
        )
        rope = rope[:, 0]
    else:
        rope = torch.arange(length).expand(3, -1)
    position_ids = torch.cat([torch.arange(length).unsqueeze(0), rope], dim=0)
    return Sample(name, input_ids[0], position_ids, multi_modal_inputs, response_ids.shape[1])


def standard_samples(processor, model) -> list[Sample]:
    """One image, text only, two images, video only (the cases the focus contract names)."""
    return [
        make_sample("image", processor, model, [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}],
                    "The circle is red.", images=[random_image(0)]),
        make_sample("text_only", processor, model, [{"type": "text", "text": "Is there a red shape?"}], "no"),
        make_sample("two_images", processor, model,
                    [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                     {"type": "text", "text": "Same shape?"}],
                    "yes, both are a triangle", images=[random_image(1), random_image(2)]),
        make_sample("video_only", processor, model, [{"type": "video"}, {"type": "text", "text": "What shape?"}],
                    "rectangle", videos=[random_video(3)]),
    ]


def build_batch(samples, **non_tensor):
    """The TensorDict verl's worker bridge hands to ``TrainingWorker.infer_batch`` (no-padding layout)."""
    from verl.utils import tensordict_utils as tu

    def nested(tensors):
        return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)

    loss_masks = [
        torch.cat([torch.zeros(len(s.input_ids) - s.response_length), torch.ones(s.response_length)]) for s in samples
    ]
    return tu.get_tensordict(
        {
            "input_ids": nested([s.input_ids for s in samples]),
            "position_ids": nested([s.position_ids for s in samples]),
            "loss_mask": nested(loss_masks),
            # as verl's V1 trainer stores it: one row of response length (the engine cuts focus with it)
            "response_mask": nested([torch.ones(s.response_length, dtype=torch.int64) for s in samples]),
            "multi_modal_inputs": [dict(s.multi_modal_inputs) for s in samples],
        },
        non_tensor_dict={"temperature": 1.0, "calculate_entropy": False, "compute_loss": False, **non_tensor},
    )


def reference_outputs(model, sample: Sample, snapshot: dict):
    """Plain HF forward of one sample with output_hidden_states=True: (log_probs, focus) in float64.

    log_probs[p] = log p(token p+1) (verl's layout); focus[p] = cosine of the last hidden state at p
    to the mean last hidden state of the sample's image and video pads (NaN without any).
    """
    input_ids = sample.input_ids.unsqueeze(0)
    with using_methods(snapshot), torch.no_grad():
        output = model(
            input_ids=input_ids,
            position_ids=sample.position_ids.unsqueeze(1),
            mm_token_type_ids=mm_token_type_ids(input_ids, model.config),
            output_hidden_states=True,
            **sample.multi_modal_inputs,
        )
    logits = output.logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)[:-1].gather(-1, sample.input_ids[1:, None])[:, 0]
    hidden = output.hidden_states[-1][0].double()
    visual = (sample.input_ids == model.config.image_token_id) | (sample.input_ids == model.config.video_token_id)
    if not visual.any():
        return log_probs, torch.full((len(sample.input_ids),), float("nan"), dtype=torch.float64)
    prototype = hidden[visual].mean(0)
    focus = torch.nn.functional.cosine_similarity(hidden, prototype.unsqueeze(0), dim=-1)
    return log_probs, focus


def cpu_varlen_attention(query, key, value, attention_mask, query_length, is_causal=True, position_ids=None, **kwargs):
    """Stand-in for flash-attn's varlen kernel (which cannot exist on CPU), for verl's packed VLM path.

    Same contract as ``verl.models.transformers.qwen2_vl._custom_flash_attention_forward`` without SP:
    q/k/v (1, L, heads, head_dim) of several packed sequences; a sequence starts where the text
    position id is 0; causal attention within each sequence only.
    """
    assert query.shape[0] == 1 and position_ids is not None and position_ids.shape[0] == 1
    starts = (position_ids[0] == 0).to(torch.int64)
    segment = torch.cumsum(starts, dim=0)
    same_sequence = segment.unsqueeze(0) == segment.unsqueeze(1)
    causal = torch.ones_like(same_sequence).tril()
    mask = (same_sequence & causal).unsqueeze(0).unsqueeze(0)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def grouped_samples(processor, model) -> list[Sample]:
    """Eight samples for group-wise estimators: the standard four, then one more of each kind.

    Rows i and i + 4 are of the same kind with different pictures and responses, so a caller can give
    them uids that put every group on both halves of the batch (a 2-way data-parallel split).
    """
    more = [
        make_sample("image_b", processor, model, [{"type": "image"}, {"type": "text", "text": "What color is it?"}],
                    "It is a blue square, I think", images=[random_image(10)]),
        make_sample("text_only_b", processor, model, [{"type": "text", "text": "Name a shape."}], "a circle"),
        make_sample("two_images_b", processor, model,
                    [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is larger?"}],
                    "the first", images=[random_image(11), random_image(12)]),
        make_sample("video_only_b", processor, model, [{"type": "video"}, {"type": "text", "text": "Count them."}],
                    "three shapes move", videos=[random_video(13)]),
    ]
    return standard_samples(processor, model) + more
