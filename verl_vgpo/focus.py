"""Visual focus scores: cosine of each token's last hidden state to its sequence's visual prototype.

Pure torch, packed layout (the one verl's engine uses with ``use_remove_padding=True``): all sequences
are concatenated into ``total_tokens`` rows and ``cu_seqlens`` gives the offsets. Everything is computed
in float32 whatever the model's dtype, because bf16 cosines tie often and ties inflate the top-k gate.

Work is chunked over fixed-size blocks of tokens (never single tokens) so that the float32 copy of the
hidden state never exceeds a fixed budget: the extra memory stays O(tokens), not O(tokens x hidden).
"""

from __future__ import annotations

import bisect
import time
from contextlib import contextmanager
from typing import Any, Iterable, Optional, Sequence

import torch

from verl_vgpo.config import VISUAL_TOKEN_KINDS

# rows scored per matmul: small enough that a chunk spans few sequences and its float32 copy stays
# small (2048 x H), large enough to amortise the per-chunk call overhead
_CHUNK_ROWS = 2048
# rows of visual tokens summed at a time for the prototypes: about 16M elements (64 MiB) per chunk
_CHUNK_ELEMENTS = 1 << 24
_NORM_FLOOR = 1e-12


def sequence_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """Index of the sequence every packed position belongs to.

    Args:
        cu_seqlens: (B+1,) int offsets, ``cu_seqlens[0] == 0``.
        total_tokens: number of packed positions; positions at or past ``cu_seqlens[-1]`` (padding
            suffix) get the id ``B``, i.e. "no sequence".

    Returns:
        (total_tokens,) int64 tensor with values in ``[0, B]``.
    """
    positions = torch.arange(total_tokens, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64), positions, right=True)


def visual_prototype_sums(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    seq_ids: torch.Tensor,
    num_sequences: int,
    visual_token_ids: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence float32 sums of the hidden states of visual tokens, and their counts.

    Split out from :func:`visual_focus_scores` so that a sequence-parallel caller can all-reduce the
    sums and counts over its group before dividing.

    Args:
        hidden: (total_tokens, H) last-layer hidden states (any float dtype).
        input_ids: (total_tokens,) token ids.
        seq_ids: (total_tokens,) sequence index per position (``num_sequences`` = padding).
        num_sequences: B.
        visual_token_ids: ids of the pad tokens that stand for image/video patches.

    Returns:
        sums (B, H) float32 and counts (B,) float32.
    """
    device = hidden.device
    ids = torch.as_tensor(list(visual_token_ids), device=device, dtype=input_ids.dtype)
    is_visual = torch.isin(input_ids, ids) & (seq_ids < num_sequences)
    visual_rows = is_visual.nonzero(as_tuple=True)[0]
    sums = torch.zeros(num_sequences, hidden.shape[-1], device=device, dtype=torch.float32)
    counts = torch.zeros(num_sequences, device=device, dtype=torch.float32)
    counts.index_add_(0, seq_ids[visual_rows], torch.ones_like(visual_rows, dtype=torch.float32))
    step = _chunk_rows(hidden.shape[-1])
    with float32_math(device):
        for start in range(0, visual_rows.numel(), step):
            rows = visual_rows[start : start + step]
            sums.index_add_(0, seq_ids[rows], hidden[rows].float())
    return sums, counts


def cosine_to_prototypes(
    hidden: torch.Tensor,
    seq_ids: torch.Tensor,
    prototypes: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """float32 cosine between each position and the prototype of its sequence.

    Sequences are contiguous in the packed layout, so a chunk of rows touches only a short range of
    sequences: one small matmul against that range's prototypes reads every hidden row exactly once
    (a per-row gather of prototypes would write a second (tokens, H) tensor).

    Args:
        hidden: (total_tokens, H).
        seq_ids: (total_tokens,) non-decreasing values in ``[0, B]``; id ``B`` (padding) gives NaN.
        prototypes: (B, H) float32; a row of NaN (sequence without visual tokens) gives NaN.
        cu_seqlens: optional (B+1,) offsets, read on the host once to find each chunk's sequence
            range; without them (e.g. a sequence-parallel shard) the range is read from ``seq_ids``.

    Returns:
        (total_tokens,) float32.
    """
    num_sequences = prototypes.shape[0]
    # one extra NaN prototype for padding positions keeps the gather branch-free
    padded = torch.cat([prototypes, prototypes.new_full((1, prototypes.shape[1]), float("nan"))])
    prototype_norms = padded.norm(dim=-1)
    ends = cu_seqlens[1:].tolist() if cu_seqlens is not None else None
    out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
    with float32_math(hidden.device):
        for start in range(0, hidden.shape[0], _CHUNK_ROWS):
            stop = min(hidden.shape[0], start + _CHUNK_ROWS)
            sid = seq_ids[start:stop].clamp(max=num_sequences)
            if ends is not None:
                first = bisect.bisect_right(ends, start)
                last = min(bisect.bisect_right(ends, stop - 1), num_sequences)
            else:
                first, last = int(sid[0]), int(sid[-1])
            h = hidden[start:stop].float()
            dots = (h @ padded[first : last + 1].T).gather(1, (sid - first).unsqueeze(1)).squeeze(1)
            norms = torch.linalg.vector_norm(h, dim=-1) * prototype_norms[sid]
            out[start:stop] = dots / norms.clamp_min(_NORM_FLOOR)
    return out


def float32_math(device: torch.device):
    """Disable autocast for the scoring math.

    verl's engine runs the model forward (and so the final-norm hook that calls these functions)
    under ``torch.autocast(bf16)``; there a matmul of float32 inputs would still run in bf16, giving
    bf16 cosines (ties in the top-k gate) or, under fp16, overflowing dot products.
    """
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def visual_focus_scores(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    visual_token_ids: Sequence[int],
) -> torch.Tensor:
    """Raw visual focus rho of every packed position (the paper's per-token focus).

    rho(p) = cos(h_p, v_s), where v_s is the mean last-layer hidden state of the visual tokens (image
    and/or video pads, every image of the sequence together) of the sequence s that holds position p.

    Args:
        hidden: (total_tokens, H) last-layer hidden states after the final norm.
        input_ids: (total_tokens,) token ids.
        cu_seqlens: (B+1,) offsets of the B packed sequences; positions past ``cu_seqlens[-1]`` are
            treated as padding.
        visual_token_ids: ids of the visual pad tokens that form the prototype.

    Returns:
        (total_tokens,) float32 cosines; NaN for every position of a sequence without visual tokens
        and for padding positions.
    """
    if hidden.dim() != 2 or input_ids.dim() != 1 or hidden.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"visual_focus_scores expects hidden (total_tokens, H) and input_ids (total_tokens,), "
            f"got {tuple(hidden.shape)} and {tuple(input_ids.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be a 1-D tensor of B+1 offsets, got shape {tuple(cu_seqlens.shape)}")
    if int(cu_seqlens[-1]) > hidden.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but only {hidden.shape[0]} positions were given")
    if len(visual_token_ids) == 0:
        raise ValueError("visual_token_ids is empty: name the image/video pad token ids")
    with torch.no_grad():
        cu_seqlens = cu_seqlens.to(hidden.device)
        num_sequences = cu_seqlens.numel() - 1
        seq_ids = sequence_ids(cu_seqlens, hidden.shape[0])
        sums, counts = visual_prototype_sums(hidden, input_ids, seq_ids, num_sequences, visual_token_ids)
        prototypes = prototypes_from_sums(sums, counts)
        return cosine_to_prototypes(hidden, seq_ids, prototypes, cu_seqlens)


def prototypes_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean visual hidden state per sequence; NaN rows where a sequence has no visual token."""
    prototypes = sums / counts.clamp_min(1.0).unsqueeze(-1)
    return prototypes.masked_fill((counts == 0).unsqueeze(-1), float("nan"))


def _chunk_rows(hidden_size: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, hidden_size))


class FocusCaptureError(RuntimeError):
    """Focus capture was requested but cannot be done correctly for this model or batch."""


# layouts of verl's engine: padded rows and sequence-parallel shards of the packed sequence


def focus_of_padded(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, packed_input_ids: torch.Tensor, visual_ids: Sequence[int]
) -> torch.Tensor:
    """Focus of the right-padded layout: hidden (B, max_len, H) -> (total_tokens,) in packed order.

    The padded rows are scored in place as B "sequences" of max_len positions (their padding carries
    the id -1, never a visual token, so it does not touch the prototypes); only the (tokens,) scores of
    the real positions are then selected. No copy of the hidden state is made.
    """
    lengths = cu_seqlens.diff().to(hidden.device)
    if hidden.dim() != 3 or hidden.shape[0] != lengths.numel() or int(lengths.max()) > hidden.shape[1]:
        raise FocusCaptureError(
            f"padded layout: expected hidden (B={lengths.numel()}, max_len>={int(lengths.max())}, H), "
            f"got {tuple(hidden.shape)}"
        )
    batch, max_len, width = hidden.shape
    valid = torch.arange(max_len, device=hidden.device) < lengths.unsqueeze(1)
    padded_ids = torch.full((batch, max_len), -1, dtype=packed_input_ids.dtype, device=hidden.device)
    padded_ids[valid] = packed_input_ids.to(hidden.device)
    row_offsets = torch.arange(0, batch * max_len + 1, max_len, device=hidden.device)
    scores = visual_focus_scores(hidden.reshape(batch * max_len, width), padded_ids.reshape(-1), row_offsets, visual_ids)
    return scores.view(batch, max_len)[valid]


def focus_on_sequence_shard(
    hidden_shard: torch.Tensor,
    packed_input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    shard_offset: int,
    visual_ids: Sequence[int],
    all_reduce=None,
) -> torch.Tensor:
    """Focus of the positions ``[shard_offset, shard_offset + len(hidden_shard))`` of a packed sequence.

    The shard may cut sequences anywhere: the per-sequence visual sums and counts of every shard are
    combined by ``all_reduce`` (in place, summing; None for a single shard) before the prototypes are
    formed, so every shard scores against the prototype of the whole sequence.

    Args:
        hidden_shard: (L, H) hidden states of this shard.
        packed_input_ids: (total_tokens + pad,) ids of the whole padded packed sequence.
        cu_seqlens: (B+1,) offsets of the real sequences; positions past ``cu_seqlens[-1]`` are padding.
        shard_offset: global position of the shard's first row.

    Returns:
        (L,) float32 scores, NaN on padding and on sequences without visual tokens.
    """
    length = hidden_shard.shape[0]
    device = hidden_shard.device
    cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int64)
    num_sequences = cu_seqlens.numel() - 1
    positions = torch.arange(shard_offset, shard_offset + length, device=device)
    seq_ids = torch.searchsorted(cu_seqlens[1:], positions, right=True)
    shard_ids = packed_input_ids[shard_offset : shard_offset + length].to(device)
    if shard_ids.numel() != length:
        raise FocusCaptureError(
            f"sequence shard [{shard_offset}, {shard_offset + length}) runs past the packed input "
            f"({packed_input_ids.numel()} positions)"
        )
    sums, counts = visual_prototype_sums(hidden_shard, shard_ids, seq_ids, num_sequences, visual_ids)
    if all_reduce is not None:
        all_reduce(sums)
        all_reduce(counts)
    prototypes = prototypes_from_sums(sums, counts)
    return cosine_to_prototypes(hidden_shard, seq_ids, prototypes, cu_seqlens - shard_offset)


def response_focus(focus: torch.Tensor, cu_seqlens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The response part of each row of a micro-batch's packed focus.

    Args:
        focus: (total_tokens,) float32 focus of every position of the B packed sequences.
        cu_seqlens: (B + 1,) int64 offsets of the sequences in ``focus``.
        response_mask: jagged nested (B, R_i): its row lengths are the response lengths.

    Returns:
        jagged nested (B, R_i) float32: row i holds ``focus[cu_seqlens[i+1] - R_i : cu_seqlens[i+1]]``.
        The gather index is built on the device from the offsets (no host round trip); its size is the
        response mask's own number of values. What the focus-capturing engine writes to TransferQueue.
    """
    response_offsets = response_mask.offsets().to(device=focus.device, dtype=torch.int64)
    total = response_mask.values().shape[0]
    if response_offsets.numel() != cu_seqlens.numel():
        raise FocusCaptureError(
            f"response_mask has {response_offsets.numel() - 1} rows but the micro-batch has {cu_seqlens.numel() - 1}"
        )
    response_lengths = response_offsets.diff()
    positions = torch.arange(total, device=focus.device)
    rows = torch.searchsorted(response_offsets[1:], positions, right=True)
    # position of response token t of row i in the packed sequence: end_i - R_i + t
    index = positions + (cu_seqlens[1:] - response_lengths - response_offsets[:-1])[rows]
    return torch.nested.nested_tensor_from_jagged(focus[index], response_offsets)


# ---------------------------------------------------------------------------------------------------
# the capture in a model's forward: one hook on the language model's final norm
# ---------------------------------------------------------------------------------------------------

# name suffixes of the language model's final norm, most specific first (VLMs keep the decoder under
# ``language_model``; text-only models have ``model.norm``). FSDP1 / PEFT only add prefixes.
_FINAL_NORM_SUFFIXES = ("language_model.norm", "model.norm")


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
            f"the visual token kinds (algorithm.vgpo.visual_tokens) must be a non-empty list drawn from {list(VISUAL_TOKEN_KINDS)}, got {list(kinds)}"
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
        shards = [torch.empty_like(shard_focus) for _ in range(sp_size)]
        dist.all_gather(shards, shard_focus.contiguous(), group=group)
        return torch.cat(shards)[:total]


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
