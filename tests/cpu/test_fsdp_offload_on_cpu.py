"""FSDP2 CPU offload on the CPU platform: verl's forward-only modules (the KL reference model) get
``CPUOffloadPolicy(pin_memory=True)``, and pinning needs the CUDA driver; the CPU platform makes it unpinned."""

from __future__ import annotations

import inspect

import pytest
import torch

from verl_vgpo.cpu import fsdp_offload


def _shard(policy) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from verl_vgpo.cpu.training_worker import ensure_single_process_group

    ensure_single_process_group()
    module = torch.nn.Linear(4, 4)
    return fully_shard(module, mesh=init_device_mesh("cpu", (1,)), offload_policy=policy)


def test_verl_still_pins_the_offload_of_forward_only_modules():
    import verl.workers.engine.fsdp.transformer_impl as engine

    assert "offload_policy = CPUOffloadPolicy(pin_memory=True)" in inspect.getsource(engine)
    if torch.cuda.is_available():
        pytest.skip("pinning works where CUDA is present")
    from torch.distributed.fsdp import CPUOffloadPolicy

    with pytest.raises(RuntimeError, match="NVIDIA driver|pin"):
        _shard(CPUOffloadPolicy(pin_memory=True))


def test_the_unpinned_policy_shards_and_runs_on_the_cpu():
    from torch.distributed.fsdp import CPUOffloadPolicy

    unpinned = fsdp_offload.unpinned_offload_policy(CPUOffloadPolicy)
    assert fsdp_offload.unpinned_offload_policy(unpinned) is unpinned  # idempotent
    policy = unpinned(pin_memory=True)
    assert isinstance(policy, CPUOffloadPolicy) and policy.pin_memory is False
    module = _shard(policy)
    out = module(torch.ones(2, 4))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_installed_only_on_the_cpu_platform(monkeypatch):
    import verl.workers.engine.fsdp.transformer_impl as engine

    stock = engine.CPUOffloadPolicy
    monkeypatch.setattr(engine, "CPUOffloadPolicy", stock)
    monkeypatch.setenv("VERL_PLATFORM", "cuda")
    assert fsdp_offload.install_unpinned_fsdp2_offload() is False
    assert engine.CPUOffloadPolicy is stock
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    assert fsdp_offload.install_unpinned_fsdp2_offload() is True
    assert engine.CPUOffloadPolicy(pin_memory=True).pin_memory is False
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert issubclass(engine.CPUOffloadPolicy, CPUOffloadPolicy)
