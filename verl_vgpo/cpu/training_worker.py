"""verl's real ``TrainingWorker`` (FSDP2 engine) inside the current process, on the CPU, without Ray.

The engine tests and ``benchmarks/bench_logprob_focus.py`` drive the worker directly to check and time
focus capture against plain-HF forwards; this is the one place that knows the settings the worker needs
on a CPU (a one-process gloo group, sdpa attention, no torch.compile, fp32 master weights). Call
:func:`verl_vgpo.cpu.enable_cpu_platform` first.
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_group() -> None:
    """A one-process gloo group, what verl's TrainingWorker expects to find (no Ray needed)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)


def build_training_worker(
    model_path: str, use_remove_padding: bool, param_dtype: str = "fp32", micro_batch_size: int = 2
):
    """verl's real TrainingWorker with the FSDP2 engine and sdpa attention, reset and ready to run.

    ``param_dtype`` other than fp32 makes verl run the forward under ``torch.autocast(param_dtype)``;
    ``micro_batch_size`` is the default micro-batch size (a batch may override it per call).
    """
    from verl.trainer.config.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine_workers import TrainingWorker, TrainingWorkerConfig

    model_config = HFModelConfig(
        path=model_path,
        override_config={"attn_implementation": "sdpa"},
        use_remove_padding=use_remove_padding,
        enable_gradient_checkpointing=False,
    )
    engine_config = FSDPEngineConfig(
        strategy="fsdp2",
        use_dynamic_bsz=False,
        infer_micro_batch_size_per_gpu=micro_batch_size,
        micro_batch_size_per_gpu=micro_batch_size,
        infer_max_token_len_per_gpu=4096,
        max_token_len_per_gpu=4096,
        mixed_precision={"param_dtype": param_dtype, "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        use_torch_compile=False,
    )
    worker = TrainingWorker(
        TrainingWorkerConfig(
            model_type="language_model",
            model_config=model_config,
            engine_config=engine_config,
            optimizer_config=FSDPOptimizerConfig(lr=1e-5),
            checkpoint_config=CheckpointConfig(),
        )
    )
    worker.reset()
    return worker
