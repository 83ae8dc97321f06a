"""Entry point of group ``verl.plugins``: verl imports this module in every process on ``import verl``.

verl swallows plugin import errors at DEBUG level, so every failure here is logged loudly before it is
re-raised; the trainer layer separately checks that the workers really produced focus scores.
Registrations are idempotent: running :func:`load` twice is harmless. :data:`STATUS` records what each
one did in this process (``vgpo-doctor`` prints it).
"""

from __future__ import annotations

import importlib
import logging
import os

logger = logging.getLogger("verl_vgpo")
# verl's convention for its own loggers: INFO unless VERL_LOGGING_LEVEL says otherwise (the fixes line is INFO)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

# (module, function) pairs run in order at load. Each function must be idempotent.
REGISTRATIONS: list[tuple[str, str]] = [
    ("verl_vgpo.wiring.estimator", "register_estimator"),
    # focus-capturing FSDP language-model engines for every device (old-log-prob pass only)
    ("verl_vgpo.wiring.engine", "register_engines"),
    # the version-bound fixes of verl (VERL_VGPO_FIXES=0 keeps stock verl)
    ("verl_vgpo.wiring.compat", "apply_fixes"),
    # V1 trainers with the focus hand-over, and the guard on the legacy trainer
    ("verl_vgpo.wiring.trainer", "register_trainers"),
    # VGPO's config checks inside verl's validate_config: main_ppo refuses a bad config before ray.init
    ("verl_vgpo.wiring.driver", "install_driver_check"),
]

# Only where VERL_PLATFORM=cpu selects the CPU platform: a GPU process never imports them.
# The platform and its "cpu" engine keys come first (register_engines wraps every device's entry);
# then the hf_cpu rollout server and plain "gloo" for verl's worker process groups.
CPU_REGISTRATIONS_FIRST: list[tuple[str, str]] = [("verl_vgpo.cpu.platform", "register_cpu_platform")]
CPU_REGISTRATIONS_LAST: list[tuple[str, str]] = [
    ("verl_vgpo.cpu.rollout", "register_hf_cpu_rollout"),
    ("verl_vgpo.cpu.distributed", "install_cpu_process_group_backend"),
    # FSDP2 CPU offload (the KL reference model) without CUDA's pinned memory
    ("verl_vgpo.cpu.fsdp_offload", "install_unpinned_fsdp2_offload"),
]

LOADED = False
# "module.function" -> "ok", "skipped: <why>" or "failed: <error>"
STATUS: dict[str, str] = {}


def cpu_platform_selected() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def load() -> None:
    """Run every registration of the package (idempotent).

    Every registration is attempted even when an earlier one fails, so that a CPU-only helper that
    breaks (e.g. after a verl API change) cannot keep the estimator, engines and trainers from being
    installed on a GPU cluster; the failures are logged loudly and raised together at the end.
    """
    global LOADED
    cpu = cpu_platform_selected()
    failures = []
    for group, enabled in ((CPU_REGISTRATIONS_FIRST, cpu), (REGISTRATIONS, True), (CPU_REGISTRATIONS_LAST, cpu)):
        for module_name, function_name in group:
            name = f"{module_name}.{function_name}"
            if not enabled:
                STATUS[name] = "skipped: the CPU platform is not selected (VERL_PLATFORM=cpu)"
                continue
            try:
                getattr(importlib.import_module(module_name), function_name)()
                STATUS[name] = "ok"
            except Exception as error:
                logger.exception("verl-vgpo: %s failed; algorithm.adv_estimator=vgpo may not work in this process", name)
                STATUS[name] = f"failed: {error!r}"
                failures.append(f"{name}: {error!r}")
    if failures:
        raise RuntimeError("verl-vgpo registrations failed: " + "; ".join(failures))
    LOADED = True


load()
