"""Fakes for driving verl's real V1 trainer classes on CPU without Ray.

What is faked and why (everything else is verl's real code):
* TransferQueue: the real client needs Ray actors and ZMQ storage servers. ``FakeTransferQueue`` keeps
  per-key fields in a dict and returns them the way the real ``kv_batch_get`` does: 1-D per-sample
  tensors as jagged nested tensors, strings as a non-tensor stack, and fields that no requested key
  has are silently left out (``BatchMeta.select_fields`` drops them), which is exactly why the trainer
  layer must check for the focus field itself; ``kv_batch_put`` returns the stored tags.
  test_fake_transfer_queue_on_cpu.py checks these behaviours against the real client.
* The actor worker group: the real one is a set of Ray actors running the FSDP engine. ``FakeActorWorkerGroup``
  records the ``extra_info`` of every call and writes what the engine writes into TQ: full-sequence
  ``log_probs`` / ``entropy`` and, when asked by the capture flag, the response-only focus field and the
  per-row capture seconds (two fake micro-batches, each one's time split over its rows by token count).
* Replay buffer sampling, reward loop and checkpoint manager: they drive rollout servers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorStack

from verl_vgpo.wiring.engine import seconds_per_row
from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY, FOCUS_SECONDS_KEY


class FakeTransferQueue:
    """Dict-backed stand-in for ``transfer_queue.kv_batch_get`` / ``kv_batch_put`` / ``kv_clear``."""

    def __init__(self):
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.tags: dict[tuple[str, str], dict] = {}
        self.get_calls: list[list[str]] = []

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None, data_parser=None):
        from transfer_queue import KVBatchMeta

        if fields is not None:
            if fields.batch_size[0] != len(keys):
                raise ValueError(f"fields batch size {fields.batch_size} != {len(keys)} keys")
            for name in list(fields.keys()):
                value = fields[name]
                per_row = value.unbind(0) if isinstance(value, torch.Tensor) else list(value)
                for key, row in zip(keys, per_row, strict=True):
                    self.rows.setdefault((partition_id, key), {})[name] = row
        if tags is not None:
            for key, tag in zip(keys, tags, strict=True):
                self.tags[(partition_id, key)] = copy.deepcopy(tag)
        names = sorted({n for key in keys for n in self.rows.get((partition_id, key), {})})
        # like the real client: the returned meta carries the tags stored for the keys (custom_meta)
        return KVBatchMeta(
            keys=list(keys),
            tags=[copy.deepcopy(self.tags.get((partition_id, key), {})) for key in keys],
            partition_id=partition_id,
            fields=names,
        )

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        keys = [keys] if isinstance(keys, str) else list(keys)
        rows = [self.rows[(partition_id, key)] for key in keys]
        if select_fields is None:
            names = sorted({n for row in rows for n in row})
        else:
            names = [select_fields] if isinstance(select_fields, str) else list(select_fields)
        self.get_calls.append(list(names))
        out = {}
        for name in names:
            present = [name in row for row in rows]
            if not any(present):
                continue  # the real client drops fields that no requested key has
            if not all(present):
                raise ValueError("Some fields are not ready in all the requested keys!")
            values = [row[name] for row in rows]
            if isinstance(values[0], torch.Tensor) and values[0].dim() >= 1:
                out[name] = torch.nested.as_nested_tensor(list(values), layout=torch.jagged)
            elif isinstance(values[0], torch.Tensor):
                out[name] = torch.stack(values)
            else:
                out[name] = NonTensorStack.from_list(list(values))
        return TensorDict(out, batch_size=len(keys))

    def kv_clear(self, keys, partition_id):
        for key in keys:
            self.rows.pop((partition_id, key), None)
            self.tags.pop((partition_id, key), None)

    def field(self, key: str, name: str, partition_id: str = "train"):
        return self.rows[(partition_id, key)][name]


@dataclass
class Sequence:
    """One rollout stored in the fake TQ."""

    key: str
    uid: str
    prompt_len: int
    response_len: int
    reward: float
    has_image: bool = True


def focus_value(row: int, position: int) -> float:
    """Cosine-like focus that changes with the position, so a shift by one changes the weights."""
    return math.cos(0.9 * position + 1.7 * row)


class FakeActorWorkerGroup:
    """Records every call's ``extra_info`` and writes the engine's outputs to the fake TQ.

    ``focus_mode`` says what the fake engine writes when the capture flag is set:
    "response_only" (the contract: one value per response token, taken at the token's own position of
    the full sequence), "none" (the plugin is not loaded in the worker), "full" (a wrong layout: every
    position of the sequence).
    """

    def __init__(self, fake_tq: FakeTransferQueue, row_of_key: dict[str, int], images: dict[str, bool]):
        self.fake_tq = fake_tq
        self.row_of_key = row_of_key
        self.images = images
        self.focus_mode = "response_only"
        self.focus_seconds_per_micro_batch = (0.25, 0.5)
        self.calls: list[tuple[str, dict]] = []
        self._dispatch_info = {"actor": [0]}  # one data-parallel rank

    def _record(self, name, batch):
        self.calls.append((name, copy.deepcopy(dict(batch.extra_info))))

    def compute_log_prob(self, batch):
        self._record("compute_log_prob", batch)
        data = self.fake_tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["input_ids"])
        lengths = data["input_ids"].offsets().diff().tolist()
        out = {
            "log_probs": [-0.01 * torch.arange(n, dtype=torch.float32) for n in lengths],
            "entropy": [torch.full((n,), 0.5) for n in lengths],
        }
        if batch.extra_info.get(CAPTURE_FOCUS_FLAG) and self.focus_mode != "none":
            focus = []
            for key, n in zip(batch.keys, lengths, strict=True):
                if not self.images.get(key, False):  # verl's synthetic padding rows carry no image either
                    values = torch.full((n,), float("nan"))
                else:
                    row = self.row_of_key[key]
                    values = torch.tensor([focus_value(row, p) for p in range(n)], dtype=torch.float32)
                if self.focus_mode == "response_only":
                    response_len = int(self.fake_tq.field(key, "response_mask").numel())
                    values = values[n - response_len :]
                focus.append(values)
            out[FOCUS_OUTPUT_KEY] = focus
            # the engine's per-row seconds: rows split into len(focus_seconds_per_micro_batch) micro-batches
            cu_seqlens = torch.tensor([0, *lengths]).cumsum(0)
            bounds = np.linspace(0, len(lengths), len(self.focus_seconds_per_micro_batch) + 1).astype(int)
            out[FOCUS_SECONDS_KEY] = [
                row
                for seconds, lo, hi in zip(self.focus_seconds_per_micro_batch, bounds[:-1], bounds[1:])
                for row in seconds_per_row(seconds, cu_seqlens[lo : hi + 1] - cu_seqlens[lo]).unbind()
            ]
        fields = TensorDict(
            {name: torch.nested.as_nested_tensor(v, layout=torch.jagged) for name, v in out.items()},
            batch_size=len(batch),
        )
        return self.fake_tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)

    def update_actor(self, batch):
        self._record("update_actor", batch)
        return {"metrics": {"mfu": [0.5], "pg_loss": [0.1, 0.3]}}

    # separate_async keeps the stable old policy on CPU between mini-batches
    def save_model_to_cpu(self, slot):
        self.calls.append((f"save_model_to_cpu({slot})", {}))

    def restore_model_from_cpu(self, slot):
        self.calls.append((f"restore_model_from_cpu({slot})", {}))

    def clear_cpu_model(self, slot):
        self.calls.append((f"clear_cpu_model({slot})", {}))

    def names(self):
        return [name for name, _ in self.calls]


DEFAULT_SEQUENCES = [
    # two prompts, three rollouts each; different prompt and response lengths so every row has its own
    # response window; prompt "q1" has one rollout without an image (no focus signal)
    Sequence("q0_0_0", "q0", prompt_len=5, response_len=4, reward=1.0),
    Sequence("q0_1_0", "q0", prompt_len=5, response_len=7, reward=0.0),
    Sequence("q0_2_0", "q0", prompt_len=5, response_len=2, reward=1.0),
    Sequence("q1_0_0", "q1", prompt_len=3, response_len=6, reward=0.0),
    Sequence("q1_1_0", "q1", prompt_len=3, response_len=3, reward=1.0),
    Sequence("q1_2_0", "q1", prompt_len=3, response_len=5, reward=0.5, has_image=False),
]


@dataclass
class TrainerRig:
    """A real verl trainer object wired to the fakes."""

    trainer: Any
    fake_tq: FakeTransferQueue
    workers: FakeActorWorkerGroup
    sequences: list[Sequence]
    batch_factory: Callable[[], Any] = field(default=None)


def fill_fake_tq(fake_tq: FakeTransferQueue, sequences: list[Sequence], partition_id: str = "train"):
    from transfer_queue import KVBatchMeta

    for s in sequences:
        rewards = torch.zeros(s.response_len)
        rewards[-1] = s.reward
        fake_tq.rows[(partition_id, s.key)] = {
            "uid": s.uid,
            "input_ids": torch.arange(100, 100 + s.prompt_len + s.response_len, dtype=torch.int64),
            "prompts": torch.arange(100, 100 + s.prompt_len, dtype=torch.int64),
            "responses": torch.arange(100 + s.prompt_len, 100 + s.prompt_len + s.response_len, dtype=torch.int64),
            "response_mask": torch.ones(s.response_len, dtype=torch.int64),
            "rm_scores": rewards,
            "rollout_log_probs": torch.full((s.response_len,), -0.05),  # the rollout's own log-probs
        }
    tags = [
        {"prompt_len": s.prompt_len, "response_len": s.response_len, "seq_len": s.prompt_len + s.response_len}
        for s in sequences
    ]
    for s, tag in zip(sequences, tags):
        fake_tq.tags[(partition_id, s.key)] = dict(tag)
    return KVBatchMeta(keys=[s.key for s in sequences], tags=tags, partition_id=partition_id)


class RewardsAlreadyComputed:
    reward_loop_worker_handles = ["reward worker"]  # non-None: rewards were computed during rollout


class FakeCheckpointManager:
    def __init__(self):
        self.calls = []

    def sleep_replicas(self):
        self.calls.append("sleep_replicas")


class FakeTokenizer:
    eos_token_id = 2
    pad_token_id = 0


def padded(nested: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    return nested.to_padded_tensor(padding=fill)


def stored_padded(fake_tq: FakeTransferQueue, keys: list[str], name: str) -> torch.Tensor:
    return padded(fake_tq.kv_batch_get(keys=keys, partition_id="train", select_fields=[name])[name])


def uid_array(sequences: list[Sequence]) -> np.ndarray:
    return np.array([s.uid for s in sequences], dtype=object)
