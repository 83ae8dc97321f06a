"""Worker side of VGPO: verl's FSDP language-model engines, extended to return visual focus scores.

The old-log-prob forward already computes the last hidden state of every token; VGPO needs exactly
that state (after the final norm) to score each token against its sequence's visual prototype. So
instead of a second pass or ``output_hidden_states=True`` (which keeps every layer alive), a forward
hook on the language model's final norm turns the hidden state into one float32 cosine per token
while the forward runs, and the engine adds the result to its output dict beside ``log_probs``:

* only when the batch's extra info carries ``CAPTURE_FOCUS_FLAG`` and only in forward-only passes
  (reference and update passes never capture; the trainer sets the flag for the old-log-prob pass
  only and must remove it afterwards, because the reference pass reuses the same extra info);
* the field ``FOCUS_OUTPUT_KEY`` is a jagged nested tensor over each row's RESPONSE tokens only (the
  estimator reads nothing else; a full-sequence field would carry the prompt too: docs/benchmarks.md).
  Column t of row i is the focus of response token t at its own position ``end_i - R_i + t`` of the
  sequence, where R_i is the length of the row's ``response_mask`` (verl's trainer slices log-probs
  with the same lengths; unlike ``log_probs``, whose position p holds the log-prob of token p+1, focus
  is not shifted). The cut uses only the row's own offsets, so it
  does not depend on micro-batching; verl's worker bridge gathers the per-row field, restores the row
  order (also under dynamic batch size) and writes it to TransferQueue under its own name;
* seconds spent on focus go beside it as the per-row field ``FOCUS_SECONDS_KEY`` (each micro-batch's
  time split over its rows in proportion to their token counts, so the trainer sums rows to get the
  total over micro-batches and data-parallel ranks) and as the engine metric ``FOCUS_TIME_KEY`` (one
  value per micro-batch);
* which pad tokens form the prototype: the extra-info key ``FOCUS_VISUAL_TOKENS_KEY`` (a list drawn from
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

import torch

from verl_vgpo.focus import (
    FocusCaptureError,
    FocusHook,
    find_final_norm,
    focus_hook,
    response_focus,
    visual_token_ids,
)
from verl_vgpo.wiring.keys import (
    CAPTURE_FOCUS_FLAG,
    FOCUS_OUTPUT_KEY,
    FOCUS_SECONDS_KEY,
    FOCUS_TIME_KEY,
    FOCUS_VISUAL_TOKENS_KEY,
)

logger = logging.getLogger("verl_vgpo")

# verl backends whose language-model engine is FSDPEngineWithLMHead or a subclass of it
FOCUS_BACKENDS = ("fsdp", "fsdp2", "fsdp_turbo")

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

        kinds = _non_tensor(micro_batch, FOCUS_VISUAL_TOKENS_KEY, None)
        visual_ids = visual_token_ids(self.model_config.hf_config, kinds)
        use_remove_padding = bool(_non_tensor(micro_batch, "use_remove_padding", True))
        sp_group = self.ulysses_parallel_group if getattr(self, "use_ulysses_sp", False) else None
        hook = FocusHook(micro_batch["input_ids"], visual_ids, use_remove_padding, sp_group=sp_group)
        with focus_hook(find_final_norm(self.module), hook):
            loss, output = super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if hook.focus is None:
            raise FocusCaptureError("the model's final norm never ran during the forward; no focus scores")

        start = time.perf_counter()
        focus, cu_seqlens = hook.focus, hook.cu_seqlens.to(hook.focus.device)
        response_mask = micro_batch.get("response_mask", None)
        if not (isinstance(response_mask, torch.Tensor) and response_mask.is_nested):
            raise FocusCaptureError(
                "focus capture needs the micro-batch's response_mask (a jagged nested tensor, one row of response "
                f"length per sequence, as verl's V1 trainer stores it); got {type(response_mask).__name__}"
            )
        # stays on the model's device like log_probs (the worker bridge moves everything at the end)
        output["model_output"][FOCUS_OUTPUT_KEY] = response_focus(focus, cu_seqlens, response_mask)
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
    logger.debug("verl-vgpo: focus-capturing engines installed for %s", replaced)
