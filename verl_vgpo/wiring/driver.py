"""Refuse a bad VGPO configuration in the driver process, before Ray starts.

``python -m verl.trainer.main_ppo`` checks its config in the driver with verl's
``verl.utils.config.validate_config`` and only then calls ``ray.init``; the TaskRunner that builds the
trainer (whose constructor runs the same checks, the defence for other entry points) comes up 20-30 s
later on a small machine. Running :func:`~verl_vgpo.wiring.trainer.check_vgpo_trainer_config` inside
``validate_config`` makes a misspelt ``algorithm.vgpo`` key or an out-of-range value fail within seconds.

Why this hook: main_ppo runs as ``__main__``, so its own functions cannot be patched; it binds
``validate_config`` with ``from verl.utils.config import validate_config`` right after its first
``import verl``, which has already loaded this plugin, so the replaced module attribute is what it calls
(the same holds for ``main_ppo_v0`` and verl's one_step_off_policy entry). It also checks the replay
buffer's poll interval and ``algorithm.filter_groups.max_num_gen_batches`` that :mod:`verl_vgpo.wiring.compat`
honours (for every estimator). For verl 0.9.x;
tests/wiring/test_driver_check_on_cpu.py tells when verl's main no longer calls it before ``ray.init``.
"""

from __future__ import annotations

import functools


def install_driver_check() -> None:
    """Wrap verl's ``validate_config`` so it runs VGPO's config checks first (idempotent)."""
    import verl.utils.config as verl_config

    from verl_vgpo.config import config_get
    from verl_vgpo.wiring import compat
    from verl_vgpo.wiring.trainer import check_vgpo_trainer_config, uses_vgpo

    original = verl_config.validate_config
    if getattr(original, "vgpo_checks", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        if uses_vgpo(config):
            check_vgpo_trainer_config(config)
        compat.replay_poll_interval(config_get(config, "trainer.v1.sampler"))
        compat.filter_groups_budget(config_get(config, "algorithm.filter_groups"))
        return original(config, *args, **kwargs)

    validate_config.vgpo_checks = True  # type: ignore[attr-defined]
    verl_config.validate_config = validate_config
