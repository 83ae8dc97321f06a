"""VGPO advantage estimator (spec section 2), vectorised over the whole batch.

Layout follows verl's ``core_algos``: small pure functions that take (bs, response_length) tensors,
one public estimator, registered in verl's registry under ``vgpo``. No Python loop runs over tokens or
rows; the only per-row host work is ``np.unique`` on the uid array to number the groups.

Every factor is computed per trajectory (psi) or per uid group (alpha) from that trajectory's own focus
scores, so the result does not depend on micro-batching, row order or data-parallel split.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from verl_vgpo.config import VGPOConfig, config_get

METRIC_PREFIX = "vgpo/"  # every metric VGPO logs through verl's tracker
_MINMAX_EPS = 1e-8  # Eq. 7 and Eq. 10 denominators


class MissingFocusScoresError(RuntimeError):
    """The vgpo estimator was called without the focus scores of the old-log-prob pass."""


# --------------------------------------------------------------------------------------------------
# pure building blocks
# --------------------------------------------------------------------------------------------------


@dataclass
class VGPOWeights:
    """Per-token and per-trajectory factors of one batch (all float32)."""

    token_weight: torch.Tensor  # psi (bs, L); 1 on rows without signal and at masked positions
    trajectory_weight: torch.Tensor  # alpha (bs,); 1 on rows without signal
    has_signal: torch.Tensor  # (bs,) bool: at least one valid token and finite focus on all of them
    gate: torch.Tensor  # G (bs, L) bool
    position_fraction: torch.Tensor  # u (bs, L)
    normalized_weight: torch.Tensor  # w-hat (bs, L), 0 at masked positions


def position_fractions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position of every valid token among the valid tokens of its row.

    Args:
        mask: (bs, L) bool response mask (holes allowed, e.g. multi-turn tool outputs).

    Returns:
        rank (bs, L) int64 zero-based index t-1 among valid tokens, lengths (bs,) int64 T,
        u (bs, L) float32 = (t-1)/(T-1), 0 when T == 1 (and at masked positions).
    """
    rank = mask.long().cumsum(dim=-1).sub_(1)
    lengths = mask.sum(dim=-1)
    denom = (lengths - 1).clamp_min(1).unsqueeze(-1).to(torch.float32)
    u = rank.to(torch.float32).div_(denom).mul_(mask)
    return rank, lengths, u


def compensation_schedule(u: torch.Tensor, cfg: VGPOConfig) -> torch.Tensor:
    """s(u) of Eq. 5 (before multiplying by beta). u: (bs, L) float32 in [0, 1]."""
    a = cfg.compensation_start
    if cfg.compensation == "none":
        return torch.zeros_like(u)
    if cfg.compensation == "step":
        return ((u >= cfg.compensation_step) & (u >= a)).to(torch.float32)
    ramp = ((u - a) / (1.0 - a)).clamp_min(0.0)
    if cfg.compensation == "linear":
        return ramp
    if cfg.compensation == "exponential":
        return ramp.pow(cfg.compensation_exponent)
    raise ValueError(f"unknown compensation schedule {cfg.compensation!r}")  # config validation prevents it


def tail_gate(
    visual_weight: torch.Tensor, mask: torch.Tensor, rank: torch.Tensor, lengths: torch.Tensor, cfg: VGPOConfig
) -> torch.Tensor:
    """Eq. 6 gate: in the tail window (rank >= floor(gamma*T)) keep exactly the k tokens with largest w0.

    k = max(1, floor(kappa * |window|)); ties go to the earlier position (stable sort).

    Args:
        visual_weight: (bs, L) float32 w0.
        mask, rank, lengths: see :func:`position_fractions`.

    Returns:
        (bs, L) bool.
    """
    # float64 floor reproduces Python's int(gamma * T) on the official code path
    window_start = torch.floor(cfg.gate_start * lengths.to(torch.float64)).to(torch.int64)
    in_window = mask & (rank >= window_start.unsqueeze(-1))
    window_size = (lengths - window_start).clamp_min(0)
    k = torch.floor(cfg.gate_top_ratio * window_size.to(torch.float64)).to(torch.int64).clamp_min(1)
    keys = torch.where(in_window, visual_weight, torch.full_like(visual_weight, float("-inf")))
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices
    place = torch.empty_like(order)
    place.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return in_window & (place < k.unsqueeze(-1))


def group_ids(index: Any, device: torch.device) -> tuple[torch.Tensor, int]:
    """Number the uid groups 0..G-1. index: (bs,) array-like of hashable, comparable uids."""
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    _, inverse = np.unique(np.asarray(index), return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    return torch.as_tensor(inverse, device=device, dtype=torch.int64), int(inverse.max()) + 1 if inverse.size else 0


def group_minmax_normalize(values: torch.Tensor, groups: torch.Tensor, num_groups: int, member: torch.Tensor):
    """Eq. 10-11 core: min-max normalise ``values`` within each group over member rows only.

    Returns (normalized (bs,), group mean of normalized per row (bs,)); rows that are not members get 0.
    """
    inf = torch.tensor(float("inf"), device=values.device)
    gmin = torch.full((num_groups,), float("inf"), device=values.device).scatter_reduce(
        0, groups, torch.where(member, values, inf), reduce="amin"
    )
    gmax = torch.full((num_groups,), float("-inf"), device=values.device).scatter_reduce(
        0, groups, torch.where(member, values, -inf), reduce="amax"
    )
    normalized = torch.where(member, (values - gmin[groups]) / (gmax[groups] - gmin[groups] + _MINMAX_EPS), 0.0)
    count = torch.zeros(num_groups, device=values.device).index_add_(0, groups, member.to(torch.float32))
    total = torch.zeros(num_groups, device=values.device).index_add_(0, groups, normalized)
    mean = total / count.clamp_min(1.0)
    return normalized, mean[groups]


def vgpo_weights(
    focus_scores: torch.Tensor, response_mask: torch.Tensor, index: Any, cfg: VGPOConfig
) -> VGPOWeights:
    """Token factor psi (Eq. 5-8) and trajectory factor alpha (Eq. 9-11) of a batch.

    Args:
        focus_scores: (bs, L) raw cosines rho aligned with ``response_mask``; a row that is non-finite
            at any valid position (NaN = no visual token) has no signal.
        response_mask: (bs, L) 0/1.
        index: (bs,) uid per row; rows of one uid are the rollouts of one prompt.
        cfg: validated :class:`VGPOConfig`.
    """
    if focus_scores.shape != response_mask.shape:
        raise ValueError(
            f"focus_scores {tuple(focus_scores.shape)} must have the shape of response_mask {tuple(response_mask.shape)}"
        )
    # in-place arithmetic on purpose: at 1024 x 2048 the estimator is bound by memory passes
    mask = response_mask.bool()
    rho = focus_scores.to(torch.float32)
    rank, lengths, u = position_fractions(mask)
    non_finite = ~torch.isfinite(rho)
    non_finite &= mask
    has_signal = (lengths > 0) & ~non_finite.any(dim=-1)
    valid = mask & has_signal.unsqueeze(-1)

    w0 = rho.nan_to_num(0.0).clamp_min_(0.0).mul_(valid)
    boost = compensation_schedule(u, cfg).mul_(cfg.compensation_strength)
    gate = tail_gate(w0, valid, rank, lengths, cfg) if cfg.gate else valid
    w = boost.mul_(gate).add_(1.0).mul_(w0)  # w0 * (1 + G * c)

    # Eq. 7: per-trajectory min-max over valid tokens (w >= 0 and is 0 elsewhere, so max needs no mask)
    wmin = w.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    wmax = w.amax(dim=-1, keepdim=True)
    # masked_fill, not mul: rows without signal have wmin = inf and would leave NaN behind
    w_hat = w.sub_(wmin).div_(wmax - wmin + _MINMAX_EPS).masked_fill_(~valid, 0.0)
    w_hat_sum = w_hat.sum(dim=-1)
    w_hat_mean = w_hat_sum / lengths.clamp_min(1).to(torch.float32)

    # Eq. 8
    psi_low, psi_high = cfg.token_weight_clip
    psi = (w_hat - w_hat_mean.unsqueeze(-1)).add_(1.0).clamp_(psi_low, psi_high).masked_fill_(~valid, 1.0)

    # Eq. 9-11 over the rollouts of the same prompt that carry a signal
    phi = w_hat_sum if cfg.accumulation == "sum" else w_hat_mean
    groups, num_groups = group_ids(index, rho.device)
    phi_hat, phi_hat_group_mean = group_minmax_normalize(phi, groups, num_groups, has_signal)
    alpha_low, alpha_high = cfg.trajectory_weight_clip
    alpha = (1.0 + phi_hat - phi_hat_group_mean).clamp(alpha_low, alpha_high)
    alpha = torch.where(has_signal, alpha, torch.ones_like(alpha))

    return VGPOWeights(
        token_weight=psi,
        trajectory_weight=alpha,
        has_signal=has_signal,
        gate=gate & valid,
        position_fraction=u,
        normalized_weight=w_hat,
    )


def base_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    config: Any,
    base_estimator: str,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outcome advantage A of the configured base estimator, from verl's own registry."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    fn = get_adv_estimator_fn(base_estimator)
    accepted = inspect.signature(fn).parameters
    call: dict[str, Any] = dict(token_level_rewards=token_level_rewards, response_mask=response_mask, index=index)
    if "config" in accepted:
        call["config"] = config
    if "norm_adv_by_std_in_grpo" in accepted:
        call["norm_adv_by_std_in_grpo"] = bool(config_get(config, "norm_adv_by_std_in_grpo", True))
    for key, value in kwargs.items():
        if key in accepted and key not in call:
            call[key] = value
    return fn(**call)


# --------------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------------


def compute_vgpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    focus_scores: Optional[torch.Tensor],
    config: Any = None,
    metrics: Optional[dict[str, float]] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VGPO advantage: A(i,t) * alpha(i) * psi(i,t), A from the base outcome estimator.

    Args:
        token_level_rewards: (bs, L) rewards (outcome reward on the last valid token).
        response_mask: (bs, L) 0/1.
        index: (bs,) uid per row (np.ndarray of str as verl passes it).
        focus_scores: (bs, L) raw cosines rho aligned with ``response_mask``; NaN rows = no visual token.
        config: verl's ``algorithm`` config (DictConfig, dataclass, dict or None); its ``vgpo`` block
            holds the VGPO keys, ``norm_adv_by_std_in_grpo`` is passed to the base estimator.
        metrics: optional dict that receives the spec section 6 statistics (keys ``vgpo/...``).
        **kwargs: forwarded to the base estimator when it accepts them (e.g. ``epsilon``).

    Returns:
        advantages (bs, L) and returns (bs, L), both float32, 0 at masked positions.
    """
    if focus_scores is None:
        raise MissingFocusScoresError(_MISSING_FOCUS_MESSAGE)
    started = time.perf_counter()
    cfg = VGPOConfig.from_algorithm_config(config)
    advantages, _ = base_advantage(token_level_rewards, response_mask, index, config, cfg.base_estimator, **kwargs)
    focus_scores = focus_scores.to(advantages.device)
    response_mask = response_mask.to(advantages.device)
    weights = vgpo_weights(focus_scores, response_mask, index, cfg)
    factor = torch.ones_like(weights.token_weight)
    if cfg.intra_trajectory:
        factor = factor * weights.token_weight
    if cfg.inter_trajectory:
        factor = factor * weights.trajectory_weight.unsqueeze(-1)
    scale = factor * response_mask.to(torch.float32)
    advantages = advantages.to(torch.float32) * scale
    # every supported base estimator is an outcome estimator whose returns equal its advantages;
    # the re-weighted advantage keeps that relation (as verl's GRPO does)
    returns = advantages
    if metrics is not None:
        metrics.update(vgpo_metrics(weights, focus_scores, response_mask, cfg))
        metrics[METRIC_PREFIX + "timing/reweight_s"] = time.perf_counter() - started
    return advantages, returns


def vgpo_metrics(
    weights: VGPOWeights, focus_scores: torch.Tensor, response_mask: torch.Tensor, cfg: VGPOConfig
) -> dict[str, float]:
    """Spec section 6 statistics, over valid tokens of trajectories that carry a focus signal."""
    p = METRIC_PREFIX
    valid = response_mask.bool() & weights.has_signal.unsqueeze(-1)
    # rows with an empty response (e.g. the padding rows of verl's batch balancing) are not trajectories
    has_tokens = response_mask.bool().any(dim=-1)
    out: dict[str, float] = {
        p + "no_signal_fraction": float((has_tokens & ~weights.has_signal).sum()) / max(1, int(has_tokens.sum())),
    }
    if not bool(valid.any()):
        return out
    rho = focus_scores.to(torch.float32)
    psi = weights.token_weight[valid]
    alpha = weights.trajectory_weight[weights.has_signal]
    u = weights.position_fraction
    first = valid & (u < 1.0 / 3.0)
    last = valid & (u >= 2.0 / 3.0)
    focus_first = float(rho[first].mean()) if bool(first.any()) else float("nan")
    focus_last = float(rho[last].mean()) if bool(last.any()) else float("nan")
    out.update(
        {
            p + "token_weight/mean": float(psi.mean()),
            p + "token_weight/min": float(psi.min()),
            p + "token_weight/max": float(psi.max()),
            p + "trajectory_weight/mean": float(alpha.mean()),
            p + "trajectory_weight/min": float(alpha.min()),
            p + "trajectory_weight/max": float(alpha.max()),
            p + "focus/mean": float(rho[valid].mean()),
            p + "focus/first_third": focus_first,
            p + "focus/last_third": focus_last,
            p + "focus/last_over_first": focus_last / focus_first if focus_first != 0.0 else float("nan"),
            p + "gate_pass_rate": float(weights.gate[valid].float().mean()) if cfg.gate else 1.0,
        }
    )
    return out


_MISSING_FOCUS_MESSAGE = (
    "algorithm.adv_estimator=vgpo needs the visual focus scores of the old-log-prob pass, but none reached the "
    "estimator. They are captured by verl-vgpo's engine in every actor worker and handed over by verl-vgpo's "
    "trainer layer, both installed when verl imports the 'verl.plugins' entry point of the verl-vgpo package. "
    "Install verl-vgpo in the environment of the driver and of every Ray worker (and do not exclude it with "
    "VERL_USE_EXTERNAL_PLUGINS), run through `python -m verl.trainer.main_ppo` with trainer.use_v1=true, or, when "
    "calling the estimator directly, use verl_vgpo.advantage.compute_vgpo_advantage(..., focus_scores=...) or wrap "
    "the call in verl_vgpo.wiring.estimator.focus_scores_for_advantage(focus_scores)."
)
