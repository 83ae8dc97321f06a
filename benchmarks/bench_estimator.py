"""Benchmark: the vectorised VGPO estimator vs a loop-over-rows version of the same formulas, and vs
verl's GRPO estimator, on 128 prompts x 8 rollouts x 2048 response tokens.

Prints every ratio measured in this run. Target: ours faster than the loop-over-rows version.
Usage: python benchmarks/bench_estimator.py [--prompts 128 --rollouts 8 --length 2048 --repeats 3]
"""

import argparse
import platform
import time

import numpy as np
import torch

from verl_vgpo.advantage import compute_vgpo_advantage
from verl_vgpo.config import VGPOConfig
from verl_vgpo.reference import reference_advantage


def make_batch(prompts, rollouts, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs = prompts * rollouts
    lengths = torch.randint(length // 8, length + 1, (bs,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.zeros(bs, length)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    focus = torch.rand(bs, length, generator=g) * 1.2 - 0.2
    index = np.array([f"prompt-{i // rollouts}" for i in range(bs)], dtype=object)
    return rewards, mask, index, focus


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, index, focus = make_batch(args.prompts, args.rollouts, args.length)
    rewards, mask, focus = (t.to(args.device) for t in (rewards, mask, focus))
    algorithm = {"norm_adv_by_std_in_grpo": True, "vgpo": {}}
    cfg = VGPOConfig()
    compute_vgpo_advantage(rewards, mask, index, focus, algorithm)  # warm-up (imports, allocator)

    t_ours, ours = best_of(lambda: compute_vgpo_advantage(rewards, mask, index, focus, algorithm)[0], args.repeats)
    t_grpo, base = best_of(lambda: compute_grpo_outcome_advantage(rewards, mask, index)[0], args.repeats)
    t_loop, looped = best_of(
        lambda: reference_advantage(compute_grpo_outcome_advantage(rewards, mask, index)[0], focus, mask, index, cfg),
        1,
    )
    max_diff = float((ours.cpu() - looped.cpu()).abs().max())
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"batch: {args.prompts} prompts x {args.rollouts} rollouts x {args.length} tokens")
    print(f"verl GRPO estimator        : {t_grpo * 1e3:9.1f} ms")
    print(f"VGPO vectorised (GRPO base): {t_ours * 1e3:9.1f} ms")
    print(f"VGPO loop over rows        : {t_loop * 1e3:9.1f} ms")
    print(f"ratio loop / vectorised    : {t_loop / t_ours:9.1f}x   (target > 1)")
    print(f"ratio VGPO / GRPO          : {t_ours / t_grpo:9.2f}x   (re-weighting cost over the base estimator)")
    print(f"max |vectorised - loop|    : {max_diff:.2e}")


if __name__ == "__main__":
    main()
