"""Pure Hugging Face ``generate`` for Qwen-VL-style checkpoints (no Ray, no verl engine).

Three callers generate with plain transformers and must do it the same way, or the same checkpoint
would answer differently in training, evaluation and analysis: the ``hf_cpu`` rollout server
(:mod:`verl_vgpo.cpu.rollout`, token ids from verl's agent loop), ``vgpo-evaluate`` and
``vgpo-analyze`` (chat messages with images from a parquet). What they share lives here:

* one special-token rule (:func:`suppressed_token_ids`): every token the tokenizer marks special, except
  end-of-sequence, is suppressed. A weak model samples ``<|image_pad|>`` as freely as any other token,
  and a pad in a response breaks the M-RoPE index of the next forward (pad count no longer matches
  ``image_grid_thw``). Non-special added tokens (e.g. Qwen3's ``<think>``) stay possible;
* model inputs with the multimodal token types (``mm_token_type_ids``) that make HF compute the same
  M-RoPE positions as the trainer, from token ids (:func:`inputs_from_ids`) or from chat messages
  through the processor (:func:`chat_inputs`, left-padded for batched generation), and several
  token-id prompts left-padded into one batch (:func:`batch_inputs`, the rollout server's batches);
* the ``generate`` call itself (:func:`generate`): explicit sampling settings (the checkpoint's
  ``generation_config``, e.g. a repetition penalty, cannot change them), greedy at temperature 0, and
  verl's class-level Qwen-VL forward patch undone around it (:func:`original_hf_forwards`): the patched
  forwards expect verl's packed inputs and break HF ``generate`` in a process that also trains;
* the batched loop over chat conversations of evaluate and analyze (:func:`generate_conversations`),
  each caller passing its own seeding rule.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

# Module prefix of verl's class-level forward patches (verl.models.transformers.monkey_patch).
_VERL_PATCH_MODULE_PREFIX = "verl."


class GenerationError(RuntimeError):
    """An input or model the HF generation helpers cannot serve (raised with the reason)."""


# --------------------------------------------------------------------------------------------------
# Keeping HF generate on the original forwards
# --------------------------------------------------------------------------------------------------

# (class, attribute) -> original function, captured before verl patches anything in this process
_ORIGINAL_FORWARDS: dict[tuple[type, str], Any] = {}


def _model_classes(model: torch.nn.Module) -> list[type]:
    classes = {type(module) for module in model.modules()}
    return [cls for cls in classes if cls.__module__.startswith("transformers.")]


def capture_original_forwards(model: torch.nn.Module) -> None:
    """Remember the unpatched ``forward`` of every transformers class in ``model`` (idempotent)."""
    for cls in _model_classes(model):
        for owner in cls.__mro__:
            forward = owner.__dict__.get("forward")
            if forward is None or (owner, "forward") in _ORIGINAL_FORWARDS:
                continue
            if getattr(forward, "__module__", "").startswith(_VERL_PATCH_MODULE_PREFIX):
                continue  # already patched: never record a patch as "original"
            _ORIGINAL_FORWARDS[(owner, "forward")] = forward


@contextmanager
def original_hf_forwards(model: torch.nn.Module):
    """Run HF code on the unpatched forwards, then put verl's patches back.

    verl patches ``Qwen2_5_VLModel.forward`` and friends at class level when its engine builds a model.
    A process that never built a verl engine has nothing to undo (a no-op); it raises if a patched
    forward is found whose original was never captured (:func:`capture_original_forwards`).
    """
    swapped: list[tuple[type, Any]] = []
    try:
        for cls in _model_classes(model):
            for owner in cls.__mro__:
                forward = owner.__dict__.get("forward")
                if forward is None or not getattr(forward, "__module__", "").startswith(_VERL_PATCH_MODULE_PREFIX):
                    continue
                original = _ORIGINAL_FORWARDS.get((owner, "forward"))
                if original is None:
                    raise GenerationError(
                        f"{owner.__name__}.forward is patched by verl ({forward.__module__}) and its original was "
                        "not captured before the patch; HF generate cannot run on the patched forward"
                    )
                swapped.append((owner, forward))
                owner.forward = original
        yield
    finally:
        for owner, patched in swapped:
            owner.forward = patched


# --------------------------------------------------------------------------------------------------
# Model, tokens
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A checkpoint ready for generation: model (eval), tokenizer, processor (None for text-only)."""

    model: torch.nn.Module
    tokenizer: Any
    processor: Any
    hf_config: Any
    eos_token_ids: list[int]
    pad_token_id: int
    suppress_ids: list[int]
    device: torch.device


def load_model(path: str, device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> LoadedModel:
    """Load a local Hugging Face checkpoint for generation.

    Vision-language checkpoints (a ``vision_config``) load with their vision tower, text-only ones as
    causal LMs. Default device: CUDA when available; default dtype: bfloat16 on CUDA, float32 on CPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf_config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError):
        processor = None
    if getattr(processor, "image_processor", None) is None:
        processor = None
    model_class = AutoModelForImageTextToText if hasattr(hf_config, "vision_config") else AutoModelForCausalLM
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    capture_original_forwards(model)
    eos = eos_token_ids(tokenizer, model.generation_config)
    if not eos:
        raise GenerationError(f"model at {path} declares no eos token; generation would never stop")
    pad = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        hf_config=hf_config,
        eos_token_ids=eos,
        pad_token_id=int(pad if pad is not None else eos[0]),
        suppress_ids=suppressed_token_ids(tokenizer, eos),
        device=device,
    )


def eos_token_ids(tokenizer, generation_config) -> list[int]:
    """End-of-sequence ids: the generation config's (one or a list) and the tokenizer's."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(tokenizer.eos_token_id)
    return sorted({int(token_id) for token_id in ids if token_id is not None})


def suppressed_token_ids(tokenizer, eos_token_ids: Sequence[int]) -> list[int]:
    """Tokens a response must never contain: every special token (image/video pads, vision and chat
    markers, the pad token) except the end-of-sequence tokens that stop generation.

    "Special" means ``tokenizer.all_special_ids`` plus added tokens flagged ``special`` -- exactly what
    ``decode(..., skip_special_tokens=True)`` hides, so a suppressed token could never be seen anyway.
    """
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))
    keep = {int(token_id) for token_id in eos_token_ids}
    return sorted(int(token_id) for token_id in special if token_id is not None and int(token_id) not in keep)


# --------------------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------------------


class ImageInputsCache:
    """The image processor's output per distinct image list, least recently used out after ``size`` lists.

    verl's agent loop sends each of a prompt's n samples as its own request with the same image, so a
    server that processes every request's images repeats the same work n times.
    """

    def __init__(self, size: int = 256):
        from collections import OrderedDict

        self.size = size
        self._entries: "OrderedDict[tuple, dict[str, torch.Tensor]]" = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(images) -> tuple:
        import hashlib

        parts = []
        for image in images:
            if hasattr(image, "tobytes") and hasattr(image, "size"):
                digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
                parts.append((getattr(image, "mode", None), tuple(image.size), digest))
            else:  # not a PIL image: no safe key, never cached
                return ()
        return tuple(parts)

    def get(self, processor, images) -> dict[str, torch.Tensor]:
        key = self.key(images)
        if key and key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        pixels = processor.image_processor(images=list(images), return_tensors="pt")
        entry = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
        if key:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry


def inputs_from_ids(prompt_ids: Sequence[int], image_data, processor, model_config,
                    image_cache: Optional[ImageInputsCache] = None) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt given as token ids (image pads already expanded, as verl's agent loop
    sends them): ids, pixels and the multimodal token types. ``image_cache`` reuses the processed pixels
    of images seen before (the tensors are shared, never modified).

    Raises:
        GenerationError: images without an image processor / image token, or a pad count that does not
            match the images (the prompt was not built with this model's processor).
    """
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    image_token_id = getattr(model_config, "image_token_id", None)
    video_token_id = getattr(model_config, "video_token_id", None)
    num_image_pads = int((input_ids == image_token_id).sum()) if image_token_id is not None else 0

    if image_data:
        if processor is None or getattr(processor, "image_processor", None) is None:
            raise GenerationError("the prompt has images but the model has no image processor")
        if image_token_id is None:
            raise GenerationError(
                f"the prompt has images but the model config ({type(model_config).__name__}) declares no "
                "image_token_id: this is not a vision-language model"
            )
        pixels = (image_cache.get(processor, image_data) if image_cache is not None
                  else processor.image_processor(images=list(image_data), return_tensors="pt"))
        merge = processor.image_processor.merge_size
        expected_pads = int(pixels["image_grid_thw"].prod(dim=-1).sum()) // (merge * merge)
        if expected_pads != num_image_pads:
            raise GenerationError(
                f"prompt has {num_image_pads} image pad tokens but its {len(image_data)} image(s) need "
                f"{expected_pads}; the prompt was not built with this model's processor"
            )
        inputs["pixel_values"] = pixels["pixel_values"]
        inputs["image_grid_thw"] = pixels["image_grid_thw"]
    elif num_image_pads:
        raise GenerationError(f"prompt has {num_image_pads} image pad tokens but no image data")

    if image_token_id is not None:
        token_types = torch.zeros_like(input_ids, dtype=torch.int32)
        token_types[input_ids == image_token_id] = 1
        if video_token_id is not None:
            token_types[input_ids == video_token_id] = 2
        inputs["mm_token_type_ids"] = token_types
    return inputs


def batch_inputs(rows: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad single-prompt inputs (:func:`inputs_from_ids`) into one batch for one ``generate`` call.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` and ``mm_token_type_ids`` with 0,
    so every row continues from the right end and the model's (M-RoPE) positions, computed from the
    attention mask and the token types, are those of the row alone. ``pixel_values`` / ``image_grid_thw``
    are concatenated in row order (the order the model consumes the image pads in); text-only rows add
    none.

    Args:
        rows: B dicts with ``input_ids`` / ``attention_mask`` (1, L_b), optional ``mm_token_type_ids``
            (1, L_b), optional ``pixel_values`` (P_b, D) and ``image_grid_thw`` (I_b, 3).

    Returns:
        input_ids / attention_mask (B, max L_b), mm_token_type_ids (B, max L_b) if the rows have them,
        pixel_values (sum P_b, D) and image_grid_thw (sum I_b, 3) if any row has images.
    """
    if not rows:
        raise GenerationError("batch_inputs needs at least one row")
    with_types = {"mm_token_type_ids" in row for row in rows}
    if len(with_types) != 1:
        raise GenerationError("some rows have mm_token_type_ids and others not: they come from different models")
    lengths = [int(row["input_ids"].shape[1]) for row in rows]
    width = max(lengths)
    padded = {"input_ids": pad_token_id, "attention_mask": 0}
    if with_types == {True}:
        padded["mm_token_type_ids"] = 0
    batch = {}
    for key, fill in padded.items():
        out = torch.full((len(rows), width), fill, dtype=rows[0][key].dtype)
        for index, row in enumerate(rows):
            out[index, width - lengths[index]:] = row[key][0]
        batch[key] = out
    for key in ("pixel_values", "image_grid_thw"):
        parts = [row[key] for row in rows if key in row]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    return batch


def chat_inputs(processor, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]], padding_side="left"):
    """Processor inputs for a batch of chat conversations with their images (in placeholder order).

    The chat template adds the generation prompt; the processor expands each image into its pad tokens
    and returns ``mm_token_type_ids``. Left padding (the default) is what generation needs: every row
    continues from the right end.

    Args:
        conversations: B chat message lists (content parts ``{"type": "image"}`` / ``{"type": "text"}``).
        images: B lists of PIL images.

    Returns:
        the processor's BatchFeature: input_ids / attention_mask (B, L), pixel_values, image_grid_thw,
        mm_token_type_ids (B, L).
    """
    if len(conversations) != len(images):
        raise GenerationError(f"{len(conversations)} conversations but {len(images)} image lists")
    texts = [processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) for messages in conversations]
    flat_images = [image for row in images for image in row] or None
    tokenizer = processor.tokenizer
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        inputs = processor(text=texts, images=flat_images, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    if "mm_token_type_ids" not in inputs:
        raise GenerationError(
            "the processor returned no mm_token_type_ids: without them the model computes wrong multimodal "
            "positions; use a transformers version whose Qwen-VL processor returns them"
        )
    return inputs


# --------------------------------------------------------------------------------------------------
# The generate call
# --------------------------------------------------------------------------------------------------


def sampling_kwargs(temperature: float, top_p: float = 1.0, top_k: int = -1) -> dict[str, Any]:
    """HF ``generate`` sampling settings: greedy at temperature 0, else plain sampling (top_k <= 0 = off).

    ``repetition_penalty`` is pinned to 1.0 so a checkpoint's generation_config cannot change the
    protocol (verl's rollout and vLLM apply none).
    """
    if temperature > 0:
        settings = dict(do_sample=True, temperature=float(temperature), top_p=float(top_p),
                        top_k=int(top_k) if top_k and top_k > 0 else 0)
    else:  # greedy: unset the sampling knobs so HF does not warn about unused flags
        settings = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    settings["repetition_penalty"] = 1.0
    return settings


@dataclass
class Generation:
    """Responses of one ``generate`` call, row-major: prompt b's samples are rows b*n .. b*n+n-1."""

    tokens: list[list[int]]  # response ids, cut after the first end-of-sequence token
    stop_reasons: list[str]  # "completed" (ended with eos) or "length"
    log_probs: Optional[list[list[float]]]  # raw next-token log-probs of the response tokens, if asked


@torch.no_grad()
def generate(
    model,
    inputs,
    *,
    max_new_tokens: int | Sequence[int],
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    suppress_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = -1,
    num_return_sequences: int = 1,
    want_log_probs: bool = False,
    seed: Optional[int] = None,
) -> Generation:
    """One HF ``generate`` call on (left-padded) ``inputs``, on the model's unpatched forwards.

    ``max_new_tokens``: one budget for every row, or one per output row (B * num_return_sequences, in
    output order): the call generates up to the largest and cuts each row at its own budget; a row cut
    there without an end-of-sequence token stops with "length", as if it had been generated alone.
    Log-probs are those of the model's raw next-token distribution (like vLLM's default), not of the
    temperature/top-p-processed one.
    """
    num_rows = int(inputs["input_ids"].shape[0]) * num_return_sequences
    if isinstance(max_new_tokens, int):
        budgets = [int(max_new_tokens)] * num_rows
    else:
        budgets = [int(budget) for budget in max_new_tokens]
        if len(budgets) != num_rows:
            raise GenerationError(f"{len(budgets)} max_new_tokens budgets for {num_rows} output rows")
    if min(budgets) < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {min(budgets)}")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    inputs = {key: value.to(device) if hasattr(value, "to") else value for key, value in dict(inputs).items()}
    eos = [int(token_id) for token_id in eos_token_ids]
    with original_hf_forwards(model):
        output = model.generate(
            **inputs,
            max_new_tokens=max(budgets),
            eos_token_id=eos,
            pad_token_id=pad_token_id,
            suppress_tokens=list(suppress_ids) or None,
            num_return_sequences=num_return_sequences,
            return_dict_in_generate=True,
            output_logits=want_log_probs,
            **sampling_kwargs(temperature, top_p, top_k),
        )
    prompt_len = inputs["input_ids"].shape[1]
    new_tokens = output.sequences[:, prompt_len:].tolist()
    tokens, reasons = [], []
    eos_set = set(eos)
    for row, budget in zip(new_tokens, budgets):
        row = row[:budget]
        cut = next((position for position, token_id in enumerate(row) if token_id in eos_set), None)
        tokens.append(row if cut is None else row[: cut + 1])
        reasons.append("length" if cut is None else "completed")

    log_probs = None
    if want_log_probs:
        # (steps, rows, vocab) -> log-softmax once, then gather each row's own tokens
        steps = torch.stack([step.float() for step in output.logits], dim=1).log_softmax(dim=-1)
        chosen = steps.gather(-1, output.sequences[:, prompt_len : prompt_len + steps.shape[1], None])[..., 0]
        log_probs = [chosen[row, : len(row_tokens)].tolist() for row, row_tokens in enumerate(tokens)]
    return Generation(tokens=tokens, stop_reasons=reasons, log_probs=log_probs)


def generate_conversations(
    loaded: LoadedModel,
    conversations: Sequence[list[dict]],
    images: Sequence[Sequence[Any]],
    *,
    num_return_sequences: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed_for_batch: Callable[[int], Optional[int]],
    progress=None,
) -> list[list[list[int]]]:
    """Chat conversations with their images, ``batch_size`` prompts per :func:`generate` call; per
    conversation, ``num_return_sequences`` response id lists (cut after end-of-sequence).

    ``seed_for_batch(start)`` gives the seed set before the batch starting at conversation ``start``
    (None: keep the generator's state), so each caller keeps its own seeding rule; ``progress`` (a tqdm
    bar) advances by each batch's size.
    """
    if len(conversations) != len(images):
        raise GenerationError(f"{len(conversations)} conversations but {len(images)} image lists")
    out: list[list[list[int]]] = []
    n = num_return_sequences
    for start in range(0, len(conversations), batch_size):
        batch = slice(start, start + batch_size)
        inputs = chat_inputs(loaded.processor, conversations[batch], images[batch])
        result = generate(
            loaded.model,
            inputs,
            max_new_tokens=max_new_tokens,
            eos_token_ids=loaded.eos_token_ids,
            pad_token_id=loaded.pad_token_id,
            suppress_ids=loaded.suppress_ids,
            temperature=temperature,
            num_return_sequences=n,
            seed=seed_for_batch(start),
        )
        rows = len(conversations[batch])
        out.extend(result.tokens[offset * n : (offset + 1) * n] for offset in range(rows))
        if progress is not None:
            progress.update(rows)
    return out
