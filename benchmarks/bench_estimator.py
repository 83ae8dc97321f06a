"""Benchmark: the vectorised VGPO estimator against verl's GRPO estimator and against a plain numpy
loop over rows of the same formulas, on 128 prompts x 8 rollouts x 2048 response tokens.

The numpy loop is what a user would write: per row the valid tokens, a stable sort of the gate window,
min-max, means; then per uid group the GRPO mean / std and Eq. 9-11. It computes the whole advantage
(GRPO base included), as ``compute_vgpo_advantage`` does. One run prints every time (median of
``--repeats``), both ratios and the largest difference of each implementation from ``reference.py``.
Targets: VGPO faster than the numpy loop, and within 3x verl's GRPO estimator.

Usage: python benchmarks/bench_estimator.py [--prompts 128 --rollouts 8 --length 2048 --repeats 7]
"""

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from gpu_check import make_estimator_batch  # sibling benchmark (python puts benchmarks/ on sys.path)
from verl_vgpo.advantage import compute_vgpo_advantage
from verl_vgpo.config import VGPOConfig
from verl_vgpo.reference import reference_advantage


def numpy_loop_advantage(rewards, mask, index, focus, cfg, epsilon=1e-6):
    """VGPO with a GRPO base (norm by std), one numpy row and one uid group at a time (float32)."""
    bs, L = mask.shape
    lo, hi = cfg.token_weight_clip
    a_lo, a_hi = cfg.trajectory_weight_clip
    psi = np.ones((bs, L), dtype=np.float32)
    phi = {}
    for i in range(bs):
        cols = np.flatnonzero(mask[i])
        rho = focus[i, cols]
        T = cols.size
        if T == 0 or not np.isfinite(rho).all():
            continue
        w0 = np.maximum(rho, np.float32(0))
        u = np.arange(T, dtype=np.float32) / np.float32(max(T - 1, 1))
        a = cfg.compensation_start
        if cfg.compensation == "none":
            s = np.zeros(T, dtype=np.float32)
        elif cfg.compensation == "step":
            s = ((u >= cfg.compensation_step) & (u >= a)).astype(np.float32)
        else:
            s = np.maximum((u - np.float32(a)) / np.float32(1 - a), np.float32(0))
            if cfg.compensation == "exponential":
                s = s ** np.float32(cfg.compensation_exponent)
        c = np.float32(cfg.compensation_strength) * s
        if cfg.gate:
            start = int(math.floor(cfg.gate_start * T))
            gate = np.zeros(T, dtype=np.float32)
            if start < T:
                k = max(1, int(math.floor(cfg.gate_top_ratio * (T - start))))
                order = np.argsort(-w0[start:], kind="stable")[:k]  # stable: ties to the earlier token
                gate[start + order] = 1.0
            w = w0 * (np.float32(1) + gate * c)
        else:
            w = w0 * (np.float32(1) + c)
        w_hat = (w - w.min()) / (w.max() - w.min() + np.float32(1e-8))
        psi[i, cols] = np.clip(np.float32(1) + w_hat - w_hat.mean(), lo, hi)
        phi[i] = w_hat.sum() if cfg.accumulation == "sum" else w_hat.mean()
    scores = rewards.sum(axis=-1)
    groups = {}
    for i, uid in enumerate(index):
        groups.setdefault(uid, []).append(i)
    base = np.zeros(bs, dtype=np.float32)
    alpha = np.ones(bs, dtype=np.float32)
    for rows in groups.values():
        g = scores[rows]
        if len(rows) > 1:  # torch.std: unbiased
            base[rows] = (g - g.mean()) / (g.std(ddof=1) + np.float32(epsilon))
        members = [i for i in rows if i in phi]
        if members:
            values = np.array([phi[i] for i in members], dtype=np.float32)
            normalized = (values - values.min()) / (values.max() - values.min() + np.float32(1e-8))
            alpha[members] = np.clip(np.float32(1) + normalized - normalized.mean(), a_lo, a_hi)
    return base[:, None] * mask * psi * alpha[:, None]


CPU_MS = {}  # median CPU time of this thread per call, by label: steadier than wall time on a busy machine


def median_ms(fn, repeats, label=None):
    fn()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.thread_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - cpu_start)
    if label:
        CPU_MS[label] = statistics.median(cpu) * 1e3
    return statistics.median(times) * 1e3, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow torch per-row reference")
    args = parser.parse_args()

    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, index, focus = make_estimator_batch(args.prompts, args.rollouts, args.length, args.device)
    algorithm = {"norm_adv_by_std_in_grpo": True, "vgpo": {}}
    cfg = VGPOConfig()
    np_rewards, np_mask, np_focus = (t.cpu().numpy() for t in (rewards, mask, focus))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        def run():
            out = fn()
            sync()
            return out

        return run

    t_grpo, _ = median_ms(timed(lambda: compute_grpo_outcome_advantage(rewards, mask, index)[0]), args.repeats, "grpo")
    t_ours, ours = median_ms(
        timed(lambda: compute_vgpo_advantage(rewards, mask, index, focus, algorithm)[0]), args.repeats, "vgpo"
    )
    t_metrics, _ = median_ms(
        timed(lambda: compute_vgpo_advantage(rewards, mask, index, focus, algorithm, metrics={})[0]), args.repeats
    )
    t_loop, looped = median_ms(
        lambda: numpy_loop_advantage(np_rewards, np_mask, index, np_focus, cfg), args.repeats, "loop"
    )

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, median of {args.repeats}")
    print(f"batch: {args.prompts} prompts x {args.rollouts} rollouts x {args.length} tokens")
    print(f"verl GRPO estimator            : {t_grpo:8.1f} ms")
    print(f"VGPO vectorised (GRPO base)    : {t_ours:8.1f} ms")
    print(f"VGPO vectorised + metrics      : {t_metrics:8.1f} ms")
    print(f"VGPO numpy loop over rows      : {t_loop:8.1f} ms")
    print(f"ratio numpy loop / VGPO        : {t_loop / t_ours:8.2f}x   (target > 1)")
    print(f"ratio VGPO / verl GRPO         : {t_ours / t_grpo:8.2f}x   (target <= 3)")
    if args.device == "cpu":
        print(f"CPU time (this thread), ms     : GRPO {CPU_MS['grpo']:.1f}, VGPO {CPU_MS['vgpo']:.1f}, "
              f"numpy loop {CPU_MS['loop']:.1f}; ratios loop / VGPO {CPU_MS['loop'] / CPU_MS['vgpo']:.2f}x, "
              f"VGPO / GRPO {CPU_MS['vgpo'] / CPU_MS['grpo']:.2f}x")
    print(f"max |VGPO - numpy loop|        : {float(np.abs(ours.cpu().numpy() - looped).max()):.2e}")
    if not args.no_reference:
        base = compute_grpo_outcome_advantage(rewards.cpu(), mask.cpu(), index)[0]
        expected = reference_advantage(base, focus.cpu(), mask.cpu(), index, cfg)
        print(f"max |VGPO - reference.py|      : {float((ours.cpu() - expected).abs().max()):.2e}")
        print(f"max |numpy loop - reference.py|: {float(np.abs(looped - expected.numpy()).max()):.2e}")


if __name__ == "__main__":
    main()
