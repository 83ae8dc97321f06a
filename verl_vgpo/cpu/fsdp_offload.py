"""FSDP2's CPU offload without pinned memory on the CPU platform.

verl 0.9's FSDP engine gives every forward-only FSDP2 module (the reference model of ``use_kl_loss=True``, whatever
``offload_policy`` says) ``CPUOffloadPolicy(pin_memory=True)``; pinning asks the CUDA driver for page-locked host
memory, so on a CPU-only machine the reference model's ``fully_shard`` fails with "Found no NVIDIA driver on your
system" (found by the 7B recipe's smoke run with verl's VLM example settings). On the CPU platform the parameters
already live in host memory: the same policy without pinning is what the CPU needs. Only where ``VERL_PLATFORM=cpu``
selects the CPU platform; a GPU process never imports this module.
"""

from __future__ import annotations

import sys

from .platform import cpu_platform_requested

_PATCHED_ATTRIBUTE = "_verl_vgpo_unpinned"
_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def unpinned_offload_policy(policy_class):
    """``policy_class`` (FSDP2's ``CPUOffloadPolicy``) with ``pin_memory`` always False."""
    if getattr(policy_class, _PATCHED_ATTRIBUTE, False):
        return policy_class

    class UnpinnedCPUOffloadPolicy(policy_class):
        def __init__(self, pin_memory: bool = False, *args, **kwargs):
            super().__init__(False, *args, **kwargs)

    setattr(UnpinnedCPUOffloadPolicy, _PATCHED_ATTRIBUTE, True)
    UnpinnedCPUOffloadPolicy.__name__ = UnpinnedCPUOffloadPolicy.__qualname__ = policy_class.__name__
    return UnpinnedCPUOffloadPolicy


def install_unpinned_fsdp2_offload() -> bool:
    """Give verl's FSDP engine the unpinned policy (idempotent). False when the CPU platform is not selected."""
    if not cpu_platform_requested():
        return False
    engine = sys.modules.get(_ENGINE_MODULE) or __import__(_ENGINE_MODULE, fromlist=["CPUOffloadPolicy"])
    if engine.CPUOffloadPolicy is not None:
        engine.CPUOffloadPolicy = unpinned_offload_policy(engine.CPUOffloadPolicy)
    return True
