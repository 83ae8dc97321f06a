"""The driver-side VGPO check hooks verl's validate_config, which main_ppo calls before ray.init.

If the first test turns red, verl's main_ppo changed how (or whether) it validates the config before
starting Ray: move the hook in verl_vgpo/wiring/driver.py to what main_ppo calls now.
"""

import ast
import inspect

import pytest


def _calls_in_order(function: ast.FunctionDef) -> list[str]:
    names = []
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            target = node.func
            names.append((node.lineno, target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")))
    return [name for _, name in sorted(names)]


def test_main_ppo_validates_the_config_with_verls_validate_config_before_ray_init(make_config):
    import verl.trainer.main_ppo as main_ppo

    from verl_vgpo.config import VGPOConfigError

    tree = ast.parse(inspect.getsource(main_ppo))
    imported = {
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert ("verl.utils.config", "validate_config") in imported
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    main_calls = _calls_in_order(functions["main"])
    assert "validate_config" in main_calls and "run_ppo" in main_calls
    assert main_calls.index("validate_config") < main_calls.index("run_ppo")
    assert "init" in _calls_in_order(functions["run_ppo"])  # ray.init happens in run_ppo, after validation
    # and the name main_ppo bound is the hooked one (the plugin loaded before main_ppo's import of it)
    with pytest.raises(VGPOConfigError, match="algorithm.vgpo.gate_top_ratio"):
        main_ppo.validate_config(make_config(**{"algorithm.vgpo.gate_top_ratio": 2.0}), use_reference_policy=False,
                                 use_critic=False)


def test_hooked_validate_config_refuses_bad_vgpo_settings_and_keeps_verls_checks(make_config):
    from verl.utils.config import validate_config

    from verl_vgpo.config import VGPOConfigError

    with pytest.raises(VGPOConfigError, match="algorithm.vgpo.gate_top_ratio"):
        validate_config(make_config(**{"algorithm.vgpo.gate_top_ratio": 2.0}), use_reference_policy=False, use_critic=False)
    with pytest.raises(VGPOConfigError, match="trainer.v1.trainer_mode=fancy"):
        validate_config(make_config(**{"trainer.v1.trainer_mode": "fancy"}), use_reference_policy=False, use_critic=False)
    # other estimators: only verl's own validation (here its batch-size check trips, as without the plugin)
    grpo = make_config(**{"algorithm.adv_estimator": "grpo", "algorithm.vgpo.gate_top_ratio": 2.0, "data.train_batch_size": 3})
    with pytest.raises(AssertionError, match="real_train_batch_size"):
        validate_config(grpo, use_reference_policy=False, use_critic=False)


@pytest.mark.parametrize("estimator", ["vgpo", "grpo"])
def test_hooked_validate_config_refuses_a_bad_replay_poll_interval(estimator, make_config):
    from verl.utils.config import validate_config

    config = make_config(**{"algorithm.adv_estimator": estimator, "trainer.v1.sampler.poll_interval": 0})
    with pytest.raises(ValueError, match="trainer.v1.sampler.poll_interval must be a positive number"):
        validate_config(config, use_reference_policy=False, use_critic=False)
