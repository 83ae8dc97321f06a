"""verl's real V1 trainer classes with VGPO's layer, driven through fakes of TQ and the workers.

What is faked (and why) is described in tests/wiring/fakes.py; the trainer objects, verl's config,
``step()``, ``_balance_batch``, ``_compute_old_log_prob``, ``_compute_advantage``, ``compute_advantage``,
the MetricsAggregator and the vgpo estimator are the real ones.
"""

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from tests.wiring.fakes import DEFAULT_SEQUENCES, Sequence, focus_value, stored_padded, uid_array
from verl_vgpo.advantage import compute_vgpo_advantage
from verl_vgpo.config import VGPOConfigError
from verl_vgpo.wiring.keys import (
    CAPTURE_FOCUS_FLAG,
    FOCUS_OUTPUT_KEY,
    FOCUS_SECONDS_KEY,
    FOCUS_VISUAL_TOKENS_KEY,
    METRIC_PREFIX,
)
from verl_vgpo.wiring.trainer import (
    FOCUS_CAPTURE_TIME_METRIC,
    FOCUS_FETCH_TIME_METRIC,
    VGPO_TRAINERS,
    FocusLayoutError,
    MissingFocusFieldError,
    NoVisualSignalError,
    PPOTrainerColocateAsyncWithVGPO,
    PPOTrainerSeparateAsyncWithVGPO,
    PPOTrainerSyncWithVGPO,
    VGPOTrainerMixin,
    register_trainers,
)

KEYS = [s.key for s in DEFAULT_SEQUENCES]


def expected_focus(sequences, shift=0):
    """(bs, R) focus the estimator must see: response token t of row i at position prompt_len + t + shift."""
    width = max(s.response_len for s in sequences)
    out = torch.full((len(sequences), width), float("nan"))
    for i, s in enumerate(sequences):
        for t in range(s.response_len):
            out[i, t] = focus_value(i, s.prompt_len + t + shift) if s.has_image else float("nan")
    return out


def expected_vgpo(sequences, algorithm_config, shift=0):
    width = max(s.response_len for s in sequences)
    mask = torch.zeros(len(sequences), width, dtype=torch.int64)
    rewards = torch.zeros(len(sequences), width)
    for i, s in enumerate(sequences):
        mask[i, : s.response_len] = 1
        rewards[i, s.response_len - 1] = s.reward
    metrics = {}
    advantages, _ = compute_vgpo_advantage(
        rewards, mask, uid_array(sequences), expected_focus(sequences, shift), config=algorithm_config, metrics=metrics
    )
    return advantages, metrics


def same_number(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------


def test_registry_holds_a_vgpo_trainer_for_each_verl_mode():
    register_trainers()  # idempotent: the plugin already ran it on `import verl`
    register_trainers()
    for mode, verl_cls in (
        ("sync", PPOTrainerSync),
        ("colocate_async", PPOTrainerColocateAsync),
        ("separate_async", PPOTrainerSeparateAsync),
    ):
        cls = trainer_base.get_trainer_cls(mode)
        assert cls is VGPO_TRAINERS[mode]
        assert issubclass(cls, verl_cls)
        # the mixin wraps the mode's own methods (separate_async overrides _compute_old_log_prob)
        assert cls.__mro__[1] is VGPOTrainerMixin and cls.__mro__[2] is verl_cls


def test_a_registry_entry_from_another_plugin_is_not_overwritten(monkeypatch):
    class SomeoneElsesTrainer(PPOTrainerSync):
        pass

    monkeypatch.setitem(trainer_base.TRAINER_REGISTRY, "sync", SomeoneElsesTrainer)
    with pytest.raises(RuntimeError, match="another plugin replaced it"):
        register_trainers()
    assert trainer_base.TRAINER_REGISTRY["sync"] is SomeoneElsesTrainer


def run_fresh_python(script):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("VERL_USE_EXTERNAL_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("first_import", ["verl", "verl_vgpo.wiring.trainer"])
def test_plain_import_verl_installs_the_trainers_and_the_legacy_guard(first_import):
    # a fresh process: only the verl.plugins entry point runs our code (also when the trainer layer is
    # imported before verl, which then loads the plugin while importing the layer)
    script = (
        f"import {first_import}\n"
        "from verl.trainer.ppo.ray_trainer import RayPPOTrainer\n"
        "from omegaconf import OmegaConf\n"
        "from verl_vgpo.config import VGPOConfigError\n"
        "try:\n"
        "    RayPPOTrainer(OmegaConf.create({'algorithm': {'adv_estimator': 'vgpo'}}), None, {}, None)\n"
        "    raise SystemExit('the legacy trainer accepted vgpo')\n"
        "except VGPOConfigError:\n"
        "    pass\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print([get_trainer_cls(m).__name__ for m in ('sync', 'colocate_async', 'separate_async')])\n"
    )
    names = ["PPOTrainerSyncWithVGPO", "PPOTrainerColocateAsyncWithVGPO", "PPOTrainerSeparateAsyncWithVGPO"]
    assert run_fresh_python(script) == f"{names}"


# ------------------------------------------------------------------------------------------------
# one full step through verl's real step() (sync mode)
# ------------------------------------------------------------------------------------------------


def test_step_hands_own_position_focus_to_the_estimator_and_logs_its_metrics(make_config, make_rig):
    config = make_config(**{"actor_rollout_ref.actor.use_kl_loss": True})  # adds the ref log-prob pass
    rig = make_rig(PPOTrainerSyncWithVGPO, config)
    metrics, timing = {}, {}

    rig.trainer.step(metrics, timing)

    # the capture request reaches the old-log-prob pass only (the ref pass and the update do not ask)
    assert rig.workers.names() == ["compute_log_prob", "compute_log_prob", "update_actor"]
    old_pass, ref_pass, update = (info for _, info in rig.workers.calls)
    assert old_pass[CAPTURE_FOCUS_FLAG] is True
    assert old_pass[FOCUS_VISUAL_TOKENS_KEY] == ["image", "video"]
    assert "calculate_entropy" in old_pass  # verl's own extra_info is still set by verl
    for info in (ref_pass, update):
        assert CAPTURE_FOCUS_FLAG not in info and FOCUS_VISUAL_TOKENS_KEY not in info

    # the advantages written to TQ are VGPO's with the focus of each token's own position ...
    advantages = stored_padded(rig.fake_tq, KEYS, "advantages")
    want, want_metrics = expected_vgpo(DEFAULT_SEQUENCES, config.algorithm)
    torch.testing.assert_close(advantages, want)
    # ... and not those of the log-prob window (shift by one), which this batch tells apart
    shifted, _ = expected_vgpo(DEFAULT_SEQUENCES, config.algorithm, shift=-1)
    assert not torch.allclose(advantages, shifted)

    # the estimator's metrics, the fetch time and the engine's capture time reach the step metrics; the
    # focus and its per-row seconds come in one TQ read
    assert [FOCUS_OUTPUT_KEY, FOCUS_SECONDS_KEY, "response_mask"] in rig.fake_tq.get_calls
    vgpo_keys = {k for k in want_metrics if not k.startswith(METRIC_PREFIX + "timing/")}
    assert {METRIC_PREFIX + "token_weight/mean", METRIC_PREFIX + "trajectory_weight/max"} <= vgpo_keys
    for key in vgpo_keys:
        assert same_number(metrics[key], want_metrics[key]), key
    assert metrics[METRIC_PREFIX + "no_signal_fraction"] == pytest.approx(1 / 6)
    assert metrics[FOCUS_FETCH_TIME_METRIC] >= 0.0
    assert metrics[FOCUS_CAPTURE_TIME_METRIC] == pytest.approx(sum(rig.workers.focus_seconds_per_micro_batch))
    assert METRIC_PREFIX + "timing/reweight_s" in metrics
    assert "actor/pg_loss" in metrics  # verl's own metrics are still there


def test_other_estimators_run_exactly_as_verls_trainer(make_config, make_rig, fake_tq):
    config = make_config(**{"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.use_kl_loss": True})
    results = []
    for cls in (PPOTrainerSync, PPOTrainerSyncWithVGPO):
        fake_tq.rows.clear()
        fake_tq.get_calls.clear()
        rig = make_rig(cls, config)
        metrics = {}
        rig.trainer.step(metrics, {})
        if cls is PPOTrainerSyncWithVGPO:
            assert rig.trainer.vgpo_config is None
        assert all(CAPTURE_FOCUS_FLAG not in info for _, info in rig.workers.calls)
        assert not any(FOCUS_OUTPUT_KEY in names for names in fake_tq.get_calls)
        results.append((stored_padded(fake_tq, KEYS, "advantages"), metrics, rig.workers.names()))

    (adv_verl, metrics_verl, calls_verl), (adv_ours, metrics_ours, calls_ours) = results
    assert torch.equal(adv_verl, adv_ours)
    assert calls_verl == calls_ours
    assert metrics_verl.keys() == metrics_ours.keys()
    for key in metrics_verl:
        assert same_number(float(metrics_verl[key]), float(metrics_ours[key])), key
    assert not any(k.startswith(METRIC_PREFIX) for k in metrics_ours)


# ------------------------------------------------------------------------------------------------
# every mode: old-log-prob + advantage through the registered class
# ------------------------------------------------------------------------------------------------

MODE_OVERRIDES = {
    "sync": {},
    "colocate_async": {"trainer.v1.trainer_mode": "colocate_async"},
    "separate_async": {
        "trainer.v1.trainer_mode": "separate_async",
        "trainer.v1.separate_async.parameter_sync_step": 1,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 2,
        "actor_rollout_ref.rollout.nnodes": 1,
        "actor_rollout_ref.rollout.n_gpus_per_node": 1,
        "actor_rollout_ref.rollout.checkpoint_engine.backend": "nccl",
    },
}


@pytest.mark.parametrize("mode", sorted(MODE_OVERRIDES))
def test_every_mode_captures_and_consumes_focus(mode, make_config, make_rig):
    config = make_config(**MODE_OVERRIDES[mode])
    rig = make_rig(trainer_base.get_trainer_cls(mode), config)
    batch = rig.batch_factory()
    metrics = {}
    # separate_async recomputes later mini-batches on the restored old policy: exercise that path
    rig.trainer.local_trigger_step = 1 if mode == "separate_async" else 0

    batch = rig.trainer._compute_old_log_prob(batch, metrics)
    assert CAPTURE_FOCUS_FLAG not in batch.extra_info
    batch = rig.trainer._compute_advantage(batch, metrics)
    assert metrics[FOCUS_CAPTURE_TIME_METRIC] == pytest.approx(sum(rig.workers.focus_seconds_per_micro_batch))

    if mode == "separate_async":
        assert rig.workers.names() == [
            "save_model_to_cpu(1)",
            "restore_model_from_cpu(0)",
            "compute_log_prob",
            "restore_model_from_cpu(1)",
            "clear_cpu_model(1)",
        ]
    flagged = [info for name, info in rig.workers.calls if name == "compute_log_prob"]
    assert len(flagged) == 1 and flagged[0][CAPTURE_FOCUS_FLAG] is True
    want, _ = expected_vgpo(DEFAULT_SEQUENCES, config.algorithm)
    torch.testing.assert_close(stored_padded(rig.fake_tq, KEYS, "advantages"), want)
    assert METRIC_PREFIX + "token_weight/mean" in metrics


def test_capture_request_is_removed_when_the_pass_fails(make_config, make_rig):
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config())
    batch = rig.batch_factory()

    def failing_compute_log_prob(batch):
        raise RuntimeError("worker died")

    rig.workers.compute_log_prob = failing_compute_log_prob
    with pytest.raises(RuntimeError, match="worker died"):
        rig.trainer._compute_old_log_prob(batch, {})
    assert CAPTURE_FOCUS_FLAG not in batch.extra_info and FOCUS_VISUAL_TOKENS_KEY not in batch.extra_info


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_missing_focus_field_says_to_install_the_plugin_in_every_worker(make_config, make_rig):
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config())
    rig.workers.focus_mode = "none"  # what a worker without verl-vgpo writes: log-probs only
    with pytest.raises(MissingFocusFieldError, match="every Ray worker") as error:
        rig.trainer.step({}, {})
    assert "VERL_USE_EXTERNAL_PLUGINS" in str(error.value) and "'vgpo_focus'" in str(error.value)


def test_a_first_batch_without_any_image_is_refused_later_text_only_batches_are_not(make_config, make_rig):
    # a data set without images: every rollout of the first batch lacks visual tokens
    text_only = [replace(s, has_image=False) for s in DEFAULT_SEQUENCES]
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config(), text_only)
    with pytest.raises(NoVisualSignalError, match="data.image_key"):
        rig.trainer.step({}, {})
    # once a batch had images, an all-text batch (mixed data) is valid input with neutral weights
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config(), text_only)
    rig.trainer._vgpo_visual_signal_seen = True
    metrics = {}
    rig.trainer.step(metrics, {})
    assert metrics[METRIC_PREFIX + "no_signal_fraction"] == 1.0


def test_focus_over_the_full_sequence_is_rejected(make_config, make_rig):
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config())
    rig.workers.focus_mode = "full"
    with pytest.raises(FocusLayoutError, match=r"focus row 0 has 9 positions but its response has \d+ tokens"):
        rig.trainer.step({}, {})


def test_agent_loops_with_several_outputs_per_session_are_refused(make_config, make_rig):
    sequences = [
        Sequence("q0_0_0", "q0", prompt_len=3, response_len=2, reward=1.0),
        Sequence("q0_0_1", "q0", prompt_len=6, response_len=3, reward=1.0),
        Sequence("q0_1_0", "q0", prompt_len=3, response_len=4, reward=0.0),
    ]
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config(), sequences)
    batch = rig.trainer._compute_old_log_prob(rig.batch_factory(), {})
    with pytest.raises(VGPOConfigError, match="several outputs per session"):
        rig.trainer._compute_advantage(batch, {})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"algorithm.rollout_correction.bypass_mode": True}, "rollout_correction.bypass_mode=true"),
        ({"actor_rollout_ref.actor.policy_loss.loss_mode": "gspo"}, "loss_mode=gspo"),
        ({"actor_rollout_ref.actor.policy_loss.loss_mode": "geo_mean"}, "loss_mode=geo_mean"),
        ({"actor_rollout_ref.actor.strategy": "megatron"}, "actor_rollout_ref.actor.strategy=megatron"),
        ({"algorithm.vgpo.compensation": "cubic"}, "algorithm.vgpo.compensation='cubic'"),
        ({"algorithm.vgpo.gate_topratio": 0.3}, "unknown key"),
        ({"trainer.use_v1": False}, "trainer.use_v1=true"),
    ],
)
@pytest.mark.parametrize("cls", [PPOTrainerSyncWithVGPO, PPOTrainerColocateAsyncWithVGPO])
def test_unsupported_settings_are_refused_at_construction(cls, overrides, message, make_config):
    with pytest.raises(VGPOConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(make_config(**overrides))


def test_separate_async_refuses_before_verl_builds_anything(make_config):
    config = make_config(**MODE_OVERRIDES["separate_async"], **{"algorithm.rollout_correction.bypass_mode": True})
    with pytest.raises(VGPOConfigError, match="bypass_mode"):
        PPOTrainerSeparateAsyncWithVGPO(config)


def test_refused_settings_are_fine_for_other_estimators(make_config):
    config = make_config(
        **{
            "algorithm.adv_estimator": "grpo",
            "algorithm.rollout_correction.bypass_mode": True,
            "actor_rollout_ref.actor.policy_loss.loss_mode": "gspo",
        }
    )
    assert PPOTrainerSyncWithVGPO(config).vgpo_config is None


def test_legacy_trainer_refuses_vgpo_at_construction(make_config):
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    legacy_args = dict(tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)
    with pytest.raises(VGPOConfigError, match=r"trainer.use_v1=true"):
        RayPPOTrainer(make_config(**{"trainer.use_v1": False}), **legacy_args)
    # other estimators reach verl's own constructor (which then trips on the empty worker mapping)
    with pytest.raises(AssertionError, match="role_worker_mapping"):
        RayPPOTrainer(make_config(**{"trainer.use_v1": False, "algorithm.adv_estimator": "grpo"}), **legacy_args)


def test_padding_rows_added_by_verls_batch_balancing_pass_through(make_config, make_rig):
    # an actor mini-batch of 4 prompts x 3 rollouts = 12 rows: verl appends 6 synthetic rows (uid "pad...",
    # response of one masked token, no image); the fake engine gives them NaN focus like the real one
    config = make_config(**{"actor_rollout_ref.actor.ppo_mini_batch_size": 4})
    rig = make_rig(PPOTrainerSyncWithVGPO, config)
    metrics = {}

    batch = rig.trainer.step(metrics, {})

    pad_keys = [key for key in batch.keys if key.startswith("pad")]
    assert len(batch.keys) == 12 and len(pad_keys) == 6
    # the real rows get exactly the advantages of the unpadded batch; the padding rows get none
    torch.testing.assert_close(stored_padded(rig.fake_tq, KEYS, "advantages"), expected_vgpo(DEFAULT_SEQUENCES, config.algorithm)[0])
    assert torch.count_nonzero(stored_padded(rig.fake_tq, pad_keys, "advantages")) == 0
    # padding rows have no response tokens: they are not counted as trajectories without a signal
    assert metrics[METRIC_PREFIX + "no_signal_fraction"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
@pytest.mark.parametrize("mode", sorted(VGPO_TRAINERS))
def test_replay_buffer_gets_the_configured_poll_interval_for_every_estimator(mode, estimator, make_config, fake_tq):
    """verl_vgpo.wiring.compat: trainer.v1.sampler.poll_interval reaches verl's real replay buffer."""
    overrides = {**MODE_OVERRIDES[mode], "algorithm.adv_estimator": estimator}
    default = VGPO_TRAINERS[mode](make_config(**overrides)).replay_buffer
    assert default.poll_interval == 2.0  # verl's own default without the setting
    tuned = VGPO_TRAINERS[mode](make_config(**overrides, **{"trainer.v1.sampler.poll_interval": 0.25})).replay_buffer
    assert tuned.poll_interval == 0.25
