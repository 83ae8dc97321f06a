"""``actor_rollout_ref.rollout.name=hf_cpu``: a CPU rollout for verl's async server path, built on HF ``generate``.

verl 0.9 only registers async rollout servers (vllm / sglang / trtllm); none of them runs on a CPU-only
machine. This module plugs a small HF-transformers server into the same two registries those use, so
``python -m verl.trainer.main_ppo`` runs unchanged (agent loop, load balancer, checkpoint manager):

* ``HFCpuReplica`` (verl ``RolloutReplicaRegistry``, used by the trainer's ``LLMServerManager``): in
  hybrid mode it starts one ``HFCpuRolloutServer`` Ray actor per replica, next to the training workers,
  exactly where vLLM would start its HTTP server actor.
* ``HFCpuRolloutServer``: holds its own copy of the model and answers the token-in/token-out
  ``generate`` calls of verl's agent loop (``LLMServerClient.generate``), plus the control calls
  (sleep / wake_up / clear_kv_cache / set_global_steps / abort ...) the trainer makes on vLLM servers.
* ``HFCpuServerAdapter`` (verl ``_ROLLOUT_REGISTRY[("hf_cpu", "async")]``, built inside each training
  worker): receives the actor's CURRENT weights from ``ActorRolloutRefWorker.update_weights`` (the
  ``naive`` checkpoint engine path verl uses for vLLM every step) and ships them to the server.

Only what verl cannot do on CPU is new here; every other part of the step is verl's own code. The
generation itself (inputs, special-token rule, the ``generate`` call) is :mod:`verl_vgpo.cpu.generation`,
shared with ``vgpo-evaluate`` and ``vgpo-analyze``; this module is the Ray / verl side only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Generator, Optional

ROLLOUT_NAME = "hf_cpu"


def register_hf_cpu_rollout() -> None:
    """Register ``hf_cpu`` in verl's rollout registries (idempotent).

    Defined before this module imports verl: a process whose first import is this module (the server
    actor unpickling its class) runs verl's plugin loader from inside the ``import verl`` below, and the
    loader calls this function on the partially initialised module. The classes are looked up by name
    only when verl asks for them.
    """
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFCpuServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: sys.modules[__name__].HFCpuReplica)


import ray  # noqa: E402
import torch  # noqa: E402

from verl.workers.rollout.base import BaseRollout  # noqa: E402
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput  # noqa: E402
from verl_vgpo.cpu import generation  # noqa: E402
from verl_vgpo.cpu.generation import GenerationError  # noqa: E402

logger = logging.getLogger(__name__)

SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_"


class HFCpuRolloutError(GenerationError):
    """A request or configuration the hf_cpu rollout cannot serve (raised with the reason)."""


def resolve_max_new_tokens(sampling_params: dict, prompt_len: int, rollout_config) -> int:
    """The same budget rule as verl's vLLM server: explicit max_tokens, else response_length capped by
    the prompt+response budget, clamped to [1, room left in max_model_len]."""
    max_model_len = rollout_config.max_model_len or (rollout_config.prompt_length + rollout_config.response_length)
    room = max_model_len - prompt_len
    if room < 1:
        raise HFCpuRolloutError(
            f"prompt of {prompt_len} tokens leaves no room to generate within max_model_len={max_model_len}"
        )
    if "max_tokens" in sampling_params:
        budget = int(sampling_params["max_tokens"])
    elif "max_new_tokens" in sampling_params:
        budget = int(sampling_params["max_new_tokens"])
    else:
        budget = min(
            rollout_config.response_length,
            rollout_config.prompt_length + rollout_config.response_length - prompt_len,
        )
    return max(1, min(budget, room))


# --------------------------------------------------------------------------------------------------
# The server actor
# --------------------------------------------------------------------------------------------------


def _model_path(model_config) -> str:
    path = model_config.get("local_path", None) if hasattr(model_config, "get") else getattr(model_config, "local_path", None)
    path = path or (model_config.get("path") if hasattr(model_config, "get") else model_config.path)
    if not path or not os.path.isdir(path):
        raise HFCpuRolloutError(
            f"hf_cpu rollout needs a local model folder in actor_rollout_ref.model.path; got {path!r} "
            "(nothing is downloaded at run time)"
        )
    return path


@dataclass(eq=False)  # identity: requests are found and removed in the queue by object
class _Request:
    """One validated request waiting for a batch (built in ``generate``, answered by ``_serve``)."""

    inputs: dict[str, torch.Tensor]  # single-row model inputs (generation.inputs_from_ids)
    max_new_tokens: int
    settings: tuple[float, float, int, bool]  # temperature, top_p, top_k, logprobs wanted: one batch shares them
    barrier: int  # weight updates requested before this request arrived
    future: asyncio.Future


class HFCpuRolloutServer:
    """Ray actor answering verl's token-in/token-out requests with HF ``generate`` on CPU.

    Concurrent requests are batched: verl's agent loop sends all of a step's requests at once, and one
    ``generate`` call of B rows costs little more than one of a single row on CPU. Each request is
    validated on arrival (a bad one fails alone, before any batch), then queued. Whoever holds the server
    lock (an asyncio lock around a worker thread) serves what is queued when the previous batch is done:
    no collection delay, so the first request of a step may run alone and the rest, which arrived
    meanwhile, run together. A batch holds up to ``max_batch_size`` rows (default
    ``rollout.max_num_seqs``, vLLM's cap on the sequences of one engine step) of one sampling setting
    (temperature, top_p, top_k, log-probs wanted); ``max_new_tokens`` may differ per row (generated to
    the group's largest, each row cut at its own). Rows are left-padded (:func:`generation.batch_inputs`),
    so each row's positions, tokens under greedy decoding and log-probs are those of the row alone, up
    to float rounding; image and text-only rows share a batch.

    A weight update waits for the running batch; requests that arrive after it was called are only
    batched after it, and see the new weights. ``global_steps`` (the weight version the batch ran with)
    is returned with every response, as vLLM's server does.

    ``rollout.full_determinism`` serves one request at a time (``max_batch_size`` 1): the RNG is seeded
    once per server and sampling draws from it for every row of a batch, so a row's tokens depend on which
    rows share its batch, and batch boundaries depend on arrival timing. One at a time, a rerun with the
    same request order repeats the rollouts.
    """

    def __init__(
        self,
        config,
        model_config,
        replica_rank: int = 0,
        num_threads: Optional[int] = None,
        max_batch_size: Optional[int] = None,
    ):
        from verl.utils.config import omega_conf_to_dataclass

        self.config = omega_conf_to_dataclass(config)
        self.replica_rank = replica_rank
        self.global_steps: Optional[int] = None
        self.weight_updates = 0
        if self.config.full_determinism:
            max_batch_size = 1
        elif max_batch_size is None:
            max_batch_size = self.config.max_num_seqs
        if int(max_batch_size) < 1:
            raise HFCpuRolloutError(f"max_batch_size (rollout.max_num_seqs) must be >= 1, got {max_batch_size}")
        self.max_batch_size = int(max_batch_size)
        self.batch_sizes: list[int] = []  # rows of every generate call so far (serving statistics)
        self.image_cache = generation.ImageInputsCache()  # the n samples of a prompt share its image
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._lock: Optional[asyncio.Lock] = None
        self._queue: list[_Request] = []
        self._barriers_requested = 0  # update_weights calls so far
        self._barriers_passed = 0  # of those, finished (applied or failed)
        self._accepting = True
        self._seeded = False  # full_determinism: the first request seeds the RNG
        if num_threads is not None:  # the actor shares the cores with its training worker
            torch.set_num_threads(max(1, int(num_threads)))

        loaded = generation.load_model(_model_path(model_config), device="cpu", dtype=torch.float32)
        self.model, self.tokenizer, self.processor = loaded.model, loaded.tokenizer, loaded.processor
        self.hf_config = loaded.hf_config
        self.eos_token_ids, self.pad_token_id, self.suppress_ids = (
            loaded.eos_token_ids,
            loaded.pad_token_id,
            loaded.suppress_ids,
        )

    def _server_lock(self) -> asyncio.Lock:
        """The serving lock of the running event loop (Ray's actor loop; a test may run several loops)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._lock is not None and self._lock.locked():
                raise HFCpuRolloutError("hf_cpu server called from a second event loop while it is serving")
            self._loop, self._lock = loop, asyncio.Lock()
            self._queue = [request for request in self._queue if not request.future.done()]
        return self._lock

    # ---- generation ------------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ):
        if video_data or audio_data:
            raise HFCpuRolloutError("hf_cpu rollout serves text and image prompts only (got video/audio data)")
        if not self._accepting:
            return TokenOutput(token_ids=[], stop_reason="aborted", extra_fields={"global_steps": self.global_steps})
        prompt_ids = [int(token_id) for token_id in prompt_ids]
        params = dict(sampling_params)
        # validated here, per request: a bad request fails alone and never enters a batch
        max_new_tokens = resolve_max_new_tokens(params, len(prompt_ids), self.config)
        inputs = generation.inputs_from_ids(prompt_ids, image_data, self.processor, self.hf_config,
                                            image_cache=self.image_cache)
        settings = (
            float(params.get("temperature", 1.0)),
            float(params.get("top_p", 1.0)),
            int(params.get("top_k", -1)),
            bool(params.get("logprobs", False)),
        )
        lock = self._server_lock()
        request = _Request(inputs, max_new_tokens, settings, self._barriers_requested,
                           asyncio.get_running_loop().create_future())
        self._queue.append(request)
        try:
            async with lock:
                if not request.future.done():  # not served by an earlier batch: serve a batch holding it
                    await self._serve(request)
        finally:
            if request in self._queue:  # cancelled while waiting
                self._queue.remove(request)
        return request.future.result()

    def _take_batch(self, request: _Request) -> list[_Request]:
        """Remove and return ``request`` and the queued requests that may share its ``generate`` call:
        same sampling settings, not queued behind a pending weight update, at most max_batch_size rows."""
        batch = []
        for queued in self._queue:
            if len(batch) == self.max_batch_size:
                break
            if queued is request or (queued.settings == request.settings and queued.barrier <= self._barriers_passed
                                     and not queued.future.done()):
                batch.append(queued)
        if request not in batch:  # the queue holds max_batch_size earlier rows of this setting
            batch[-1] = request
        for queued in batch:
            self._queue.remove(queued)
        return batch

    async def _serve(self, request: _Request) -> None:
        """Run one batch holding ``request`` (under the server lock) and answer every request in it."""
        batch = self._take_batch(request)
        temperature, top_p, top_k, want_log_probs = request.settings
        # full determinism: the RNG is seeded once per server, like vLLM's engine seed, so the n rollouts of
        # a prompt still differ and a rerun with the same request order repeats them (seeding every request
        # made all n rollouts of a prompt identical)
        seed = None
        if self.config.full_determinism and not self._seeded:
            seed, self._seeded = self.config.seed + self.replica_rank, True
        global_steps = self.global_steps
        self.batch_sizes.append(len(batch))
        try:
            result = await asyncio.to_thread(
                generation.generate,
                self.model,
                generation.batch_inputs([queued.inputs for queued in batch], self.pad_token_id),
                max_new_tokens=[queued.max_new_tokens for queued in batch],
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                suppress_ids=self.suppress_ids,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                want_log_probs=want_log_probs,
                seed=seed,
            )
        except BaseException as error:  # the whole call failed: every request of the batch gets the error
            failure = error if isinstance(error, Exception) else HFCpuRolloutError(f"batch interrupted: {error!r}")
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(failure)
            if failure is not error:  # cancelled / interrupted: propagate; errors reach every caller via its future
                raise
            return
        for row, queued in enumerate(batch):
            if queued.future.done():  # its caller was cancelled
                continue
            queued.future.set_result(
                TokenOutput(
                    token_ids=result.tokens[row],
                    log_probs=result.log_probs[row] if result.log_probs is not None else None,
                    stop_reason=result.stop_reasons[row],
                    extra_fields={"global_steps": global_steps},
                )
            )

    # ---- weights ---------------------------------------------------------------------------------

    async def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None):
        """Load the actor's full weights (HF names) into the serving model; every parameter must match.

        Waits for the running batch; requests that arrive from now on are batched after the update."""
        lock = self._server_lock()
        self._barriers_requested += 1
        try:
            async with lock:
                return self._load_weights(named_tensors, global_steps)
        finally:
            self._barriers_passed += 1

    def _load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int]) -> dict:
        received = dict(named_tensors)
        state = self.model.state_dict()
        unknown = sorted(set(received) - set(state))
        if unknown:
            raise HFCpuRolloutError(
                f"weight update has {len(unknown)} names the serving model does not have, e.g. {unknown[:3]}"
            )
        # tied weights (lm_head = embed_tokens) appear once in the trainer's state dict
        tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
        missing = sorted(name for name in set(state) - set(received) if name not in tied)
        if missing:
            raise HFCpuRolloutError(
                f"weight update misses {len(missing)} parameters of the serving model, e.g. {missing[:3]}"
            )
        with torch.no_grad():
            for name, tensor in received.items():
                target = state[name]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise HFCpuRolloutError(
                        f"weight {name}: trainer shape {tuple(tensor.shape)} != rollout shape {tuple(target.shape)}"
                    )
                target.copy_(tensor.to(dtype=target.dtype))
        self.weight_updates += 1
        if global_steps is not None:
            self.global_steps = global_steps
        return {"weight_updates": self.weight_updates, "num_tensors": len(received)}

    def named_parameters_snapshot(self) -> dict[str, torch.Tensor]:
        """The serving model's current weights (for tests that check the weight sync)."""
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def get_weight_version(self) -> dict:
        return {"global_steps": self.global_steps, "weight_updates": self.weight_updates}

    # ---- control calls the trainer makes on every rollout server (vLLM semantics, nothing to free) ----

    async def wake_up(self, tags: Optional[list[str]] = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None  # HF generate keeps no cache between requests

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def wait_for_requests_to_drain(self):
        async with self._server_lock():  # FIFO: every request queued before has been served
            return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        # a running HF generate cannot be interrupted; new requests are answered "aborted" until resumed
        self._accepting = False
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str) -> dict:
        return {"aborted": False, "request_id": request_id, "error": "a queued or running hf_cpu request cannot be aborted"}

    async def resume_generation(self):
        self._accepting = True

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


# --------------------------------------------------------------------------------------------------
# verl registry classes
# --------------------------------------------------------------------------------------------------


def server_actor_name(replica_rank: int) -> str:
    return f"{SERVER_NAME_PREFIX}server_{replica_rank}_0"


def _check_single_process_rollout(config) -> None:
    sizes = {
        "tensor_model_parallel_size": config.tensor_model_parallel_size,
        "data_parallel_size": config.data_parallel_size,
        "pipeline_model_parallel_size": config.pipeline_model_parallel_size,
    }
    too_big = {key: value for key, value in sizes.items() if value != 1}
    if too_big:
        raise HFCpuRolloutError(
            f"rollout.name={ROLLOUT_NAME} runs one HF model per replica; set actor_rollout_ref.rollout.{{tp,dp,pp}} "
            f"sizes to 1 (got {too_big})"
        )


class HFCpuReplica(RolloutReplica):
    """One HF server actor per replica, started next to the hybrid (actor + rollout) workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_single_process_rollout(self.config)

    async def launch_servers(self):
        if self.rollout_mode != RolloutMode.HYBRID:
            raise HFCpuRolloutError(
                f"rollout.name={ROLLOUT_NAME} supports the hybrid (colocated trainer) mode only, "
                f"got {self.rollout_mode}; use trainer.v1.trainer_mode=sync"
            )
        if self.is_reward_model or self.is_teacher_model:
            raise HFCpuRolloutError(f"rollout.name={ROLLOUT_NAME} does not serve reward or teacher models")
        if len(self.workers) != self.world_size:
            raise HFCpuRolloutError(f"{len(self.workers)} workers for a rollout world size of {self.world_size}")
        node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        name = server_actor_name(self.replica_rank)
        server = (
            ray.remote(HFCpuRolloutServer)
            .options(
                name=name,
                num_cpus=0,  # the training worker it serves already holds the CPU slot
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank, num_threads=1)
        )
        await server.get_weight_version.remote()  # surfaces constructor errors here, not at the first request
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}://{name}"


class HFCpuServerAdapter(BaseRollout):
    """Inside each training worker: forwards the weight sync and sleep/wake calls to the server actor."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        _check_single_process_rollout(self.config)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank if replica_rank == -1 else replica_rank
        self._server = None

    def _server_handle(self):
        if self._server is None:
            name = server_actor_name(self.replica_rank)
            try:
                self._server = ray.get_actor(name)
            except ValueError as error:
                raise HFCpuRolloutError(
                    f"hf_cpu rollout server actor {name!r} is not running; it is started by verl's "
                    "LLMServerManager (HFCpuReplica.launch_servers)"
                ) from error
        return self._server

    async def resume(self, tags: list[str]):
        if self.config.free_cache_engine:
            await self._server_handle().wake_up.remote(tags=tags)

    async def release(self):
        if self.config.free_cache_engine:
            await self._server_handle().sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config=None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise HFCpuRolloutError(
                f"hf_cpu rollout takes full weights (checkpoint_engine.backend=naive), got wire_format={wire_format!r}"
            )
        if peft_config is not None:
            raise HFCpuRolloutError(
                "hf_cpu rollout cannot load LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        start = time.perf_counter()
        # iterate on every rank: DTensor.full_tensor() inside the generator is a collective
        named_tensors = [(name, tensor.detach().to("cpu").clone()) for name, tensor in weights]
        result = await self._server_handle().update_weights.remote(named_tensors, global_steps)
        logger.info(
            "hf_cpu update_weights: %d tensors to replica %d in %.3fs (step %s)",
            result["num_tensors"],
            self.replica_rank,
            time.perf_counter() - start,
            global_steps,
        )
