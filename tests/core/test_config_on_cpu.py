"""VGPOConfig: defaults, reading verl's algorithm config, and one clear error per invalid key/value."""

import pytest
from omegaconf import OmegaConf

from verl_vgpo.config import VGPOConfig, VGPOConfigError


def test_defaults_are_the_paper_7b_recipe():
    cfg = VGPOConfig()
    assert cfg.base_estimator == "grpo"
    assert cfg.intra_trajectory and cfg.inter_trajectory and cfg.gate
    assert (cfg.compensation, cfg.compensation_strength, cfg.gate_start, cfg.gate_top_ratio) == ("linear", 0.3, 0.5, 0.2)
    assert cfg.token_weight_clip == (0.1, 2.0) and cfg.trajectory_weight_clip == (0.9, 2.0)
    assert cfg.accumulation == "sum" and cfg.visual_tokens == ("image", "video")


@pytest.mark.parametrize("algorithm", [None, {}, {"adv_estimator": "vgpo"}, OmegaConf.create({"gamma": 1.0})])
def test_missing_block_gives_defaults(algorithm):
    assert VGPOConfig.from_algorithm_config(algorithm) == VGPOConfig()


def test_reads_dictconfig_block_with_coercion():
    algo = OmegaConf.create(
        {"adv_estimator": "vgpo", "vgpo": {"compensation_strength": 1, "token_weight_clip": [0.5, 3], "visual_tokens": "image"}}
    )
    OmegaConf.set_struct(algo, True)
    cfg = VGPOConfig.from_algorithm_config(algo)
    assert cfg.compensation_strength == 1.0 and isinstance(cfg.compensation_strength, float)
    assert cfg.token_weight_clip == (0.5, 3.0)
    assert cfg.visual_tokens == ("image",)


@pytest.mark.parametrize(
    "block, key, fragment",
    [
        ({"compensation_strenght": 0.3}, "compensation_strenght", "unknown key"),
        ({"compensation": "cosine"}, "compensation", "none, linear, exponential, step"),
        ({"base_estimator": "gae"}, "base_estimator", "grpo"),
        ({"base_estimator": "vgpo"}, "base_estimator", "grpo"),
        ({"compensation_strength": -0.1}, "compensation_strength", ">= 0"),
        ({"gate_top_ratio": 1.5}, "gate_top_ratio", "[0, 1]"),
        ({"gate_start": -0.1}, "gate_start", "[0, 1]"),
        ({"compensation_start": 1.0}, "compensation_start", "< 1"),
        ({"compensation_step": 2.0}, "compensation_step", "[0, 1]"),
        ({"compensation_exponent": 0.0}, "compensation_exponent", "> 0"),
        ({"token_weight_clip": [2.0, 0.1]}, "token_weight_clip", "low bound must be <= high"),
        ({"trajectory_weight_clip": [0.0, 2.0]}, "trajectory_weight_clip", "> 0"),
        ({"token_weight_clip": [0.1]}, "token_weight_clip", "pair"),
        ({"token_weight_clip": ["a", "b"]}, "token_weight_clip", "two numbers"),
        ({"accumulation": "max"}, "accumulation", "sum, mean"),
        ({"visual_tokens": []}, "visual_tokens", "at least one"),
        ({"visual_tokens": ["audio"]}, "visual_tokens", "audio"),
        ({"visual_tokens": ["image", "image"]}, "visual_tokens", "twice"),
        ({"gate": "yes"}, "gate", "true or false"),
        ({"intra_trajectory": 1}, "intra_trajectory", "true or false"),
        ({"compensation_strength": "high"}, "compensation_strength", "number"),
        ({"compensation_strength": True}, "compensation_strength", "number"),
        ({"compensation_strength": float("inf")}, "compensation_strength", "finite"),
        ({"gate_start": float("nan")}, "gate_start", "finite"),
        ({"trajectory_weight_clip": [0.9, float("inf")]}, "trajectory_weight_clip", "finite"),
    ],
)
def test_every_invalid_value_names_its_key(block, key, fragment):
    with pytest.raises(VGPOConfigError) as err:
        VGPOConfig.from_algorithm_config({"vgpo": block})
    message = str(err.value)
    assert f"algorithm.vgpo.{key}" in message
    assert fragment in message


def test_block_must_be_a_mapping():
    with pytest.raises(VGPOConfigError, match="algorithm.vgpo must be a mapping"):
        VGPOConfig.from_algorithm_config({"vgpo": [1, 2]})


def test_direct_construction_is_validated_too():
    with pytest.raises(VGPOConfigError, match="algorithm.vgpo.compensation"):
        VGPOConfig(compensation="cubic")


def test_config_get_reads_every_form_of_verls_config():
    from dataclasses import dataclass as plain_dataclass

    from verl_vgpo.config import config_get

    @plain_dataclass
    class Actor:
        strategy: str = "fsdp2"

    struct = OmegaConf.create({"actor_rollout_ref": {"actor": {"strategy": "fsdp2"}}, "trainer": {"use_v1": None}})
    OmegaConf.set_struct(struct, True)
    for config in (struct, {"actor_rollout_ref": {"actor": {"strategy": "fsdp2"}}}, {"actor_rollout_ref": {"actor": Actor()}}):
        assert config_get(config, "actor_rollout_ref.actor.strategy") == "fsdp2"
        assert config_get(config, "actor_rollout_ref.actor.missing", "d") == "d"
        assert config_get(config, "nothing.below.here") is None
    assert config_get(struct, "trainer.use_v1", True) is True  # an explicit None reads as the default
    assert config_get(None, "a", 1) == 1


def test_every_field_type_has_a_coercion_that_round_trips_the_defaults():
    import dataclasses

    from verl_vgpo.config import _coerce

    defaults = VGPOConfig()
    for f in dataclasses.fields(VGPOConfig):
        value = getattr(defaults, f.name)
        raw = list(value) if isinstance(value, tuple) else value  # YAML gives lists
        assert _coerce(f.name, raw) == value, f.name
