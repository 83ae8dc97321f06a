"""verl V1 trainer layer for ``algorithm.adv_estimator=vgpo`` (thin wiring, no algorithm here).

Why it exists: verl's V1 trainers (sync, colocate_async, separate_async) give a custom estimator only
rewards, mask, uid and config, but VGPO also needs the focus scores the actor engine captured in the
old-log-prob forward. One mixin over a few trainer methods closes that gap, wrapping ``super()`` so that
verl's own logic (KL in reward, rollout correction, TQ write-back) stays verl's:

* ``_compute_old_log_prob``: asks the workers for focus scores (``CAPTURE_FOCUS_FLAG`` and the visual
  token kinds in ``batch.extra_info``) for that pass only; the engine writes ``FOCUS_OUTPUT_KEY`` and
  the per-row capture seconds ``FOCUS_SECONDS_KEY`` to TransferQueue (TQ).
* ``_compute_advantage``: reads both fields in one TQ read (the capture time is their row sum), aligns
  the focus to the response tokens and runs verl's ``_compute_advantage`` inside
  :func:`verl_vgpo.wiring.estimator.focus_scores_for_advantage`, then adds the estimator's metrics to
  the step metrics.
* ``_log_rollout_data`` (only with ``trainer.rollout_data_dir``): verl's dump, plus
  :data:`FOCUS_DUMP_FILE` per step with each row's token ids, focus and advantages, written by verl's
  dump executor (its thread) like verl's own file.
* ``_build_replay_buffer`` (every estimator): verl's, then the poll interval
  ``trainer.v1.sampler.poll_interval`` that :mod:`.compat` adds, when set, and the generation limit
  ``algorithm.filter_groups.max_num_gen_batches`` that verl's V1 trainer ignores (:mod:`.compat`).

With any other estimator the VGPO methods delegate straight to verl. :func:`check_vgpo_trainer_config`
(settings VGPO cannot serve) runs at trainer construction and, through :mod:`.driver`, in the driver
before Ray starts. :func:`register_trainers` puts the three classes into verl's ``TRAINER_REGISTRY`` at
plugin load; verl's trainer package is imported eagerly (~0.16 s more in a process that already imported
``verl.workers.engine_workers``, as every Ray worker has).

verl surface this relies on (identical in verl 0.9.0 and 0.9.1, checked method by method):
``PPOTrainer.__init__(config)``, ``PPOTrainer._compute_old_log_prob(batch, metrics)`` (sets
``batch.extra_info``, calls ``self.actor_rollout_wg.compute_log_prob(batch)``),
``PPOTrainerSeparateAsync._compute_old_log_prob`` (calls the base one), ``PPOTrainer._compute_advantage``
(reads ``response_mask`` for ``batch.keys`` from TQ, pads it, calls ``compute_advantage`` in the same
thread for non-GRPO estimators), ``PPOTrainer._build_replay_buffer()`` (called once from ``__init__``; its
buffer reads ``poll_interval`` on every poll), ``_dump_executor`` / ``_dump_futures`` (verl 0.9.1: the
single-thread executor of the rollout dump, drained at the end of training), ``TRAINER_REGISTRY``, ``RayPPOTrainer.__init__(config, ...)``, and the
worker bridge writing every per-row model-output field of the engine to TQ.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from typing import Any, Optional

import torch
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_vgpo.wiring import compat
from verl_vgpo.wiring.estimator import ESTIMATOR_NAME, focus_scores_for_advantage
from verl_vgpo.config import SEQUENCE_RATIO_POLICY_LOSSES, VGPOConfig, VGPOConfigError, config_get
from verl_vgpo.wiring.engine import FOCUS_BACKENDS
from verl_vgpo.wiring.keys import (
    CAPTURE_FOCUS_FLAG,
    FOCUS_OUTPUT_KEY,
    FOCUS_SECONDS_KEY,
    FOCUS_VISUAL_TOKENS_KEY,
    METRIC_PREFIX,
)

logger = logging.getLogger("verl_vgpo")

# metrics this layer adds beside the estimator's (time spent on focus)
FOCUS_FETCH_TIME_METRIC = METRIC_PREFIX + "timing/focus_fetch_s"
FOCUS_CAPTURE_TIME_METRIC = METRIC_PREFIX + "timing/focus_capture_s"
NO_SIGNAL_METRIC = METRIC_PREFIX + "no_signal_fraction"

# with trainer.rollout_data_dir set, VGPO runs also write this file per step beside verl's {step}.jsonl
FOCUS_DUMP_FILE = "vgpo_focus_{step}.jsonl"

# the extra_info entries this layer sets for the old-log-prob pass and removes afterwards
_CAPTURE_KEYS = (CAPTURE_FOCUS_FLAG, FOCUS_VISUAL_TOKENS_KEY)


class MissingFocusFieldError(RuntimeError):
    """The actor workers did not write the focus field to TransferQueue."""


class NoVisualSignalError(RuntimeError):
    """The first VGPO batch holds no visual token at all (e.g. a data set without images)."""


class FocusLayoutError(ValueError):
    """The focus field does not have the layout of the sequences it belongs to."""


# --------------------------------------------------------------------------------------------------
# configuration checks (pure: take verl's full config, raise VGPOConfigError)
# --------------------------------------------------------------------------------------------------


def uses_vgpo(config: Any) -> bool:
    """Whether verl's full config selects the vgpo estimator."""
    estimator = config_get(config, "algorithm.adv_estimator")
    return str(getattr(estimator, "value", estimator)) == ESTIMATOR_NAME


def check_vgpo_trainer_config(config: Any) -> VGPOConfig:
    """Validate ``algorithm.vgpo`` and refuse settings VGPO cannot serve; returns the VGPO config.

    Needs only the config, so it also runs in the driver before Ray starts (:mod:`.driver`). Refused:
    the legacy trainer, a trainer mode without a VGPO class, rollout-correction bypass mode (no old-log-prob forward, so no focus
    scores), and sequence-ratio policy losses (there a per-token advantage weight is not the paper's
    per-token loss weight).
    """
    vgpo_config = VGPOConfig.from_algorithm_config(config_get(config, "algorithm"))

    if config_get(config, "trainer.use_v1") is False:
        raise VGPOConfigError(LEGACY_TRAINER_MESSAGE)

    mode = config_get(config, "trainer.v1.trainer_mode")
    if mode is not None and mode not in VGPO_TRAINERS:
        raise VGPOConfigError(
            f"algorithm.adv_estimator=vgpo cannot run with trainer.v1.trainer_mode={mode}: verl-vgpo adds its focus "
            f"hand-over to verl's trainer modes {', '.join(VGPO_TRAINERS)} only."
        )

    if bool(config_get(config, "algorithm.rollout_correction.bypass_mode", False)):
        raise VGPOConfigError(
            "algorithm.adv_estimator=vgpo cannot run with algorithm.rollout_correction.bypass_mode=true: bypass "
            "mode skips the old-log-prob forward pass, and that pass is where the actor captures the visual "
            "focus scores. Set algorithm.rollout_correction.bypass_mode=false (decoupled mode keeps rollout "
            "correction and recomputes old log-probs)."
        )

    strategy = config_get(config, "actor_rollout_ref.actor.strategy")
    if strategy is not None and strategy not in FOCUS_BACKENDS:
        raise VGPOConfigError(
            f"algorithm.adv_estimator=vgpo cannot run with actor_rollout_ref.actor.strategy={strategy}: verl-vgpo "
            f"captures the visual focus scores in verl's FSDP engines only ({', '.join(FOCUS_BACKENDS)}). "
            f"Use actor_rollout_ref.actor.strategy=fsdp2."
        )

    loss_mode = config_get(config, "actor_rollout_ref.actor.policy_loss.loss_mode")
    if loss_mode in SEQUENCE_RATIO_POLICY_LOSSES:
        raise VGPOConfigError(
            f"algorithm.adv_estimator=vgpo cannot run with actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: "
            f"VGPO folds per-token weights into the advantage, which equals weighting the per-token PPO loss only "
            f"for token-ratio losses; sequence-ratio losses ({', '.join(SEQUENCE_RATIO_POLICY_LOSSES)}) average the "
            f"ratio over the sequence first. Use a token-level loss such as loss_mode=vanilla."
        )
    return vgpo_config


LEGACY_TRAINER_MESSAGE = (
    "algorithm.adv_estimator=vgpo needs verl's V1 trainer (trainer.use_v1=true, the default). The legacy "
    "trainer (trainer.use_v1=false, verl.trainer.main_ppo_v0 / RayPPOTrainer) drops the engine's extra outputs, "
    "so the visual focus scores VGPO needs never reach the advantage. Set trainer.use_v1=true."
)


# --------------------------------------------------------------------------------------------------
# focus alignment (pure tensor code)
# --------------------------------------------------------------------------------------------------


def response_aligned_focus(focus: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Pad the engine's response-only focus field to the response mask that verl's ``_compute_advantage`` pads.

    Args:
        focus: jagged nested tensor (bs, response_len_i) as the engine writes it: the raw cosine of each
            response token at its own position (:func:`verl_vgpo.wiring.engine.response_focus`).
        response_mask: jagged nested tensor (bs, response_len_i) as stored in TransferQueue.

    Returns:
        (bs, max_i response_len_i) float32, aligned with ``response_mask.to_padded_tensor()``; columns past a
        row's response are NaN (the estimator reads only positions where ``response_mask`` is set).
    """
    for name, tensor in (("focus", focus), ("response_mask", response_mask)):
        if not (isinstance(tensor, torch.Tensor) and tensor.is_nested):
            raise FocusLayoutError(
                f"{name} must be a jagged nested tensor with one row per sequence, got "
                f"{type(tensor).__name__}{'' if not isinstance(tensor, torch.Tensor) else tuple(tensor.shape)}"
            )
    batch_size = focus.size(0)
    if response_mask.size(0) != batch_size:
        raise FocusLayoutError(
            f"focus has {batch_size} rows but response_mask has {response_mask.size(0)} rows for the same keys"
        )
    values = focus.values()
    if values.dim() != 1:
        raise FocusLayoutError(
            f"focus must hold one scalar per token (values of shape (total_tokens,)), got values of shape "
            f"{tuple(values.shape)}"
        )
    offsets = focus.offsets().to(torch.int64)
    lengths = offsets.diff()
    response_lengths = response_mask.offsets().diff().to(device=offsets.device, dtype=torch.int64)
    mismatch = lengths != response_lengths
    if bool(mismatch.any()):
        row = int(mismatch.nonzero()[0])
        raise FocusLayoutError(
            f"focus row {row} has {int(lengths[row])} positions but its response has {int(response_lengths[row])} "
            f"tokens: the engine writes focus over the response tokens only (a worker with another verl-vgpo "
            f"version installed?)"
        )
    width = int(response_lengths.max()) if batch_size > 0 else 0
    columns = torch.arange(width, device=offsets.device)
    inside = columns.unsqueeze(0) < response_lengths.unsqueeze(1)
    positions = (offsets[:-1].unsqueeze(1) + columns.unsqueeze(0)).masked_fill(~inside, 0)
    aligned = values.to(torch.float32)[positions]
    return aligned.masked_fill(~inside, float("nan"))


def _multi_output_keys(keys: list[str]) -> list[str]:
    """Keys of agent-loop outputs after the first of their session (``{uid}_{session}_{index}``, index > 0)."""
    extra = []
    for key in keys:
        parts = key.rsplit("_", 2)
        if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
            extra.append(key)
    return extra


def _dump_sort_key(key: str) -> tuple:
    """verl's rollout-dump order: ``{sample}_{rollout}_{output}`` keys by sample, then the two numbers."""
    parts = key.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (parts[0], int(parts[1]), int(parts[2]))
    return (key, 0, 0)


def _missing_focus_message(batch_size: int, field_name: str) -> str:
    plugins = os.environ.get("VERL_USE_EXTERNAL_PLUGINS")
    return (
        f"algorithm.adv_estimator=vgpo: TransferQueue holds no '{field_name}' field for the {batch_size} "
        f"sequences of this step, so the actor workers did not capture visual focus scores in the old-log-prob "
        f"pass. verl-vgpo must be loaded in every worker process: install the verl-vgpo package into the Python "
        f"environment of every Ray worker (every node, or the job's runtime_env), and check that "
        f"VERL_USE_EXTERNAL_PLUGINS is unset, 'auto' or lists 'vgpo' in the workers' environment "
        f"(trainer process sees {plugins!r}). A worker logs 'verl-vgpo:' errors if the plugin failed to load."
    )


def write_focus_dump(path: str, keys: list[str], step: int, prompts, responses, focus, response_mask, advantages) -> None:
    """Write :data:`FOCUS_DUMP_FILE` (see ``VGPOTrainerMixin._log_rollout_data``): one JSON row per key, in
    verl's dump order; the per-row fields are the jagged tensors read from TQ."""
    aligned = response_aligned_focus(focus, response_mask)
    lengths = response_mask.offsets().diff().tolist()
    prompts, responses, advantages = prompts.unbind(), responses.unbind(), advantages.unbind()
    order = sorted(range(len(keys)), key=lambda i: _dump_sort_key(keys[i]))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        for i in order:
            row = {
                "uid": keys[i],
                "step": step,
                "prompt_ids": prompts[i].tolist(),
                "response_ids": responses[i].tolist(),
                "focus": [None if math.isnan(v) else v for v in aligned[i, : lengths[i]].tolist()],
                "advantages": advantages[i].tolist(),
            }
            out.write(json.dumps(row, allow_nan=False) + "\n")  # a NaN advantage fails loudly


# --------------------------------------------------------------------------------------------------
# the mixin
# --------------------------------------------------------------------------------------------------


class VGPOTrainerMixin:
    """Adds VGPO's focus hand-over to a verl V1 trainer; a no-op unless adv_estimator is vgpo (except the
    replay buffer's poll interval, a compat setting for every estimator).

    Put it first in the bases so its overrides wrap the mode's own (separate_async overrides
    ``_compute_old_log_prob`` to restore the stable old policy; the flag must cover that call too).
    """

    vgpo_config: Optional[VGPOConfig] = None

    def __init__(self, config, *args, **kwargs):
        # validate before verl builds anything, so a bad setting fails at start-up, not after rollout
        self.vgpo_config = check_vgpo_trainer_config(config) if uses_vgpo(config) else None
        super().__init__(config, *args, **kwargs)

    def _build_replay_buffer(self):
        replay_buffer = super()._build_replay_buffer()
        # for every estimator (GRPO runs compared with VGPO ones wait the same way)
        compat.apply_replay_buffer_poll_interval(replay_buffer, config_get(self.config, "trainer.v1.sampler"))
        # for every estimator: a step stops after algorithm.filter_groups.max_num_gen_batches (verl ignores it)
        compat.apply_filter_groups_budget(replay_buffer, config_get(self.config, "algorithm.filter_groups"),
                                          config_get(self.config, "data.train_batch_size"))
        return replay_buffer

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.vgpo_config is None:
            return super()._compute_old_log_prob(batch, metrics)
        # extra_info reaches every worker micro-batch; the ref / actor-update passes that follow reuse
        # the batch meta, so the request is removed again whatever happens inside
        batch.extra_info[CAPTURE_FOCUS_FLAG] = True
        batch.extra_info[FOCUS_VISUAL_TOKENS_KEY] = list(self.vgpo_config.visual_tokens)
        try:
            result = super()._compute_old_log_prob(batch, metrics)
        finally:
            for key in _CAPTURE_KEYS:
                batch.extra_info.pop(key, None)
        if result is not None and result is not batch and result.extra_info:
            for key in _CAPTURE_KEYS:
                result.extra_info.pop(key, None)
        return result

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.vgpo_config is None:
            return super()._compute_advantage(batch, metrics)
        started = time.perf_counter()
        focus, capture_seconds = self._fetch_response_focus(batch)
        fetched = time.perf_counter()
        with focus_scores_for_advantage(focus) as step:
            batch = super()._compute_advantage(batch, metrics)
        self._check_visual_signal(step.metrics)
        metrics.update(step.metrics)
        metrics[FOCUS_FETCH_TIME_METRIC] = fetched - started
        metrics[FOCUS_CAPTURE_TIME_METRIC] = capture_seconds
        return batch

    def _check_visual_signal(self, step_metrics: dict) -> None:
        """Refuse a run whose first VGPO batch has no visual token at all (a data set without images).

        Text-only samples are valid (neutral weights), and a later all-text batch of a mixed data set is
        only logged; but when the very first batch carries no image or video, VGPO would silently train
        as its base estimator for the whole run.
        """
        if getattr(self, "_vgpo_visual_signal_seen", False):
            return
        if step_metrics.get(NO_SIGNAL_METRIC) == 1.0:
            raise NoVisualSignalError(
                "algorithm.adv_estimator=vgpo: no trajectory of the first training batch has an image or video token "
                f"({NO_SIGNAL_METRIC}=1.0), so VGPO would silently train as its base estimator "
                f"({self.vgpo_config.base_estimator}). Check that data.image_key names the images column of the "
                "training files, that prompts contain the <image> placeholder, that the model is a vision-language "
                "model with a processor, and that algorithm.vgpo.visual_tokens includes the modality of the data."
            )
        self._vgpo_visual_signal_seen = True

    def _log_rollout_data(self, batch: KVBatchMeta, timing_raw: dict, rollout_data_dir: str) -> None:
        """verl's rollout dump, plus (VGPO only) :data:`FOCUS_DUMP_FILE` with what VGPO trained on.

        verl's ``{step}.jsonl`` holds decoded text only, so the focus and advantage of a row cannot be tied
        back to the exact sampled tokens from it. This file holds, per row (sorted like verl's dump, by
        key): ``uid`` (the TQ key, as verl's ``uid`` column), ``step``, ``prompt_ids``, ``response_ids``,
        ``focus`` (raw cosine of every response token, null where the row has no visual signal) and
        ``advantages``. They are read from TQ in one call here (verl clears the step's rows next); the
        file is written by verl's own dump executor, beside verl's file, off the training loop.
        """
        super()._log_rollout_data(batch, timing_raw, rollout_data_dir)
        if self.vgpo_config is None:
            return
        import transfer_queue as tq

        fields = ["prompts", "responses", "response_mask", FOCUS_OUTPUT_KEY, "advantages"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        if FOCUS_OUTPUT_KEY not in data.keys():
            raise MissingFocusFieldError(_missing_focus_message(len(batch), FOCUS_OUTPUT_KEY))
        path = os.path.join(rollout_data_dir, FOCUS_DUMP_FILE.format(step=self.global_steps))
        self._dump_futures.append(self._dump_executor.submit(
            write_focus_dump, path, list(batch.keys), self.global_steps, data["prompts"], data["responses"],
            data[FOCUS_OUTPUT_KEY], data["response_mask"], data["advantages"],
        ))

    def _fetch_response_focus(self, batch: KVBatchMeta) -> tuple[torch.Tensor, float]:
        """(bs, R) focus aligned with the padded response_mask that verl's _compute_advantage builds, and
        the engines' capture seconds summed over the batch's rows (= over micro-batches and ranks)."""
        extra = _multi_output_keys(list(batch.keys))
        if extra:
            raise VGPOConfigError(
                f"algorithm.adv_estimator=vgpo does not support agent loops that emit several outputs per session "
                f"yet ({len(extra)} such outputs in this batch, e.g. key {extra[0]!r}): verl's V1 trainer groups "
                f"only the final output of each session for GRPO, which VGPO's base estimator would not reproduce."
            )
        import transfer_queue as tq  # looked up per call: verl's trainer module uses the same client

        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=[FOCUS_OUTPUT_KEY, FOCUS_SECONDS_KEY, "response_mask"],
        )
        for name in (FOCUS_OUTPUT_KEY, FOCUS_SECONDS_KEY):
            if name not in data.keys():
                raise MissingFocusFieldError(_missing_focus_message(len(batch), name))
        focus = response_aligned_focus(data[FOCUS_OUTPUT_KEY], data["response_mask"])
        seconds = data[FOCUS_SECONDS_KEY]
        return focus, float((seconds.values() if seconds.is_nested else seconds).sum())


# --------------------------------------------------------------------------------------------------
# the per-mode classes and their installation
# --------------------------------------------------------------------------------------------------


class PPOTrainerSyncWithVGPO(VGPOTrainerMixin, PPOTrainerSync):
    """verl's synchronous V1 trainer (trainer.v1.trainer_mode=sync) with VGPO's focus hand-over."""


class PPOTrainerColocateAsyncWithVGPO(VGPOTrainerMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous V1 trainer (colocate_async) with VGPO's focus hand-over."""


class PPOTrainerSeparateAsyncWithVGPO(VGPOTrainerMixin, PPOTrainerSeparateAsync):
    """verl's separated asynchronous V1 trainer (separate_async) with VGPO's focus hand-over."""


# mode -> VGPO class; the mixin comes first in the bases so it wraps the mode's own overrides, and the
# second base is the verl class it stands in for
VGPO_TRAINERS: dict[str, type] = {
    "sync": PPOTrainerSyncWithVGPO,
    "colocate_async": PPOTrainerColocateAsyncWithVGPO,
    "separate_async": PPOTrainerSeparateAsyncWithVGPO,
}


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: the legacy trainer keeps only the log-prob outputs of the engine
# ---------------------------------------------------------------------------------------------------

LEGACY_TRAINER_VERSIONS = {"verl": ">=0.9,<0.10"}


def install_legacy_trainer_guard() -> None:
    """Make verl's legacy ``RayPPOTrainer`` refuse adv_estimator=vgpo at construction (idempotent).

    For: verl 0.9.x, whose legacy trainer (``trainer.use_v1=false``) copies only log_probs, entropy,
    routed_experts and sum_pi_squared out of the engine output, so the focus field never reaches the
    advantage. ``main_ppo`` builds ``RayPPOTrainer`` in its TaskRunner before any worker starts; without
    this guard the run would fail only at the first advantage computation. A check, not a fix of verl:
    it stays on with ``VERL_VGPO_FIXES=0``.
    """
    if not compat.versions_match(**LEGACY_TRAINER_VERSIONS):
        return
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    original_init = RayPPOTrainer.__init__
    if getattr(original_init, "_vgpo_legacy_guard", False):
        return

    @functools.wraps(original_init)
    def init_refusing_vgpo(self, config, *args, **kwargs):
        if uses_vgpo(config):
            raise VGPOConfigError(LEGACY_TRAINER_MESSAGE)
        original_init(self, config, *args, **kwargs)

    init_refusing_vgpo._vgpo_legacy_guard = True  # type: ignore[attr-defined]
    RayPPOTrainer.__init__ = init_refusing_vgpo


def register_trainers() -> None:
    """Plugin-load entry: VGPO trainers into verl's TRAINER_REGISTRY, guard on the legacy trainer.

    Idempotent. ``register_trainer`` refuses to re-register a name, so the classes are assigned into
    the dict. A registry entry that is neither verl's class nor ours means another plugin replaced it;
    wrapping that silently could drop its behaviour, so this refuses with an error naming both classes.
    """
    install_legacy_trainer_guard()
    registry = trainer_base.TRAINER_REGISTRY
    for mode, vgpo_cls in VGPO_TRAINERS.items():
        verl_cls = vgpo_cls.__bases__[1]
        current = registry.get(mode)
        if current is not None and current is not verl_cls and current is not vgpo_cls:
            raise RuntimeError(
                f"verl-vgpo: TRAINER_REGISTRY[{mode!r}] holds {current.__module__}.{current.__qualname__}, not "
                f"verl's {verl_cls.__qualname__}; another plugin replaced it. VGPO's trainer layer wraps verl's "
                f"class and will not override that one."
            )
        registry[mode] = vgpo_cls
