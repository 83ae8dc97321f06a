"""The one verl call that cannot work on the CPU platform: the workers' process-group backend string.

``verl.utils.distributed.initialize_global_process_group_ray`` (called by every engine worker) builds
``f"cpu:gloo,{device}:{backend}"``; with device "cpu" that is ``"cpu:gloo,cpu:gloo"``, which
``torch.distributed.init_process_group`` rejects ("Duplicate device type cpu"). On the CPU platform the
default backend must be plain ``"gloo"``. Everything else about the call is kept.

The wrapper is installed at plugin load (``import verl``), i.e. before ``verl.workers.engine_workers``
binds the function by name; a module that bound it earlier is patched too. Inert unless
``VERL_PLATFORM=cpu``.
"""

from __future__ import annotations

import functools
import sys

from .platform import cpu_platform_requested

_PATCHED_ATTRIBUTE = "__vgpo_cpu_gloo__"
# modules that import the function by name (verl 0.9.1)
_IMPORTERS = ("verl.workers.engine_workers", "verl.checkpoint_engine.base")


def install_cpu_process_group_backend() -> bool:
    """Make verl's worker process groups use plain gloo on the CPU platform (idempotent).

    Returns True when the wrapper is in place, False when the CPU platform is not selected.
    """
    if not cpu_platform_requested():
        return False
    import verl.utils.distributed as verl_distributed

    original = verl_distributed.initialize_global_process_group_ray
    if getattr(original, _PATCHED_ATTRIBUTE, False):
        return True

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        # verl's default "cpu:gloo,<device>:<backend>" repeats "cpu" on this platform
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    setattr(initialize_global_process_group_ray, _PATCHED_ATTRIBUTE, True)
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    for module_name in _IMPORTERS:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "initialize_global_process_group_ray", None) is original:
            module.initialize_global_process_group_ray = initialize_global_process_group_ray
    return True
