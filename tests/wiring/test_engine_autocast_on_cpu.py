"""Focus capture under verl's mixed precision: the engine runs the forward (and so the final-norm hook)
inside ``torch.autocast(param_dtype)``; the scores must still be float32 math on the hidden state.

verl's real FSDP2 engine with ``param_dtype=bf16`` on the CPU platform (CPU autocast stands in for the
GPU's). The reference scores the very hidden state the final norm produced, recorded by a second hook,
with ``visual_focus_scores`` outside autocast. No mock. Runs once per tiny-VLM family.
"""

from __future__ import annotations

import pytest
import torch

from tests.wiring.test_engine_focus_on_cpu import (  # noqa: F401  (fixtures, one run per model family)
    WorkerUnderTest,
    cpu_platform,
    family,
    hf_parts,
    model_path,
    samples,
)
from tests.wiring.vlm_batches import build_batch, build_training_worker, restore_qwen_methods, snapshot_qwen_methods
from verl_vgpo.focus import find_final_norm, focus_of_padded, visual_token_ids
from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY


@pytest.fixture(scope="module")
def bf16_worker(cpu_platform, model_path):  # noqa: F811
    before = snapshot_qwen_methods()
    worker = build_training_worker(model_path, use_remove_padding=False, param_dtype="bf16")
    methods = snapshot_qwen_methods()
    restore_qwen_methods(before)
    yield WorkerUnderTest(worker, methods)
    restore_qwen_methods(before)


def test_focus_is_float32_math_on_the_bf16_hidden_state(bf16_worker, samples):  # noqa: F811
    engine = bf16_worker.worker.engine
    recorded = []
    handle = find_final_norm(engine.module).register_forward_hook(lambda m, a, out: recorded.append(out.detach().clone()))
    try:
        batch = build_batch(samples, **{CAPTURE_FOCUS_FLAG: True, "use_dynamic_bsz": False, "micro_batch_size_per_gpu": len(samples)})
        output = bf16_worker.infer(batch)
    finally:
        handle.remove()
    assert len(recorded) == 1 and recorded[0].dtype == torch.bfloat16  # the forward really ran in bf16

    lengths = torch.tensor([s.input_ids.numel() for s in samples])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    input_ids = torch.cat([s.input_ids for s in samples])
    visual_ids = visual_token_ids(engine.model_config.hf_config)
    full = focus_of_padded(recorded[0], cu_seqlens, input_ids, visual_ids)
    # the engine's field holds each row's response tokens only
    expected = torch.cat([full[end - s.response_length : end] for s, end in zip(samples, cu_seqlens[1:].tolist())])

    focus = output[FOCUS_OUTPUT_KEY]
    assert focus.dtype == torch.float32
    actual = torch.cat([focus[i] for i in range(len(samples))])
    assert torch.equal(actual.isnan(), expected.isnan())
    finite = ~expected.isnan()
    assert finite.any()
    # bf16 matmul (autocast left on) gives errors around 1e-3 here; float32 math agrees to rounding
    assert (actual[finite] - expected[finite]).abs().max() <= 1e-6
