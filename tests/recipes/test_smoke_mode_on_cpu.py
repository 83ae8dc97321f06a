"""SMOKE=cpu for the recipe scripts: the argv the smoke mode builds, and what it refuses (fast: nothing is run).

The scripts are executed by bash with a recorder in place of Python (as in test_recipes_on_cpu.py), so the test sees
what ``run_main_ppo`` hands to ``verl_vgpo.apps.smoke``; the plan is then built from that argv.
"""

import json

import pytest

from tests.recipes.test_recipes_on_cpu import RECIPE_DIR, SCRIPTS, script_argv
from verl_vgpo.apps import smoke


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    path = tmp_path_factory.mktemp("recorder") / "record_argv"
    path.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$RECORD_FILE"\n')
    path.chmod(0o755)
    return path


def smoke_call(script, recorder, tmp_path, extra_args=()):
    """(script, user_argc, main_ppo argv) as common.sh hands them to verl_vgpo.apps.smoke under SMOKE=cpu."""
    argv = script_argv(script, recorder, tmp_path, extra_env={"SMOKE": "cpu"}, extra_args=extra_args)
    assert argv[:2] == ["-m", "verl_vgpo.apps.smoke"], argv[:4]
    assert argv[2] == "--script" and argv[4] == "--user-args" and argv[6] == "--"
    return argv[3], int(argv[5]), argv[7:]


def plan_for(script, recorder, tmp_path, extra_args=(), **environ):
    name, user_argc, argv = smoke_call(script, recorder, tmp_path, extra_args)
    env = {"SMOKE": "cpu", "OUT_DIR": str(tmp_path / "out"), "SMOKE_CACHE": str(tmp_path / "cache"),
           "VGPO_CPU_DTYPE": "fp32", **environ}
    return smoke.build_plan(name, argv, user_argc, env)


def overrides(plan) -> dict:
    """The value each key gets last in the main_ppo argv (as Hydra applies them)."""
    result = {}
    for arg in plan.argv[2:]:
        key, _, value = arg.partition("=")
        result[key.lstrip("+")] = value
    return result


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_a_family_and_passes_its_extra_arguments_last(script, recorder, tmp_path):
    name, user_argc, argv = smoke_call(script, recorder, tmp_path, ["trainer.total_epochs=1", "data.seed=3"])
    assert user_argc == 2 and argv[-2:] == ["trainer.total_epochs=1", "data.seed=3"]
    assert smoke.script_family(name) in smoke.FAMILIES


def test_the_7b_plan_keeps_the_recipes_ratios_and_swaps_only_the_hardware(recorder, tmp_path):
    plan = plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, ["algorithm.vgpo.gate_start=0.4"])
    values = overrides(plan)
    assert plan.argv[-1] == "algorithm.vgpo.gate_start=0.4"  # the user's argument comes last
    # 512 / 128 = 4 updates per rollout batch; 12288 = 2 x (4096 + 2048) -> 2 x (128 + 16)
    assert (values["data.train_batch_size"], values["actor_rollout_ref.actor.ppo_mini_batch_size"]) == ("4", "1")
    assert values["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == "288"
    assert values["actor_rollout_ref.rollout.max_model_len"] == "144"
    assert (values["trainer.n_gpus_per_node"], values["actor_rollout_ref.rollout.name"]) == ("2", "hf_cpu")
    assert values["actor_rollout_ref.model.path"] == str((tmp_path / "cache" / "tiny_qwen2_5_vl").resolve())
    assert values["hydra.run.dir"] == str((tmp_path / "out" / "hydra").resolve())
    assert values["trainer.save_freq"] == "1" and values["trainer.total_training_steps"] == str(smoke.SMOKE_STEPS)
    assert values["reward.custom_reward_function.path"] == "pkg://verl_vgpo.rewards.smoke"
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == smoke.STANDIN_MODULE
    assert values["ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES"] == smoke.STANDIN_MODULE
    swapped = {s.key for s in plan.swaps}
    kept = ("actor_rollout_ref.rollout.n", "algorithm.adv_estimator", "algorithm.filter_groups.enable",
            "actor_rollout_ref.model.use_remove_padding", "actor_rollout_ref.actor.use_dynamic_bsz",
            "actor_rollout_ref.model.enable_gradient_checkpointing", "actor_rollout_ref.actor.optim.lr",
            "actor_rollout_ref.actor.clip_ratio_high", "trainer.max_actor_ckpt_to_keep", "trainer.val_before_train",
            "actor_rollout_ref.actor.strategy", "algorithm.vgpo.gate_start")
    assert swapped.isdisjoint(kept)
    text = smoke.describe(plan)
    assert "data.train_batch_size" in text and "512 -> 4" in text and "note: the reward is swapped" in text


def test_dapo_and_32b_scale_their_own_token_settings(recorder, tmp_path):
    dapo = overrides(plan_for("run_qwen2_5_vl_7b_dapo.sh", recorder, tmp_path))
    assert dapo["reward.reward_kwargs.max_resp_len"] == "16"  # 2048 -> the smoke response length
    assert dapo["reward.reward_kwargs.overlong_buffer_cfg.len"] == "4"  # 512 / 2048 of it
    big = overrides(plan_for("run_qwen2_5_vl_32b_vgpo.sh", recorder, tmp_path))
    assert big["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == "144"  # 6144: one sequence
    assert big["trainer.nnodes"] == "1"


def test_user_data_and_model_are_used_when_given(recorder, tmp_path):
    model = tmp_path / "my_tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    plan = plan_for("run_qwen3_vl_8b_vgpo.sh", recorder, tmp_path, MODEL_PATH=str(model),
                    TRAIN_FILES="/d/train.parquet", VAL_FILES="/d/val.parquet")
    values = overrides(plan)
    assert values["actor_rollout_ref.model.path"] == str(model.resolve()) and not plan.build_model
    assert (values["data.train_files"], values["data.val_files"]) == ("/d/train.parquet", "/d/val.parquet")
    assert plan.data_dir is None


def test_the_users_external_modules_reach_the_driver_and_the_workers(recorder, tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plan = plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, VERL_USE_EXTERNAL_MODULES="my_plugin")
    expected = f"my_plugin,{smoke.STANDIN_MODULE}"
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == expected
    key = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES"
    (arg,) = [arg for arg in plan.argv if arg.partition("=")[0].lstrip("+") == key]
    # a bare comma would be a Hydra sweep: the value must come back as this one string
    assert OverridesParser.create().parse_override(arg).value() == expected
    for value in ("it's,b", "a,b\\", "a\\',b", "a\\b,c"):  # quotes and backslashes survive the quoting
        assert OverridesParser.create().parse_override(smoke.Swap("k", None, value, "").override()).value() == value


def test_bad_input_is_refused_with_what_to_change(recorder, tmp_path):
    with pytest.raises(smoke.SmokeError, match="SMOKE must be one of cpu .*got 'gpu'"):
        plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, SMOKE="gpu")
    with pytest.raises(smoke.SmokeError, match="is a qwen3_vl model, but run_qwen2_5_vl_7b_vgpo.sh trains a qwen2_5_vl"):
        plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, MODEL_PATH="Qwen/Qwen3-VL-8B-Instruct")
    with pytest.raises(smoke.SmokeError, match="not a local model folder"):
        plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, MODEL_PATH="Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(smoke.SmokeError, match="both TRAIN_FILES and VAL_FILES"):
        plan_for("run_qwen2_5_vl_7b_vgpo.sh", recorder, tmp_path, TRAIN_FILES="/d/train.parquet")
    with pytest.raises(smoke.SmokeError, match="cannot tell the model family"):
        smoke.script_family("run_llava_7b.sh")
    with pytest.raises(smoke.SmokeError, match="needs 2 CPU cores .*and 8 GiB of available memory"):
        smoke.check_machine(cores=1, available_gib=3.0)
    smoke.check_machine(cores=2, available_gib=20.0)


def test_the_module_refuses_another_smoke_value_before_anything_runs(recorder, tmp_path, monkeypatch, capsys):
    name, user_argc, argv = smoke_call("run_qwen2_5_vl_7b_grpo.sh", recorder, tmp_path)
    monkeypatch.setenv("SMOKE", "tpu")
    assert smoke.main(["--script", name, "--user-args", str(user_argc), "--", *argv]) == 2
    assert "SMOKE must be one of cpu" in capsys.readouterr().err


def test_smoke_reward_is_graded_and_constant_on_even_rows():
    from verl_vgpo.rewards import smoke as smoke_reward

    graded = [smoke_reward.compute_score("easy_vqa", f"Answer: {answer}", "blue", {"index": 1})["acc"]
              for answer in ("blue", "blu", "red")]
    assert graded[0] == 1.0 and graded[0] > graded[1] > graded[2]
    # even rows: one accuracy for every response, so filter_groups evicts their groups in every smoke run
    assert {smoke_reward.compute_score("easy_vqa", f"Answer: {a}", "blue", {"index": 4})["acc"]
            for a in ("blue", "red")} == {0.0}
