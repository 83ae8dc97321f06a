"""VGPO is invariant to a data-parallel split: verl's real TrainingWorker / FSDP2 engine on 2 gloo ranks.

The same batch of tiny-VLM samples (one image, two images, video only, text only) goes through
``TrainingWorker.infer_batch`` with the focus-capture flag once on a one-process group (DP=1) and once
on a two-process group (DP=2, each rank holds half of the FSDP2-sharded model). The per-sequence focus
and the VGPO advantages computed from it must not depend on the split.

What is real: the worker processes run verl's ``TrainingWorker`` (the focus-capturing FSDP2 engine of
``verl_vgpo.wiring.engine`` on the CPU platform of ``verl_vgpo.cpu``) over real gloo collectives. The driver
side is verl's own ``WorkerGroup`` base class: its ``_bind_worker_method`` binds every ``@register``-ed
``TrainingWorker`` method with the dispatch / collect functions verl declares for it, so
``infer_batch`` is split by ``make_nd_compute_dataproto_dispatch_fn(mesh_name="train")`` (the dp rank of
each worker is asked from the worker itself through ``_query_dispatch_info`` / ``_query_collect_info``)
and the rank outputs are concatenated by verl's collect function. The rows are ordered beforehand the
way the trainer's ``_balance_batch`` does it (verl's ``get_seqlen_balanced_partitions``).

What is replaced, because it exists only under Ray: the Ray actor call (a method call sent to a spawned
process over a pipe instead) and ``verl.utils.ray_utils.parallel_put`` (``ray.put`` of each rank's
chunk; here the chunk itself travels). Batches are TensorDicts, verl's path when TransferQueue is off
(``tqbridge`` passes them through unchanged).

Every test runs once per tiny-VLM family (Qwen2.5-VL, Qwen3-VL, Qwen3.5).

A limit of verl itself, worked around in verl_vgpo.wiring.compat
(``fix_qwen_vl_one_vision_pass_per_micro_batch``): for all three families verl 0.9.1's
``_get_input_embeds`` (qwen2_vl.py, qwen3_vl.py, qwen3_5.py) runs the vision tower once per modality
present in a micro-batch (once on a dummy image when there is none).
Under FSDP every run all-gathers the tower's shards, so when one rank's micro-batch holds images AND a
video while the other rank's holds one modality, the ranks issue different collectives: seen here as a
rank dying in gloo ("Connection reset by peer"); with NCCL it would hang. With the workaround the tower
runs once per micro-batch whatever it holds; ``test_mixed_image_video_micro_batches_on_one_rank`` gives
one rank only image+video micro-batches and the other only single-modality ones.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import traceback

import pytest
import torch

from tests.wiring.vlm_batches import FAMILIES, build_batch, grouped_samples
from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY, FOCUS_TIME_KEY

pytestmark = pytest.mark.slow  # spawns two-rank gloo process groups with real FSDP engines


# rows i and i + 4 are of the same kind; uids interleave so that every group lies on both DP ranks
UIDS = ["a", "b"] * 4
# outcome rewards with a spread inside each group (a group with equal rewards has zero advantage)
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
STARTUP_TIMEOUT_S = 240
CALL_TIMEOUT_S = 120


def _worker_process_main(rank, world_size, port, model_path, connection):
    """One verl worker: a gloo rank holding a TrainingWorker, serving method calls from the driver."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from tests.wiring.vlm_batches import build_training_worker
    from verl_vgpo.cpu import enable_cpu_platform

    enable_cpu_platform()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        try:
            worker = build_training_worker(model_path, use_remove_padding=False)
            connection.send_bytes(pickle.dumps(("ok", "ready")))
        except Exception:
            connection.send_bytes(pickle.dumps(("error", traceback.format_exc())))
            return
        while True:
            message = pickle.loads(connection.recv_bytes())
            if message is None:
                return
            method_name, args, kwargs = message
            try:
                reply = ("ok", getattr(worker, method_name)(*args, **kwargs))
            except Exception:
                reply = ("error", traceback.format_exc())
            # plain pickle: the tensors travel as bytes, not as shared memory owned by this process
            connection.send_bytes(pickle.dumps(reply))
    finally:
        dist.destroy_process_group()


def _receive(connection, rank, timeout_s):
    return _raise_failures([_reply(connection, rank, timeout_s)])[0]


def _reply(connection, rank, timeout_s):
    if not connection.poll(timeout_s):
        return "error", f"worker rank {rank} did not answer within {timeout_s} s"
    try:
        return pickle.loads(connection.recv_bytes())
    except EOFError:
        return "error", f"worker rank {rank} exited without answering"


def _raise_failures(replies):
    """The value of every rank's reply; all ranks' failures in one error (one rank's failure breaks the other)."""
    failures = [f"rank {rank}:\n{value}" for rank, (status, value) in enumerate(replies) if status != "ok"]
    if failures:
        raise RuntimeError("worker failure\n" + "\n".join(failures))
    return [value for _, value in replies]


def _process_worker_group_class():
    from verl.single_controller.base.decorator import _padding_size_key
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.workers.engine_workers import TrainingWorker

    class ProcessWorkerGroup(WorkerGroup):
        """verl's WorkerGroup whose workers are local processes (a pipe each) instead of Ray actors."""

        def __init__(self, connections):
            super().__init__(resource_pool=None)
            self._workers = list(connections)
            self.bound_methods = self._bind_worker_method(TrainingWorker, self._bound_method)

        @staticmethod
        def _bound_method(group, method_name, dispatch_fn, collect_fn, execute_fn, blocking):
            # what verl's Ray func_generator does, minus ray.get: dispatch, run on every rank, collect
            def call(*args, **kwargs):
                args, kwargs = dispatch_fn(group, *args, **kwargs)
                padding = kwargs.pop(_padding_size_key, 0)
                assert padding == 0, f"{method_name}: unexpected dispatch padding {padding}"
                return collect_fn(group, execute_fn(method_name, *args, **kwargs))

            return call

        def execute_all(self, method_name, *args, **kwargs):
            for rank, connection in enumerate(self._workers):
                rank_args = [arg[rank] for arg in args]
                rank_kwargs = {key: value[rank] for key, value in kwargs.items()}
                connection.send_bytes(pickle.dumps((method_name, rank_args, rank_kwargs)))
            return _raise_failures([_reply(c, rank, CALL_TIMEOUT_S) for rank, c in enumerate(self._workers)])

        def execute_rank_zero(self, method_name, *args, **kwargs):
            # verl binds Execute.RANK_ZERO methods to this name; none of them is called here
            self._workers[0].send_bytes(pickle.dumps((method_name, list(args), kwargs)))
            return _receive(self._workers[0], 0, CALL_TIMEOUT_S)

    return ProcessWorkerGroup


def _distinct_free_ports(count):
    # held open together: two groups on one port would join each other's rendezvous store
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextlib.contextmanager
def _started_processes(world_size, model_path, port):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    pipes = [context.Pipe() for _ in range(world_size)]
    processes = [
        context.Process(target=_worker_process_main, args=(rank, world_size, port, str(model_path), child), daemon=True)
        for rank, (_, child) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    connections = [parent for parent, _ in pipes]
    try:
        yield connections
    finally:
        for connection, process in zip(connections, processes):
            if process.is_alive():
                with contextlib.suppress(OSError):
                    connection.send_bytes(pickle.dumps(None))
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


@pytest.fixture(scope="module", params=FAMILIES)
def model_path(request, tiny_vlm_of):
    return tiny_vlm_of(request.param)


@pytest.fixture(scope="module")
def worker_groups(model_path):
    """{1: DP=1 group, 2: DP=2 group}; all three processes start together to overlap their imports."""
    from verl.utils import ray_utils

    tiny_vlm_path = model_path

    group_class = _process_worker_group_class()
    single_port, pair_port = _distinct_free_ports(2)
    with (
        pytest.MonkeyPatch.context() as patch,
        _started_processes(1, tiny_vlm_path, single_port) as single,
        _started_processes(2, tiny_vlm_path, pair_port) as pair,
    ):
        # ray.put of each rank's chunk cannot happen without Ray: the chunk itself is sent instead
        patch.setattr(ray_utils, "parallel_put", lambda data_list, max_workers=None: list(data_list))
        for rank, connection in [(0, single[0])] + list(enumerate(pair)):
            _receive(connection, rank, STARTUP_TIMEOUT_S)
        yield {1: group_class(single), 2: group_class(pair)}


@pytest.fixture(scope="module")
def samples(model_path, original_qwen_methods):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    return grouped_samples(processor, model.eval())


def _balanced_order(samples, dp_size):
    """The row order the trainer's ``_balance_batch`` gives verl's dispatch (which then cuts it in dp_size)."""
    from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

    workload = calculate_workload(torch.tensor([len(s.input_ids) for s in samples], dtype=torch.int64))
    partitions = get_seqlen_balanced_partitions(workload, k_partitions=dp_size, equal_size=True)
    return [i for partition in partitions for i in partition]


def _infer(group, samples, order, **settings):
    """Focus of every sample (in the samples' own order) from one ``infer_batch`` call of the group,
    and the number of micro-batches each DP rank ran (verl all-gathers the per-micro-batch metrics)."""
    batch = build_batch(
        [samples[i] for i in order], **{CAPTURE_FOCUS_FLAG: True, "use_dynamic_bsz": False, **settings}
    )
    output = group.infer_batch(batch)
    focus = output[FOCUS_OUTPUT_KEY]
    assert focus.is_nested and focus.size(0) == len(samples)
    by_row = {row: focus[position] for position, row in enumerate(order)}
    micro_batches_per_rank = [len(rank_seconds) for rank_seconds in output["metrics"][FOCUS_TIME_KEY]]
    return [by_row[i] for i in range(len(samples))], micro_batches_per_rank


def _response_focus(focus_rows, samples):
    from verl_vgpo.wiring.trainer import response_aligned_focus

    focus = torch.nested.as_nested_tensor(focus_rows, layout=torch.jagged)
    response_mask = torch.nested.as_nested_tensor(
        [torch.ones(s.response_length, dtype=torch.int64) for s in samples], layout=torch.jagged
    )
    return response_aligned_focus(focus, response_mask)


def _response_mask_and_rewards(samples):
    width = max(s.response_length for s in samples)
    mask = torch.zeros(len(samples), width)
    rewards = torch.zeros(len(samples), width)
    for i, sample in enumerate(samples):
        mask[i, : sample.response_length] = 1
        rewards[i, sample.response_length - 1] = REWARDS[i]
    return mask, rewards


def _vgpo_advantages(response_focus, samples, rows=None):
    import numpy as np

    from verl_vgpo.advantage import compute_vgpo_advantage

    mask, rewards = _response_mask_and_rewards(samples)
    rows = list(range(len(samples))) if rows is None else rows
    advantages, _ = compute_vgpo_advantage(
        rewards[rows], mask[rows], np.array([UIDS[i] for i in rows], dtype=object), response_focus[rows]
    )
    return advantages


def _assert_rows_close(actual_rows, expected_rows, samples, atol, what):
    for actual, expected, sample in zip(actual_rows, expected_rows, samples):
        assert actual.shape == expected.shape, f"{what}, {sample.name}: shape {actual.shape} != {expected.shape}"
        assert torch.equal(actual.isnan(), expected.isnan()), f"{what}, {sample.name}: NaN pattern differs"
        finite = ~expected.isnan()
        error = (actual[finite].double() - expected[finite].double()).abs().max().item() if finite.any() else 0.0
        assert error <= atol, f"{what}, {sample.name}: max abs focus difference {error:.3g} > {atol}"


def test_verl_dispatch_splits_the_batch_over_two_ranks(worker_groups, samples):
    pair = worker_groups[2]
    assert "infer_batch" in pair.bound_methods and "_query_dispatch_info" in pair.bound_methods
    _, micro_batches_per_rank = _infer(pair, samples, range(len(samples)), micro_batch_size_per_gpu=2)
    assert micro_batches_per_rank == [2, 2]  # each rank's engine ran its 4 rows, 2 per micro-batch
    # what each worker registered for the "train" mesh and verl's dispatch used: one dp rank per process
    assert pair._dispatch_info["train"] == [0, 1]
    assert pair._collect_info["train"] == [True, True]


@pytest.mark.parametrize(
    "layout",
    [
        # rows in their own order, 2 per micro-batch: each DP=2 micro-batch is one of the DP=1 micro-batches
        {"balanced": False, "micro_batch_size_per_gpu": 2},
        # the trainer's balancing moves rows (and group members) between the ranks
        {"balanced": True, "micro_batch_size_per_gpu": 1},
    ],
    ids=["contiguous_mbs2", "balanced_mbs1"],
)
def test_focus_and_advantages_with_dp2_equal_dp1(worker_groups, samples, layout):
    micro_batch_size = layout["micro_batch_size_per_gpu"]
    order = _balanced_order(samples, dp_size=2) if layout["balanced"] else list(range(len(samples)))
    if layout["balanced"]:
        assert order != sorted(order)
    single, single_micro_batches = _infer(
        worker_groups[1], samples, range(len(samples)), micro_batch_size_per_gpu=micro_batch_size
    )
    split, split_micro_batches = _infer(worker_groups[2], samples, order, micro_batch_size_per_gpu=micro_batch_size)
    assert single_micro_batches == [len(samples) // micro_batch_size]
    assert split_micro_batches == [len(samples) // (2 * micro_batch_size)] * 2
    _assert_rows_close(split, single, samples, 1e-6, "DP=2 vs DP=1")
    names = {s.name: row for s, row in zip(samples, single)}
    assert names["text_only"].isnan().all() and names["text_only_b"].isnan().all()
    assert all(torch.isfinite(names[n]).all() for n in ("image", "two_images", "video_only", "image_b"))

    single_focus, split_focus = _response_focus(single, samples), _response_focus(split, samples)
    single_advantages = _vgpo_advantages(single_focus, samples)
    split_advantages = _vgpo_advantages(split_focus, samples)
    assert torch.equal(split_advantages, single_advantages)

    # the check has teeth: focus shapes these advantages, and a normalisation over one rank's rows only
    # (what a per-rank estimator would do) gives different ones
    constant_focus = torch.where(single_focus.isnan(), single_focus, torch.zeros_like(single_focus))
    assert not torch.allclose(_vgpo_advantages(constant_focus, samples), single_advantages, atol=1e-4)
    half = len(samples) // 2
    per_rank = torch.cat(
        [_vgpo_advantages(split_focus, samples, order[:half]), _vgpo_advantages(split_focus, samples, order[half:])]
    )
    assert not torch.allclose(per_rank, single_advantages[order], atol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [{"micro_batch_size_per_gpu": 1}, {"use_dynamic_bsz": True, "max_token_len_per_gpu": 60}],
    ids=["mbs1", "dynamic_bsz"],
)
def test_dp2_focus_is_independent_of_micro_batching_and_row_order(worker_groups, samples, settings):
    single, _ = _infer(worker_groups[1], samples, range(len(samples)), micro_batch_size_per_gpu=2)
    reversed_order = list(reversed(range(len(samples))))
    split, split_micro_batches = _infer(worker_groups[2], samples, reversed_order, **settings)
    # micro-batching differs from DP=1's 2 rows per micro-batch: 1 row each, or a 60-token budget that
    # splits each rank's 4 rows into 3 or 4 micro-batches (Qwen3 prompts have no system turn: shorter)
    if settings.get("use_dynamic_bsz"):
        assert all(count >= 3 for count in split_micro_batches) and len(split_micro_batches) == 2
    else:
        assert split_micro_batches == [len(samples) // 2] * 2
    _assert_rows_close(split, single, samples, 1e-6, f"DP=2 with {settings} vs DP=1")
    single_advantages = _vgpo_advantages(_response_focus(single, samples), samples)
    split_advantages = _vgpo_advantages(_response_focus(split, samples), samples)
    # different micro-batches pad differently: float noise only (4.8e-7 measured), so a small tolerance here
    torch.testing.assert_close(split_advantages, single_advantages, rtol=0, atol=5e-6)


def test_mixed_image_video_micro_batches_on_one_rank(worker_groups, samples):
    # rows 0-3 go to rank 0, 4-7 to rank 1, 2 per micro-batch: rank 0 runs (image, video) twice, rank 1
    # (two images, two images) and (text, text): verl alone runs the tower 2 vs 1 times per micro-batch
    order = [0, 3, 4, 7, 2, 6, 1, 5]
    kinds = [samples[i].name.removesuffix("_b") for i in order]
    assert kinds[:4] == ["image", "video_only"] * 2 and "video_only" not in kinds[4:]
    single, _ = _infer(worker_groups[1], samples, range(len(samples)), micro_batch_size_per_gpu=2)
    split, split_micro_batches = _infer(worker_groups[2], samples, order, micro_batch_size_per_gpu=2)
    assert split_micro_batches == [2, 2]
    _assert_rows_close(split, single, samples, 1e-6, "DP=2 with mixed micro-batches on one rank vs DP=1")
