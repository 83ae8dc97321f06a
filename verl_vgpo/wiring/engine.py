"""Worker side of VGPO: verl's FSDP language-model engines, extended to return visual focus scores.

The old-log-prob forward already computes the last hidden state of every token; VGPO needs exactly
that state (after the final norm) to score each token against its sequence's visual prototype. So
instead of a second pass or ``output_hidden_states=True`` (which keeps every layer alive), a forward
hook on the language model's final norm turns the hidden state into one float32 cosine per token
while the forward runs, and the engine adds the result to its output dict beside ``log_probs``:

* only when the batch's extra info carries ``CAPTURE_FOCUS_FLAG`` and only in forward-only passes
  (reference and update passes never capture; the trainer sets the flag for the old-log-prob pass
  only and must remove it afterwards, because the reference pass reuses the same extra info);
* the field ``FOCUS_OUTPUT_KEY`` is a jagged nested tensor over the FULL sequence (prompt +
  response), same layout as ``log_probs``, so verl's worker bridge gathers it, restores the row order
  (also under dynamic batch size) and writes it to TransferQueue under its own name. Unlike
  ``log_probs`` (position p holds the log-prob of token p+1), focus is NOT shifted: position p holds
  the focus of token p itself, so a response of length R is ``focus[end-R:end]``;
* seconds spent on focus go beside it as the per-row field ``FOCUS_SECONDS_KEY`` (each micro-batch's
  time split over its rows in proportion to their token counts, so the trainer sums rows to get the
  total over micro-batches and data-parallel ranks) and as the engine metric ``FOCUS_TIME_KEY`` (one
  value per micro-batch);
* which pad tokens form the prototype: the extra-info key ``VISUAL_TOKENS_KEY`` (a list drawn from
  ``("image", "video")``, i.e. ``algorithm.vgpo.visual_tokens``); absent means both. The token ids
  come from the model config (``image_token_id`` / ``video_token_id``).

Both layouts of verl's engine are handled: packed (``use_remove_padding=True``, the model sees
``(1, total_tokens + pad)`` with the pad as a suffix) and padded (``(B, max_len)``). Under Ulysses
sequence parallelism each rank holds a contiguous shard of the packed sequence: per-sequence
prototype sums and counts are all-reduced over the SP group, each rank scores its own shard and only
the (tokens,) float32 scores are all-gathered, so the hidden state itself is never gathered.

:func:`register_engines` (run at plugin load) replaces verl's registered FSDP language-model engines
(``fsdp``, ``fsdp2``, ``fsdp_turbo``; every device) by focus-capturing subclasses.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterable, Sequence

import torch

from verl_vgpo.config import VISUAL_TOKEN_KINDS
from verl_vgpo.focus import (
    FocusCaptureError,
    focus_of_padded,
    focus_on_sequence_shard,
    visual_focus_scores,
)
from verl_vgpo.wiring import compat
from verl_vgpo.wiring.keys import (
    CAPTURE_FOCUS_FLAG,
    FOCUS_OUTPUT_KEY,
    FOCUS_SECONDS_KEY,
    FOCUS_TIME_KEY,
    FOCUS_VISUAL_TOKENS_KEY,
)

logger = logging.getLogger("verl_vgpo")

# extra_info key naming which visual pad tokens form the prototype: a list drawn from VISUAL_TOKEN_KINDS
VISUAL_TOKENS_KEY = FOCUS_VISUAL_TOKENS_KEY

# verl backends whose language-model engine is FSDPEngineWithLMHead or a subclass of it
FOCUS_BACKENDS = ("fsdp", "fsdp2", "fsdp_turbo")

# name suffixes of the language model's final norm, most specific first (VLMs keep the decoder under
# ``language_model``; text-only models have ``model.norm``). FSDP1 / PEFT only add prefixes.
_FINAL_NORM_SUFFIXES = ("language_model.norm", "model.norm")


# ---------------------------------------------------------------------------------------------------
# pure helpers (no engine state): module lookup, token ids, layouts
# ---------------------------------------------------------------------------------------------------


def find_final_norm(module: torch.nn.Module) -> torch.nn.Module:
    """The language model's final norm (its output is ``hidden_states[-1]``), found by name suffix."""
    names = [name for name, _ in module.named_modules()]
    for suffix in _FINAL_NORM_SUFFIXES:
        matches = [
            name
            for name in names
            if (name == suffix or name.endswith("." + suffix)) and "visual" not in name and "vision" not in name
        ]
        if len(matches) == 1:
            return module.get_submodule(matches[0])
        if len(matches) > 1:
            raise FocusCaptureError(
                f"VGPO focus capture found several candidate final norms ending in {suffix!r}: {matches}; "
                "cannot tell which one feeds lm_head"
            )
    norms = [name for name in names if name.endswith("norm")][-5:]
    raise FocusCaptureError(
        "VGPO focus capture needs the language model's final norm (a module named '...language_model.norm' "
        f"or '...model.norm'), but {type(module).__name__} has none; last norm-like modules: {norms}"
    )


def visual_token_ids(hf_config: Any, kinds: Iterable[str] | None = None) -> list[int]:
    """Ids of the visual pad tokens of the selected kinds, read from the model config."""
    kinds = tuple(VISUAL_TOKEN_KINDS if kinds is None else kinds)
    unknown = [kind for kind in kinds if kind not in VISUAL_TOKEN_KINDS]
    if unknown or not kinds:
        raise FocusCaptureError(
            f"{VISUAL_TOKENS_KEY} must be a non-empty list drawn from {list(VISUAL_TOKEN_KINDS)}, got {list(kinds)}"
        )
    ids = []
    for kind in kinds:
        token_id = getattr(hf_config, f"{kind}_token_id", None)
        if token_id is None and hasattr(hf_config, "text_config"):
            token_id = getattr(hf_config.text_config, f"{kind}_token_id", None)
        if token_id is not None:
            ids.append(int(token_id))
    if not ids:
        raise FocusCaptureError(
            f"VGPO needs a vision-language model: the model config ({type(hf_config).__name__}) defines none of "
            f"{[kind + '_token_id' for kind in kinds]}"
        )
    return ids


# ---------------------------------------------------------------------------------------------------
# the capture: one forward hook, alive only during one micro-batch forward
# ---------------------------------------------------------------------------------------------------


class FocusHook:
    """Forward hook on the final norm that turns its output into focus scores right away.

    Scoring inside the hook means the hidden state is not kept past the norm's own lifetime; only the
    (tokens,) float32 scores survive the forward. Independent of verl (the benchmark uses it with a
    plain HF model).

    Args:
        input_ids: jagged nested (B, j) token ids of the micro-batch (its offsets are the cu_seqlens).
        visual_ids: ids of the visual pad tokens forming the prototype.
        use_remove_padding: True when the model sees the packed (1, tokens + pad suffix) layout,
            False for the right-padded (B, max_len) layout.
        sp_group: the Ulysses sequence-parallel process group when the packed sequence is sharded
            over it, else None.
    """

    def __init__(self, input_ids, visual_ids: Sequence[int], use_remove_padding: bool, sp_group=None):
        self.cu_seqlens = input_ids.offsets().to(torch.int64)
        self.packed_input_ids = input_ids.values()
        self.visual_ids = list(visual_ids)
        self.use_remove_padding = use_remove_padding
        self.sp_group = sp_group
        self.focus: torch.Tensor | None = None
        self.seconds = 0.0

    def __call__(self, module, args, output):
        if self.focus is not None:
            raise FocusCaptureError(
                "the final norm ran twice in one micro-batch forward; VGPO focus capture expects one pass"
            )
        hidden = output[0] if isinstance(output, tuple) else output
        # on an accelerator the layers' kernels are still queued here: wait for them first, so that
        # the time measures this hook's own work, not the forward it happens to wait on
        _synchronize(hidden.device)
        start = time.perf_counter()
        with torch.no_grad():
            self.focus = self._score(hidden.detach())
        _synchronize(hidden.device)
        self.seconds += time.perf_counter() - start
        return None

    def _score(self, hidden: torch.Tensor) -> torch.Tensor:
        total = int(self.cu_seqlens[-1])
        if not self.use_remove_padding:
            return focus_of_padded(hidden, self.cu_seqlens, self.packed_input_ids, self.visual_ids)

        if hidden.dim() != 3 or hidden.shape[0] != 1:
            raise FocusCaptureError(f"packed layout: expected hidden (1, tokens, H), got {tuple(hidden.shape)}")
        hidden = hidden[0]
        if self.sp_group is None:
            # the pad (pad_to_length bucket) is a suffix: visual_focus_scores marks it NaN, then we drop it
            pad = hidden.shape[0] - total
            if pad < 0:
                raise FocusCaptureError(f"packed hidden has {hidden.shape[0]} rows for {total} tokens")
            ids = self.packed_input_ids.to(hidden.device)
            if pad:
                ids = torch.cat([ids, ids.new_zeros(pad)])
            return visual_focus_scores(hidden, ids, self.cu_seqlens, self.visual_ids)[:total]

        import torch.distributed as dist

        from verl.utils.ulysses import gather_outputs_and_unpad

        group = self.sp_group
        sp_size = dist.get_world_size(group)
        sp_rank = dist.get_rank(group)
        shard_len = hidden.shape[0]
        pad = shard_len * sp_size - total
        if pad < 0:
            raise FocusCaptureError(f"SP shards of {shard_len} rows x {sp_size} cannot hold {total} tokens")
        ids = self.packed_input_ids.to(hidden.device)
        ids = torch.cat([ids, ids.new_zeros(pad)])

        def all_reduce(tensor):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)

        shard_focus = focus_on_sequence_shard(
            hidden, ids, self.cu_seqlens, sp_rank * shard_len, self.visual_ids, all_reduce=all_reduce
        )
        return gather_outputs_and_unpad(shard_focus, gather_dim=0, unpad_dim=0, padding_size=pad, group=group)


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


@contextmanager
def focus_hook(norm: torch.nn.Module, hook: FocusHook):
    """Register ``hook`` on ``norm`` for the duration of the block; always removed afterwards."""
    handle = norm.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------
# the engine subclasses
# ---------------------------------------------------------------------------------------------------


def _non_tensor(micro_batch, key: str, default):
    from verl.utils import tensordict_utils as tu

    return tu.get_non_tensor_data(data=micro_batch, key=key, default=default)


class FocusCaptureMixin:
    """Adds VGPO focus capture to an ``FSDPEngineWithLMHead`` (sub)class; see the module docstring."""

    vgpo_focus_capture = True

    def forward_step(self, micro_batch, loss_function, forward_only):
        if not (forward_only and bool(_non_tensor(micro_batch, CAPTURE_FOCUS_FLAG, False))):
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)

        kinds = _non_tensor(micro_batch, VISUAL_TOKENS_KEY, None)
        visual_ids = visual_token_ids(self.model_config.hf_config, kinds)
        use_remove_padding = bool(_non_tensor(micro_batch, "use_remove_padding", True))
        sp_group = self.ulysses_parallel_group if getattr(self, "use_ulysses_sp", False) else None
        hook = FocusHook(micro_batch["input_ids"], visual_ids, use_remove_padding, sp_group=sp_group)
        with focus_hook(find_final_norm(self.module), hook):
            loss, output = super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if hook.focus is None:
            raise FocusCaptureError("the model's final norm never ran during the forward; no focus scores")

        start = time.perf_counter()
        focus, cu_seqlens = hook.focus, hook.cu_seqlens
        if focus.shape[0] != int(cu_seqlens[-1]):
            raise FocusCaptureError(f"focus has {focus.shape[0]} positions for {int(cu_seqlens[-1])} tokens")
        # stays on the model's device like log_probs (the worker bridge moves everything at the end)
        cu_seqlens = cu_seqlens.to(focus.device)
        output["model_output"][FOCUS_OUTPUT_KEY] = torch.nested.nested_tensor_from_jagged(focus, cu_seqlens)
        seconds = hook.seconds + (time.perf_counter() - start)
        output["model_output"][FOCUS_SECONDS_KEY] = seconds_per_row(seconds, cu_seqlens)
        output["metrics"][FOCUS_TIME_KEY] = seconds
        return loss, output


def seconds_per_row(seconds: float, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Split one micro-batch's capture time over its rows in proportion to their token counts.

    Args:
        seconds: capture time of the micro-batch.
        cu_seqlens: (B + 1,) int64 offsets of the micro-batch's sequences.

    Returns:
        jagged nested (B, 1) float32, one value per row, summing to ``seconds``; a per-row field so that
        verl's worker bridge gathers, reorders and stores it like ``log_probs``.
    """
    lengths = cu_seqlens.diff().to(torch.float64)
    shares = (seconds * lengths / lengths.sum()).to(torch.float32)
    return torch.nested.nested_tensor_from_jagged(
        shares, torch.arange(shares.numel() + 1, device=shares.device, dtype=cu_seqlens.dtype)
    )


_FOCUS_CLASSES: dict[type, type] = {}


def focus_engine_class(base: type) -> type:
    """The focus-capturing subclass of an engine class (one per base class, so registering is idempotent)."""
    if getattr(base, "vgpo_focus_capture", False):
        return base
    if base not in _FOCUS_CLASSES:
        _FOCUS_CLASSES[base] = type(
            f"VGPOFocus{base.__name__}",
            (FocusCaptureMixin, base),
            {"__module__": __name__, "__doc__": f"{base.__name__} that also returns VGPO visual focus scores."},
        )
    return _FOCUS_CLASSES[base]


def register_engines() -> None:
    """Replace verl's FSDP language-model engines (every device) by their focus-capturing subclasses."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    by_backend = EngineRegistry._engines.get("language_model", {})
    replaced = []
    for backend in FOCUS_BACKENDS:
        for key, engine_class in list(by_backend.get(backend, {}).items()):
            if isinstance(engine_class, type) and issubclass(engine_class, FSDPEngineWithLMHead):
                by_backend[backend][key] = focus_engine_class(engine_class)
                replaced.append(f"{backend}/{key}")
    if not replaced:
        raise FocusCaptureError("no FSDP language-model engine is registered in verl; cannot install VGPO capture")
    compat.fix_qwen2_vl_text_only_dummy()
    compat.fix_qwen3_5_packed_linear_attention_fallback()
    compat.fix_qwen_vl_one_vision_pass_per_micro_batch()
    logger.debug("verl-vgpo: focus-capturing engines installed for %s", replaced)
