"""Benchmark: one demo step's work in a plain PyTorch loop, bf16 autocast vs fp32, on this CPU.

The same work as one step of ``make demo`` without verl: 16 easy-vqa prompts x 8 samples, 32 new tokens
with HF ``generate`` (fp32, as the ``hf_cpu`` rollout), the old-log-prob forward of the 128 sequences and
the update (forward + backward + AdamW) in micro-batches of 16 rows. The actor phases run in both dtypes
(bf16: ``torch.autocast`` over fp32 weights, as verl's FSDP mixed precision computes). Each variant runs
``--repeats`` times alternated, one thread, medians printed.

To see what a host without native bf16 does, cap torch and oneDNN before torch is imported (``--isa avx2``
re-runs this script in a subprocess with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``).

    python benchmarks/bench_dtype.py --model-dir DIR [--isa native|avx2|both] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROMPTS, SAMPLES, NEW_TOKENS, MICRO_BATCH = 16, 8, 32, 16


def host_report() -> dict:
    import torch

    from verl_vgpo.cpu.dtype import host_dtype, host_has_native_bf16

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn_bf16": host_has_native_bf16(),
            "host_dtype": host_dtype(), "threads": torch.get_num_threads(),
            "env": {key: os.environ.get(key) for key in EMULATE_AVX2}}


def measure(model_dir: str, repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from verl_vgpo.cpu import generation, warm_start
    from verl_vgpo.data.easy_vqa import sample_questions

    loaded = generation.load_model(model_dir, device="cpu", dtype=torch.float32)
    model, processor = loaded.model, loaded.processor
    samples = sample_questions("train", PROMPTS, seed=0)
    prompts = processor(text=warm_start._prompt_strings(processor, samples),
                        images=warm_start._images(processor, samples), padding=True, return_tensors="pt")
    # the update's input: each prompt with a target, repeated SAMPLES times (right-padded like verl's rows)
    full = warm_start.training_batch(processor, samples)
    rows = {key: value.repeat_interleave(SAMPLES, dim=0) if key != "pixel_values" else value.repeat(SAMPLES, 1)
            for key, value in full.items() if torch.is_tensor(value)}
    # pixel_values are flat patches: regroup per row so micro-batches take their own images
    patches = full["image_grid_thw"].prod(-1).tolist()
    per_row = list(full["pixel_values"].split(patches))
    pixel_rows = [p for p in per_row for _ in range(SAMPLES)]
    grid_rows = full["image_grid_thw"].repeat_interleave(SAMPLES, dim=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every repeat sees the same weights

    def micro_batches():
        for start in range(0, PROMPTS * SAMPLES, MICRO_BATCH):
            stop = start + MICRO_BATCH
            yield {"input_ids": rows["input_ids"][start:stop], "attention_mask": rows["attention_mask"][start:stop],
                   "mm_token_type_ids": rows["mm_token_type_ids"][start:stop],
                   "pixel_values": torch.cat(pixel_rows[start:stop]), "image_grid_thw": grid_rows[start:stop]}, \
                rows["labels"][start:stop]

    def autocast(dtype):
        return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False)

    def gen():
        generation.generate(model, prompts, max_new_tokens=NEW_TOKENS, eos_token_ids=loaded.eos_token_ids, pad_token_id=loaded.pad_token_id,
                            suppress_ids=loaded.suppress_ids, temperature=1.0, num_return_sequences=SAMPLES, seed=0)

    def old_log_prob(dtype):
        with torch.no_grad(), autocast(dtype):
            for inputs, labels in micro_batches():
                logits = model(**inputs, use_cache=False).logits
                torch.log_softmax(logits.float(), -1).gather(-1, inputs["input_ids"][:, 1:, None].clamp_min(0))

    def update(dtype):
        model.train()
        for inputs, labels in micro_batches():
            with autocast(dtype):
                logits = model(**inputs, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    phases = {"gen_fp32": gen, "old_log_prob_bf16": lambda: old_log_prob("bf16"),
              "old_log_prob_fp32": lambda: old_log_prob("fp32"), "update_bf16": lambda: update("bf16"),
              "update_fp32": lambda: update("fp32")}
    for run in phases.values():  # warm-up
        run()
    times = {name: [] for name in phases}
    for repeat in range(repeats):
        order = list(phases) if repeat % 2 == 0 else list(phases)[::-1]
        for name in order:
            start = time.perf_counter()
            phases[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {**host_report(), "tokens_per_row": int(rows["input_ids"].shape[1]), "median_s": medians,
            "step_bf16_s": medians["gen_fp32"] + medians["old_log_prob_bf16"] + medians["update_bf16"],
            "step_fp32_s": medians["gen_fp32"] + medians["old_log_prob_fp32"] + medians["update_fp32"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a warm-started tiny VLM (vgpo-demo builds one)")
    parser.add_argument("--isa", choices=("native", "avx2", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model_dir, args.repeats)))
        return 0
    results = {}
    for isa in (("native", "avx2") if args.isa == "both" else (args.isa,)):
        env = dict(os.environ, OMP_NUM_THREADS="1", **(EMULATE_AVX2 if isa == "avx2" else {}))
        if isa == "native":
            for key in EMULATE_AVX2:
                env.pop(key, None)
        out = subprocess.run([sys.executable, __file__, "--child", "--model-dir", args.model_dir,
                              "--repeats", str(args.repeats)], env=env, check=True, capture_output=True, text=True)
        results[isa] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"plain PyTorch loop, one demo step's work ({PROMPTS} prompts x {SAMPLES}, {NEW_TOKENS} new tokens), "
          f"1 thread, medians of {args.repeats}")
    print(f"{'isa':8s} {'torch':8s} {'oneDNN bf16':12s} {'host_dtype':10s} {'phase':20s} {'seconds':>8s}")
    for isa, result in results.items():
        for phase, seconds in result["median_s"].items():
            print(f"{isa:8s} {result['cpu_capability']:8s} {str(result['onednn_bf16']):12s} {result['host_dtype']:10s} "
                  f"{phase:20s} {seconds:8.3f}")
        print(f"{isa:8s} step bf16 {result['step_bf16_s']:.3f} s, fp32 {result['step_fp32_s']:.3f} s "
              f"(fp32/bf16 {result['step_fp32_s'] / result['step_bf16_s']:.3f})")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
