"""VGPO focus capture in verl's real FSDP2 engine (TrainingWorker, one gloo process, CPU platform),
for each tiny-VLM family (Qwen2.5-VL, Qwen3-VL, Qwen3.5: every test runs once per family).

References are independent plain-HF forwards of each sample alone with ``output_hidden_states=True``
(transformers' own methods, not verl's patched ones). The only mock: in the packed-layout tests of
Qwen2.5-VL, verl's flash-attn varlen kernel call (flash-attn cannot exist on CPU) is replaced by an
sdpa equivalent. Qwen3-VL and Qwen3.5 need no stand-in: verl leaves their attention to transformers,
whose sdpa path builds the per-sequence causal mask of the packed row from the position ids, and
Qwen3.5's linear-attention layers get the packed sequences' offsets (``cu_seqlens``) from verl's engine
and run transformers' torch fallback of the Gated DeltaNet kernels on each sequence.
"""

from __future__ import annotations


import pytest
import torch

from tests.wiring.vlm_batches import (
    FAMILIES,
    build_batch,
    build_training_worker,
    cpu_platform_with_process_group,
    cpu_varlen_attention,
    using_methods as use_methods,
    reference_outputs,
    restore_qwen_methods,
    snapshot_qwen_methods,
    standard_samples,
)
from verl_vgpo.focus import find_final_norm
from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY, FOCUS_TIME_KEY

TOLERANCE = 1e-5


class WorkerUnderTest:
    """A TrainingWorker plus the Qwen-VL class methods verl installed for it (swapped in per call)."""

    def __init__(self, worker, methods):
        self.worker = worker
        self.methods = methods

    def infer(self, batch):
        with use_methods(self.methods):
            return self.worker.infer_batch(batch)


@pytest.fixture(scope="module")
def cpu_platform():
    with cpu_platform_with_process_group():
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model_path(family, tiny_vlm_of):
    return tiny_vlm_of(family)


@pytest.fixture(scope="module")
def hf_parts(model_path, original_qwen_methods):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    return processor, model.eval()


@pytest.fixture(scope="module")
def samples(hf_parts):
    return standard_samples(*hf_parts)


@pytest.fixture(scope="module")
def references(hf_parts, samples, original_qwen_methods):
    return [reference_outputs(hf_parts[1], sample, original_qwen_methods) for sample in samples]


@pytest.fixture(scope="module")
def padded_worker(cpu_platform, model_path):
    # verl patches the Qwen-VL classes while building; keep its methods for this worker's calls only
    before = snapshot_qwen_methods()
    worker = build_training_worker(model_path, use_remove_padding=False)
    methods = snapshot_qwen_methods()
    restore_qwen_methods(before)
    yield WorkerUnderTest(worker, methods)
    restore_qwen_methods(before)


@pytest.fixture(scope="module")
def packed_worker(cpu_platform, model_path, family):
    import verl.models.transformers.qwen2_vl as verl_qwen2_vl

    calls = []

    def counted_varlen_attention(*args, **kwargs):
        calls.append(1)
        return cpu_varlen_attention(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        if family == "qwen2_5_vl":
            # flash-attn cannot exist on CPU: an sdpa varlen stand-in for verl's packed attention kernel
            patch.setattr(verl_qwen2_vl, "_custom_flash_attention_forward", counted_varlen_attention)
            patch.setattr(verl_qwen2_vl, "_flash_use_top_left_mask", False, raising=False)
        before = snapshot_qwen_methods()
        worker = build_training_worker(model_path, use_remove_padding=True)
        methods = snapshot_qwen_methods()
        restore_qwen_methods(before)
        bundle = WorkerUnderTest(worker, methods)
        bundle.varlen_attention_calls = calls
        yield bundle
    restore_qwen_methods(before)


def _capture_batch(samples, **settings):
    defaults = {CAPTURE_FOCUS_FLAG: True, "use_dynamic_bsz": False, "micro_batch_size_per_gpu": 2}
    return build_batch(samples, **{**defaults, **settings})


def _flatten(values):
    """Metric values come back as (nested) lists: per DP rank, per micro-batch."""
    if isinstance(values, (list, tuple)):
        return [leaf for value in values for leaf in _flatten(value)]
    return [values]


def _assert_close_with_nan(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual.isnan(), expected.isnan()), f"{what}: NaN pattern differs"
    finite = ~expected.isnan()
    error = (actual[finite] - expected[finite]).abs().max().item() if finite.any() else 0.0
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol}"


def _check_against_references(output, samples, references):
    focus, log_probs = output[FOCUS_OUTPUT_KEY], output["log_probs"]
    assert focus.is_nested and focus.dtype == torch.float32
    for i, (sample, (ref_log_probs, ref_focus)) in enumerate(zip(samples, references)):
        assert log_probs[i].shape == sample.input_ids.shape, sample.name
        # focus: the response tokens only, each at its own position (the reference covers every position)
        assert focus[i].shape == (sample.response_length,), sample.name
        _assert_close_with_nan(focus[i], ref_focus[-sample.response_length :], TOLERANCE, f"focus of {sample.name}")
        _assert_close_with_nan(log_probs[i][:-1], ref_log_probs, TOLERANCE, f"log_probs of {sample.name}")


def test_padded_layout_focus_and_log_probs_match_plain_hf_forward(padded_worker, samples, references):
    output = padded_worker.infer(_capture_batch(samples))
    _check_against_references(output, samples, references)
    by_name = {sample.name: output[FOCUS_OUTPUT_KEY][i] for i, sample in enumerate(samples)}
    assert by_name["text_only"].isnan().all()
    for name in ("image", "two_images", "video_only"):
        assert torch.isfinite(by_name[name]).all() and by_name[name].abs().max() <= 1 + 1e-6
    seconds = _flatten(output["metrics"][FOCUS_TIME_KEY])
    assert len(seconds) == 2 and all(s > 0 for s in seconds)  # one entry per micro-batch


def test_packed_layout_focus_matches_plain_hf_forward(packed_worker, samples, references, family):
    calls_before = len(packed_worker.varlen_attention_calls)
    final_norm_inputs = []
    norm = find_final_norm(packed_worker.worker.engine.module)
    handle = norm.register_forward_hook(lambda module, args, out: final_norm_inputs.append(tuple(out.shape)))
    try:
        output = packed_worker.infer(_capture_batch(samples, use_remove_padding=True))
    finally:
        handle.remove()
    _check_against_references(output, samples, references)
    # the model really saw packed rows: one (1, tokens of 2 samples, H) row per micro-batch
    assert [shape[:2] for shape in final_norm_inputs] == [
        (1, sum(len(s.input_ids) for s in samples[i : i + 2])) for i in (0, 2)
    ]
    if family == "qwen2_5_vl":
        # verl's varlen attention path really ran: 2 micro-batches x 2 decoder layers
        assert len(packed_worker.varlen_attention_calls) - calls_before == 4


def test_packed_layout_with_pad_suffix(packed_worker, samples, references):
    # pad_to_length rounds the packed micro-batch up with a pad suffix that must not leak into focus
    engine = packed_worker.worker.engine
    engine.pad_to_length, previous_bucket = True, engine.pad_to_length_bucket
    engine.pad_to_length_bucket = 64
    micro_batch_totals = [sum(len(s.input_ids) for s in samples[i : i + 2]) for i in (0, 2)]
    assert all(engine._get_packed_pad_size(total) > 0 for total in micro_batch_totals)
    try:
        output = packed_worker.infer(_capture_batch(samples, use_remove_padding=True))
    finally:
        engine.pad_to_length, engine.pad_to_length_bucket = False, previous_bucket
    _check_against_references(output, samples, references)


@pytest.mark.parametrize(
    "settings",
    [
        {"micro_batch_size_per_gpu": 1},
        {"micro_batch_size_per_gpu": 4},
        # token budget below two samples: several micro-batches, rows regrouped and then restored
        {"use_dynamic_bsz": True, "max_token_len_per_gpu": 50},
    ],
    ids=["mbs1", "mbs4", "dynamic_bsz"],
)
def test_focus_is_independent_of_micro_batching(padded_worker, samples, references, settings):
    baseline = padded_worker.infer(_capture_batch(samples, micro_batch_size_per_gpu=2))[FOCUS_OUTPUT_KEY]
    output = padded_worker.infer(_capture_batch(samples, **settings))
    micro_batches = len(_flatten(output["metrics"][FOCUS_TIME_KEY]))
    assert micro_batches == {1: 4, 4: 1}.get(settings.get("micro_batch_size_per_gpu"), micro_batches)
    if settings.get("use_dynamic_bsz"):
        assert micro_batches >= 3  # the samples are 28-49 tokens (150 in all): a 50-token budget splits them
    for i, sample in enumerate(samples):
        _assert_close_with_nan(output[FOCUS_OUTPUT_KEY][i], baseline[i], 1e-6, f"{sample.name} with {settings}")
    _check_against_references(output, samples, references)


def test_dynamic_bsz_restores_original_row_order(padded_worker, samples, references):
    reordered = [samples[i] for i in (2, 1, 3, 0)]
    output = padded_worker.infer(_capture_batch(reordered, use_dynamic_bsz=True, max_token_len_per_gpu=60))
    _check_against_references(output, reordered, [references[i] for i in (2, 1, 3, 0)])


def test_visual_token_selection(padded_worker, samples, hf_parts):
    from verl_vgpo.wiring.keys import FOCUS_VISUAL_TOKENS_KEY as VISUAL_TOKENS_KEY

    model = hf_parts[1]
    output = padded_worker.infer(_capture_batch(samples, **{VISUAL_TOKENS_KEY: ["image"]}))
    by_name = {sample.name: output[FOCUS_OUTPUT_KEY][i] for i, sample in enumerate(samples)}
    assert by_name["video_only"].isnan().all()  # its video pads no longer count as visual
    assert torch.isfinite(by_name["image"]).all()

    output = padded_worker.infer(_capture_batch(samples, **{VISUAL_TOKENS_KEY: ["video"]}))
    by_name = {sample.name: output[FOCUS_OUTPUT_KEY][i] for i, sample in enumerate(samples)}
    assert by_name["image"].isnan().all() and torch.isfinite(by_name["video_only"]).all()

    with pytest.raises(Exception, match="image.*video|visual_tokens|vgpo_visual_tokens"):
        padded_worker.infer(_capture_batch(samples, **{VISUAL_TOKENS_KEY: ["audio"]}))
    assert model.config.video_token_id != model.config.image_token_id


def test_no_focus_without_flag_and_hook_always_removed(padded_worker, samples, monkeypatch):
    norm = find_final_norm(padded_worker.worker.engine.module)
    assert not norm._forward_hooks

    # reference pass / any pass without the flag: no focus field, no hook
    output = padded_worker.infer(build_batch(samples, use_dynamic_bsz=False, micro_batch_size_per_gpu=2))
    assert FOCUS_OUTPUT_KEY not in output.keys() and "log_probs" in output.keys()
    assert FOCUS_TIME_KEY not in output["metrics"]

    padded_worker.infer(_capture_batch(samples))
    assert not norm._forward_hooks

    # a failure inside the capture still removes the hook
    def failing_scores(*args, **kwargs):
        raise RuntimeError("scoring failed on purpose")

    monkeypatch.setattr("verl_vgpo.focus.visual_focus_scores", failing_scores)
    with pytest.raises(RuntimeError, match="scoring failed on purpose"):
        padded_worker.infer(_capture_batch(samples))
    assert not norm._forward_hooks


def test_update_pass_never_captures(padded_worker, samples):
    """forward_only=False (the actor update) ignores the flag: the loss sees no focus field."""
    from verl.utils import tensordict_utils as tu

    engine = padded_worker.worker.engine
    seen_keys = []

    def loss_function(model_output, data, dp_group=None):
        seen_keys.append(set(model_output))
        return model_output["log_probs"].values().sum() * 0.0, {}

    batch = _capture_batch(samples, use_remove_padding=False, return_model_output=True, global_batch_size=len(samples))
    tu.assign_non_tensor(batch, max_token_len_per_gpu=4096)
    with use_methods(padded_worker.methods), engine.train_mode():
        output = engine.forward_backward_batch(batch, loss_function=loss_function, forward_only=False)
        engine.optimizer_zero_grad()
    assert len(seen_keys) == 2 and all(FOCUS_OUTPUT_KEY not in keys for keys in seen_keys)
    assert FOCUS_OUTPUT_KEY not in output["model_output"]
    assert not engine_module_norm_hooks(engine)


def engine_module_norm_hooks(engine):
    from verl_vgpo.focus import find_final_norm

    return find_final_norm(engine.module)._forward_hooks


def test_engine_class_is_the_focus_subclass_for_cpu(padded_worker):
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    engine = padded_worker.worker.engine
    assert isinstance(engine, FSDPEngineWithLMHead) and getattr(type(engine), "vgpo_focus_capture", False)
