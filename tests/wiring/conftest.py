"""Fixtures of the wiring tests (engine and trainer layer).

verl's engine monkey-patches the Qwen-VL classes when it builds a model; the original transformers
methods are snapshotted here, at collection time (before any test builds an engine), so that tests
can run independent plain-HF references and put the classes back afterwards.
"""

from __future__ import annotations

import copy
import os
from typing import Optional

import pytest

from tests.wiring.vlm_batches import snapshot_qwen_methods
from tests.wiring.fakes import (
    DEFAULT_SEQUENCES,
    FakeActorWorkerGroup,
    FakeCheckpointManager,
    FakeTokenizer,
    FakeTransferQueue,
    RewardsAlreadyComputed,
    Sequence,
    TrainerRig,
    fill_fake_tq,
)

ORIGINAL_QWEN_METHODS = snapshot_qwen_methods()


@pytest.fixture(scope="session")
def original_qwen_methods():
    for (cls, attribute), method in ORIGINAL_QWEN_METHODS.items():
        assert method.__module__.startswith("transformers."), (
            f"{cls.__name__}.{attribute} was already patched ({method.__module__}) when the engine tests were collected"
        )
    return ORIGINAL_QWEN_METHODS


# --- trainer layer: verl's real V1 trainer classes on CPU; the fakes and why they exist: fakes.py



@pytest.fixture(scope="session")
def base_config():
    """verl's real ppo_trainer config, composed once, sized for the fake batch (2 prompts x 3 rollouts)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                "algorithm.adv_estimator=vgpo",
                "data.train_batch_size=2",
                "actor_rollout_ref.rollout.n=3",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.rollout.calculate_log_probs=false",
            ],
        )


@pytest.fixture
def make_config(base_config):
    """Copy of the base config with dotted-key overrides (new keys allowed, like Hydra's ``+key``)."""
    from omegaconf import OmegaConf, open_dict

    def make(**overrides):
        config = copy.deepcopy(base_config)
        with open_dict(config):
            for dotted, value in overrides.items():
                OmegaConf.update(config, dotted, value, force_add=True)
        return config

    return make


@pytest.fixture
def fake_tq(monkeypatch):
    """Route verl's and verl-vgpo's ``transfer_queue`` calls to one in-process fake."""
    import transfer_queue

    fake = FakeTransferQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", fake.kv_batch_put)
    monkeypatch.setattr(transfer_queue, "kv_clear", fake.kv_clear)
    return fake


@pytest.fixture
def make_rig(fake_tq):
    """Build a real trainer (any class) from a config and wire it to the fakes."""

    def make(trainer_cls, config, sequences: Optional[list[Sequence]] = None) -> TrainerRig:
        sequences = list(sequences or DEFAULT_SEQUENCES)
        trainer = trainer_cls(config)
        workers = FakeActorWorkerGroup(
            fake_tq,
            row_of_key={s.key: i for i, s in enumerate(sequences)},
            images={s.key: s.has_image for s in sequences},
        )
        trainer.actor_rollout_wg = workers
        trainer.ref_in_actor = True  # the ref pass goes through the same (recording) workers
        trainer.ref_policy_wg = workers
        trainer.reward_loop_manager = RewardsAlreadyComputed()
        trainer.checkpoint_manager = FakeCheckpointManager()
        trainer.tokenizer = FakeTokenizer()
        trainer.global_steps = 1
        trainer.curr_step_profile = False
        trainer.timing_raw = {}

        rig = TrainerRig(trainer=trainer, fake_tq=fake_tq, workers=workers, sequences=sequences)

        def sample(global_steps, partition_id, batch_size):
            return fill_fake_tq(fake_tq, sequences, partition_id), {}

        rig.batch_factory = lambda: fill_fake_tq(fake_tq, sequences)
        trainer.replay_buffer.sample = sample
        trainer.prepare_step = lambda: {}  # it submits prompts to the rollout servers
        return rig

    return make


