"""VGPO advantage estimator (the paper's equations), vectorised over the whole batch.

Layout follows verl's ``core_algos``: small pure functions that take (bs, response_length) tensors,
one public estimator, registered in verl's registry under ``vgpo``. No Python loop runs over tokens or
rows: the gate loops over buckets of rows (one ``topk`` each), the metrics over the position bins, and
the only per-row host work is ``np.unique`` on the uid array to number the groups.

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


FOCUS_POSITION_BINS = 5  # vgpo/focus/pos_bin_{k}: the forgetting curve over relative response position
_FLT_MAX = torch.finfo(torch.float32).max
_GATE_BUCKET_ROWS = 128  # rows per top-k call of the gate: rows of similar window size share one call


class MissingFocusScoresError(RuntimeError):
    """The vgpo estimator was called without the focus scores of the old-log-prob pass."""


# --------------------------------------------------------------------------------------------------
# pure building blocks
#
# Speed notes (measured on CPU at 1024 x 2048, see benchmarks/bench_estimator.py): masks are carried as
# float32 0/1 tensors and applied by multiplication, because boolean ``masked_fill`` / ``where`` /
# ``isfinite`` and int64 ``cumsum`` are 10-50x slower than a float multiply there; the gate runs one
# ``topk`` per bucket of rows over each row's own window instead of a stable sort of every full row.
# --------------------------------------------------------------------------------------------------


@dataclass
class Positions:
    """Where every response token sits among the valid tokens of its row (see :func:`position_fractions`)."""

    rank: torch.Tensor  # (bs, L) float32 zero-based index t-1 among valid tokens (meaningless at masked positions)
    lengths: torch.Tensor  # (bs,) int64 T
    denom: torch.Tensor  # (bs, 1) float32 max(T-1, 1)
    contiguous: bool  # every row's valid tokens are the prefix [0, T) (no holes): rank == column
    mask: torch.Tensor  # (bs, L) float32 0/1
    _u: Optional[torch.Tensor] = None

    @property
    def u(self) -> torch.Tensor:
        """(bs, L) float32 (t-1)/(T-1), 0 when T == 1 and at masked positions (computed on first use)."""
        if self._u is None:
            self._u = self.rank.div(self.denom).mul_(self.mask)
        return self._u


@dataclass
class VGPOWeights:
    """Per-token and per-trajectory factors of one batch (all float32)."""

    token_weight: torch.Tensor  # psi (bs, L); 1 on rows without signal and at masked positions
    trajectory_weight: torch.Tensor  # alpha (bs,); 1 on rows without signal
    has_signal: torch.Tensor  # (bs,) bool: at least one valid token and finite focus on all of them
    gate_count: float  # number of tokens with G = 1 (see tail_gate for the gate itself)
    normalized_weight: torch.Tensor  # w-hat (bs, L), 0 at masked positions
    valid: torch.Tensor  # (bs, L) float32 0/1: valid tokens of rows with signal
    positions: Positions

    @property
    def position_fraction(self) -> torch.Tensor:
        """u (bs, L), see :attr:`Positions.u`."""
        return self.positions.u


def binary_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """(bs, L) response mask (bool, int or float 0/1) as float32 0/1; any other value is an error."""
    maskf = response_mask.to(torch.float32)
    if response_mask.dtype != torch.bool:
        # values in [0, 1] with sum(m) == sum(m * m) are all 0 or 1 (reductions only, no (bs, L) temporary)
        flat = maskf.reshape(-1)
        if flat.numel() and not (
            bool(flat.amin() >= 0.0) and bool(flat.amax() <= 1.0) and bool(flat.sum() == torch.dot(flat, flat))
        ):
            raise ValueError("response_mask must hold only 0 and 1")
    return maskf


def position_fractions(mask: torch.Tensor) -> Positions:
    """Position of every valid token among the valid tokens of its row.

    Args:
        mask: (bs, L) response mask, 0/1 (holes allowed, e.g. multi-turn tool outputs).

    Returns:
        :class:`Positions`: rank (bs, L) float32 t-1 (exact integers), lengths (bs,) int64 T,
        u (bs, L) float32 = (t-1)/(T-1), 0 when T == 1 and at masked positions.
    """
    maskf = binary_mask(mask)
    bs, L = maskf.shape
    lengths_f = maskf.sum(dim=-1)  # exact: integers below 2**24
    denom = (lengths_f - 1.0).clamp_min_(1.0).unsqueeze(-1)
    columns = torch.arange(L, dtype=torch.float32, device=maskf.device)
    # a 0/1 row is the prefix [0, T) iff the columns of its ones sum to T(T-1)/2, the least possible
    # sum of T distinct columns; a float32 matrix-vector product of integers is exact below 2**24
    if L * (L - 1) // 2 < 2**24:
        column_sum = maskf @ columns
    else:
        column_sum = maskf.to(torch.float64) @ columns.to(torch.float64)
    lengths_c = lengths_f.to(column_sum.dtype)  # T(T-1)/2 in the sum's precision: float32 rounds it above 2**24
    contiguous = bool(torch.equal(column_sum, lengths_c * (lengths_c - 1.0) / 2.0))
    if contiguous:
        rank = columns.expand(bs, L)  # a view: no (bs, L) int64 cumsum needed
    else:
        rank = maskf.cumsum(dim=-1).sub_(1.0)  # float32 cumsum of 0/1 is exact below 2**24 tokens
    return Positions(rank=rank, lengths=lengths_f.to(torch.int64), denom=denom, contiguous=contiguous, mask=maskf)


def compensation_schedule(u: torch.Tensor, cfg: VGPOConfig) -> torch.Tensor:
    """s(u) of Eq. 5 (before multiplying by beta). u: (bs, L) float32 in [0, 1]. Returns a new tensor."""
    a = cfg.compensation_start
    if cfg.compensation == "none":
        return torch.zeros_like(u)
    if cfg.compensation == "step":
        # (u >= b) & (u >= a) == u >= max(a, b); compared straight into float32
        return torch.ge(u, max(cfg.compensation_step, a), out=torch.empty_like(u))
    ramp = u.clone() if a == 0.0 else ((u - a) / (1.0 - a)).clamp_min_(0.0)  # (u - 0) / 1 == u exactly
    if cfg.compensation == "linear":
        return ramp
    if cfg.compensation == "exponential":
        return ramp.pow_(cfg.compensation_exponent)
    raise ValueError(f"unknown compensation schedule {cfg.compensation!r}")  # config validation prevents it


def gate_window(lengths: torch.Tensor, cfg: VGPOConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 6 window per row: start floor(gamma*T), size T - start, k = max(1, floor(kappa*size)); (bs,) int64 each."""
    # float64 floor reproduces Python's int(gamma * T) on the official code path
    start = torch.floor(cfg.gate_start * lengths.to(torch.float64)).to(torch.int64)
    size = (lengths - start).clamp_min(0)
    k = torch.floor(cfg.gate_top_ratio * size.to(torch.float64)).to(torch.int64).clamp_min(1)
    return start, size, k


def _largest_sorted(keys: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` largest entries of every row of ``keys`` (n, W) int32, descending: (n, count).

    On CPU numpy's introselect partition plus a sort of the kept entries is about 3x faster than
    ``torch.topk`` (measured at 128 x 700, k = 140); elsewhere ``torch.topk``.
    """
    width = keys.shape[-1]
    if keys.device.type != "cpu":
        return keys.topk(count, dim=-1, sorted=True).values
    array = keys.numpy()
    if count < width:
        array = np.partition(array, width - count, axis=-1)[:, width - count :]
    return torch.from_numpy(np.sort(array, axis=-1)[:, ::-1].copy())


def _gate_blocks(visual_weight: torch.Tensor, positions: Positions, cfg: VGPOConfig, rows: Optional[torch.Tensor]):
    """Eq. 6 gate, bucket by bucket: yields (bucket, lo, hi, columns, block, passed).

    ``bucket`` (n,) row numbers; ``block`` (n, W) w0 of the window columns and ``passed`` (n, W) float32
    0/1 the gate there. Windows without holes are the column slice ``lo:hi`` (``columns`` is None);
    with holes ``columns`` (n, W) int64 gives each block entry's column (entries outside the window
    repeat a column of the row and never pass).
    """
    bs, L = visual_weight.shape
    device = visual_weight.device
    start, size, k = gate_window(positions.lengths, cfg)
    active = size > 0
    if rows is not None:
        active &= rows
    active_rows = active.nonzero().squeeze(-1)
    if active_rows.numel() == 0:
        return
    if not bool(visual_weight.amin() >= 0.0):
        raise ValueError("tail_gate expects visual weights w0 = max(rho, 0) >= 0 without NaN")
    column_of_rank = None
    if not positions.contiguous:  # holes: the column of the r-th valid token; masked ones go to column L
        maskf = positions.mask
        target = positions.rank.mul(maskf).add_((1.0 - maskf) * L).to(torch.int64)
        column_of_rank = torch.zeros(bs, L + 1, dtype=torch.int64, device=device)
        column_of_rank.scatter_(1, target, torch.arange(L, device=device).expand(bs, L))
    by_size = active_rows[torch.argsort(size[active_rows], stable=True)]
    for bucket in torch.split(by_size, _GATE_BUCKET_ROWS):
        b_start, b_size, b_k = start[bucket].unsqueeze(-1), size[bucket].unsqueeze(-1), k[bucket].unsqueeze(-1)
        columns = None
        if column_of_rank is None:  # window = columns [start, start + size) of each row
            lo, hi = int(b_start.min()), int((b_start + b_size).max())
            block = visual_weight[:, lo:hi].index_select(0, bucket)
            column = torch.arange(lo, hi, dtype=torch.float32, device=device)
            b_first = b_start.to(torch.float32)
            in_window = torch.ge(column, b_first, out=torch.empty_like(block))
            in_window.mul_(torch.lt(column, b_first + b_size, out=torch.empty_like(block)))
        else:  # window = the valid tokens of rank start .. start + size - 1, gathered in rank order
            lo, hi = 0, int(b_size.max())
            offset = torch.arange(hi, device=device).expand(bucket.numel(), hi)
            ranks = (b_start + offset).clamp_max_(L - 1)
            columns = column_of_rank[bucket].gather(1, ranks).clamp_max_(L - 1)
            block = visual_weight[bucket.unsqueeze(-1), columns]
            in_window = (offset < b_size).to(torch.float32)
        # in the window: w0 (+0.0 for -0.0); outside: -1.0, below every non-negative key
        keys = (in_window - 1.0).addcmul_(block, in_window).view(torch.int32)
        top = _largest_sorted(keys, min(int(b_k.max()) + 1, keys.shape[-1]))
        threshold = top.gather(1, b_k - 1)
        passed = torch.ge(keys, threshold, out=torch.empty_like(in_window))
        # more tokens at the threshold than places: the (k+1)-th largest equals the k-th
        if top.shape[-1] > 1:
            following = top.gather(1, b_k.clamp_max(top.shape[-1] - 1))
            crowded = ((following == threshold) & (b_k < top.shape[-1])).squeeze(-1).nonzero().squeeze(-1)
            if crowded.numel():
                c_keys, c_thr = keys[crowded], threshold[crowded]
                places = b_k[crowded] - (c_keys > c_thr).sum(dim=-1, keepdim=True)
                tied = (c_keys == c_thr).to(torch.float32)
                earliest = tied.cumsum(dim=-1).le_(places.to(torch.float32)).to(torch.float32).mul_(tied)
                passed[crowded] = (c_keys > c_thr).to(torch.float32).add_(earliest)
        yield bucket, lo, hi, columns, block, passed


def tail_gate(
    visual_weight: torch.Tensor, positions: Positions, cfg: VGPOConfig, rows: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Eq. 6 gate: in the tail window (rank >= floor(gamma*T)) keep exactly the k tokens with largest w0.

    k = max(1, floor(kappa * |window|)); ties go to the earlier position. Rows are sorted by window size
    and cut into buckets of ``_GATE_BUCKET_ROWS``; a bucket's windows are copied into one dense block
    (rows of similar size have similar windows) and one ``topk`` gives every row's k-th largest value,
    the threshold: the tokens at or above it pass. A row with more tied tokens at the threshold than
    places left (the (k+1)-th value equals the k-th) gives those places to the earliest tied tokens.
    Non-negative float32 values compare like their int32 bit patterns, which ``topk`` ranks fastest.
    :func:`vgpo_weights` applies the same blocks straight to w without building this dense gate.

    Args:
        visual_weight: (bs, L) float32 w0 >= 0 (a negative or NaN value is an error).
        positions: :func:`position_fractions` of the response mask.
        rows: optional (bs,) bool, rows to gate (default: all); other rows get no gate.

    Returns:
        (bs, L) float32 0/1.
    """
    gate = torch.zeros_like(visual_weight, dtype=torch.float32)
    for bucket, lo, hi, columns, _, passed in _gate_blocks(visual_weight, positions, cfg, rows):
        if columns is None:
            gate[:, lo:hi].index_copy_(0, bucket, passed)
        else:  # entries outside the window may repeat a column: add (they add 0) instead of assigning
            gate.index_put_((bucket.unsqueeze(-1).expand_as(columns), columns), passed, accumulate=True)
    return gate


def _boost_gated(w: torch.Tensor, positions: Positions, cfg: VGPOConfig, rows: torch.Tensor) -> float:
    """In place w0 -> w0 * (1 + G * c) with the gate of :func:`tail_gate`; returns the number of gated tokens.

    Only the gate windows are touched (G = 0 elsewhere leaves w = w0), so neither the dense gate nor the
    schedule of every token is materialised.
    """
    passed_total = 0.0
    for bucket, lo, hi, columns, block, passed in _gate_blocks(w, positions, cfg, rows):
        passed_total += float(passed.sum())
        if columns is None:  # rank == column: u = column / max(T-1, 1), as position_fractions computes it
            # columns past a short row's own tokens would give u > 1 (and inf under a large exponent): clamp
            u = torch.arange(lo, hi, dtype=torch.float32, device=w.device).div(positions.denom[bucket]).clamp_max_(1.0)
        else:
            u = positions.u[bucket.unsqueeze(-1), columns]
        boosted = compensation_schedule(u, cfg).mul_(cfg.compensation_strength).mul_(passed).add_(1.0).mul_(block)
        if columns is None:
            w[:, lo:hi].index_copy_(0, bucket, boosted)
        else:  # write the gated entries only: the others are unchanged and may repeat a column
            chosen = passed.bool()
            w[bucket.unsqueeze(-1).expand_as(columns)[chosen], columns[chosen]] = boosted[chosen]
    return passed_total


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
    like = dict(device=values.device, dtype=values.dtype)
    inf = torch.tensor(float("inf"), **like)
    gmin = torch.full((num_groups,), float("inf"), **like).scatter_reduce(
        0, groups, torch.where(member, values, inf), reduce="amin"
    )
    gmax = torch.full((num_groups,), float("-inf"), **like).scatter_reduce(
        0, groups, torch.where(member, values, -inf), reduce="amax"
    )
    normalized = torch.where(member, (values - gmin[groups]) / (gmax[groups] - gmin[groups] + _MINMAX_EPS), 0.0)
    count = torch.zeros(num_groups, **like).index_add_(0, groups, member.to(values.dtype))
    total = torch.zeros(num_groups, **like).index_add_(0, groups, normalized)
    mean = total / count.clamp_min(1.0)
    return normalized, mean[groups]


def vgpo_weights(
    focus_scores: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    cfg: VGPOConfig,
    positions: Optional[Positions] = None,
    scratch: Optional[torch.Tensor] = None,
) -> VGPOWeights:
    """Token factor psi (Eq. 5-8) and trajectory factor alpha (Eq. 9-11) of a batch.

    Args:
        focus_scores: (bs, L) raw cosines rho aligned with ``response_mask``; a row that is non-finite
            at any valid position (NaN = no visual token) has no signal.
        response_mask: (bs, L) 0/1.
        index: (bs,) uid per row; rows of one uid are the rollouts of one prompt.
        cfg: validated :class:`VGPOConfig`.
        positions: :func:`position_fractions` of ``response_mask`` when the caller has it already.
        scratch: optional (bs, L) float32 contiguous tensor the function may overwrite; it becomes the
            returned ``token_weight`` (saves one fresh (bs, L) allocation).
    """
    if focus_scores.shape != response_mask.shape:
        raise ValueError(
            f"focus_scores {tuple(focus_scores.shape)} must have the shape of response_mask {tuple(response_mask.shape)}"
        )
    # in-place float arithmetic on three (bs, L) buffers on purpose: at 1024 x 2048 the estimator is
    # bound by memory passes and fresh allocations
    positions = position_fractions(response_mask) if positions is None else positions
    maskf, lengths = positions.mask, positions.lengths
    rho = focus_scores.to(torch.float32)
    w = rho.nan_to_num(0.0, posinf=0.0, neginf=0.0)  # becomes w0, then w, then w-hat
    if scratch is None or scratch.shape != w.shape or scratch.dtype != w.dtype or not scratch.is_contiguous():
        scratch = torch.empty_like(w)
    torch.ne(rho, w, out=scratch)  # 1.0 where rho is not finite
    non_finite = torch.bmm(scratch.unsqueeze(1), maskf.unsqueeze(-1)).view(-1)  # per-row dot: no temporary
    has_signal = (lengths > 0) & (non_finite == 0)
    valid = maskf if bool(has_signal.all()) else maskf * has_signal.unsqueeze(-1).to(torch.float32)

    w.clamp_min_(0.0).mul_(valid)  # w0; rows without signal are all 0
    if cfg.gate:
        gate_count = _boost_gated(w, positions, cfg, has_signal)
    else:  # G = 1: w0 * (c + 1), w0 is 0 outside `valid`
        torch.mul(compensation_schedule(positions.u, cfg), cfg.compensation_strength, out=scratch)
        w.mul_(scratch.add_(1.0))
        gate_count = float(valid.sum())

    # Eq. 7: per-trajectory min-max over valid tokens (w >= 0 and is 0 elsewhere, so max needs no mask);
    # for the min masked positions read FLT_MAX, which also keeps rows without signal finite (no NaN)
    wmax = w.amax(dim=-1, keepdim=True)
    wmin = torch.mul(valid, -_FLT_MAX, out=scratch).add_(_FLT_MAX).add_(w).amin(dim=-1, keepdim=True)
    w_hat = w.sub_(wmin).mul_(valid).div_(wmax - wmin + _MINMAX_EPS)
    # phi in float64: Eq. 10 min-max-normalises phi within a group, and the same float32 terms summed in
    # another order differ by ~1e-7, above its eps, which would turn a tie into a 0-vs-1 split
    w_hat_sum = w_hat.sum(dim=-1, dtype=torch.float64)
    w_hat_mean = w_hat_sum / lengths.clamp_min(1).to(torch.float64)

    # Eq. 8 (1 at masked positions)
    psi_low, psi_high = cfg.token_weight_clip
    psi = torch.sub(w_hat, w_hat_mean.to(torch.float32).unsqueeze(-1), out=scratch)
    if psi_low <= 1.0 <= psi_high:  # masked positions: clip(0 + 1) = 1
        psi.mul_(valid).add_(1.0).clamp_(psi_low, psi_high)
    else:
        psi.add_(1.0).clamp_(psi_low, psi_high).mul_(valid).add_(1.0 - valid)

    # Eq. 9-11 over the rollouts of the same prompt that carry a signal
    phi = w_hat_sum if cfg.accumulation == "sum" else w_hat_mean
    groups, num_groups = group_ids(index, rho.device)
    phi_hat, phi_hat_group_mean = group_minmax_normalize(phi, groups, num_groups, has_signal)
    alpha_low, alpha_high = cfg.trajectory_weight_clip
    alpha = (1.0 + phi_hat - phi_hat_group_mean).clamp(alpha_low, alpha_high).to(torch.float32)
    alpha = torch.where(has_signal, alpha, torch.ones_like(alpha))

    return VGPOWeights(
        token_weight=psi,
        trajectory_weight=alpha,
        has_signal=has_signal,
        gate_count=gate_count,
        normalized_weight=w_hat,
        valid=valid,
        positions=positions,
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
        metrics: optional dict that receives the ``vgpo/...`` statistics.
        **kwargs: forwarded to the base estimator when it accepts them (e.g. ``epsilon``).

    Returns:
        advantages (bs, L) and returns (bs, L), both float32, 0 at masked positions.
    """
    if focus_scores is None:
        raise MissingFocusScoresError(_MISSING_FOCUS_MESSAGE)
    started = time.perf_counter()
    cfg = VGPOConfig.from_algorithm_config(config)
    advantages, _ = base_advantage(token_level_rewards, response_mask, index, config, cfg.base_estimator, **kwargs)
    if advantages.data_ptr() in (token_level_rewards.data_ptr(), response_mask.data_ptr()):
        advantages = advantages.clone()  # reweight_advantage writes in place: never into the caller's tensors
    advantages = reweight_advantage(advantages, focus_scores, response_mask, index, cfg, metrics=metrics)
    if metrics is not None:
        metrics[METRIC_PREFIX + "timing/reweight_s"] = time.perf_counter() - started
    # every supported base estimator is an outcome estimator whose returns equal its advantages;
    # the re-weighted advantage keeps that relation (as verl's GRPO does)
    return advantages, advantages


def reweight_advantage(
    advantages: torch.Tensor,
    focus_scores: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    cfg: VGPOConfig,
    metrics: Optional[dict[str, float]] = None,
) -> torch.Tensor:
    """A * alpha * psi * mask from a base outcome advantage A (bs, L); the VGPO part of the estimator.

    ``advantages`` is overwritten when it is float32 (pass a tensor you own, e.g. the base estimator's
    fresh output); it must hold one value per response (an outcome advantage), else ValueError.
    Returns the (bs, L) float32 result. ``metrics`` as in
    :func:`compute_vgpo_advantage`. Needs no verl: the GPU check times it with a verl-free GRPO.
    """
    focus_scores = focus_scores.to(advantages.device)
    response_mask = response_mask.to(advantages.device)
    positions = position_fractions(response_mask)
    maskf = positions.mask
    advantages = advantages.to(torch.float32)
    if advantages.shape != maskf.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must have the shape of response_mask {tuple(maskf.shape)}")
    # an outcome advantage is one value per response: read it at each row's first valid token, check that
    # every valid token carries it (a clear error for a token-level base), and reuse the (bs, L) buffer
    if positions.contiguous:  # every row starts at column 0
        first = torch.zeros(maskf.shape[0], 1, dtype=torch.int64, device=maskf.device)
    else:
        first = maskf.argmax(dim=-1, keepdim=True)
    outcome = advantages.gather(1, first).squeeze(-1) * (positions.lengths > 0).to(torch.float32)
    residual = advantages.sub_(outcome.unsqueeze(-1)).mul_(maskf)
    if int(torch.count_nonzero(residual)):  # NaN counts as non-zero too
        raise ValueError(
            f"the base estimator {cfg.base_estimator!r} returned advantages that are not one value per response "
            "(constant over its valid tokens); VGPO re-weights outcome advantages only"
        )
    weights = vgpo_weights(focus_scores, response_mask, index, cfg, positions=positions, scratch=advantages)
    if metrics is not None:
        metrics.update(vgpo_metrics(weights, focus_scores, response_mask, cfg))
    row_factor = outcome * weights.trajectory_weight if cfg.inter_trajectory else outcome
    if cfg.intra_trajectory:  # psi * (A alpha) * mask, in psi's buffer (psi is 1 at masked positions)
        return weights.token_weight.mul_(row_factor.unsqueeze(-1)).mul_(maskf)
    return torch.mul(maskf, row_factor.unsqueeze(-1), out=weights.token_weight)


def focus_position_bins(positions: Positions, bins: int = FOCUS_POSITION_BINS) -> torch.Tensor:
    """Bin of every token by relative position: floor(bins * (t-1)/(T-1)), the last bin holding u = 1.

    Computed as floor(bins * rank / max(T-1, 1)) from exact integers, so a token at u = k/bins lands in
    bin k exactly (no float rounding of u first; exact for responses shorter than 2**24 / bins tokens).
    Returns (bs, L) float32 bin numbers 0..bins-1 (meaningless at masked positions).
    """
    return positions.rank.mul(float(bins)).div_(positions.denom).floor_().clamp_max_(float(bins - 1))


def vgpo_metrics(
    weights: VGPOWeights, focus_scores: torch.Tensor, response_mask: torch.Tensor, cfg: VGPOConfig
) -> dict[str, float]:
    """The ``vgpo/*`` statistics, over valid tokens of trajectories that carry a focus signal.

    ``vgpo/focus/pos_bin_{k}`` (k = 0..FOCUS_POSITION_BINS-1) is the forgetting curve: the mean raw focus
    rho of the valid tokens whose position fraction u = (t-1)/(T-1) lies in [k/5, (k+1)/5) (the last bin
    includes u = 1). A bin without any token (e.g. every response has one token) is logged as NaN, never
    left out, so every step logs the same keys.
    """
    p = METRIC_PREFIX
    valid = weights.valid  # float 0/1: response tokens of rows with signal
    # rows with an empty response (e.g. the padding rows of verl's batch balancing) are not trajectories
    has_tokens = weights.positions.lengths > 0
    out: dict[str, float] = {
        p + "no_signal_fraction": float((has_tokens & ~weights.has_signal).sum()) / max(1, int(has_tokens.sum())),
    }
    count = float(valid.sum())
    if count == 0.0:
        return out
    rho = focus_scores.to(torch.float32).nan_to_num(0.0, posinf=0.0, neginf=0.0).mul_(valid)
    psi = weights.token_weight
    alpha = weights.trajectory_weight[weights.has_signal]
    low, high = cfg.token_weight_clip
    if low <= 1.0 <= high:
        # psi is 1 at masked positions and every row's psi spans 1 (its min is 1 - mean(w-hat) <= 1, its
        # max >= 1), so the plain min / max equal those over valid tokens; no masked temporary needed
        psi_sum = float(psi.sum(dtype=torch.float64)) - (valid.numel() - count)
        psi_min, psi_max = float(psi.amin()), float(psi.amax())
    else:
        scratch = torch.empty_like(rho)
        psi_sum = float(torch.mul(psi, valid, out=scratch).sum())
        # masked positions read +FLT_MAX / -FLT_MAX
        psi_min = float(torch.mul(valid, -_FLT_MAX, out=scratch).add_(_FLT_MAX).add_(psi).amin())
        psi_max = float(torch.mul(valid, _FLT_MAX, out=scratch).sub_(_FLT_MAX).add_(psi).amax())
    focus = _focus_by_position(rho, valid, weights.positions, weights.has_signal)
    focus_first, focus_last = focus["first_third"], focus["last_third"]
    out.update(
        {
            p + "token_weight/mean": psi_sum / count,
            p + "token_weight/min": psi_min,
            p + "token_weight/max": psi_max,
            p + "trajectory_weight/mean": float(alpha.mean()),
            p + "trajectory_weight/min": float(alpha.min()),
            p + "trajectory_weight/max": float(alpha.max()),
            p + "focus/mean": focus["mean"],
            p + "focus/first_third": focus_first,
            p + "focus/last_third": focus_last,
            p + "focus/last_over_first": focus_last / focus_first if focus_first != 0.0 else float("nan"),
            p + "gate_pass_rate": weights.gate_count / count if cfg.gate else 1.0,
        }
    )
    for k in range(FOCUS_POSITION_BINS):
        out[p + f"focus/pos_bin_{k}"] = focus[f"pos_bin_{k}"]
    return out


def _mean_or_nan(total: float, n: float) -> float:
    return total / n if n > 0 else float("nan")


def _focus_by_position(rho: torch.Tensor, valid: torch.Tensor, positions: Positions, has_signal: torch.Tensor):
    """Mean raw focus overall, in the first / last third (u < 1/3, u >= 2/3) and per position bin.

    rho: (bs, L) float32, 0 outside ``valid``. Without holes every such set is a column range [lo, hi)
    per row with integer bounds (first third: r < (T-1)/3, i.e. ceil((T-1)/3) tokens; last third:
    r >= ceil(2(T-1)/3); bin k starts at ceil(k(T-1)/5)), so one in-place cumulative sum of rho and a
    gather at the bounds give every sum; with holes each set is a float 0/1 selection over u.
    """
    out = {"mean": float(rho.sum()) / float(valid.sum())}
    if positions.contiguous:
        lengths = positions.lengths * has_signal.to(torch.int64)  # rows without signal count no token
        d = (positions.lengths - 1).clamp_min(1)
        zero = torch.zeros_like(lengths)
        starts = [zero, *[torch.minimum((k * d + FOCUS_POSITION_BINS - 1) // FOCUS_POSITION_BINS, lengths)
                          for k in range(1, FOCUS_POSITION_BINS)], lengths]
        first_end = torch.minimum((d + 2) // 3, lengths)
        last_start = torch.minimum((2 * d + 2) // 3, lengths)
        prefix = rho.cumsum_(dim=-1)  # rho is ours: sum of the first j tokens sits at column j - 1

        def range_mean(lo: torch.Tensor, hi: torch.Tensor) -> float:
            def upto(j):  # (bs,) sum of columns [0, j)
                return prefix.gather(1, (j - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1) * (j > 0)

            return _mean_or_nan(float((upto(hi) - upto(lo)).sum()), float((hi - lo).sum()))

        out["first_third"] = range_mean(zero, first_end)
        out["last_third"] = range_mean(last_start, lengths)
        for k in range(FOCUS_POSITION_BINS):
            out[f"pos_bin_{k}"] = range_mean(starts[k], starts[k + 1])
        return out
    u = positions.u
    scratch = torch.empty_like(rho)

    def masked_mean(select: torch.Tensor) -> float:  # select: float 0/1 within `valid`
        n = float(select.sum())
        return _mean_or_nan(float(select.mul_(rho).sum()), n)

    out["first_third"] = masked_mean(torch.lt(u, 1.0 / 3.0, out=scratch).mul_(valid))
    out["last_third"] = masked_mean(torch.ge(u, 2.0 / 3.0, out=scratch).mul_(valid))
    bins = focus_position_bins(positions)
    for k in range(FOCUS_POSITION_BINS):  # a loop over 5 bins, not over tokens
        out[f"pos_bin_{k}"] = masked_mean(torch.eq(bins, float(k), out=scratch).mul_(valid))
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
