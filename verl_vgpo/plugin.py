"""Entry point of group ``verl.plugins``: verl imports this module in every process on ``import verl``.

verl swallows plugin import errors at DEBUG level, so every failure here is logged loudly before it is
re-raised; the trainer layer separately checks that the workers really produced focus scores.
Registrations are idempotent: running :func:`load` twice is harmless.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("verl_vgpo")

# (module, function) pairs run in order at load. Each function must be idempotent.
REGISTRATIONS: list[tuple[str, str]] = [
    ("verl_vgpo.wiring.estimator", "register_estimator"),
    # inert unless VERL_PLATFORM=cpu selects it; must precede register_engines (it adds the "cpu" keys)
    ("verl_vgpo.cpu", "register_cpu_platform"),
    # focus-capturing FSDP language-model engines for every device (old-log-prob pass only)
    ("verl_vgpo.wiring.engine", "register_engines"),
    # rollout.name=hf_cpu: HF-generate rollout server for CPU runs (inert unless selected)
    ("verl_vgpo.cpu.rollout", "register_hf_cpu_rollout"),
    # CPU platform only: plain "gloo" for verl's worker process groups (verl builds "cpu:gloo,cpu:gloo")
    ("verl_vgpo.cpu.distributed", "install_cpu_process_group_backend"),
    # V1 trainers with the focus hand-over, and the guard on the legacy trainer
    ("verl_vgpo.wiring.trainer", "register_trainers"),
    # VGPO's config checks inside verl's validate_config: main_ppo refuses a bad config before ray.init
    ("verl_vgpo.wiring.driver", "install_driver_check"),
]

LOADED = False


def load() -> None:
    """Run every registration of the package (idempotent).

    Every registration is attempted even when an earlier one fails, so that a CPU-only helper that
    breaks (e.g. after a verl API change) cannot keep the estimator, engines and trainers from being
    installed on a GPU cluster; the failures are logged loudly and raised together at the end.
    """
    global LOADED
    failures = []
    for module_name, function_name in REGISTRATIONS:
        try:
            getattr(importlib.import_module(module_name), function_name)()
        except Exception as error:
            logger.exception(
                "verl-vgpo: %s.%s failed; algorithm.adv_estimator=vgpo may not work in this process",
                module_name,
                function_name,
            )
            failures.append(f"{module_name}.{function_name}: {error!r}")
    if failures:
        raise RuntimeError("verl-vgpo registrations failed: " + "; ".join(failures))
    LOADED = True

load()
