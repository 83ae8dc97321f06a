"""The prepared GPU check: one run, one GPU, a few minutes, only torch + transformers + verl-vgpo.

Measures, and writes to ``--out`` as JSON:

1. focus scores (``verl_vgpo.focus.visual_focus_scores``) vs a per-token loop on 16k packed tokens,
   hidden 3584, bf16 (target >= 100x), and the achieved fraction of the memory bandwidth: one read of
   the hidden state (a lower bound of the bytes moved) / time, against the device's peak, taken from
   the CUDA device properties (2 x memory clock x bus width) or, where those are missing, a table by
   device name (the JSON says which);
2. an old-log-prob-style forward (log-probs of the next token in float32, as verl computes them) of a
   random Qwen2.5-VL with the real 7B dimensions, bf16, sdpa, on ~16k tokens with images: time with vs
   without verl-vgpo's final-norm ``FocusHook`` (target <= 1.02x), and the extra peak memory per token of
   the hook vs of ``output_hidden_states=True`` (what the authors' code uses);
3. the estimator (a verl-free GRPO-equivalent + ``verl_vgpo.advantage.reweight_advantage``) and the
   GRPO-equivalent alone on the paper-size batch, 128 prompts x 8 rollouts x 2048 tokens;
4. the focus field of one step of the 7B recipe (512 prompts x 8 rollouts, 4,096 + 2,048 tokens at most):
   its bytes over the full sequence (the old layout) and over the response only (what the engine writes
   now), the time of the engine's response cut (``verl_vgpo.focus.response_focus``) and of the copy of each
   layout to the host (what verl's worker bridge does before the TransferQueue write).

verl is not needed: where it is installed ``verl_vgpo.wiring`` imports it, where it is not (the GPU box)
the verl-free ``FocusHook`` still imports; the JSON records ``verl_imported``. The CI test runs the smoke
with verl made unimportable and checks the GRPO-equivalent here against verl's GRPO. ``--smoke`` runs the same code on tiny shapes on the CPU (CI, < 1 min).

    bash benchmarks/gpu_check.sh --out gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --smoke --out smoke.json      # anywhere
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from verl_vgpo.advantage import group_ids, reweight_advantage
from verl_vgpo.config import VGPOConfig
from verl_vgpo.focus import visual_focus_scores
from verl_vgpo.focus import FocusHook, find_final_norm, focus_hook

# Token ids of Qwen2.5-VL's tokenizer (its config.json); the check needs no tokenizer files.
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 151655, 151656, 151652, 151653

# Qwen2.5-VL-7B-Instruct's config.json dimensions (text and vision tower).
QWEN2_5_VL_7B = dict(
    text=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, mrope_section=[16, 24, 24],
    ),
    vision=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    ),
)
TINY_VLM = dict(
    text=dict(
        vocab_size=151936 + 128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, mrope_section=[2, 3, 3],
    ),
    vision=dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
    ),
)

SHAPES = {
    "full": dict(
        focus_tokens=16384, focus_sequences=16, focus_hidden=3584, focus_repeats=20,
        model=QWEN2_5_VL_7B, lm_batch=8, lm_seq_len=2048, image_side=448, lm_repeats=5,
        prompts=128, rollouts=8, length=2048, estimator_repeats=10,
        field_rows=512 * 8, field_prompt=4096, field_response=2048, field_repeats=10,
    ),
    "smoke": dict(
        focus_tokens=1024, focus_sequences=4, focus_hidden=64, focus_repeats=3,
        model=TINY_VLM, lm_batch=2, lm_seq_len=160, image_side=56, lm_repeats=2,
        prompts=8, rollouts=4, length=128, estimator_repeats=3,
        field_rows=32, field_prompt=96, field_response=48, field_repeats=3,
    ),
}

# Peak DRAM bandwidth (bytes/s) by device name, from the vendors' data sheets; used only when the CUDA
# device properties lack the memory clock or bus width.
PEAK_BANDWIDTH_BY_NAME = {
    "H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12, "A100": 1.555e12, "L40S": 0.864e12, "L4": 0.3e12, "A10": 0.6e12,
}


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bandwidth(device: torch.device) -> tuple[float | None, str]:
    """Peak memory bandwidth in bytes/s and where the number comes from."""
    if device.type != "cuda":
        return None, "none (CPU run: no device peak to compare with)"
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "device properties: 2 x memory_clock_rate x memory_bus_width"
    for name, value in PEAK_BANDWIDTH_BY_NAME.items():
        if name in props.name:
            return value, f"table by device name ({name})"
    return None, f"unknown for {props.name}"


class PeakMemory:
    """Extra peak memory of a call: CUDA allocator peak, or on Linux CPUs the resident high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.libc = None
        if device.type == "cpu":
            import ctypes
            import ctypes.util

            self.libc = ctypes.CDLL(ctypes.util.find_library("c"))

    @property
    def how(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above memory_allocated before the call"
        return "VmHWM above VmRSS after malloc_trim (Linux, page granularity: noisy at smoke sizes)"

    @staticmethod
    def _kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {field}")

    def extra_bytes(self, fn) -> int:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            result = fn()
            torch.cuda.synchronize(self.device)
            del result
            return torch.cuda.max_memory_allocated(self.device) - before
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
        before = self._kib("VmRSS")
        result = fn()
        peak = self._kib("VmHWM")
        del result
        return (peak - before) * 1024


# ----------------------------------------------------------------------------------------------------
# 1. focus scores vs a per-token loop
# ----------------------------------------------------------------------------------------------------


def per_token_focus_loop(hidden, input_ids, cu_seqlens, visual_ids):
    """The authors' way: one Python iteration and one host sync (``.item()``) per token; CPU output
    (also used by bench_focus.py)."""
    out = torch.full((hidden.shape[0],), float("nan"))
    for s in range(len(cu_seqlens) - 1):
        lo, hi = int(cu_seqlens[s]), int(cu_seqlens[s + 1])
        visual = torch.isin(input_ids[lo:hi], visual_ids)
        if not bool(visual.any()):
            continue
        prototype = hidden[lo:hi][visual].float().mean(0)
        for p in range(lo, hi):
            out[p] = F.cosine_similarity(hidden[p].float(), prototype, dim=0).item()
    return out


def check_focus(shape: dict, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    tokens, sequences, hidden_size = shape["focus_tokens"], shape["focus_sequences"], shape["focus_hidden"]
    per_seq = tokens // sequences
    ids = torch.randint(0, 150000, (sequences, per_seq), generator=g)
    ids[:, 2 : 2 + per_seq // 4] = IMAGE_TOKEN  # a quarter of every sequence is image pads
    input_ids = ids.reshape(-1).to(device)
    cu_seqlens = (torch.arange(sequences + 1) * per_seq).to(device)
    hidden = torch.randn(input_ids.numel(), hidden_size, generator=g).to(device, dtype)
    visual = [IMAGE_TOKEN, VIDEO_TOKEN]

    t_vec = median_seconds(lambda: visual_focus_scores(hidden, input_ids, cu_seqlens, visual), shape["focus_repeats"], device)
    ours = visual_focus_scores(hidden, input_ids, cu_seqlens, visual)
    synchronize(device)
    start = time.perf_counter()
    looped = per_token_focus_loop(hidden, input_ids, cu_seqlens, torch.tensor(visual, device=device))
    synchronize(device)
    t_loop = time.perf_counter() - start
    bytes_read = hidden.numel() * hidden.element_size()  # one read of the hidden state: a lower bound
    peak, source = peak_bandwidth(device)
    achieved = bytes_read / t_vec
    return {
        "focus_speedup_vs_token_loop": t_loop / t_vec,
        "focus_ms": t_vec * 1e3,
        "focus_token_loop_ms": t_loop * 1e3,
        "focus_max_abs_diff_vs_token_loop": float((ours.cpu() - looped).abs().max()),
        "focus_bytes_read_lower_bound": bytes_read,
        "focus_achieved_bytes_per_s": achieved,
        "device_peak_bytes_per_s": peak,
        "device_peak_source": source,
        "focus_bandwidth_fraction": achieved / peak if peak else None,
    }


# ----------------------------------------------------------------------------------------------------
# 2. old-log-prob forward of a random Qwen2.5-VL, with and without the focus hook
# ----------------------------------------------------------------------------------------------------


def build_random_qwen2_5_vl(dims: dict, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text, vision = dict(dims["text"]), dict(dims["vision"])
    mrope = text.pop("mrope_section")
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **text,
            head_dim=text["hidden_size"] // text["num_attention_heads"],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            tie_word_embeddings=False,
        ),
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):  # random weights initialised on the device: no checkpoint, no download
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.to(device).eval()  # a no-op when the context manager already placed every weight


def make_vlm_batch(model, shape: dict, device: torch.device, dtype: torch.dtype) -> tuple[dict, list]:
    """``lm_batch`` sequences of ``lm_seq_len`` tokens: one random image, then random text tokens."""
    config = model.config
    vision = config.vision_config
    side = shape["image_side"] // vision.patch_size
    merge = vision.spatial_merge_size
    image_tokens = side * side // (merge * merge)
    g = torch.Generator().manual_seed(1)
    ids, grids, pixels = [], [], []
    for _ in range(shape["lm_batch"]):
        text = torch.randint(1000, 150000, (shape["lm_seq_len"] - image_tokens - 2,), generator=g)
        ids.append(torch.cat([torch.tensor([VISION_START]), torch.full((image_tokens,), IMAGE_TOKEN),
                              torch.tensor([VISION_END]), text]))
        grids.append(torch.tensor([1, side, side]))
        patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
        pixels.append(torch.randn(side * side, patch_dim, generator=g))
    input_ids = torch.stack(ids)
    grid = torch.stack(grids)
    types = (input_ids == IMAGE_TOKEN).long()
    rope, _ = model.model.get_rope_index(input_ids=input_ids.to(device), mm_token_type_ids=types.to(device),
                                         image_grid_thw=grid.to(device))
    text_positions = torch.arange(input_ids.shape[1], device=device).expand(input_ids.shape[0], -1)
    inputs = {
        "input_ids": input_ids.to(device),
        "position_ids": torch.cat([text_positions[None], rope.to(device)]),
        "attention_mask": torch.ones_like(input_ids, device=device),
        "pixel_values": torch.cat(pixels).to(device, dtype),
        "image_grid_thw": grid.to(device),
        "mm_token_type_ids": types.to(device),
    }
    return inputs, ids


def old_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token p+1) at position p in float32, like verl's old-log-prob pass."""
    labels = input_ids[:, 1:]
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def check_logprob_forward(shape: dict, device: torch.device, dtype: torch.dtype) -> dict:
    model = build_random_qwen2_5_vl(shape["model"], device, dtype)
    inputs, ids = make_vlm_batch(model, shape, device, dtype)
    nested_ids = torch.nested.as_nested_tensor([i.to(device) for i in ids], layout=torch.jagged)
    norm = find_final_norm(model)
    visual = [IMAGE_TOKEN, VIDEO_TOKEN]
    tokens = int(inputs["input_ids"].numel())
    hook_seconds = []

    def run(variant: str):
        with torch.no_grad():
            if variant == "base":
                return old_log_probs(model(**inputs, use_cache=False).logits, inputs["input_ids"])
            if variant == "focus":
                hook = FocusHook(nested_ids, visual, use_remove_padding=False)
                with focus_hook(norm, hook):
                    log_probs = old_log_probs(model(**inputs, use_cache=False).logits, inputs["input_ids"])
                hook_seconds.append(hook.seconds)
                return log_probs, hook.focus
            output = model(**inputs, use_cache=False, output_hidden_states=True)
            return old_log_probs(output.logits, inputs["input_ids"]), output.hidden_states

    for variant in ("base", "focus", "all_hidden_states"):  # warm-up (kernels, allocator)
        run(variant)
    times = {"base": [], "focus": []}
    for repeat in range(shape["lm_repeats"]):
        for variant in ("base", "focus") if repeat % 2 == 0 else ("focus", "base"):  # alternate: cancel drift
            synchronize(device)
            start = time.perf_counter()
            run(variant)
            synchronize(device)
            times[variant].append(time.perf_counter() - start)
    memory = PeakMemory(device)
    peak = {}
    for _ in range(2):  # keep the smaller of two: the first call may still grow caches
        for variant in ("base", "focus", "all_hidden_states"):
            extra = memory.extra_bytes(lambda: run(variant))
            peak[variant] = min(extra, peak.get(variant, extra))
    base_s, focus_s = statistics.median(times["base"]), statistics.median(times["focus"])
    result = {
        "logprob_time_ratio_focus_vs_base": focus_s / base_s,
        "logprob_base_ms": base_s * 1e3,
        "logprob_focus_ms": focus_s * 1e3,
        "focus_hook_ms": statistics.median(hook_seconds) * 1e3,
        "focus_extra_peak_bytes_per_token": (peak["focus"] - peak["base"]) / tokens,
        "all_hidden_states_extra_peak_bytes_per_token": (peak["all_hidden_states"] - peak["base"]) / tokens,
        "peak_bytes_above_start": peak,
        "memory_measure": memory.how,
        "logprob_tokens": tokens,
        "logprob_image_tokens": int((inputs["input_ids"] == IMAGE_TOKEN).sum()),
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    del model, inputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------------
# 3. the estimator on the paper-size batch, with a verl-free GRPO
# ----------------------------------------------------------------------------------------------------


def grpo_equivalent(token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    """verl's ``compute_grpo_outcome_advantage`` without verl, vectorised over uid groups.

    Outcome score = sum of the row's rewards; per uid group mean and unbiased std (a group of one gets
    mean 0 and std 1, as in verl); advantage (score - mean) / (std + epsilon), or score - mean without
    the std; broadcast over the response mask. Returns (bs, L) float32.
    """
    scores = token_level_rewards.sum(dim=-1).to(torch.float32)
    groups, num_groups = group_ids(index, scores.device)
    count = torch.zeros(num_groups, device=scores.device).index_add_(0, groups, torch.ones_like(scores))
    mean = torch.zeros(num_groups, device=scores.device).index_add_(0, groups, scores) / count
    deviation = scores - mean[groups]
    variance = torch.zeros(num_groups, device=scores.device).index_add_(0, groups, deviation * deviation)
    std = (variance / (count - 1).clamp_min(1.0)).sqrt()
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    centred = scores - mean[groups]
    advantage = centred / (std[groups] + epsilon) if norm_adv_by_std_in_grpo else centred
    return advantage.unsqueeze(-1) * response_mask


def make_estimator_batch(prompts, rollouts, length, device, seed=0):
    """Outcome rewards, a right-padded mask, uids and focus in [-0.2, 1] as the estimator receives them
    (also used by bench_estimator.py)."""
    g = torch.Generator().manual_seed(seed)
    bs = prompts * rollouts
    lengths = torch.randint(length // 8, length + 1, (bs,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.zeros(bs, length)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    focus = torch.rand(bs, length, generator=g) * 1.2 - 0.2
    index = np.array([f"prompt-{i // rollouts}" for i in range(bs)], dtype=object)
    return rewards.to(device), mask.to(device), index, focus.to(device)


def check_estimator(shape: dict, device: torch.device) -> dict:
    rewards, mask, index, focus = make_estimator_batch(shape["prompts"], shape["rollouts"], shape["length"], device)
    cfg = VGPOConfig()
    repeats = shape["estimator_repeats"]

    def estimator():
        return reweight_advantage(grpo_equivalent(rewards, mask, index), focus, mask, index, cfg)

    def estimator_with_metrics():
        return reweight_advantage(grpo_equivalent(rewards, mask, index), focus, mask, index, cfg, metrics={})

    t_est = median_seconds(estimator, repeats, device)
    t_metrics = median_seconds(estimator_with_metrics, repeats, device)
    t_grpo = median_seconds(lambda: grpo_equivalent(rewards, mask, index), repeats, device)
    return {
        "estimator_ms": t_est * 1e3,
        "estimator_with_metrics_ms": t_metrics * 1e3,
        "grpo_estimator_ms": t_grpo * 1e3,
        "estimator_ratio_vs_grpo": t_est / t_grpo,
    }


# ----------------------------------------------------------------------------------------------------
# 4. the focus field of one step: full sequence vs response only
# ----------------------------------------------------------------------------------------------------


def check_focus_field(shape: dict, device: torch.device) -> dict:
    """Every row at the recipe's longest prompt and response: the upper bound of a step's field."""
    from verl_vgpo.focus import response_focus

    rows, prompt, response = shape["field_rows"], shape["field_prompt"], shape["field_response"]
    sequence = prompt + response
    full = torch.rand(rows * sequence, device=device)
    cu_seqlens = torch.arange(rows + 1, device=device) * sequence
    response_mask = torch.nested.nested_tensor_from_jagged(
        torch.ones(rows * response, dtype=torch.int64, device=device), torch.arange(rows + 1, device=device) * response)
    cut = response_focus(full, cu_seqlens, response_mask)
    expected = full.view(rows, sequence)[:, prompt:].reshape(-1)
    repeats = shape["field_repeats"]
    t_cut = median_seconds(lambda: response_focus(full, cu_seqlens, response_mask), repeats, device)
    t_full = median_seconds(lambda: full.cpu(), repeats, device)
    t_response = median_seconds(lambda: cut.values().cpu(), repeats, device)
    return {
        "focus_field_rows": rows,
        "focus_field_bytes_full": full.numel() * full.element_size(),
        "focus_field_bytes_response_only": cut.values().numel() * cut.values().element_size(),
        "focus_response_cut_ms": t_cut * 1e3,
        "focus_field_to_host_ms_full": t_full * 1e3,
        "focus_field_to_host_ms_response_only": t_response * 1e3,
        "focus_response_cut_exact": bool(torch.equal(cut.values(), expected)),
    }


# ----------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is available; run with --smoke for the CPU check")
    shape = SHAPES["smoke" if args.smoke else "full"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # steadier timings on a shared machine
    started = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "smoke": args.smoke,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "shapes": {
            "focus": {"tokens": shape["focus_tokens"], "sequences": shape["focus_sequences"], "hidden": shape["focus_hidden"]},
            "logprob": {"batch": shape["lm_batch"], "seq_len": shape["lm_seq_len"], "image_side": shape["image_side"],
                        "text": shape["model"]["text"], "vision": shape["model"]["vision"], "attention": "sdpa"},
            "estimator": {"prompts": shape["prompts"], "rollouts": shape["rollouts"], "length": shape["length"]},
            "focus_field": {"rows": shape["field_rows"], "prompt": shape["field_prompt"],
                            "response": shape["field_response"]},
        },
    }
    for name, check in (("focus", lambda: check_focus(shape, device, dtype)),
                        ("logprob", lambda: check_logprob_forward(shape, device, dtype)),
                        ("estimator", lambda: check_estimator(shape, device)),
                        ("focus_field", lambda: check_focus_field(shape, device))):
        section_start = time.perf_counter()
        result.update(check())
        result[f"{name}_section_s"] = time.perf_counter() - section_start
        print(f"[gpu_check] {name} done in {result[f'{name}_section_s']:.1f} s", flush=True)
    result["total_s"] = time.perf_counter() - started
    result["verl_imported"] = sys.modules.get("verl") is not None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    summary = {k: result[k] for k in (
        "focus_speedup_vs_token_loop", "focus_bandwidth_fraction", "logprob_time_ratio_focus_vs_base",
        "focus_extra_peak_bytes_per_token", "all_hidden_states_extra_peak_bytes_per_token", "estimator_ms",
        "grpo_estimator_ms", "focus_field_bytes_full", "focus_field_bytes_response_only",
        "focus_field_to_host_ms_full", "focus_field_to_host_ms_response_only", "total_s")}
    print(json.dumps({"device": result["device"], **summary}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
