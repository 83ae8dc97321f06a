"""Benchmark: a VGPO training step vs a GRPO step through verl's real ``main_ppo`` (tiny VLM on CPU).

Runs examples/run_vgpo_tiny_cpu.sh once per algorithm (same data, model, seeds and settings) and compares
the per-step timings verl logs, skipping step 1 (compilation / warm-up). Generation length differs between
the runs once the policies diverge, so besides the raw step ratio it prints the ratio without generation and
the seconds VGPO itself adds (focus capture in the engine + fetch + re-weighting) relative to a GRPO step.
Target: VGPO step <= 1.03x GRPO step.
Usage: python benchmarks/bench_step.py [--steps 8 --out artifacts/bench_step]
"""

import argparse
import statistics
from pathlib import Path

from verl_vgpo.apps.demo import read_metrics, run_main_ppo

VGPO_ADDED = ("vgpo/timing/focus_capture_s", "vgpo/timing/focus_fetch_s", "vgpo/timing/reweight_s")


def median_of(records, key):
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_step"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    out = args.out.resolve()
    model_dir, data_dir = out / "tiny_vlm", out / "easy_vqa"

    steady = {}
    for algo in ("grpo", "vgpo"):
        run = run_main_ppo(algo, args.steps, out, model_dir, data_dir, args.timeout, quiet=True)
        records = [r for r in read_metrics(run["metrics_path"]) if r["step"] > 1]
        if not records:
            raise SystemExit(f"{algo}: need at least 2 steps to skip the warm-up step")
        for r in records:
            r["step_without_gen_s"] = r["timing_s/step"] - r.get("timing_s/gen", 0.0)
            r["vgpo_added_s"] = sum(r.get(k, 0.0) for k in VGPO_ADDED)
        steady[algo] = records

    grpo, vgpo = steady["grpo"], steady["vgpo"]
    print(f"steps 2..{args.steps}, medians over steps; tiny Qwen2.5-VL on CPU, batch 4 x n=4, 16-token responses")
    for key in ("timing_s/step", "timing_s/gen", "step_without_gen_s", "timing_s/old_log_prob", "timing_s/adv"):
        g, v = median_of(grpo, key), median_of(vgpo, key)
        print(f"{key:24s} grpo {g:8.4f} s   vgpo {v:8.4f} s   ratio {v / g:6.3f}x")
    added = median_of(vgpo, "vgpo_added_s")
    print(f"{'VGPO-only work':24s} {added:8.4f} s per step = {added / median_of(grpo, 'timing_s/step'):.4f} of a GRPO step")
    print(f"target: VGPO step <= 1.03x GRPO step -> (GRPO step + VGPO-only work) / GRPO step = "
          f"{1 + added / median_of(grpo, 'timing_s/step'):.4f}x")


if __name__ == "__main__":
    main()
