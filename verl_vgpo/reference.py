"""Readable per-row reference of the VGPO formulas (the paper's equations, arXiv 2604.09349).

Not used in training. Tests compare the vectorised estimator against it, and the benchmark measures the
vectorised estimator against it, so it is written the straightforward way: one trajectory at a time,
one group at a time, in float32, directly from the equations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from verl_vgpo.config import VGPOConfig

_EPS = 1e-8


def _schedule(u: torch.Tensor, cfg: VGPOConfig) -> torch.Tensor:
    a = cfg.compensation_start
    if cfg.compensation == "none":
        return torch.zeros_like(u)
    if cfg.compensation == "step":
        return ((u >= cfg.compensation_step) & (u >= a)).float()
    ramp = torch.clamp((u - a) / (1 - a), min=0.0)
    return ramp if cfg.compensation == "linear" else ramp**cfg.compensation_exponent


def row_factors(rho: torch.Tensor, cfg: VGPOConfig) -> tuple[torch.Tensor, float, torch.Tensor]:
    """psi (T,), phi and the gate (T,) of one trajectory from its T valid focus values rho (T,)."""
    T = rho.numel()
    w0 = torch.clamp(rho.float(), min=0.0)
    t = torch.arange(T, dtype=torch.float32)
    u = t / (T - 1) if T > 1 else torch.zeros(T)
    c = cfg.compensation_strength * _schedule(u, cfg)
    gate = torch.zeros(T, dtype=torch.bool)
    if cfg.gate:
        start = int(math.floor(cfg.gate_start * T))
        window = list(range(start, T))
        if window:
            k = max(1, int(math.floor(cfg.gate_top_ratio * len(window))))
            ranked = sorted(window, key=lambda j: (-float(w0[j]), j))
            gate[ranked[:k]] = True
    else:
        gate[:] = True
    w = w0 * (1 + gate.float() * c)
    w_hat = (w - w.min()) / (w.max() - w.min() + _EPS)
    lo, hi = cfg.token_weight_clip
    psi = torch.clamp(1 + w_hat - w_hat.mean(), lo, hi)
    phi = float(w_hat.double().sum()) if cfg.accumulation == "sum" else float(w_hat.double().mean())
    return psi, phi, gate


def reference_weights(
    focus_scores: torch.Tensor, response_mask: torch.Tensor, index: Any, cfg: VGPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """psi (bs, L) and alpha (bs,) computed row by row and group by group."""
    bs, L = response_mask.shape
    psi = torch.ones(bs, L)
    alpha = torch.ones(bs)
    phi: dict[int, float] = {}
    for i in range(bs):
        positions = response_mask[i].bool().nonzero(as_tuple=True)[0]
        rho = focus_scores[i, positions].float()
        if positions.numel() == 0 or not bool(torch.isfinite(rho).all()):
            continue
        row_psi, phi[i], _ = row_factors(rho, cfg)
        psi[i, positions] = row_psi
    groups: dict[Any, list[int]] = {}
    for i in range(bs):
        if i in phi:
            groups.setdefault(np.asarray(index)[i], []).append(i)
    lo, hi = cfg.trajectory_weight_clip
    for members in groups.values():
        values = torch.tensor([phi[i] for i in members], dtype=torch.float64)
        normalized = (values - values.min()) / (values.max() - values.min() + _EPS)
        for j, i in enumerate(members):
            alpha[i] = float(torch.clamp(1 + normalized[j] - normalized.mean(), lo, hi))
    return psi, alpha


def reference_advantage(
    base_advantages: torch.Tensor, focus_scores: torch.Tensor, response_mask: torch.Tensor, index: Any, cfg: VGPOConfig
) -> torch.Tensor:
    """A * alpha * psi from a precomputed base advantage, row by row."""
    psi, alpha = reference_weights(focus_scores, response_mask, index, cfg)
    out = base_advantages.float().clone()
    for i in range(out.shape[0]):
        factor = torch.ones(out.shape[1])
        if cfg.intra_trajectory:
            factor = factor * psi[i]
        if cfg.inter_trajectory:
            factor = factor * alpha[i]
        out[i] = out[i] * factor * response_mask[i].float()
    return out
