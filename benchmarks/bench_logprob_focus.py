"""Cost of VGPO focus capture on the old-log-prob forward: time ratio and extra peak memory.

Runs the same old-log-prob forward of a random mid-size Qwen2.5-VL (``verl_vgpo.cpu.tiny_vlm`` preset
"bench": hidden 1024, 8 layers; built offline) with and without focus capture, alternating the two
variants, and prints the ratios measured in this run:

* backend ``verl`` (default when verl is importable and the device is the CPU): verl's real
  ``TrainingWorker.infer_batch`` on the FSDP2 engine (padded layout, CPU platform), once with the
  ``CAPTURE_FOCUS_FLAG`` set and once without;
* backend ``hf`` (default otherwise, e.g. on a GPU box without verl): a plain HF forward that
  computes log-probs like verl, with and without the very same ``verl_vgpo.focus.FocusHook`` on the
  final norm; it also times ``output_hidden_states=True`` (what the official implementation does)
  for contrast.

Targets: time ratio <= 1.05x; extra peak memory O(tokens) (compare with the size of one hidden
state, tokens x hidden x 4 bytes). Peak memory: ``max_memory_allocated`` on CUDA; on the CPU the
kernel's resident high-water mark around each forward (``--no-memory`` skips it). On a shared CPU
machine wall-clock ratios are noisy: the process CPU-time ratio, the hook's own time
(``focus_hook_fraction_of_base``) and the ratio of the fastest repeats are the steadier numbers.

    python benchmarks/bench_logprob_focus.py                      # CPU, verl if installed
    python benchmarks/bench_logprob_focus.py --backend hf --device cuda --batch-size 16 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm
from verl_vgpo.focus import FocusHook, find_final_norm, focus_hook
from verl_vgpo.wiring.keys import CAPTURE_FOCUS_FLAG, FOCUS_OUTPUT_KEY, FOCUS_SECONDS_KEY

VARIANTS_VERL = ("base", "focus")
VARIANTS_HF = ("base", "focus", "all_hidden_states")


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------


def make_samples(processor, model, batch_size: int, seq_len: int, image_size: int, seed: int):
    """``batch_size`` sequences of exactly ``seq_len`` tokens: chat prompt with one image + random response."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    config = model.config
    special = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    ordinary = np.array([i for i in range(len(processor.tokenizer)) if i not in special and i > 20])
    samples = []
    for _ in range(batch_size):
        image = Image.fromarray(rng.randint(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = processor(text=[text], images=[image], return_tensors="pt")
        prompt = encoded["input_ids"][0]
        if prompt.numel() >= seq_len:
            raise ValueError(f"--seq-len {seq_len} must exceed the prompt length {prompt.numel()}")
        response = torch.from_numpy(rng.choice(ordinary, seq_len - prompt.numel())).to(prompt.dtype)
        input_ids = torch.cat([prompt, response])
        types = torch.zeros_like(input_ids)
        types[input_ids == config.image_token_id] = 1
        rope, _ = model.model.get_rope_index(
            input_ids=input_ids[None], mm_token_type_ids=types[None], image_grid_thw=encoded["image_grid_thw"]
        )
        position_ids = torch.cat([torch.arange(seq_len)[None], rope[:, 0]])
        mm = {"pixel_values": encoded["pixel_values"], "image_grid_thw": encoded["image_grid_thw"]}
        samples.append((input_ids, position_ids, mm, response.numel()))
    return samples


# ----------------------------------------------------------------------------------------------------
# backend: plain HF forward + the engine's hook
# ----------------------------------------------------------------------------------------------------


class HFRunner:
    def __init__(self, model_path, device, dtype, samples):
        from transformers import AutoModelForImageTextToText

        self.device, self.dtype = device, dtype
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa", dtype=dtype)
        self.model.to(device).eval()
        config = self.model.config
        self.visual_ids = [config.image_token_id, config.video_token_id]
        ids = [s[0] for s in samples]
        self.nested_ids = torch.nested.as_nested_tensor(ids, layout=torch.jagged)
        self.inputs = {
            "input_ids": torch.stack(ids).to(device),
            "position_ids": torch.stack([s[1] for s in samples], dim=1).to(device),
            "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long, device=device),
            "pixel_values": torch.cat([s[2]["pixel_values"] for s in samples]).to(device, dtype),
            "image_grid_thw": torch.cat([s[2]["image_grid_thw"] for s in samples]).to(device),
        }
        types = torch.zeros_like(self.inputs["input_ids"])
        types[self.inputs["input_ids"] == config.image_token_id] = 1
        self.inputs["mm_token_type_ids"] = types
        self.norm = find_final_norm(self.model)
        self.tokens = int(self.inputs["input_ids"].numel())
        self.hidden_size = config.text_config.hidden_size

    def isolated_hook_input(self):
        """A FocusHook and a padded hidden state shaped like this runner's final-norm output."""
        batch, length = self.inputs["input_ids"].shape
        hidden = torch.randn(batch, length, self.hidden_size, device=self.device, dtype=self.dtype)
        return FocusHook(self.nested_ids.to(self.device), self.visual_ids, use_remove_padding=False), hidden

    def _log_probs(self, logits):
        # verl's layout: log p(token p+1) at position p, computed in float32
        labels = self.inputs["input_ids"][:, 1:]
        return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    def run(self, variant):
        with torch.no_grad():
            if variant == "base":
                output = self.model(**self.inputs, use_cache=False)
                return self._log_probs(output.logits), 0.0
            if variant == "focus":
                hook = FocusHook(self.nested_ids.to(self.device), self.visual_ids, use_remove_padding=False)
                with focus_hook(self.norm, hook):
                    output = self.model(**self.inputs, use_cache=False)
                return (self._log_probs(output.logits), hook.focus), hook.seconds
            if variant == "all_hidden_states":
                output = self.model(**self.inputs, use_cache=False, output_hidden_states=True)
                hidden = output.hidden_states[-1].float()
                visual = torch.isin(self.inputs["input_ids"], torch.tensor(self.visual_ids, device=self.device))
                prototype = (hidden * visual.unsqueeze(-1)).sum(1) / visual.sum(1, keepdim=True)
                focus = torch.nn.functional.cosine_similarity(hidden, prototype.unsqueeze(1), dim=-1)
                return (self._log_probs(output.logits), focus), 0.0
        raise ValueError(variant)


# ----------------------------------------------------------------------------------------------------
# backend: verl's TrainingWorker (FSDP2 engine) on the CPU platform
# ----------------------------------------------------------------------------------------------------


class VerlRunner:
    def __init__(self, model_path, samples):
        from verl.utils import tensordict_utils as tu

        from verl_vgpo.cpu import enable_cpu_platform
        from verl_vgpo.cpu.training_worker import build_training_worker, ensure_single_process_group

        enable_cpu_platform()
        ensure_single_process_group()
        self.tu = tu
        # padded layout: the packed VLM attention needs flash-attn
        self.worker = build_training_worker(model_path, use_remove_padding=False, micro_batch_size=len(samples))
        self.samples = samples
        self.tokens = sum(len(s[0]) for s in samples)
        self.hidden_size = self.worker.engine.model_config.hf_config.text_config.hidden_size

    def isolated_hook_input(self):
        config = self.worker.engine.model_config.hf_config
        ids = torch.nested.as_nested_tensor([s[0] for s in self.samples], layout=torch.jagged)
        hidden = torch.randn(len(self.samples), max(len(s[0]) for s in self.samples), self.hidden_size)
        return FocusHook(ids, [config.image_token_id, config.video_token_id], use_remove_padding=False), hidden

    def _batch(self, capture):
        def nested(tensors):
            return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)

        masks = [torch.cat([torch.zeros(len(s[0]) - s[3]), torch.ones(s[3])]) for s in self.samples]
        extra = {"temperature": 1.0, "calculate_entropy": True, "compute_loss": False, "use_dynamic_bsz": False,
                 "micro_batch_size_per_gpu": len(self.samples)}
        if capture:
            extra[CAPTURE_FOCUS_FLAG] = True
        return self.tu.get_tensordict(
            {
                "input_ids": nested([s[0] for s in self.samples]),
                "position_ids": nested([s[1] for s in self.samples]),
                "loss_mask": nested(masks),
                # the engine cuts focus to each row's response with it, as verl's V1 trainer stores it
                "response_mask": nested([torch.ones(s[3], dtype=torch.int64) for s in self.samples]),
                "multi_modal_inputs": [dict(s[2]) for s in self.samples],
            },
            non_tensor_dict=extra,
        )

    def run(self, variant):
        output = self.worker.infer_batch(self._batch(capture=variant == "focus"))
        if variant == "focus":
            if FOCUS_OUTPUT_KEY not in output.keys():
                raise RuntimeError("the engine returned no focus field: is the verl-vgpo plugin loaded?")
            return output, float(output[FOCUS_SECONDS_KEY].values().sum())
        return output, 0.0



# ----------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build_runner(args, model_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    reference_model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa")
    samples = make_samples(processor, reference_model, args.batch_size, args.seq_len, args.image_size, args.seed)
    del reference_model
    if args.backend == "verl":
        return VerlRunner(model_path, samples), VARIANTS_VERL
    return HFRunner(model_path, args.device, args.dtype, samples), VARIANTS_HF


def time_variants(args, model_path):
    runner, variants = _build_runner(args, model_path)
    device = args.device
    for variant in variants:  # warm-up
        runner.run(variant)
    times = {v: [] for v in variants}
    cpu_times = {v: [] for v in variants}
    focus_seconds = []
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else tuple(reversed(variants))  # cancel drift
        for variant in order:
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            _, seconds = runner.run(variant)
            _sync(device)
            times[variant].append(time.perf_counter() - start)
            cpu_times[variant].append(time.process_time() - cpu_start)
            if variant == "focus":
                focus_seconds.append(seconds)
    peak = {}
    if not args.no_memory:
        host = HostPeakMemory() if device.type == "cpu" else None
        for _ in range(2):  # twice, keep the smaller: the first run of a process may still grow caches
            for variant in variants:
                measure = host.measure if host is not None else cuda_peak_extra
                extra = measure(lambda: runner.run(variant))
                peak[variant] = min(extra, peak.get(variant, extra))
        # the hook alone on a hidden state of the same shape: its own transient memory, free of the
        # forward's allocator noise
        hook, hidden = runner.isolated_hook_input()
        measure = host.measure if host is not None else cuda_peak_extra
        peak["hook_alone"] = measure(lambda: hook._score(hidden))
    return runner, times, cpu_times, focus_seconds, peak


def cuda_peak_extra(fn) -> int:
    """Bytes of GPU memory ``fn`` allocated at its peak above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


class HostPeakMemory:
    """Peak resident memory of a block on Linux, from the kernel's high-water mark.

    ``/proc/self/clear_refs`` <- 5 resets VmHWM; freed heap is first returned to the kernel
    (``malloc_trim``) so the baseline does not hide reused pages. Bytes above the baseline RSS.
    """

    def __init__(self):
        import ctypes
        import ctypes.util

        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if not os.path.exists("/proc/self/clear_refs"):
            raise RuntimeError("host peak memory needs Linux /proc/self/clear_refs; pass --no-memory")

    @staticmethod
    def _status_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {field}")

    def measure(self, fn):
        import gc

        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        baseline = self._status_kib("VmRSS")
        result = fn()
        peak = self._status_kib("VmHWM")
        del result
        return (peak - baseline) * 1024


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("auto", "verl", "hf"), default="auto")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--model-vocab-size", type=int, default=None,
                        help="embedding/lm_head rows; e.g. 151936 for Qwen2.5-VL's real output layer")
    parser.add_argument("--model-dir", default=None, help="where the random model is built (reused if present)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: several spinning threads on a busy machine make "
                             "both wall and CPU times erratic)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.dtype == "auto":
        args.dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    else:
        args.dtype = getattr(torch, args.dtype)
    if args.backend == "auto":
        try:
            import verl  # noqa: F401

            args.backend = "verl" if args.device.type == "cpu" else "hf"
        except ImportError:
            args.backend = "hf"
    if args.backend == "verl" and args.device.type != "cpu":
        parser.error("--backend verl runs on the CPU platform only; use --backend hf on a GPU")
    return args


def main(argv=None):
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model_dir is None:
        suffix = f"{args.preset}_v{args.model_vocab_size or 'tok'}"
        args.model_dir = os.path.join(tempfile.gettempdir(), f"vgpo_bench_vlm_{suffix}")
    model_path = build_tiny_vlm(args.model_dir, seed=0, preset=args.preset, model_vocab_size=args.model_vocab_size)
    runner, times, cpu_times, focus_seconds, peak = time_variants(args, model_path)
    median = {v: statistics.median(t) for v, t in times.items()}
    fastest = {v: min(t) for v, t in times.items()}
    hidden_state_bytes = runner.tokens * runner.hidden_size * 4
    result = {
        "backend": args.backend,
        "device": str(args.device) + (f" ({torch.cuda.get_device_name()})" if args.device.type == "cuda" else ""),
        "dtype": str(args.dtype),
        "model": {"preset": args.preset, "hidden_size": runner.hidden_size,
                  "model_vocab_size": args.model_vocab_size or "tokenizer"},
        "tokens": runner.tokens,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "cpu_threads": torch.get_num_threads(),
        "median_seconds": median,
        "min_seconds": fastest,
        "time_ratio_focus_vs_base": median["focus"] / median["base"],
        # the fastest repeat is the least disturbed by other processes on a shared machine
        "time_ratio_focus_vs_base_min": fastest["focus"] / fastest["base"],
        "focus_hook_seconds_median": statistics.median(focus_seconds),
        "focus_hook_fraction_of_base": statistics.median(focus_seconds) / median["base"],
        "one_fp32_hidden_state_bytes": hidden_state_bytes,
    }
    if args.device.type == "cpu":
        # CPU time of this process (all its threads): much less disturbed by other processes than wall time
        cpu_median = {v: statistics.median(t) for v, t in cpu_times.items()}
        result["median_process_cpu_seconds"] = cpu_median
        result["cpu_time_ratio_focus_vs_base"] = cpu_median["focus"] / cpu_median["base"]
    if "all_hidden_states" in median:
        result["time_ratio_all_hidden_states_vs_base"] = median["all_hidden_states"] / median["base"]
    if not args.no_memory:
        result["focus_hook_alone_peak_bytes"] = peak.pop("hook_alone")
        result["peak_bytes_above_baseline"] = peak
        result["peak_extra_bytes"] = {v: peak[v] - peak["base"] for v in peak if v != "base"}
        result["memory_measure"] = (
            "torch.cuda.max_memory_allocated" if args.device.type == "cuda"
            else "host VmHWM above VmRSS after malloc_trim (page granularity; allocator noise ~1 MiB)"
        )
        result["peak_extra_bytes_per_token"] = {v: b / runner.tokens for v, b in result["peak_extra_bytes"].items()}
    print(json.dumps(result, indent=2, default=str))
    cpu_ratio = result.get("cpu_time_ratio_focus_vs_base")
    print(
        f"\nfocus capture: {result['time_ratio_focus_vs_base']:.3f}x (median), "
        f"{result['time_ratio_focus_vs_base_min']:.3f}x (fastest) the old-log-prob forward wall time"
        + (f", {cpu_ratio:.3f}x its process CPU time" if cpu_ratio is not None else "")
        + f" (hook itself {100 * result['focus_hook_fraction_of_base']:.2f}% of it) on {result['device']}, "
        f"{runner.tokens} tokens, backend {args.backend}"
    )
    if "peak_extra_bytes" in result:
        extra = result["peak_extra_bytes"]["focus"]
        print(f"extra peak memory of the forward with focus: {extra / 2**20:.2f} MiB; the hook alone: "
              f"{result['focus_hook_alone_peak_bytes'] / 2**20:.2f} MiB "
              f"(one fp32 hidden state of the batch: {hidden_state_bytes / 2**20:.2f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
