"""Pure helpers of the focus-capturing engine: final-norm lookup, token ids, layouts, SP shards, registry."""

from __future__ import annotations

import types

import pytest
import torch

from verl_vgpo.focus import (
    FocusCaptureError,
    find_final_norm,
    focus_of_padded,
    focus_on_sequence_shard,
    visual_focus_scores,
    visual_token_ids,
)
from verl_vgpo.wiring.engine import seconds_per_row


class _Norm(torch.nn.Module):
    def forward(self, x):
        return x


def _vlm_like(prefix_levels=()):
    """A module tree named like Qwen2.5-VL (model.language_model.norm, model.visual.merger.norm)."""
    language_model = torch.nn.Module()
    language_model.norm = _Norm()
    visual = torch.nn.Module()
    visual.merger = torch.nn.Module()
    visual.merger.norm = _Norm()
    inner = torch.nn.Module()
    inner.language_model = language_model
    inner.visual = visual
    root = torch.nn.Module()
    root.model = inner
    for name in prefix_levels:  # FSDP1 / PEFT wrappers only add name prefixes
        wrapper = torch.nn.Module()
        setattr(wrapper, name, root)
        root = wrapper
    return root, language_model.norm


@pytest.mark.parametrize("prefixes", [(), ("_fsdp_wrapped_module",), ("model", "base_model")])
def test_final_norm_found_under_wrapper_prefixes(prefixes):
    root, norm = _vlm_like(prefixes)
    assert find_final_norm(root) is norm


def test_final_norm_of_text_model_and_clear_errors():
    text_model = torch.nn.Module()
    text_model.model = torch.nn.Module()
    text_model.model.norm = _Norm()
    assert find_final_norm(text_model) is text_model.model.norm

    with pytest.raises(FocusCaptureError, match="final norm"):
        find_final_norm(torch.nn.Linear(2, 2))

    two = torch.nn.Module()
    two.a, two.b = _vlm_like()[0], _vlm_like()[0]
    with pytest.raises(FocusCaptureError, match="several candidate"):
        find_final_norm(two)


def test_visual_token_ids_from_config():
    config = types.SimpleNamespace(image_token_id=12, video_token_id=13)
    assert visual_token_ids(config) == [12, 13]
    assert visual_token_ids(config, ["video"]) == [13]
    nested = types.SimpleNamespace(text_config=types.SimpleNamespace(image_token_id=5))
    assert visual_token_ids(nested, ["image", "video"]) == [5]
    with pytest.raises(FocusCaptureError, match="vision-language model"):
        visual_token_ids(types.SimpleNamespace(vocab_size=10))
    with pytest.raises(FocusCaptureError, match="drawn from"):
        visual_token_ids(config, ["audio"])
    with pytest.raises(FocusCaptureError, match="drawn from"):
        visual_token_ids(config, [])


def test_padded_layout_scores_equal_packed_scores_without_copying_hidden():
    generator = torch.Generator().manual_seed(3)
    lengths = [5, 2, 7]
    cu_seqlens = torch.tensor([0, 5, 7, 14])
    packed_ids = torch.randint(20, 50, (14,), generator=generator)
    packed_ids[[1, 3, 8, 13]] = 12  # sequence 1 has no visual token
    packed_hidden = torch.randn(14, 4, generator=generator)
    hidden = torch.full((3, 7, 4), 1e3)  # padding filled with large values that must not leak in
    for row, (start, length) in enumerate(zip(cu_seqlens[:-1].tolist(), lengths)):
        hidden[row, :length] = packed_hidden[start : start + length]
    got = focus_of_padded(hidden, cu_seqlens, packed_ids, [12, 13])
    expected = visual_focus_scores(packed_hidden, packed_ids, cu_seqlens, [12, 13])
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=1e-6)
    assert got[5:7].isnan().all()
    with pytest.raises(FocusCaptureError, match="padded layout"):
        focus_of_padded(hidden[:, :6], cu_seqlens, packed_ids, [12, 13])


@pytest.mark.parametrize("sp_size", [2, 3, 4])
def test_sequence_parallel_shards_reproduce_the_full_computation(sp_size):
    """Shards that cut sequences anywhere, with summed prototype statistics, give the unsharded focus."""
    generator = torch.Generator().manual_seed(sp_size)
    lengths = [7, 5, 9, 4]  # sequence 1 has no visual token
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    total = int(cu_seqlens[-1])
    input_ids = torch.randint(20, 50, (total,), generator=generator)
    for seq, visual_positions in ((0, [1, 2]), (2, [0, 4, 8]), (3, [3])):
        input_ids[cu_seqlens[seq] + torch.tensor(visual_positions)] = torch.tensor([12, 13, 12])[: len(visual_positions)]
    hidden = torch.randn(total, 8, generator=generator)
    expected = visual_focus_scores(hidden, input_ids, cu_seqlens, [12, 13])

    shard_len = -(-total // sp_size)
    pad = shard_len * sp_size - total
    padded_ids = torch.cat([input_ids, input_ids.new_zeros(pad)])
    padded_hidden = torch.cat([hidden, torch.randn(pad, 8, generator=generator)])
    shards = padded_hidden.split(shard_len)

    # phase 1 of every rank (local sums), then the all-reduce, then phase 2: emulated with a shared total
    from verl_vgpo.focus import visual_prototype_sums

    positions = torch.arange(shard_len * sp_size)
    seq_ids = torch.searchsorted(cu_seqlens[1:], positions, right=True)
    reduced = [torch.zeros(len(lengths), 8), torch.zeros(len(lengths))]
    for rank, shard in enumerate(shards):
        rows = slice(rank * shard_len, (rank + 1) * shard_len)
        sums, counts = visual_prototype_sums(shard, padded_ids[rows], seq_ids[rows], len(lengths), [12, 13])
        reduced[0] += sums
        reduced[1] += counts

    def all_reduce(tensor):  # what dist.all_reduce(SUM) leaves on every rank
        tensor.copy_(reduced[0] if tensor.dim() == 2 else reduced[1])

    got = torch.cat(
        [
            focus_on_sequence_shard(shard, padded_ids, cu_seqlens, rank * shard_len, [12, 13], all_reduce=all_reduce)
            for rank, shard in enumerate(shards)
        ]
    )
    assert got[total:].isnan().all()  # the SP pad
    torch.testing.assert_close(got[:total], expected, equal_nan=True, rtol=0, atol=1e-6)
    assert got[cu_seqlens[1] : cu_seqlens[2]].isnan().all()

    # without the reduction a shard that cuts a sequence scores against a partial prototype
    unreduced = torch.cat(
        [focus_on_sequence_shard(s, padded_ids, cu_seqlens, r * shard_len, [12, 13]) for r, s in enumerate(shards)]
    )
    assert not torch.allclose(unreduced[:total], expected, equal_nan=True, atol=1e-4)


def test_register_engines_is_idempotent_and_covers_every_device():
    import verl  # noqa: F401  (loads the plugin)
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    from verl_vgpo.wiring.engine import focus_engine_class, register_engines

    register_engines()
    first = {b: dict(EngineRegistry._engines["language_model"][b]) for b in ("fsdp", "fsdp2", "fsdp_turbo")}
    register_engines()
    second = {b: dict(EngineRegistry._engines["language_model"][b]) for b in ("fsdp", "fsdp2", "fsdp_turbo")}
    assert first == second
    for backend, entries in first.items():
        assert {"cuda", "npu"} <= set(entries), backend
        for engine_class in entries.values():
            assert engine_class.vgpo_focus_capture and issubclass(engine_class, FSDPEngineWithLMHead)
    assert focus_engine_class(FSDPEngineWithLMHead) is first["fsdp2"]["cuda"]
    # the value model (critic) is never replaced
    assert not getattr(EngineRegistry._engines["value_model"]["fsdp2"]["cuda"], "vgpo_focus_capture", False)


def _sp_rank_main(rank, world_size, port, hidden, input_ids, cu_seqlens, queue):
    import torch.distributed as dist

    from verl_vgpo.focus import FocusHook

    # plain lists cross the process boundary (shared-memory tensors die with their process)
    hidden, input_ids, cu_seqlens = torch.tensor(hidden), torch.tensor(input_ids), torch.tensor(cu_seqlens)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        total = int(cu_seqlens[-1])
        shard_len = -(-total // world_size)
        padded = torch.cat([hidden, torch.zeros(shard_len * world_size - total, hidden.shape[1])])
        shard = padded[rank * shard_len : (rank + 1) * shard_len]
        nested_ids = torch.nested.nested_tensor_from_jagged(input_ids, cu_seqlens)
        hook = FocusHook(nested_ids, [12, 13], use_remove_padding=True, sp_group=dist.group.WORLD)
        hook(None, (), shard.unsqueeze(0))  # what the final norm's forward hook receives on this SP rank
        queue.put((rank, hook.focus.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns a two-rank gloo process group
def test_focus_hook_under_real_sequence_parallel_collectives():
    """Two gloo ranks each holding a contiguous shard (Ulysses layout): all-reduce + all-gather path."""
    import torch.multiprocessing as mp

    from tests.wiring.vlm_batches import free_port

    generator = torch.Generator().manual_seed(7)
    cu_seqlens = torch.tensor([0, 9, 11, 25])  # 2 ranks x 13 rows: the shard boundary (13) cuts sequence 2
    input_ids = torch.randint(20, 50, (25,), generator=generator)
    input_ids[[2, 3, 12, 16, 17, 24]] = 12  # sequence 2's visual tokens lie on both ranks; sequence 1 has none
    hidden = torch.randn(25, 6, generator=generator)
    expected = visual_focus_scores(hidden, input_ids, cu_seqlens, [12, 13])

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_sp_rank_main,
            args=(rank, 2, port, hidden.tolist(), input_ids.tolist(), cu_seqlens.tolist(), queue),
        )
        for rank in range(2)
    ]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank in range(2):
        torch.testing.assert_close(torch.tensor(results[rank]), expected, equal_nan=True, rtol=0, atol=1e-6)


def test_seconds_per_row_splits_a_micro_batch_by_token_count():
    shares = seconds_per_row(0.6, torch.tensor([0, 10, 30, 60]))
    assert shares.is_nested and shares.offsets().tolist() == [0, 1, 2, 3] and shares.dtype == torch.float32
    torch.testing.assert_close(shares.values(), torch.tensor([0.1, 0.2, 0.3]))


def test_per_row_seconds_survive_verls_micro_batch_gathering_and_reordering():
    # verl's own post-processing of forward_backward_batch: concatenates the micro-batches' model outputs
    # and, under dynamic batch size, restores the original row order
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import postprocess_batch_func

    from verl_vgpo.wiring.keys import FOCUS_SECONDS_KEY

    # rows 2, 0 in the first micro-batch (4 and 2 tokens), row 1 in the second (6 tokens)
    micro_batches = [(0.3, [2, 0], [4, 2]), (0.5, [1], [6])]
    outputs = [
        {"model_output": {FOCUS_SECONDS_KEY: seconds_per_row(s, torch.tensor([0, *lengths]).cumsum(0))}}
        for s, _, lengths in micro_batches
    ]
    data = tu.get_tensordict({"input_ids": torch.zeros(3, 1)}, non_tensor_dict={"use_dynamic_bsz": True})
    gathered = postprocess_batch_func(outputs, [rows for _, rows, _ in micro_batches], data)
    per_row = gathered["model_output"][FOCUS_SECONDS_KEY]
    torch.testing.assert_close(per_row.values(), torch.tensor([0.1, 0.5, 0.2]))
    assert float(per_row.values().sum()) == pytest.approx(0.8)
