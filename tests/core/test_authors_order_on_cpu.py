"""Regression test against the authors' order of computation .

The authors' implementation (github.com/wzb-bupt/VGPO, commit 63a9a8b, EasyR1-based; the actor's update
step and the trajectory weighting in its core_algos) computes VGPO in an order that differs from ours.
Restated here in our own words and our own code, one micro-batch at a time:

1. rho of every response position of the micro-batch, padding included (the re-padded hidden state
   there is zero, so its cosine is 0), min-max normalised with ONE global min and max over the whole
   micro-batch (epsilon 1e-8);
2. position fraction u = (t-1) / (T-1 + 1e-8) over the valid tokens, schedule c = beta * s(u) (Eq. 5;
   exponential clamps its ramp to [0, 1]; step: beta where u >= b);
3. gate (Eq. 6): in the tail window (valid tokens from int(gamma*T) on) the k-th largest normalised value
   (k = max(1, int(kappa * |window|))) is a threshold and every window token ``>=`` it passes;
   w = rho_norm * (1 + G * c) with the gate, rho_norm * (1 + c) without it, rho_norm without compensation;
4. per-trajectory min-max of w over valid tokens (Eq. 7), psi = clip(1 + w_hat - mean, 0.1, 2.0) (Eq. 8),
   1 at masked positions;
5. phi = sum of w_hat over valid tokens (Eq. 9); groups are consecutive blocks of ``rollout_n`` rows of the
   micro-batch; per group min-max of phi and alpha = clip(1 + phi_hat - mean, 0.9, 2.0) (Eq. 10-11);
6. advantage = A * alpha * psi.

Their code is correct (batch-independent and equal to Eq. 5-11) in one regime: the whole batch is one
micro-batch, the rollouts of a prompt are consecutive rows, padding is present (so the global min is the
0 of the padding) and no cosine is negative (so step 1 is a pure rescaling that Eq. 7 cancels), and the
values have no ties (float32 cosines of different hidden states). There our estimator must agree within
1e-5 for every schedule, with the gate on and off.
"""

import math

import numpy as np
import pytest
import torch

from verl_vgpo.advantage import compute_vgpo_advantage


def authors_order_advantage(base_advantage, rho, mask, rollout_n, schedule, beta, gate, gamma, kappa, a, p, b):
    """Our restatement of the authors' steps 1-6 on one micro-batch (float32)."""
    bs, L = rho.shape
    valid = mask.bool()
    # 1. global min-max over the whole micro-batch, padding (rho = 0 there) included
    rho_all = torch.where(valid, rho, torch.zeros_like(rho))
    lo, hi = rho_all.min(), rho_all.max()
    rho_norm = (rho_all - lo) / (hi - lo + 1e-8)
    psi = torch.ones(bs, L)
    phi = torch.zeros(bs)
    for i in range(bs):
        cols = valid[i].nonzero().squeeze(-1)
        T = cols.numel()
        x = rho_norm[i, cols]
        # 2. schedule over the position fraction of valid tokens
        u = torch.arange(T, dtype=torch.float32) / float(T - 1 + 1e-8)
        started = u >= a
        ramp = (u - a) / float(1.0 - a + 1e-8)
        if schedule == "linear":
            c = torch.where(started, beta * ramp, torch.zeros(T))
        elif schedule == "exponential":
            c = torch.where(started, beta * ramp.clamp(0.0, 1.0) ** p, torch.zeros(T))
        elif schedule == "step":
            c = torch.where(started & (u >= b), torch.full((T,), beta), torch.zeros(T))
        else:
            c = None
        # 3. gate by ">=" the k-th largest value of the tail window
        if c is None:
            w = x.clone()
        elif gate:
            g = torch.zeros(T)
            start = int(T * gamma)
            if start < T:
                window = x[start:]
                k = max(1, int(window.numel() * kappa))
                threshold = torch.sort(window, descending=True).values[k - 1]
                g[start:] = (window >= threshold).float()
            w = x * (1.0 + g * c)
        else:
            w = x * (1.0 + c)
        # 4. per-trajectory min-max and psi
        w_hat = (w - w.min()) / (w.max() - w.min() + 1e-8)
        psi[i, cols] = torch.clamp(1.0 + (w_hat - w_hat.mean()), 0.1, 2.0)
        phi[i] = w_hat.sum()
    # 5. consecutive groups of rollout_n rows
    alpha = torch.ones(bs)
    for start in range(0, bs - bs % rollout_n, rollout_n):
        group = phi[start : start + rollout_n]
        normalized = (group - group.min()) / (group.max() - group.min() + 1e-8)
        alpha[start : start + rollout_n] = torch.clamp(1.0 + normalized - normalized.mean(), 0.9, 2.0)
    # 6.
    return base_advantage * alpha.unsqueeze(-1) * psi


def regime_batch(seed, prompts=4, rollout_n=8, L=48):
    """Contiguous groups, every micro-batch padded, positive continuous cosines, an image in every prompt."""
    g = torch.Generator().manual_seed(seed)
    bs = prompts * rollout_n
    lengths = torch.randint(2, L + 1, (bs,), generator=g)
    lengths[0] = L - 3  # padding present in the micro-batch
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rho = torch.rand(bs, L, generator=g) * 0.9 + 0.05  # (0.05, 0.95): no negative cosine, no ties
    rho = rho * mask
    rewards = torch.zeros(bs, L)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    index = np.array([f"prompt-{i // rollout_n}" for i in range(bs)], dtype=object)
    return rewards, mask, rho, index


SCHEDULES = [
    ("none", {}),
    ("linear", {}),
    ("linear", {"compensation_start": 0.3}),
    ("exponential", {"compensation_exponent": 2.0}),
    ("exponential", {"compensation_exponent": 3.0, "compensation_start": 0.25}),
    ("step", {"compensation_step": 0.5}),
    ("step", {"compensation_step": 0.3, "compensation_start": 0.5}),
]


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("schedule,extra", SCHEDULES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_authors_order_of_computation_in_their_correct_regime(schedule, extra, gate, seed):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, rho, index = regime_batch(seed)
    vgpo = {
        "compensation": schedule,
        "compensation_strength": 0.5,
        "gate": gate,
        "gate_start": 0.5,
        "gate_top_ratio": 0.2,
        **extra,
    }
    ours, _ = compute_vgpo_advantage(rewards, mask, index, rho, {"norm_adv_by_std_in_grpo": True, "vgpo": vgpo})
    base = compute_grpo_outcome_advantage(rewards, mask, index)[0]
    theirs = authors_order_advantage(
        base,
        rho,
        mask,
        rollout_n=8,
        schedule=schedule,
        beta=0.5,
        gate=gate,
        gamma=0.5,
        kappa=0.2,
        a=extra.get("compensation_start", 0.0),
        p=extra.get("compensation_exponent", 2.0),
        b=extra.get("compensation_step", 0.5),
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.equal(ours, base)  # the re-weighting is active: the comparison can fail


def test_restatement_is_batch_dependent_outside_that_regime():
    """Sanity check of the restatement itself: with negative cosines its global min-max is no longer a
    rescaling and it departs from Eq. 5-11 (ours stays put), so the test above compares real steps."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, rho, index = regime_batch(5)
    rho = (rho - 0.4) * mask  # negative cosines
    base = compute_grpo_outcome_advantage(rewards, mask, index)[0]
    kwargs = dict(rollout_n=8, schedule="linear", beta=0.5, gate=True, gamma=0.5, kappa=0.2, a=0.0, p=2.0, b=0.5)
    theirs = authors_order_advantage(base, rho, mask, **kwargs)
    ours, _ = compute_vgpo_advantage(rewards, mask, index, rho, {"vgpo": {"compensation_strength": 0.5}})
    assert float((ours - theirs).abs().max()) > 1e-3
    assert math.isfinite(float(theirs.abs().max()))
