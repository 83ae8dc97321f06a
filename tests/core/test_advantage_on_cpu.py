"""compute_vgpo_advantage: hand-computed cases for every step, reductions, invariances, edge cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from verl_vgpo.advantage import (
    MissingFocusScoresError,
    compensation_schedule,
    compute_vgpo_advantage,
    group_minmax_normalize,
    position_fractions,
    tail_gate,
    vgpo_weights,
)
from verl_vgpo.config import VGPOConfig
from verl_vgpo.reference import reference_advantage, reference_weights


def algo(**vgpo):
    return {"norm_adv_by_std_in_grpo": True, "vgpo": vgpo}


def outcome_batch(lengths, rewards, L=None):
    """(rewards (bs, L) with the outcome on the last valid token, mask (bs, L))."""
    L = L or max(lengths)
    bs = len(lengths)
    mask = (torch.arange(L).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    token_rewards = torch.zeros(bs, L)
    for i, (n, r) in enumerate(zip(lengths, rewards)):
        if n:
            token_rewards[i, n - 1] = r
    return token_rewards, mask


def grpo(token_rewards, mask, index, norm=True):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    return compute_grpo_outcome_advantage(token_rewards, mask, index, norm_adv_by_std_in_grpo=norm)[0]


# ---------------------------------------------------------------- hand-computed steps


def test_schedules_by_hand():
    u = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    close = lambda a, b: torch.testing.assert_close(a, torch.tensor([b], dtype=torch.float32))  # noqa: E731
    close(compensation_schedule(u, VGPOConfig(compensation="linear")), [0.0, 0.25, 0.5, 0.75, 1.0])
    close(compensation_schedule(u, VGPOConfig(compensation="linear", compensation_start=0.5)), [0, 0, 0, 0.5, 1])
    close(compensation_schedule(u, VGPOConfig(compensation="exponential")), [0, 0.0625, 0.25, 0.5625, 1])
    close(
        compensation_schedule(u, VGPOConfig(compensation="exponential", compensation_exponent=3.0, compensation_start=0.5)),
        [0, 0, 0, 0.125, 1],
    )
    close(compensation_schedule(u, VGPOConfig(compensation="step")), [0, 0, 1, 1, 1])
    close(compensation_schedule(u, VGPOConfig(compensation="step", compensation_start=0.8)), [0, 0, 0, 0, 1])
    close(compensation_schedule(u, VGPOConfig(compensation="none")), [0, 0, 0, 0, 0])


def test_position_fraction_counts_valid_tokens_only():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    pos = position_fractions(mask)
    assert pos.lengths.tolist() == [3, 1, 0]
    assert not pos.contiguous  # row 0 has a hole
    torch.testing.assert_close(pos.u[0][mask[0]], torch.tensor([0.0, 0.5, 1.0]))
    assert pos.u[1, 0] == 0.0  # T == 1
    assert pos.rank[0][mask[0]].tolist() == [0, 1, 2]
    assert torch.all(pos.u[~mask] == 0)
    prefix = position_fractions(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]))
    assert prefix.contiguous and prefix.lengths.tolist() == [3, 1, 0]
    torch.testing.assert_close(prefix.u, torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0] * 4, [0.0] * 4]))


def test_mask_must_be_binary():
    with pytest.raises(ValueError, match="only 0 and 1"):
        position_fractions(torch.tensor([[1.0, 0.5]]))


def test_gate_keeps_exactly_k_tail_tokens_ties_to_earlier():
    w0 = torch.tensor([[0.99, 0.98, 0.97, 0.96, 0.95, 0.3, 0.9, 0.9, 0.1, 0.2]])
    mask = torch.ones_like(w0, dtype=torch.bool)
    pos = position_fractions(mask)
    # T=10, gamma=0.5: window = indices 5..9 (5 tokens); kappa 0.2 -> k = 1; tie 6/7 -> 6
    gate = tail_gate(w0, pos, VGPOConfig(gate_start=0.5, gate_top_ratio=0.2))
    assert gate.nonzero()[:, 1].tolist() == [6]
    # kappa 0.5 -> k = floor(2.5) = 2 -> 6 and 7, never the large weights before the window
    gate = tail_gate(w0, pos, VGPOConfig(gate_start=0.5, gate_top_ratio=0.5))
    assert gate.nonzero()[:, 1].tolist() == [6, 7]
    # kappa 0 still boosts one token (k = max(1, .))
    gate = tail_gate(w0, pos, VGPOConfig(gate_start=0.5, gate_top_ratio=0.0))
    assert int(gate.sum()) == 1
    # gamma 0.75 with T=10: window starts at floor(7.5) = 7
    gate = tail_gate(w0, pos, VGPOConfig(gate_start=0.75, gate_top_ratio=1.0))
    assert gate.nonzero()[:, 1].tolist() == [7, 8, 9]


def test_eq7_eq8_by_hand_without_compensation():
    rho = torch.tensor([[0.2, 0.6, 1.0]])
    mask = torch.ones(1, 3)
    w = vgpo_weights(rho, mask, np.array(["a"]), VGPOConfig(compensation="none", gate=False))
    torch.testing.assert_close(w.normalized_weight, torch.tensor([[0.0, 0.5, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.token_weight, torch.tensor([[0.5, 1.0, 1.5]]), atol=1e-6, rtol=0)


def test_eq5_to_eq8_by_hand_with_linear_compensation():
    rho = torch.tensor([[0.2, 0.6, 1.0]])
    cfg = VGPOConfig(compensation="linear", compensation_strength=0.5, gate=False)
    w = vgpo_weights(rho, torch.ones(1, 3), np.array(["a"]), cfg)
    # c = [0, .25, .5]; w = [0.2, 0.75, 1.5]; w_hat = [0, .55/1.3, 1]; mean = (1 + .55/1.3)/3
    w_hat = torch.tensor([0.0, 0.55 / 1.3, 1.0])
    torch.testing.assert_close(w.normalized_weight[0], w_hat, atol=1e-6, rtol=0)
    torch.testing.assert_close(w.token_weight[0], 1 + w_hat - w_hat.mean(), atol=1e-6, rtol=0)


def test_negative_cosines_are_floored_at_zero():
    rho = torch.tensor([[-0.8, -0.1, 0.4]])
    w = vgpo_weights(rho, torch.ones(1, 3), np.array(["a"]), VGPOConfig(compensation="none", gate=False))
    torch.testing.assert_close(w.normalized_weight, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)


def test_token_weight_clip():
    rho = torch.tensor([[0.0] * 9 + [1.0]])
    w = vgpo_weights(rho, torch.ones(1, 10), np.array(["a"]), VGPOConfig(compensation="none", gate=False, token_weight_clip=(0.95, 1.5)))
    # unclipped: 0.9 for the zeros, 1.9 for the one
    torch.testing.assert_close(w.token_weight[0], torch.tensor([0.95] * 9 + [1.5]))


def _phi_rows():
    # rows whose w_hat is [0, 1, 1, ...]: phi (sum) = T - 1 -> phi = 1, 2, 4
    lengths = [2, 3, 5]
    rho = torch.zeros(3, 5)
    for i, n in enumerate(lengths):
        rho[i, 1:n] = 1.0
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    return rho, mask


def test_eq9_to_eq11_by_hand_sum():
    rho, mask = _phi_rows()
    cfg = VGPOConfig(compensation="none", gate=False, trajectory_weight_clip=(0.1, 2.0))
    w = vgpo_weights(rho, mask, np.array(["g"] * 3), cfg)
    phi_hat = torch.tensor([0.0, 1 / 3, 1.0])
    torch.testing.assert_close(w.trajectory_weight, 1 + phi_hat - phi_hat.mean(), atol=1e-6, rtol=0)
    # default clip [0.9, 2.0]
    w = vgpo_weights(rho, mask, np.array(["g"] * 3), VGPOConfig(compensation="none", gate=False))
    torch.testing.assert_close(w.trajectory_weight, torch.tensor([0.9, 0.9, 1 + 1 - 4 / 9]), atol=1e-6, rtol=0)


def test_eq9_mean_accumulation_by_hand():
    rho, mask = _phi_rows()
    cfg = VGPOConfig(compensation="none", gate=False, accumulation="mean", trajectory_weight_clip=(0.1, 2.0))
    w = vgpo_weights(rho, mask, np.array(["g"] * 3), cfg)
    phi = torch.tensor([1 / 2, 2 / 3, 4 / 5])
    phi_hat = (phi - phi.min()) / (phi.max() - phi.min())
    torch.testing.assert_close(w.trajectory_weight, 1 + phi_hat - phi_hat.mean(), atol=1e-6, rtol=0)


def test_group_minmax_normalize_ignores_non_members():
    values = torch.tensor([1.0, 100.0, 3.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1])
    member = torch.tensor([True, False, True, True])
    normalized, mean = group_minmax_normalize(values, groups, 2, member)
    torch.testing.assert_close(normalized, torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(mean, torch.tensor([0.5, 0.5, 0.5, 0.0]), atol=1e-6, rtol=0)


def test_final_advantage_is_product_of_factors():
    tr, mask = outcome_batch([3, 3, 2], [1.0, 0.0, 1.0], L=4)
    index = np.array(["p", "p", "p"], dtype=object)
    rho = torch.tensor([[0.2, 0.6, 1.0, 0.0], [0.5, 0.1, 0.3, 0.0], [0.9, 0.8, 0.0, 0.0]])
    cfg_dict = algo(compensation="linear", compensation_strength=0.5)
    adv, ret = compute_vgpo_advantage(tr, mask, index, rho, cfg_dict)
    w = vgpo_weights(rho, mask, index, VGPOConfig.from_algorithm_config(cfg_dict))
    expected = grpo(tr, mask, index) * w.token_weight * w.trajectory_weight.unsqueeze(-1) * mask
    torch.testing.assert_close(adv, expected)
    assert ret is adv
    assert adv.dtype == torch.float32
    assert torch.all(adv[mask == 0] == 0)


# ---------------------------------------------------------------- reductions


def _random_batch(seed, bs=12, L=9, groups=3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (bs,), generator=g).tolist()
    rewards = torch.randint(0, 2, (bs,), generator=g).float().tolist()
    tr, mask = outcome_batch(lengths, rewards, L=L)
    rho = torch.rand(bs, L, generator=g) * 1.4 - 0.4
    index = np.array([f"uid{i % groups}" for i in range(bs)], dtype=object)
    return tr, mask, rho, index


@pytest.mark.parametrize("base", ["grpo", "rloo", "grpo_passk", "reinforce_plus_plus_baseline", "grpo_vectorized", "opo"])
def test_reduces_to_base_estimator_when_both_reweightings_are_off(base):
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    tr, mask, rho, index = _random_batch(0)
    config = algo(base_estimator=base, intra_trajectory=False, inter_trajectory=False)
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho, config)
    fn = get_adv_estimator_fn(base)
    expected = fn(token_level_rewards=tr, response_mask=mask, index=index, config=config)[0]
    torch.testing.assert_close(adv, expected.float())


@pytest.mark.parametrize("norm", [True, False])
def test_norm_adv_by_std_in_grpo_is_honoured(norm):
    tr, mask, rho, index = _random_batch(1)
    config = {"norm_adv_by_std_in_grpo": norm, "vgpo": {"intra_trajectory": False, "inter_trajectory": False}}
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho, config)
    torch.testing.assert_close(adv, grpo(tr, mask, index, norm=norm))


def test_reduces_to_base_when_focus_is_constant_within_every_trajectory():
    tr, mask, _, index = _random_batch(2)
    constant = torch.rand(tr.shape[0], 1).expand_as(tr).clone()
    # without compensation a constant focus gives w_hat = 0 everywhere: psi = alpha = 1
    adv, _ = compute_vgpo_advantage(tr, mask, index, constant, algo(compensation="none"))
    torch.testing.assert_close(adv, grpo(tr, mask, index))
    # with the default compensation a constant non-positive focus has w0 = 0: also psi = alpha = 1
    adv, _ = compute_vgpo_advantage(tr, mask, index, -constant, algo())
    torch.testing.assert_close(adv, grpo(tr, mask, index))


# ---------------------------------------------------------------- invariances


def test_row_permutation_permutes_output():
    tr, mask, rho, index = _random_batch(3, bs=16, groups=4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho, algo())
    adv_p, _ = compute_vgpo_advantage(tr[perm], mask[perm], index[perm.numpy()], rho[perm], algo())
    torch.testing.assert_close(adv_p, adv[perm])


def test_two_groups_together_equal_apart():
    tr, mask, rho, index = _random_batch(4, bs=8, groups=2)
    together, _ = compute_vgpo_advantage(tr, mask, index, rho, algo())
    for uid in ("uid0", "uid1"):
        rows = torch.as_tensor(index == uid).nonzero(as_tuple=True)[0]
        apart, _ = compute_vgpo_advantage(tr[rows], mask[rows], index[rows.numpy()], rho[rows], algo())
        torch.testing.assert_close(apart, together[rows])


def test_padding_length_does_not_matter():
    tr, mask, rho, index = _random_batch(5)
    pad = 7
    padded = [torch.cat([t, torch.zeros(t.shape[0], pad)], dim=1) for t in (tr, mask)]
    rho_padded = torch.cat([rho, torch.full((rho.shape[0], pad), float("nan"))], dim=1)
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho, algo())
    adv_padded, _ = compute_vgpo_advantage(padded[0], padded[1], index, rho_padded, algo())
    torch.testing.assert_close(adv_padded[:, : tr.shape[1]], adv)
    assert torch.all(adv_padded[:, tr.shape[1] :] == 0)


def test_values_at_masked_positions_are_ignored():
    tr, mask, rho, index = _random_batch(6)
    garbage = torch.where(mask.bool(), rho, torch.full_like(rho, float("nan")))
    torch.testing.assert_close(
        compute_vgpo_advantage(tr, mask, index, garbage, algo())[0], compute_vgpo_advantage(tr, mask, index, rho, algo())[0]
    )


# ---------------------------------------------------------------- edge cases


def test_nan_row_gets_unit_factors_and_leaves_its_group_normalisation():
    tr, mask, rho, index = _random_batch(7, bs=4, groups=1)
    rho_nan = rho.clone()
    rho_nan[0] = float("nan")
    cfg = VGPOConfig()
    w = vgpo_weights(rho_nan, mask, index, cfg)
    assert w.trajectory_weight[0] == 1.0 and torch.all(w.token_weight[0] == 1.0)
    assert torch.all(w.normalized_weight[0] == 0.0)  # no NaN left behind by the row's empty min/max
    assert w.has_signal.tolist() == [False, True, True, True]
    w_rest = vgpo_weights(rho[1:], mask[1:], index[1:], cfg)
    torch.testing.assert_close(w.trajectory_weight[1:], w_rest.trajectory_weight)
    # final advantage of the NaN row is exactly the base advantage
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho_nan, algo())
    torch.testing.assert_close(adv[0], grpo(tr, mask, index)[0])
    metrics = {}
    compute_vgpo_advantage(tr, mask, index, rho_nan, algo(), metrics=metrics)
    assert metrics["vgpo/no_signal_fraction"] == 0.25


def test_partially_non_finite_row_has_no_signal():
    tr, mask, rho, index = _random_batch(8, bs=4, groups=1)
    rho[1, 0] = float("inf")
    assert vgpo_weights(rho, mask, index, VGPOConfig()).has_signal[1].item() is False


def test_zero_length_response_and_single_member_group():
    tr, mask = outcome_batch([0, 3, 4, 2], [1.0, 1.0, 0.0, 1.0], L=5)
    index = np.array(["a", "b", "b", "solo"], dtype=object)
    rho = torch.rand(4, 5)
    adv, _ = compute_vgpo_advantage(tr, mask, index, rho, algo())
    assert torch.all(adv[0] == 0) and torch.isfinite(adv).all()
    w = vgpo_weights(rho, mask, index, VGPOConfig())
    assert w.has_signal[0].item() is False
    assert w.trajectory_weight[3] == 1.0  # group of one: phi_hat = mean = 0


def test_all_equal_rewards_give_zero_advantage():
    tr, mask = outcome_batch([3, 4, 5], [1.0, 1.0, 1.0])
    adv, _ = compute_vgpo_advantage(tr, mask, np.array(["a"] * 3), torch.rand(3, 5), algo())
    assert torch.all(adv == 0)


def test_missing_focus_scores_raise_a_helpful_error():
    tr, mask, _, index = _random_batch(9)
    with pytest.raises(MissingFocusScoresError, match="focus_scores_for_advantage"):
        compute_vgpo_advantage(tr, mask, index, None, algo())


def test_shape_mismatch_is_an_error():
    tr, mask, rho, index = _random_batch(10)
    with pytest.raises(ValueError, match="shape of response_mask"):
        compute_vgpo_advantage(tr, mask, index, rho[:, :-1], algo())


def test_metrics_cover_spec_section_6():
    tr, mask, rho, index = _random_batch(11)
    metrics = {}
    compute_vgpo_advantage(tr, mask, index, rho, algo(), metrics=metrics)
    for key in (
        "token_weight/mean", "token_weight/min", "token_weight/max",
        "trajectory_weight/mean", "trajectory_weight/min", "trajectory_weight/max",
        "focus/mean", "focus/first_third", "focus/last_third", "focus/last_over_first",
        "gate_pass_rate", "no_signal_fraction", "timing/reweight_s",
        *(f"focus/pos_bin_{k}" for k in range(5)),
    ):  # fmt: skip
        assert math.isfinite(metrics["vgpo/" + key]), key
    valid = mask.bool()
    assert metrics["vgpo/focus/mean"] == pytest.approx(float(rho[valid].mean()), abs=1e-6)


# ---------------------------------------------------------------- property: vectorised == per-row reference

configs = st.builds(
    VGPOConfig,
    intra_trajectory=st.booleans(),
    inter_trajectory=st.booleans(),
    compensation=st.sampled_from(["none", "linear", "exponential", "step"]),
    compensation_strength=st.floats(0, 2),
    compensation_start=st.sampled_from([0.0, 0.25, 0.5]),
    compensation_exponent=st.sampled_from([0.5, 2.0, 3.0]),
    compensation_step=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    gate=st.booleans(),
    gate_start=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    gate_top_ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    accumulation=st.sampled_from(["sum", "mean"]),
    token_weight_clip=st.sampled_from([(0.1, 2.0), (0.5, 1.5)]),
    trajectory_weight_clip=st.sampled_from([(0.9, 2.0), (0.1, 3.0)]),
)


@settings(max_examples=60, deadline=None)
@given(cfg=configs, seed=st.integers(0, 10_000), discrete=st.booleans())
# two rollouts of one prompt whose phi are equal up to float32 rounding (both 5/3): a tie for Eq. 10
@example(cfg=VGPOConfig(compensation="step", compensation_strength=2.0, compensation_step=0.5, gate=True,
                        gate_start=0.0, gate_top_ratio=0.5, accumulation="sum", token_weight_clip=(0.1, 2.0),
                        trajectory_weight_clip=(0.9, 2.0)), seed=278, discrete=True)
def test_vectorised_matches_per_row_reference(cfg, seed, discrete):
    g = torch.Generator().manual_seed(seed)
    bs, L = 10, 11
    lengths = torch.randint(0, L + 1, (bs,), generator=g)
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()
    if discrete:  # few distinct values: exercises gate ties
        rho = torch.randint(-1, 3, (bs, L), generator=g).float() / 2
    else:
        rho = torch.rand(bs, L, generator=g) * 2 - 0.5
    rho[torch.rand(bs, generator=g) < 0.15] = float("nan")
    index = np.array([f"u{int(i)}" for i in torch.randint(0, 3, (bs,), generator=g)], dtype=object)
    w = vgpo_weights(rho, mask, index, cfg)
    psi_ref, alpha_ref = reference_weights(rho, mask, index, cfg)
    torch.testing.assert_close(w.token_weight, psi_ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(w.trajectory_weight, alpha_ref, atol=2e-5, rtol=0)
    rewards = torch.randint(0, 2, (bs,), generator=g).float()
    token_rewards = torch.zeros(bs, L)
    rows = (lengths > 0).nonzero(as_tuple=True)[0]
    token_rewards[rows, lengths[rows] - 1] = rewards[rows]
    ours, _ = compute_vgpo_advantage(token_rewards, mask, index, rho, {"vgpo": dict(cfg.__dict__)})
    expected = reference_advantage(grpo(token_rewards, mask, index), rho, mask, index, cfg)
    torch.testing.assert_close(ours, expected, atol=5e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(cfg=configs, seed=st.integers(0, 10_000), discrete=st.booleans())
def test_vectorised_matches_per_row_reference_with_holes(cfg, seed, discrete):
    """Masks with holes (multi-turn tool outputs): positions count valid tokens only, the gate window too."""
    g = torch.Generator().manual_seed(seed)
    bs, L = 10, 13
    mask = (torch.rand(bs, L, generator=g) < 0.7).float()
    mask[0] = 0.0
    mask[1, 3] = 0.0  # at least one hole
    mask[1, :3] = 1.0
    mask[1, 4] = 1.0
    if discrete:
        rho = torch.randint(-1, 3, (bs, L), generator=g).float() / 2
    else:
        rho = torch.rand(bs, L, generator=g) * 2 - 0.5
    rho[mask == 0] = float("nan")  # garbage where the mask hides it
    index = np.array([f"u{int(i)}" for i in torch.randint(0, 3, (bs,), generator=g)], dtype=object)
    w = vgpo_weights(rho, mask, index, cfg)
    assert not w.positions.contiguous
    psi_ref, alpha_ref = reference_weights(rho, mask, index, cfg)
    torch.testing.assert_close(w.token_weight, psi_ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(w.trajectory_weight, alpha_ref, atol=2e-5, rtol=0)


def test_gate_with_holes_counts_valid_tokens_only():
    # valid columns 0, 2, 3, 5, 6, 8 (T = 6); gamma 0.5 -> window = ranks 3..5 = columns 5, 6, 8
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0, 1]], dtype=torch.float32)
    w0 = torch.tensor([[0.9, 5.0, 0.8, 0.7, 5.0, 0.1, 0.3, 5.0, 0.3]])
    pos = position_fractions(mask)
    gate = tail_gate(w0 * mask, pos, VGPOConfig(gate_start=0.5, gate_top_ratio=0.5))  # k = 1; tie 6/8 -> 6
    assert gate.nonzero()[:, 1].tolist() == [6]
    gate = tail_gate(w0 * mask, pos, VGPOConfig(gate_start=0.5, gate_top_ratio=1.0))
    assert gate.nonzero()[:, 1].tolist() == [5, 6, 8]


def test_gate_ties_keep_the_earliest_positions_across_buckets(monkeypatch):
    """Many equal weights (w0 = 0 after the floor): exactly k pass, the earliest; bucketing does not matter."""
    import verl_vgpo.advantage as advantage

    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 40, (37,), generator=g)
    mask = (torch.arange(40).unsqueeze(0) < lengths.unsqueeze(1)).float()
    w0 = (torch.randint(0, 3, (37, 40), generator=g).float() / 2) * mask
    cfg = VGPOConfig(gate_start=0.3, gate_top_ratio=0.5)
    pos = position_fractions(mask)
    expected = tail_gate(w0, pos, cfg)
    for i in range(37):
        T = int(lengths[i])
        start = int(0.3 * T)
        k = max(1, int(0.5 * (T - start)))
        ranked = sorted(range(start, T), key=lambda j: (-float(w0[i, j]), j))[:k]
        assert expected[i].nonzero().squeeze(-1).tolist() == sorted(ranked)
    monkeypatch.setattr(advantage, "_GATE_BUCKET_ROWS", 5)
    torch.testing.assert_close(tail_gate(w0, pos, cfg), expected, rtol=0, atol=0)


def test_gate_refuses_negative_weights():
    mask = torch.ones(1, 4)
    with pytest.raises(ValueError, match=">= 0"):
        tail_gate(torch.tensor([[0.1, -0.2, 0.3, 0.4]]), position_fractions(mask), VGPOConfig())


# ---------------------------------------------------------------- forgetting curve metric


def test_focus_position_bins_by_hand():
    from verl_vgpo.advantage import FOCUS_POSITION_BINS

    assert FOCUS_POSITION_BINS == 5
    # T = 11: u = 0, .1, ..., 1 -> bins 0,0,1,1,2,2,3,3,4,4,4 (u = 0.2 exactly is bin 1; u = 1 is in the last bin)
    L = 11
    rho = torch.arange(L, dtype=torch.float32).unsqueeze(0) / 10  # rho = u
    tr, mask = outcome_batch([L, 1], [1.0, 0.0], L=L)
    rho = torch.cat([rho, torch.full((1, L), 0.5)])
    metrics = {}
    compute_vgpo_advantage(tr, mask, np.array(["a", "a"], dtype=object), rho, algo(), metrics=metrics)
    # the one-token row has u = 0: bin 0
    expected = [(0.0 + 0.1 + 0.5) / 3, (0.2 + 0.3) / 2, (0.4 + 0.5) / 2, (0.6 + 0.7) / 2, (0.8 + 0.9 + 1.0) / 3]
    for k, value in enumerate(expected):
        assert metrics[f"vgpo/focus/pos_bin_{k}"] == pytest.approx(value, abs=1e-6), k


def test_focus_position_bins_empty_bin_is_nan_and_no_signal_rows_are_left_out():
    # T = 2: u = 0 (bin 0) and u = 1 (bin 4); bins 1-3 have no token -> NaN, the keys are still logged
    tr, mask = outcome_batch([2, 3], [1.0, 0.0], L=3)
    rho = torch.tensor([[0.25, 0.75, 0.0], [float("nan")] * 3])  # row 1: no visual token
    metrics = {}
    compute_vgpo_advantage(tr, mask, np.array(["a", "a"], dtype=object), rho, algo(), metrics=metrics)
    assert metrics["vgpo/focus/pos_bin_0"] == pytest.approx(0.25)
    assert metrics["vgpo/focus/pos_bin_4"] == pytest.approx(0.75)
    for k in (1, 2, 3):
        assert math.isnan(metrics[f"vgpo/focus/pos_bin_{k}"])


def test_focus_position_bins_count_valid_tokens_of_rows_with_holes():
    # valid columns 0, 2, 4 (T = 3): u = 0, 0.5, 1 -> bins 0, 2, 4; negative focus is kept raw
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    tr = torch.zeros(1, 5)
    rho = torch.tensor([[-0.5, 9.0, 0.25, 9.0, 0.5]])
    metrics = {}
    compute_vgpo_advantage(tr, mask, np.array(["a"], dtype=object), rho, algo(), metrics=metrics)
    assert [metrics[f"vgpo/focus/pos_bin_{k}"] for k in (0, 2, 4)] == pytest.approx([-0.5, 0.25, 0.5])
    assert math.isnan(metrics["vgpo/focus/pos_bin_1"]) and math.isnan(metrics["vgpo/focus/pos_bin_3"])


def test_focus_position_bins_match_a_loop_over_tokens():
    tr, mask, rho, index = _random_batch(12, bs=16, L=23)
    metrics = {}
    compute_vgpo_advantage(tr, mask, index, rho, algo(), metrics=metrics)
    sums, counts = [0.0] * 5, [0] * 5
    for i in range(16):
        cols = mask[i].nonzero().squeeze(-1).tolist()
        T = len(cols)
        for t, c in enumerate(cols):
            u = t / (T - 1) if T > 1 else 0.0
            k = min(4, int(math.floor(u * 5 + 1e-9)))
            sums[k] += float(rho[i, c])
            counts[k] += 1
    for k in range(5):
        assert metrics[f"vgpo/focus/pos_bin_{k}"] == pytest.approx(sums[k] / counts[k], abs=1e-6)


@pytest.mark.parametrize("clip", [(0.1, 2.0), (1.05, 2.0)])
def test_metrics_equal_plain_masked_statistics(clip):
    """Both metric paths (bounds on prefix masks, selections with holes) and the psi shortcuts agree with
    plain statistics over the valid tokens of rows with signal."""
    import dataclasses

    from verl_vgpo.advantage import _focus_by_position

    tr, mask, rho, index = _random_batch(13, bs=24, L=31, groups=6)
    rho[3] = float("nan")  # a row without signal
    cfg_dict = algo(token_weight_clip=list(clip))
    metrics = {}
    compute_vgpo_advantage(tr, mask, index, rho, cfg_dict, metrics=metrics)
    w = vgpo_weights(rho, mask, index, VGPOConfig.from_algorithm_config(cfg_dict))
    valid = mask.bool() & w.has_signal.unsqueeze(-1)
    psi = w.token_weight[valid]
    assert metrics["vgpo/token_weight/mean"] == pytest.approx(float(psi.mean()), abs=1e-6)
    assert metrics["vgpo/token_weight/min"] == pytest.approx(float(psi.min()), abs=1e-7)
    assert metrics["vgpo/token_weight/max"] == pytest.approx(float(psi.max()), abs=1e-7)
    u = w.position_fraction
    assert metrics["vgpo/focus/first_third"] == pytest.approx(float(rho[valid & (u < 1 / 3)].mean()), abs=1e-6)
    assert metrics["vgpo/focus/last_third"] == pytest.approx(float(rho[valid & (u >= 2 / 3)].mean()), abs=1e-6)
    clean = rho.nan_to_num(0.0) * valid
    assert w.positions.contiguous
    generic = _focus_by_position(clean.clone(), valid.float(), dataclasses.replace(w.positions, contiguous=False), w.has_signal)
    bounds = _focus_by_position(clean.clone(), valid.float(), w.positions, w.has_signal)
    assert generic.keys() == bounds.keys()
    for key in generic:
        assert bounds[key] == pytest.approx(generic[key], abs=1e-6), key


def test_reweight_refuses_an_advantage_that_varies_within_a_response():
    from verl_vgpo.advantage import reweight_advantage

    tr, mask, rho, index = _random_batch(14)
    base = grpo(tr, mask, index)
    ok = reweight_advantage(base.clone(), rho, mask, index, VGPOConfig())
    torch.testing.assert_close(ok, compute_vgpo_advantage(tr, mask, index, rho, algo())[0])
    token_level = base.clone()
    row = int(mask.sum(-1).argmax())
    token_level[row, 0] += 0.5  # e.g. a GAE-style per-token advantage
    with pytest.raises(ValueError, match="one value per response"):
        reweight_advantage(token_level, rho, mask, index, VGPOConfig())


def test_large_exponent_with_short_rows_beside_long_ones_stays_finite():
    """Review bug: short rows sharing a gate bucket with long ones saw u > 1 past their own tokens, and a
    large exponent overflowed that to inf, then NaN through the whole uid group."""
    L = 2048
    lengths = torch.tensor([2, 3, 2048, 1500, 10, 700, 2048, 40])
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()
    g = torch.Generator().manual_seed(0)
    rho = torch.rand(len(lengths), L, generator=g)
    index = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    for start in (0.0, 0.9):
        cfg = VGPOConfig(compensation="exponential", compensation_exponent=12.0, compensation_start=start)
        w = vgpo_weights(rho, mask, index, cfg)
        assert torch.isfinite(w.token_weight).all() and torch.isfinite(w.trajectory_weight).all()
        psi_ref, alpha_ref = reference_weights(rho, mask, index, cfg)
        torch.testing.assert_close(w.token_weight, psi_ref, atol=2e-5, rtol=0)
        torch.testing.assert_close(w.trajectory_weight, alpha_ref, atol=2e-5, rtol=0)


def test_a_hole_is_seen_in_rows_longer_than_float32_can_count():
    """Review bug: above 2**24 the prefix test compared an exact float64 column sum with a float32-rounded
    T(T-1)/2, so a row with a hole next to its end (T = 6003) passed for contiguous."""

    T = 6003
    mask = torch.zeros(1, T + 1)
    mask[0, : T - 1] = 1.0
    mask[0, T] = 1.0  # valid columns 0..T-2 and T: T valid tokens with one hole at column T-1
    positions = position_fractions(mask)
    assert not positions.contiguous
    assert positions.rank[0, T].item() == T - 1
