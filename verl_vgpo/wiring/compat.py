"""Workarounds for bugs of the verl / transformers versions this package supports, in one place.

Keeping them here, each one small and dated, is what lets them be deleted: every workaround is one
section headed with the versions it is for, installs itself only when :func:`versions_match` says the
installed versions are affected, and has a test in tests/wiring/test_compat_on_cpu.py that runs verl's
ORIGINAL code and asserts that it still fails, so the test turns red once verl fixes the bug (and skips
when the installed versions are not the ones the fix is for).

Every fix is listed in :data:`FIXES`; ``VERL_VGPO_FIXES=0`` turns all of them off (stock verl, e.g. for a
baseline) while the estimator, engines and trainers still register. :func:`apply_fixes` logs one INFO
line per process naming the fixes it applied.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import torch
from packaging.specifiers import SpecifierSet

from verl_vgpo.config import config_get

logger = logging.getLogger("verl_vgpo")


FIXES_ENV = "VERL_VGPO_FIXES"


def fixes_enabled() -> bool:
    """False when ``VERL_VGPO_FIXES`` is 0 / false / no / off: every fix below stays off (stock verl)."""
    return os.environ.get(FIXES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def version_mismatch(**specifiers: str) -> str | None:
    """None when each named distribution is installed in a version its specifier allows, else the reason.

    Example: ``version_mismatch(verl=">=0.9,<0.10", transformers=">=5")``.
    """
    for distribution, specifier in specifiers.items():
        try:
            installed = version(distribution)
        except PackageNotFoundError:
            return f"{distribution} is not installed (fix is for {distribution}{specifier})"
        if not SpecifierSet(specifier).contains(installed, prereleases=True):
            return f"{distribution} {installed} is installed (fix is for {distribution}{specifier})"
    return None


def versions_match(**specifiers: str) -> bool:
    """True when each named distribution is installed in a version its specifier allows."""
    return version_mismatch(**specifiers) is None


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x with transformers >= 5: Qwen2/2.5-VL micro-batches without any image or video
# ---------------------------------------------------------------------------------------------------

QWEN2_VL_TEXT_ONLY_VERSIONS = {"verl": ">=0.9,<0.10", "transformers": ">=5"}


def fix_qwen2_vl_text_only_dummy() -> None:
    """Make verl's patched Qwen2/2.5-VL forward work for micro-batches without any image or video.

    verl 0.9.1 runs the vision tower on a dummy image when a micro-batch has no pixels (so that every
    FSDP rank uses the same parameters) and adds ``0 * image_embeds.mean()``; with transformers >= 5
    the vision tower returns an output object, and ``.mean()`` on it raises AttributeError. Text-only
    micro-batches (text prompts, the trainer's balance-padding rows) then crash. This wraps verl's
    helper: micro-batches with pixels go to it unchanged; text-only ones get the same zero-weighted
    dummy through ``unpack_visual_output``. verl's own function stays reachable as ``__wrapped__``.
    """
    if not versions_match(**QWEN2_VL_TEXT_ONLY_VERSIONS):
        return
    try:
        import verl.models.transformers.qwen2_vl as qwen2_vl
    except ImportError:
        return
    original = getattr(qwen2_vl, "_get_input_embeds", None)
    if original is None or getattr(original, "vgpo_text_only_fix", False):
        return
    from verl.utils.transformers_compat import unpack_visual_output

    @functools.wraps(original)
    def get_input_embeds(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None,
                         image_grid_thw=None, video_grid_thw=None):
        if pixel_values is not None or pixel_values_videos is not None:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos,
                            image_grid_thw, video_grid_thw)
        inputs_embeds = model.get_input_embeddings()(input_ids)
        vision = model.config.vision_config
        # smallest valid grid: one temporal patch of 2x2 merge windows (4x4 patches)
        grid = torch.tensor([[1, 2 * vision.spatial_merge_size, 2 * vision.spatial_merge_size]],
                            dtype=torch.long, device=inputs_embeds.device)
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        dummy_pixels = torch.zeros((int(grid.prod()), patch_dim), dtype=model.visual.dtype, device=inputs_embeds.device)
        dummy_embeds, _ = unpack_visual_output(model.visual(dummy_pixels, grid_thw=grid))
        inputs_embeds = inputs_embeds + 0.0 * dummy_embeds.mean().to(inputs_embeds.dtype)
        if attention_mask is not None:
            attention_mask = attention_mask.to(inputs_embeds.device)
        return inputs_embeds, attention_mask

    get_input_embeds.vgpo_text_only_fix = True
    qwen2_vl._get_input_embeds = get_input_embeds


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x with transformers >= 5: Qwen3.5 packed linear attention without flash-linear-attention
# ---------------------------------------------------------------------------------------------------

QWEN3_5_PACKED_FALLBACK_VERSIONS = {"verl": ">=0.9,<0.10", "transformers": ">=5"}


def _is_transformers_torch_fallback(kernel) -> bool:
    """True for transformers' pure-torch Gated DeltaNet kernel (used when fla is not installed)."""
    return getattr(kernel, "__name__", "") == "torch_chunk_gated_delta_rule" and str(
        getattr(kernel, "__module__", "")
    ).startswith("transformers.")


def fix_qwen3_5_packed_linear_attention_fallback() -> None:
    """Keep Qwen3.5's linear-attention state inside each packed sequence when fla is missing.

    For: verl 0.9.x (``verl.models.transformers.qwen3_5``) with transformers >= 5 (checked with 5.10).
    With ``use_remove_padding`` verl packs a micro-batch into one row and hands the sequences' offsets
    (``cu_seqlens``) to its Gated DeltaNet forward. Its ``_packed_chunk_gated_delta_rule`` passes them
    on to the kernel whenever the kernel accepts ``**kwargs``; transformers' pure-torch fallback
    (``torch_chunk_gated_delta_rule``, what runs without flash-linear-attention, e.g. on CPU) accepts
    and IGNORES them, so the recurrent state of one sequence flows into the next one's tokens
    (log-probs off by ~1e-3 on the tiny Qwen3.5 model; focus too). fla's own kernel honours
    ``cu_seqlens`` and is left alone. This wrapper runs the torch fallback once per sequence (what
    verl already does for kernels that do not accept ``cu_seqlens``) and defers to verl otherwise.
    verl's own function stays reachable as ``__wrapped__``.
    """
    if not versions_match(**QWEN3_5_PACKED_FALLBACK_VERSIONS):
        return
    try:
        import verl.models.transformers.qwen3_5 as qwen3_5
    except ImportError:
        return
    original = getattr(qwen3_5, "_packed_chunk_gated_delta_rule", None)
    if original is None or getattr(original, "vgpo_torch_fallback_fix", False):
        return
    split_packed = qwen3_5._split_packed_args

    @functools.wraps(original)
    def packed_chunk_gated_delta_rule(self, query, key, value, g, beta, cu_seqlens, cu_seqlens_cpu, cp_context=None):
        if cu_seqlens is None or cp_context is not None or not _is_transformers_torch_fallback(
            self.chunk_gated_delta_rule
        ):
            return original(self, query, key, value, g, beta, cu_seqlens, cu_seqlens_cpu, cp_context)
        outputs = []
        for q_i, k_i, v_i, g_i, beta_i in split_packed(
            cu_seqlens, (query, key, value, g, beta), cu_seqlens_cpu=cu_seqlens_cpu
        ):
            out_i, _ = self.chunk_gated_delta_rule(
                q_i, k_i, v_i, g=g_i, beta=beta_i, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=True,
            )
            outputs.append(out_i)
        return torch.cat(outputs, dim=1), None

    packed_chunk_gated_delta_rule.vgpo_torch_fallback_fix = True  # type: ignore[attr-defined]
    qwen3_5._packed_chunk_gated_delta_rule = packed_chunk_gated_delta_rule


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: Qwen2/2.5-VL, Qwen3-VL, Qwen3.5 run the vision tower once per modality of a micro-batch
# ---------------------------------------------------------------------------------------------------

ONE_VISION_PASS_VERSIONS = {"verl": ">=0.9,<0.10", "transformers": ">=5"}
# verl modules whose ``_get_input_embeds(model, input_ids, attention_mask, pixel_values,
# pixel_values_videos, image_grid_thw, video_grid_thw)`` runs ``model.visual`` per modality
ONE_VISION_PASS_MODULES = (
    "verl.models.transformers.qwen2_vl",
    "verl.models.transformers.qwen3_vl",
    "verl.models.transformers.qwen3_5",
)


def joint_visual_inputs(input_ids, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw,
                        image_token_id: int, video_token_id: int, merge_size: int):
    """Images and videos of one micro-batch as ONE list of visual items, in the order they appear.

    Args:
        input_ids: (B, L) or (1, total) token ids holding each item's pads contiguously.
        pixel_values: (image patches, D); pixel_values_videos: (video patches, D), the same D.
        image_grid_thw: (I, 3); video_grid_thw: (V, 3) patch grids.
    Returns:
        (input_ids with video pads relabelled as image pads, (patches, D) pixels of all items in
        sequence order, (I + V, 3) their grids): what the image branch of verl's embedding helper
        consumes to place every item's features on its own pads with a single vision-tower pass;
        None when the pads do not match the grids (verl's own helper then reports the mismatch).
    """
    grids = torch.cat([image_grid_thw, video_grid_thw]).to(torch.long)
    patches = grids.prod(-1)
    tokens = patches // merge_size**2
    n_images = image_grid_thw.shape[0]
    flat = input_ids.reshape(-1)
    starts = []
    for token_id, item_tokens in ((image_token_id, tokens[:n_images]), (video_token_id, tokens[n_images:])):
        positions = (flat == token_id).nonzero()[:, 0]
        if positions.numel() != int(item_tokens.sum()):
            return None
        first = item_tokens.cumsum(0) - item_tokens
        starts.append(positions[first.to(positions.device)].cpu())
    order = torch.argsort(torch.cat(starts))
    chunks = list(pixel_values.split(patches[:n_images].tolist())) + list(
        pixel_values_videos.to(pixel_values.dtype).split(patches[n_images:].tolist())
    )
    pixels = torch.cat([chunks[i] for i in order.tolist()])
    relabelled = torch.where(input_ids == video_token_id, torch.full_like(input_ids, image_token_id), input_ids)
    return relabelled, pixels, grids[order.to(grids.device)]


def fix_qwen_vl_one_vision_pass_per_micro_batch() -> None:
    """Run the vision tower once per micro-batch, also when it holds images AND videos.

    For: verl 0.9.x (``_get_input_embeds`` of ``qwen2_vl.py``, ``qwen3_vl.py``, ``qwen3_5.py``) with
    transformers >= 5. verl calls ``model.visual`` once for the images and once more for the videos of a
    micro-batch (once on a dummy image when it has neither). Under FSDP every call all-gathers the
    tower's shards, so when one rank's micro-batch holds images and a video while another rank's holds
    one modality, the ranks issue different collectives: gloo fails ("Connection reset by peer"), NCCL
    hangs. This wrapper hands verl's helper ONE list of visual items (:func:`joint_visual_inputs`:
    every item's patches in sequence order, video pads relabelled as image pads), so its image branch
    places every item's features (and Qwen3-VL's DeepStack features) on its own pads after a single
    tower pass; the tower attends within each item's grid, so the features are the same. Micro-batches
    with one modality or none go to verl unchanged. verl's own function stays reachable as
    ``__wrapped__``.
    """
    if not versions_match(**ONE_VISION_PASS_VERSIONS):
        return
    import importlib

    for module_name in ONE_VISION_PASS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(module, "_get_input_embeds", None)
        if original is None or getattr(original, "vgpo_one_vision_pass", False):
            continue
        module._get_input_embeds = _one_vision_pass(original)


def _one_vision_pass(original):
    @functools.wraps(original)
    def get_input_embeds(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None,
                         image_grid_thw=None, video_grid_thw=None):
        if pixel_values is None or pixel_values_videos is None:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos,
                            image_grid_thw, video_grid_thw)
        config = model.config
        joint = joint_visual_inputs(
            input_ids, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw,
            config.image_token_id, config.video_token_id, config.vision_config.spatial_merge_size,
        )
        if joint is None:
            return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos,
                            image_grid_thw, video_grid_thw)
        relabelled_ids, pixels, grids = joint
        return original(model, relabelled_ids, attention_mask, pixels, None, grids, None)

    get_input_embeds.vgpo_one_vision_pass = True  # type: ignore[attr-defined]
    # verl's own function, also when another workaround (the Qwen2-VL text-only one) wraps it already
    get_input_embeds.__wrapped__ = getattr(original, "__wrapped__", original)  # type: ignore[attr-defined]
    return get_input_embeds


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: packed Qwen2/2.5-VL attention returns bf16 into fp32 layers when param_dtype is fp32
# ---------------------------------------------------------------------------------------------------

QWEN2_VL_FLASH_OUTPUT_DTYPE_VERSIONS = {"verl": ">=0.9,<0.10"}


def fix_qwen2_vl_flash_attention_output_dtype() -> None:
    """Give verl's packed Qwen2/2.5-VL attention output back in the dtype of its inputs.

    For: verl 0.9.x (``verl.models.transformers.qwen2_vl._custom_flash_attention_forward``, the attention of
    ``use_remove_padding=True`` / Ulysses runs). It casts fp32 query/key/value to bf16 for flash-attn
    (``fa_peft_integration_check(..., target_dtype=torch.bfloat16)``), and flash-attn returns bf16; under
    autocast (param_dtype bf16, verl's default) that is harmless, but with
    ``fsdp_config.mixed_precision.param_dtype=fp32`` verl runs the forward without autocast and the next
    ``o_proj`` multiplies a bf16 input with fp32 weights: "expected m1 and m2 to have the same dtype" (found by
    the CPU smoke run of the 7B recipe with fp32 compute; flash-attn itself takes only fp16 / bf16, so the
    attention inputs stay rounded to bf16 as verl intends). This wrapper casts the output to the query's
    dtype; bf16 / fp16 runs see no change. verl's own function stays reachable as ``__wrapped__``.
    """
    if not versions_match(**QWEN2_VL_FLASH_OUTPUT_DTYPE_VERSIONS):
        return
    try:
        import verl.models.transformers.qwen2_vl as qwen2_vl
    except ImportError:
        return
    original = getattr(qwen2_vl, "_custom_flash_attention_forward", None)
    if original is None or getattr(original, "vgpo_output_dtype_fix", False):
        return

    @functools.wraps(original)
    def custom_flash_attention_forward(query_states, key_states, value_states, *args, **kwargs):
        output = original(query_states, key_states, value_states, *args, **kwargs)
        return output.to(query_states.dtype) if output.dtype != query_states.dtype else output

    custom_flash_attention_forward.vgpo_output_dtype_fix = True  # type: ignore[attr-defined]
    qwen2_vl._custom_flash_attention_forward = custom_flash_attention_forward


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: the V1 trainer's replay buffer polls every 2 s, with no setting to change it
# ---------------------------------------------------------------------------------------------------

REPLAY_POLL_VERSIONS = {"verl": ">=0.9,<0.10"}
# the setting this section adds (verl has none): seconds between the replay buffer's checks for finished rollouts
REPLAY_POLL_KEY = "poll_interval"


def replay_poll_interval(sampler_config: Any) -> float | None:
    """``trainer.v1.sampler.poll_interval`` checked (a finite positive number of seconds), or None when unset."""
    value = config_get(sampler_config, REPLAY_POLL_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"trainer.v1.sampler.{REPLAY_POLL_KEY} must be a positive number of seconds, got {value!r}")
    return float(value)


def apply_replay_buffer_poll_interval(replay_buffer: Any, sampler_config: Any) -> None:
    """Give verl's replay buffer the poll interval set as ``trainer.v1.sampler.poll_interval``.

    verl 0.9.1's ``ReplayBuffer`` waits ``poll_interval`` seconds (constructor default 2.0) between checks
    for finished rollouts, and ``trainer_base.PPOTrainer._build_replay_buffer`` never passes one, so every step's
    ``timing_s/gen`` is rounded up to a multiple of 2 s. On a GPU run whose rollouts take minutes that is
    noise; on the CPU demo it made every ``timing_s/gen`` 4, 6 or 8 s (median 6.0 s of an 11.6 s step; median
    5.3 s with a 0.2 s poll), so the step times the experiment compares held a generation time quantised to
    the poll. Without the setting (``+trainer.v1.sampler.poll_interval=0.2``) verl's default stays. The driver
    check (:mod:`verl_vgpo.wiring.driver`) refuses a bad value before Ray starts.

    V1 trainer only (``trainer.use_v1``; the legacy trainer has no replay buffer and ignores the setting). In
    ``separate_async`` with ``hybrid_rollout.enable_switch`` verl also uses ``poll_interval`` as the idle
    threshold of its switch adaptation (``_step_had_idle``): a shorter poll counts more steps as idle there.
    """
    value = replay_poll_interval(sampler_config)
    if value is None or not versions_match(**REPLAY_POLL_VERSIONS):
        return
    if not fixes_enabled():
        logger.warning("verl-vgpo: %s=0: trainer.v1.sampler.%s=%s is ignored (verl's default poll is kept)",
                       FIXES_ENV, REPLAY_POLL_KEY, value)
        return
    if not hasattr(replay_buffer, "poll_interval"):
        raise TypeError(f"{type(replay_buffer).__qualname__} has no poll_interval: trainer.v1.sampler."
                        f"{REPLAY_POLL_KEY} only applies to verl's ReplayBuffer and its subclasses")
    replay_buffer.poll_interval = value


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: with filter_groups on, the V1 trainer ignores max_num_gen_batches and generates forever
# ---------------------------------------------------------------------------------------------------

FILTER_GROUPS_BUDGET_VERSIONS = {"verl": ">=0.9,<0.10"}
FILTER_GROUPS_BUDGET_KEY = "max_num_gen_batches"


class FilterGroupsExhaustedError(RuntimeError):
    """Online filtering kept too few prompt groups within ``algorithm.filter_groups.max_num_gen_batches``."""


def filter_groups_budget(filter_groups_config: Any) -> int | None:
    """``algorithm.filter_groups.max_num_gen_batches`` checked: a positive int when filtering is on and the key
    is set above 0; None when filtering is off or the key is 0 or less / unset (unbounded, as verl documents)."""
    if filter_groups_config is None or not bool(config_get(filter_groups_config, "enable", False)):
        return None
    value = config_get(filter_groups_config, FILTER_GROUPS_BUDGET_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"algorithm.filter_groups.{FILTER_GROUPS_BUDGET_KEY} must be an integer "
                         f"(0 or less: unbounded, verl's meaning), got {value!r}")
    return value if value > 0 else None


class _GenerationBudget:
    """Per training step: prompts dispatched (the step's first batch plus refills) and groups evicted."""

    def __init__(self, max_batches: int, train_batch_size: int, metric: str):
        self.max_batches, self.train_batch_size, self.metric = max_batches, train_batch_size, metric
        self.needed = train_batch_size  # groups the step's sample() asks for
        self.reset()

    def reset(self) -> None:
        self.prompts, self.evicted, self.exhausted = self.train_batch_size, 0, False

    @property
    def remaining(self) -> int:
        return self.max_batches * self.train_batch_size - self.prompts

    def error(self, kept: int, needed: int) -> FilterGroupsExhaustedError:
        batches = -(-self.prompts // self.train_batch_size)
        finished = kept + self.evicted
        share = kept / finished if finished else 0.0
        return FilterGroupsExhaustedError(
            f"algorithm.filter_groups: stopped after {batches} generation batches ({self.prompts} prompts, "
            f"algorithm.filter_groups.{FILTER_GROUPS_BUDGET_KEY}={self.max_batches} of data.train_batch_size="
            f"{self.train_batch_size}): only {kept} of {finished} finished prompt groups ({share:.1%}) were kept, "
            f"{needed} needed; the {self.evicted} others scored the same '{self.metric}' on every rollout. Check the "
            f"reward function and the data's answers (a model that never writes the expected answer format, a "
            f"broken reward, a wrong data path for the answers), or raise {FILTER_GROUPS_BUDGET_KEY} (0: unbounded)."
        )


def apply_filter_groups_budget(replay_buffer: Any, filter_groups_config: Any, train_batch_size: int) -> None:
    """Make verl's replay buffer stop with :class:`FilterGroupsExhaustedError` once a training step has
    dispatched ``max_num_gen_batches`` x ``train_batch_size`` prompts without enough kept groups.

    verl 0.9.1's V1 trainer (``trainer_base.PPOTrainer._build_replay_buffer``) passes no generation limit to
    its ``ReplayBuffer``: with ``algorithm.filter_groups`` on, ``sample`` evicts every group whose rollouts
    share one metric value and asks ``refill_fn`` for new prompts, and the dataloader wraps around
    (``_fetch_one_gen_batch``), so when every group scores the same (a model that never writes the answer
    format, a broken reward, answers missing from the data) the run generates forever without an error;
    verl only logs that ``max_num_gen_batches`` is ignored. This wraps four methods of the buffer INSTANCE
    (no class is changed): ``sample`` starts each step's count at the step's first batch, ``refill_fn``
    dispatches at most the prompts left in the budget, ``_evict_terminal_groups`` counts evicted groups, and
    ``_wait_for_next_poll`` raises once the budget is spent and nothing is in flight any more (so prompts
    already generating still count). A step never stops early while the budget lasts. For every estimator.
    Counted in prompts of the ``train`` partition; validation is not filtered.
    """
    budget = filter_groups_budget(filter_groups_config)
    if budget is None or not versions_match(**FILTER_GROUPS_BUDGET_VERSIONS):
        return
    if not fixes_enabled():
        logger.warning("verl-vgpo: %s=0: algorithm.filter_groups.%s=%s is ignored (verl generates without limit)",
                       FIXES_ENV, FILTER_GROUPS_BUDGET_KEY, budget)
        return
    for name in ("sample", "refill_fn", "_evict_terminal_groups", "_wait_for_next_poll", "pending_keys"):
        if not hasattr(replay_buffer, name):
            raise TypeError(f"{type(replay_buffer).__qualname__} has no {name}: algorithm.filter_groups."
                            f"{FILTER_GROUPS_BUDGET_KEY} only applies to verl's ReplayBuffer and its subclasses")
    if getattr(replay_buffer, "vgpo_generation_budget", None) is not None:
        return
    state = _GenerationBudget(budget, int(train_batch_size), str(config_get(filter_groups_config, "metric")))
    replay_buffer.vgpo_generation_budget = state
    sample, refill, evict, wait = (replay_buffer.sample, replay_buffer.refill_fn,
                                   replay_buffer._evict_terminal_groups, replay_buffer._wait_for_next_poll)

    @functools.wraps(sample)
    def budgeted_sample(global_steps, partition_id, batch_size):
        if partition_id == "train":
            state.reset()
        state.needed = batch_size
        return sample(global_steps=global_steps, partition_id=partition_id, batch_size=batch_size)

    @functools.wraps(refill)
    def budgeted_refill(num_prompts):
        if num_prompts > state.remaining:
            state.exhausted = True
            num_prompts = state.remaining
        if num_prompts <= 0:
            return 0
        state.prompts += num_prompts
        return refill(num_prompts)

    @functools.wraps(evict)
    def counting_evict(global_steps, partition_id, eviction_reasons):
        result = evict(global_steps, partition_id, eviction_reasons)
        if partition_id == "train":
            state.evicted += result[2]
        return result

    @functools.wraps(wait)
    def checked_wait(partition_id, last_debug_time):
        if partition_id == "train" and state.exhausted:
            in_flight = len(replay_buffer.pending_keys[partition_id]) + len(replay_buffer.running_keys[partition_id])
            if in_flight == 0:
                kept = len(replay_buffer.finished_keys[partition_id]) + len(replay_buffer.failure_keys[partition_id])
                raise state.error(kept, state.needed)
        return wait(partition_id, last_debug_time)

    replay_buffer.sample, replay_buffer.refill_fn = budgeted_sample, budgeted_refill
    replay_buffer._evict_terminal_groups, replay_buffer._wait_for_next_poll = counting_evict, checked_wait


# ---------------------------------------------------------------------------------------------------
# verl 0.9.x: FSDP2 shards lm_head on its own, and the fused-kernel forwards read its weight outside it
# ---------------------------------------------------------------------------------------------------

FSDP2_FUSED_LM_HEAD_VERSIONS = {"verl": ">=0.9,<0.10"}


def fix_fsdp2_fused_kernels_lm_head() -> None:
    """Keep ``lm_head`` in the root FSDP2 unit of a model whose forward is verl's fused-kernel forward.

    For: verl 0.9.x (``verl.utils.fsdp_utils._select_fsdp2_wrap_targets``, used by ``apply_fsdp2``). For a model
    with untied word embeddings (Qwen2.5-VL-7B, Qwen3-VL-8B, ...) it wraps ``lm_head`` in its own ``fully_shard``
    unit, whose weight is unsharded only while ``lm_head`` itself runs. ``actor_rollout_ref.model.use_fused_kernels
    =True`` replaces the model's forward with one that never calls ``lm_head`` and hands ``self.lm_head.weight`` to
    the fused linear + log-prob kernel (``forward_with_torch_backend`` / ``_triton_backend`` in
    ``verl.models.transformers.dense_common``, ``qwen2_vl``, ``qwen3_vl``, ...): that weight is still the sharded
    DTensor, and the first forward fails with "aten.mm.default got mixed torch.Tensor and DTensor" (found by the
    7B recipe's CPU smoke run with verl's VLM example settings; FSDP2 behaves the same on GPUs). With this fix a
    model carrying verl's fused-kernel mark (``_verl_fused_kernels_backend``, set by ``apply_monkey_patch`` before
    FSDP wrapping) keeps ``lm_head`` in the root unit, which FSDP2 unshards for the whole forward (and never
    reshards after it); every other model is wrapped exactly as verl does. verl's own function stays reachable
    as ``__wrapped__``.
    """
    if not versions_match(**FSDP2_FUSED_LM_HEAD_VERSIONS):
        return
    try:
        import verl.utils.fsdp_utils as fsdp_utils
    except ImportError:
        return
    original = getattr(fsdp_utils, "_select_fsdp2_wrap_targets", None)
    if original is None or getattr(original, "vgpo_fused_lm_head_fix", False):
        return

    @functools.wraps(original)
    def select_fsdp2_wrap_targets(model, fsdp_transformer_layer_cls_to_wrap):
        modules = original(model, fsdp_transformer_layer_cls_to_wrap)
        if getattr(model, "_verl_fused_kernels_backend", None) is None:
            return modules
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return [module for module in modules if output_embeddings is None or module is not output_embeddings]

    select_fsdp2_wrap_targets.vgpo_fused_lm_head_fix = True  # type: ignore[attr-defined]
    fsdp_utils._select_fsdp2_wrap_targets = select_fsdp2_wrap_targets


# ---------------------------------------------------------------------------------------------------
# the list of fixes, and applying them
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """One change this package makes to verl's behaviour, with the versions it is for.

    ``install`` is None for a fix applied where it acts (e.g. on the replay buffer the trainer builds);
    :func:`apply_fixes` installs the others at plugin load.
    """

    name: str
    versions: dict[str, str]
    summary: str
    install: Callable[[], None] | None = None


FIXES: tuple[Fix, ...] = (
    Fix("qwen2_vl_text_only_dummy", QWEN2_VL_TEXT_ONLY_VERSIONS,
        "Qwen2/2.5-VL micro-batches without any image or video no longer crash", fix_qwen2_vl_text_only_dummy),
    Fix("qwen3_5_packed_linear_attention_fallback", QWEN3_5_PACKED_FALLBACK_VERSIONS,
        "Qwen3.5 packed linear attention without flash-linear-attention keeps each sequence's state apart",
        fix_qwen3_5_packed_linear_attention_fallback),
    Fix("qwen_vl_one_vision_pass", ONE_VISION_PASS_VERSIONS,
        "one vision-tower pass per micro-batch with images and videos (FSDP ranks issue the same collectives)",
        fix_qwen_vl_one_vision_pass_per_micro_batch),
    Fix("qwen2_vl_flash_attention_output_dtype", QWEN2_VL_FLASH_OUTPUT_DTYPE_VERSIONS,
        "packed Qwen2/2.5-VL attention returns its inputs' dtype (fp32 param_dtype no longer crashes in o_proj)",
        fix_qwen2_vl_flash_attention_output_dtype),
    Fix("fsdp2_fused_kernels_lm_head", FSDP2_FUSED_LM_HEAD_VERSIONS,
        "use_fused_kernels with FSDP2 and untied embeddings: lm_head stays in the root unit (verl: DTensor mm error)",
        fix_fsdp2_fused_kernels_lm_head),
    Fix("replay_buffer_poll_interval", REPLAY_POLL_VERSIONS,
        "trainer.v1.sampler.poll_interval: the V1 replay buffer's poll (verl: fixed 2 s), only when set"),
    Fix("filter_groups_max_num_gen_batches", FILTER_GROUPS_BUDGET_VERSIONS,
        "algorithm.filter_groups.max_num_gen_batches bounds a step's generation batches (verl: ignored, endless)"),
)


def fix_status() -> list[tuple[Fix, bool, str]]:
    """(fix, active, why) for every fix in this process's environment (for ``vgpo-doctor``)."""
    rows = []
    for fix in FIXES:
        mismatch = version_mismatch(**fix.versions)
        if not fixes_enabled():
            rows.append((fix, False, f"{FIXES_ENV}=0"))
        elif mismatch:
            rows.append((fix, False, mismatch))
        else:
            rows.append((fix, True, "for " + ", ".join(f"{name}{spec}" for name, spec in fix.versions.items())))
    return rows


_APPLIED_LOGGED = False


def apply_fixes() -> list[str]:
    """Install every fix whose versions match (idempotent); return the names of the active ones.

    Logs one INFO line per process naming them, or saying that ``VERL_VGPO_FIXES=0`` keeps stock verl.
    """
    global _APPLIED_LOGGED
    active = []
    for fix, is_active, _ in fix_status():
        if not is_active:
            continue
        if fix.install is not None:
            fix.install()
        active.append(fix.name)
    if not _APPLIED_LOGGED:
        _APPLIED_LOGGED = True
        if fixes_enabled():
            logger.info("verl-vgpo: verl fixes active in this process: %s (%s=0 turns them off)",
                        ", ".join(active) or "none (versions differ)", FIXES_ENV)
        else:
            logger.info("verl-vgpo: %s=0: no verl fix applied in this process (stock verl)", FIXES_ENV)
    return active
