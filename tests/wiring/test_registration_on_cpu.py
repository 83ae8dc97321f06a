"""verl finds `vgpo` after a plain `import verl` and dispatches its own compute_advantage to it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf


def test_plain_import_verl_registers_vgpo_in_a_fresh_process():
    code = (
        "import json, verl\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "fn = get_adv_estimator_fn('vgpo')\n"
        "print(json.dumps({'module': fn.__module__, 'name': fn.__name__}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"module": "verl_vgpo.wiring.estimator", "name": "vgpo_adv_estimator"}


def test_registration_is_idempotent():
    import verl  # noqa: F401  (the plugin registered vgpo already)
    import verl_vgpo.plugin
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from verl_vgpo.wiring.estimator import register_estimator, vgpo_adv_estimator

    register_estimator()
    verl_vgpo.plugin.load()
    assert get_adv_estimator_fn("vgpo") is vgpo_adv_estimator


def _data_proto(seed=0, bs=8, L=6):
    from verl import DataProto

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (bs,), generator=g)
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.zeros(bs, L)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    uid = np.array([f"p{i // 4}" for i in range(bs)], dtype=object)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid}
    )
    focus = torch.rand(bs, L, generator=g)
    return data, focus


def test_verl_compute_advantage_dispatches_to_vgpo():
    import verl  # noqa: F401
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from verl_vgpo.advantage import compute_vgpo_advantage
    from verl_vgpo.wiring.estimator import focus_scores_for_advantage

    data, focus = _data_proto()
    algorithm = OmegaConf.create(
        {"adv_estimator": "vgpo", "norm_adv_by_std_in_grpo": True, "vgpo": {"compensation_strength": 0.5}}
    )
    with focus_scores_for_advantage(focus) as step:
        out = compute_advantage(data, adv_estimator="vgpo", norm_adv_by_std_in_grpo=True, config=algorithm)
    expected, _ = compute_vgpo_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"], focus, algorithm
    )
    torch.testing.assert_close(out.batch["advantages"], expected)
    assert "vgpo/token_weight/mean" in step.metrics
    # and it really re-weights: differs from plain GRPO on the same rollouts
    grpo = compute_advantage(data, adv_estimator="grpo", norm_adv_by_std_in_grpo=True, config=algorithm)
    assert not torch.allclose(expected, grpo.batch["advantages"])


def test_verl_compute_advantage_without_focus_explains_how_focus_arrives():
    import verl  # noqa: F401
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from verl_vgpo.advantage import MissingFocusScoresError

    data, _ = _data_proto()
    with pytest.raises(MissingFocusScoresError, match="verl.plugins"):
        compute_advantage(data, adv_estimator="vgpo", config=OmegaConf.create({"adv_estimator": "vgpo"}))
