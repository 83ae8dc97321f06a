"""Benchmark: what a VGPO step costs against a GRPO step, through verl's real ``main_ppo`` on the CPU.

Runs the CPU run script (``verl_vgpo/apps/run_vgpo_tiny_cpu.sh``) at the demo's batch (16 prompts x 8
rollouts, 32-token responses, the demo's warm-started tiny VLM and data) for GRPO and VGPO alternated,
G V G V ... (``--pairs`` pairs), every run with the same data order (``data.seed``) and settings, so slow
drift of a shared machine hits both alike. Step 1 of every run (warm-up) is dropped; of steps 2..N of all
runs of an algorithm it prints the median step time, the VGPO / GRPO ratio, and the median of every phase
verl logs (``timing_s/*``) and of VGPO's own timings (``vgpo/timing/*``) side by side. Everything measured
goes to ``<out>/bench_step.json``.

    python benchmarks/bench_step.py [--steps 6 --pairs 2 --out artifacts/bench_step] [HYDRA_OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from verl_vgpo.apps import demo
from verl_vgpo.apps.runner import STEP_TIME_METRIC, read_metrics, run_main_ppo

TARGET_RATIO = 1.03
PHASE_PREFIXES = ("timing_s/", "vgpo/timing/")
# what VGPO adds to a step and times itself: capture in the old-log-prob pass, TQ read, re-weighting
VGPO_OWN_TIMINGS = ("vgpo/timing/focus_capture_s", "vgpo/timing/focus_fetch_s", "vgpo/timing/reweight_s")


def phase_keys(records: list[dict]) -> list[str]:
    """verl's and VGPO's timing keys found in any record, verl's first, each group sorted."""
    keys = {key for record in records for key in record if key.startswith(PHASE_PREFIXES)}
    ordered = sorted(keys, key=lambda key: (not key.startswith("timing_s/"), key))
    return ordered + [STEP_WITHOUT_GEN] if any(STEP_WITHOUT_GEN in record for record in records) else ordered


def median_of(records: list[dict], key: str) -> float | None:
    values = [float(record[key]) for record in records if isinstance(record.get(key), (int, float))]
    return statistics.median(values) if values else None


def steady_records(records: list[dict]) -> list[dict]:
    """Training steps 2..N (step 1 compiles and warms caches; step 0 would be validation only)."""
    return [record for record in records if record["step"] >= 2]


STEP_WITHOUT_GEN = "step - gen"


def summarise(steady: dict[str, list[dict]]) -> dict:
    """Medians per algorithm of every phase key, and the step-time ratio."""
    for records in steady.values():
        for record in records:
            # generation is the phase a shared machine disturbs most: the rest of the step, per step
            if STEP_TIME_METRIC in record and "timing_s/gen" in record:
                record[STEP_WITHOUT_GEN] = record[STEP_TIME_METRIC] - record["timing_s/gen"]
    keys = phase_keys([record for records in steady.values() for record in records])
    medians = {algo: {key: median_of(records, key) for key in keys} for algo, records in steady.items()}
    grpo, vgpo = medians["grpo"].get(STEP_TIME_METRIC), medians["vgpo"].get(STEP_TIME_METRIC)
    g_rest, v_rest = medians["grpo"].get(STEP_WITHOUT_GEN), medians["vgpo"].get(STEP_WITHOUT_GEN)
    return {"keys": keys, "medians": medians, "ratio": vgpo / grpo if grpo and vgpo else None,
            "ratio_without_gen": v_rest / g_rest if g_rest and v_rest else None}


def format_table(summary: dict) -> str:
    def cell(value):
        return f"{value:9.3f}" if value is not None else f"{'-':>9s}"

    lines = [f"{'phase (median s)':32s} {'grpo':>9s} {'vgpo':>9s} {'v - g':>9s}"]
    for key in summary["keys"]:
        g, v = summary["medians"]["grpo"].get(key), summary["medians"]["vgpo"].get(key)
        diff = v - g if g is not None and v is not None else None
        lines.append(f"{key:32s} {cell(g)} {cell(v)} {cell(diff)}")
    return "\n".join(lines)


def host_line() -> str:
    import torch

    from verl_vgpo.cpu.dtype import host_dtype

    load = os.getloadavg()
    return (f"host: {os.cpu_count()} CPUs, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, actor "
            f"dtype {host_dtype()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
            f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per run (step 1 is dropped)")
    parser.add_argument("--pairs", type=int, default=2, help="GRPO/VGPO run pairs, alternated G V G V ...")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_step"))
    parser.add_argument("--model-dir", type=Path, default=None, help="default: <out>/../tiny_vlm_warm_qwen2_5_vl")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: <out>/../easy_vqa_demo")
    parser.add_argument("--timeout", type=float, default=1800, help="wall-clock limit per main_ppo run, seconds")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.pairs < 1:
        parser.error("need --steps >= 2 (step 1 is dropped) and --pairs >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = args.out.resolve()
    model_dir = (args.model_dir or out.parent / "tiny_vlm_warm_qwen2_5_vl").resolve()
    data_dir = (args.data_dir or out.parent / "easy_vqa_demo").resolve()
    knobs = {**demo.DEMO_SETTINGS, "VAL_BEFORE_TRAIN": "False", "TEST_FREQ": -1, "SEED": 0}
    demo.prepare_inputs(model_dir, data_dir, "qwen2_5_vl", knobs["TRAIN_SIZE"], knobs["VAL_SIZE"],
                        warm_start=args.model_dir is None or not (model_dir / "config.json").exists(),
                        build_data=args.data_dir is None or not (data_dir / "train.parquet").exists())
    print(host_line(), flush=True)

    steady: dict[str, list[dict]] = {"grpo": [], "vgpo": []}
    runs = []
    started = time.monotonic()
    for pair in range(args.pairs):
        for algo in ("grpo", "vgpo"):
            name = f"{algo}_{pair}"
            result = run_main_ppo(algo, args.steps, out, model_dir, data_dir, args.timeout, args.overrides,
                                  quiet=True, knobs=knobs, run_name=name)
            records = steady_records(read_metrics(result["metrics_path"]))
            if not records:
                raise SystemExit(f"{name}: no step >= 2 was logged; see {result['log_path']}")
            steady[algo].extend(records)
            run_median = median_of(records, STEP_TIME_METRIC)
            runs.append({"run": name, "wall_s": result["wall_s"], "median_step_s": run_median})
            print(f"[{name}] {len(records)} steps after warm-up, median step {run_median:.3f} s, "
                  f"run {result['wall_s']:.0f} s", flush=True)

    summary = summarise(steady)
    print(f"\nsteps 2..{args.steps} of {args.pairs} run(s) per algorithm, alternated G V G V; demo batch "
          f"{knobs['BATCH_SIZE']} prompts x {knobs['ROLLOUT_N']} rollouts, {knobs['RESPONSE_LENGTH']}-token responses")
    print(format_table(summary))
    g, v = summary["medians"]["grpo"][STEP_TIME_METRIC], summary["medians"]["vgpo"][STEP_TIME_METRIC]
    verdict = "within" if summary["ratio"] <= TARGET_RATIO else "ABOVE"
    print(f"\nmedian step: GRPO {g:.3f} s, VGPO {v:.3f} s, VGPO / GRPO = {summary['ratio']:.3f} "
          f"({verdict} the {TARGET_RATIO} target)")
    # adjacent runs share the machine's state best: their ratios show how much of the above is drift
    pair_ratios = [runs[i + 1]["median_step_s"] / runs[i]["median_step_s"] for i in range(0, len(runs), 2)]
    added = sum(summary["medians"]["vgpo"].get(key) or 0.0 for key in VGPO_OWN_TIMINGS)
    if summary["ratio_without_gen"] is not None:
        print(f"without generation (median of step - gen): VGPO / GRPO = {summary['ratio_without_gen']:.3f}")
    print(f"per pair (run medians): VGPO / GRPO = {', '.join(f'{r:.3f}' for r in pair_ratios)}; VGPO's own "
          f"timed work ({' + '.join(key.rsplit('/', 1)[1] for key in VGPO_OWN_TIMINGS)}) {added:.3f} s = "
          f"{added / g:.4f} of a GRPO step")
    print(host_line())
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_step.json").write_text(json.dumps(
        {"host": host_line(), "steps": args.steps, "pairs": args.pairs, "overrides": args.overrides, "runs": runs,
         "ratio": summary["ratio"], "ratio_without_gen": summary["ratio_without_gen"], "pair_ratios": pair_ratios, "medians": summary["medians"], "total_wall_s": time.monotonic() - started,
         "steady_records": steady}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
