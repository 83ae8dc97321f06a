"""Every run script of recipes/vgpo/ composes and validates against the installed verl, on CPU.

Each script is executed for real by bash with ``PYTHON`` pointing at a recorder instead of Python, so
the test sees exactly the argv the script would hand to ``python -m verl.trainer.main_ppo`` (variable
expansion included) and tracks every edit of the scripts. The config is then composed the way
``main_ppo``'s ``@hydra.main`` does (recipe config dir + config name + overrides) and put through
verl's own start-up checks (``validate_config``) and the dataclass conversions the workers do, so a
misspelt key, a bad value or an indivisible batch size fails here. Nothing is mocked; only the model
path is swapped for the tiny offline Qwen2.5-VL where a check loads the model's files.
"""

import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO / "recipes" / "vgpo"
SCRIPTS = sorted(p.name for p in RECIPE_DIR.glob("run_*.sh"))
VGPO_SCRIPTS = [name for name in SCRIPTS if name.endswith("_vgpo.sh")]


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    """A stand-in for the python executable that writes its argv (NUL-separated) to $RECORD_FILE."""
    path = tmp_path_factory.mktemp("recorder") / "record_argv"
    path.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$RECORD_FILE"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def script_argv(script, recorder, tmp_path, extra_env=None, extra_args=()):
    record = tmp_path / f"{script}.argv"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": str(recorder),
        "RECORD_FILE": str(record),
        **(extra_env or {}),
    }
    subprocess.run(["bash", str(RECIPE_DIR / script), *extra_args], env=env, check=True, timeout=60)
    return record.read_text().split("\0")[:-1]


def parse_main_ppo_argv(argv):
    """Split ``-m verl.trainer.main_ppo --config-path=.. --config-name=.. overrides`` like hydra.main."""
    assert argv[:2] == ["-m", "verl.trainer.main_ppo"], argv[:2]
    config_path = config_name = None
    overrides = []
    for arg in argv[2:]:
        if arg.startswith("--config-path="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        else:
            assert not arg.startswith("-"), f"unexpected option {arg}"
            overrides.append(arg)
    assert config_path and config_name, argv
    return config_path, config_name, overrides


def compose_script(script, recorder, tmp_path, extra_overrides=(), **kwargs):
    config_path, config_name, overrides = parse_main_ppo_argv(script_argv(script, recorder, tmp_path, **kwargs))
    with initialize_config_dir(config_dir=config_path, version_base=None):
        return compose(config_name=config_name, overrides=[*overrides, *extra_overrides])


def validate_like_verl(config):
    """The checks verl runs on this config before and while building the trainer and workers."""
    import verl  # noqa: F401  (loads the verl.plugins entry point: registers the vgpo estimator)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from verl_vgpo.config import VGPOConfig

    # main_ppo.main: validate_config builds ActorConfig (its __post_init__ and validate()) and checks
    # batch divisibility, micro-batch settings and the critic when one is needed
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)  # agent loop / rollout workers
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout.checkpoint_engine)  # trainer_base
    omega_conf_to_dataclass(config.distillation)  # trainer_base
    # the algorithm node as verl's AlgoConfig dataclass (the vgpo block is ours and validated below)
    algorithm_node = OmegaConf.create(OmegaConf.to_container(config.algorithm))
    vgpo_block = algorithm_node.pop("vgpo", None)
    omega_conf_to_dataclass(algorithm_node)
    if config.algorithm.adv_estimator == "vgpo":
        assert vgpo_block is not None, "the vgpo recipe must declare algorithm.vgpo"
    vgpo = VGPOConfig.from_algorithm_config(config.algorithm)
    if config.algorithm.adv_estimator == "vgpo":
        # the refusals verl-vgpo's trainer layer applies when the trainer is constructed
        from verl_vgpo.wiring.trainer import check_vgpo_trainer_config

        assert check_vgpo_trainer_config(config) == vgpo
    get_adv_estimator_fn(config.algorithm.adv_estimator)  # raises for an unregistered estimator
    # reward loop: the manager class and the custom reward function are resolved from these keys
    manager_cls = resolve_reward_manager_cls(config)
    reward_fn = get_custom_reward_fn(config)
    assert reward_fn is not None
    return actor, rollout, vgpo, manager_cls, reward_fn


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_composes_and_passes_verl_validation(script, recorder, tmp_path):
    config = compose_script(script, recorder, tmp_path)
    actor, rollout, _, _, reward_fn = validate_like_verl(config)
    assert actor.engine.strategy == "fsdp2"
    assert rollout.name == "vllm" and rollout.n == 8
    result = reward_fn(data_source="mmk12", solution_str="\\boxed{3}", ground_truth="3", extra_info={})
    assert result["acc"] == 1.0


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_model_keys_build_verl_model_config(script, recorder, tmp_path, tiny_vlm_path):
    """HFModelConfig loads the model's files, so it is built with the tiny offline checkpoint."""
    from verl.utils.config import omega_conf_to_dataclass

    config = compose_script(script, recorder, tmp_path, extra_overrides=[f"actor_rollout_ref.model.path={tiny_vlm_path}"])
    model = omega_conf_to_dataclass(config.actor_rollout_ref.model)
    assert model.processor is not None, "the VLM processor must load (else verl runs text-only)"
    assert model.use_remove_padding is True


def test_vgpo_7b_script_is_the_papers_setup(recorder, tmp_path):
    config = compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path)
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    assert config.actor_rollout_ref.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config.data.train_files.endswith("virl39k/train.parquet")
    assert config.data.val_files.endswith("mmk12/test.parquet")
    assert (rollout.n, config.data.train_batch_size, actor.ppo_mini_batch_size) == (8, 512, 128)
    assert (actor.optim.lr, actor.optim.weight_decay) == (1e-6, 1e-2)
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    assert actor.use_kl_loss is False and config.algorithm.use_kl_in_reward is False
    assert actor.loss_agg_mode == "token-mean" and actor.policy_loss.loss_mode == "vanilla"
    assert (config.data.max_prompt_length, config.data.max_response_length) == (4096, 2048)
    assert (rollout.prompt_length, rollout.response_length) == (4096, 2048)
    assert rollout.temperature == 1.0 and rollout.top_p == 0.99 and rollout.name == "vllm"
    assert rollout.val_kwargs.temperature == 0 and rollout.val_kwargs.do_sample is False
    assert rollout.val_kwargs.n == 1
    assert config.trainer.total_epochs == 2
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    assert actor.strategy == "fsdp2" and config.actor_rollout_ref.ref.strategy == "fsdp2"
    assert config.algorithm.adv_estimator == "vgpo"
    assert config.reward.custom_reward_function.path == "pkg://verl_vgpo.rewards.math_boxed"
    assert config.reward.custom_reward_function.reward_kwargs.mode == "strict"
    assert config.reward.custom_reward_function.reward_kwargs.format_weight == 0.0
    # the authors' online filtering: groups whose rollouts all score the same accuracy are dropped
    filter_groups = config.algorithm.filter_groups
    assert filter_groups.enable is True and filter_groups.metric == "acc"
    vgpo = validate_like_verl(config)[2]
    assert (vgpo.compensation_strength, vgpo.gate_start, vgpo.gate_top_ratio) == (0.3, 0.5, 0.2)


def test_paper_recipes_grade_with_the_authors_strict_rule(recorder, tmp_path):
    """The reward verl loads from the recipe is strict: an option letter with its value is wrong."""
    reward_fn = validate_like_verl(compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path))[4]
    assert reward_fn(data_source="mmk12", solution_str="\\boxed{(B) 12}", ground_truth="B", extra_info={})["acc"] == 0.0
    assert reward_fn(data_source="mmk12", solution_str="\\boxed{B}", ground_truth="B", extra_info={})["acc"] == 1.0
    lenient_mode = "reward.custom_reward_function.reward_kwargs.mode=lenient"
    lenient = compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=[lenient_mode])
    reward_fn = validate_like_verl(lenient)[4]
    assert reward_fn(data_source="mmk12", solution_str="\\boxed{(B) 12}", ground_truth="B", extra_info={})["acc"] == 1.0


def test_filter_groups_is_what_verls_v1_trainer_reads(recorder, tmp_path):
    """The V1 trainer resolves the replay buffer's group metric from these keys (and refuses a missing one)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    for script in ("run_qwen2_5_vl_7b_vgpo.sh", "run_qwen2_5_vl_7b_grpo.sh", "run_qwen2_5_vl_7b_dapo.sh"):
        config = compose_script(script, recorder, tmp_path)
        # the method reads only self.config: called on a stand-in holding the composed config
        assert PPOTrainer._resolve_filter_groups_metric(SimpleNamespace(config=config)) == "acc", script


def test_avg8_validation_protocol_is_an_option(recorder, tmp_path):
    """VAL_PROTOCOL=avg8: PAPO's protocol (8 samples at temperature 1.0) for validation during training."""
    config = compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_env={"VAL_PROTOCOL": "avg8"})
    _, rollout, _, _, _ = validate_like_verl(config)
    assert (rollout.val_kwargs.n, rollout.val_kwargs.temperature, rollout.val_kwargs.top_p) == (8, 1.0, 1.0)
    assert rollout.val_kwargs.do_sample is True
    greedy = compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_env={"VAL_PROTOCOL": "greedy"})
    assert _flat(greedy) == _flat(compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path))
    result = subprocess.run(
        ["bash", str(RECIPE_DIR / "run_qwen2_5_vl_7b_vgpo.sh")],
        env={**os.environ, "VAL_PROTOCOL": "avg@8", "PYTHON": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "VAL_PROTOCOL must be greedy or avg8" in result.stderr


def test_qwen3_5_script_mirrors_the_qwen3_vl_8b_one(recorder, tmp_path):
    """Same training setup and parallelism as the Qwen3-VL-8B script; only the model and run name differ."""
    qwen3_5 = compose_script("run_qwen3_5_9b_vgpo.sh", recorder, tmp_path)
    assert qwen3_5.actor_rollout_ref.model.path == "Qwen/Qwen3.5-9B"
    assert qwen3_5.data.image_patch_size == 16
    assert qwen3_5.actor_rollout_ref.rollout.tensor_model_parallel_size == 2
    assert qwen3_5.algorithm.adv_estimator == "vgpo"
    flat_qwen3_5, flat_qwen3_vl = _flat(qwen3_5), _flat(compose_script("run_qwen3_vl_8b_vgpo.sh", recorder, tmp_path))
    keys = set(flat_qwen3_5) | set(flat_qwen3_vl)
    differences = {key for key in keys if flat_qwen3_5.get(key) != flat_qwen3_vl.get(key)}
    naming = {"trainer.experiment_name", "trainer.default_local_dir", "actor_rollout_ref.rollout.trace.experiment_name"}
    # prometheus.served_model_name interpolates the model path
    model_path_keys = {"actor_rollout_ref.model.path", "actor_rollout_ref.rollout.prometheus.served_model_name"}
    assert differences - naming == model_path_keys


def test_qwen3_5_script_builds_verls_model_config_for_a_qwen3_5_model(recorder, tmp_path):
    """verl's HFModelConfig with a tiny offline Qwen3.5 (its real config, processor and token ids)."""
    from verl.utils.config import omega_conf_to_dataclass

    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    model_dir = build_tiny_vlm(tmp_path / "tiny_qwen3_5", seed=0, family="qwen3_5")
    config = compose_script(
        "run_qwen3_5_9b_vgpo.sh", recorder, tmp_path, extra_overrides=[f"actor_rollout_ref.model.path={model_dir}"]
    )
    validate_like_verl(config)
    model = omega_conf_to_dataclass(config.actor_rollout_ref.model)
    assert model.hf_config.model_type == "qwen3_5"
    assert model.processor is not None and model.processor.image_processor.patch_size == 16


def test_required_verl_file_pins_the_installed_release():
    """verl-recipe's REQUIRED_VERL.txt (KEY=value lines): a pinned tag equal to the verl this repo tests with."""
    import verl

    lines = (RECIPE_DIR / "REQUIRED_VERL.txt").read_text().splitlines()
    fields = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert fields["MODE"] == "pinned_tag"
    assert fields["TAG"] == f"v{verl.__version__}" == "v0.9.1"
    assert fields["PIP_INSTALL"] == "pip install 'verl[verl-core]==0.9.1'"
    assert fields["UPSTREAM"] == "https://github.com/verl-project/verl.git"


def test_recipe_config_declares_every_vgpo_key_at_its_default(recorder, tmp_path):
    import dataclasses

    from verl_vgpo.config import VGPOConfig

    config = compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path)
    declared = OmegaConf.to_container(config.algorithm.vgpo)
    assert set(declared) == {f.name for f in dataclasses.fields(VGPOConfig)}
    assert VGPOConfig.from_mapping(declared) == VGPOConfig()
    # declared keys need no "+" on the command line
    changed = compose_script(
        "run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=["algorithm.vgpo.compensation=step"]
    )
    assert VGPOConfig.from_algorithm_config(changed.algorithm).compensation == "step"


def test_nnodes_and_extra_overrides_reach_the_config(recorder, tmp_path):
    config = compose_script(
        "run_qwen2_5_vl_7b_vgpo.sh",
        recorder,
        tmp_path,
        extra_env={"NNODES": "4", "MODEL_PATH": "/models/local", "DATA_DIR": "/data"},
        extra_args=["trainer.total_epochs=1"],
    )
    assert config.trainer.nnodes == 4 and config.trainer.total_epochs == 1
    assert config.actor_rollout_ref.model.path == "/models/local"
    assert config.data.train_files == "/data/virl39k/train.parquet"
    validate_like_verl(config)


def _flat(config):
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(config, resolve=True), "")
    return flat


def test_baselines_differ_from_vgpo_only_in_the_algorithm(recorder, tmp_path):
    vgpo = _flat(compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path))
    grpo = _flat(compose_script("run_qwen2_5_vl_7b_grpo.sh", recorder, tmp_path))
    dapo = _flat(compose_script("run_qwen2_5_vl_7b_dapo.sh", recorder, tmp_path))

    def differences(other):
        keys = set(vgpo) | set(other)
        return {key for key in keys if vgpo.get(key, "<absent>") != other.get(key, "<absent>")}

    naming = {"trainer.experiment_name", "trainer.default_local_dir", "actor_rollout_ref.rollout.trace.experiment_name"}
    assert differences(grpo) - naming == {"algorithm.adv_estimator"}
    # online filtering is part of the shared setup (the authors filter for every method)
    assert vgpo["algorithm.filter_groups.enable"] is grpo["algorithm.filter_groups.enable"] is True
    dapo_switches = {
        "algorithm.adv_estimator",
        "reward.reward_manager.name",
        "reward.reward_kwargs.max_resp_len",
        "reward.reward_kwargs.overlong_buffer_cfg.enable",
        "reward.reward_kwargs.overlong_buffer_cfg.len",
        "reward.reward_kwargs.overlong_buffer_cfg.penalty_factor",
        "reward.reward_kwargs.overlong_buffer_cfg.log",
    }
    assert differences(dapo) - naming == dapo_switches
    assert grpo["algorithm.adv_estimator"] == dapo["algorithm.adv_estimator"] == "grpo"


def test_dapo_script_builds_verls_dapo_reward_manager(recorder, tmp_path):
    """verl's DAPO reward manager reads reward.reward_kwargs and asserts on the overlong buffer."""
    from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls

    config = compose_script("run_qwen2_5_vl_7b_dapo.sh", recorder, tmp_path)
    validate_like_verl(config)
    manager_cls = resolve_reward_manager_cls(config)
    assert manager_cls.__name__ == "DAPORewardManager"
    manager = manager_cls(config, tokenizer=None, compute_score=get_custom_reward_fn(config))
    assert manager.overlong_buffer_cfg.len == 512 and manager.max_resp_len == 2048
    assert config.algorithm.filter_groups.metric == "acc"  # a key our reward returns per sample


def test_a_typo_in_an_override_fails(recorder, tmp_path):
    from hydra.errors import ConfigCompositionException, InstantiationException

    with pytest.raises(ConfigCompositionException):
        compose_script("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=["actor_rollout_ref.actor.clip_ratio_hgh=0.3"])
    from verl_vgpo.config import VGPOConfigError

    config = compose_script(
        "run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=["algorithm.vgpo.gate_top_ratio=1.5"]
    )
    with pytest.raises(VGPOConfigError, match="gate_top_ratio"):
        validate_like_verl(config)
    config = compose_script(
        "run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=["actor_rollout_ref.actor.policy_loss.loss_mode=gspo"]
    )
    with pytest.raises(VGPOConfigError, match="gspo"):
        validate_like_verl(config)
    # a misspelt value is caught by verl's own dataclass checks
    config = compose_script(
        "run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, extra_args=["actor_rollout_ref.actor.loss_agg_mode=token_mean"]
    )
    with pytest.raises(InstantiationException, match="loss_agg_mode"):
        validate_like_verl(config)
    # (a GPU count the batches cannot split over is refused by the scripts themselves, before verl: see
    # test_scripts_refuse_a_gpu_count_the_update_batch_cannot_split_over)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "recipes" / "vgpo").glob("run_*.sh")))
def test_scripts_refuse_a_gpu_count_the_update_batch_cannot_split_over(script, tmp_path):
    # with dynamic batching verl would only assert this at the first actor update, after a whole rollout
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "vgpo" / script)],
        env={**os.environ, "NNODES": "3", "PYTHON": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "split evenly over NNODES x GPUS_PER_NODE = 24 GPUs" in result.stderr
