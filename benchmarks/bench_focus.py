"""Benchmark: vectorised visual_focus_scores vs a per-token loop on packed tokens.

Default: 16k packed tokens (16 sequences of 1024, a quarter of them image pads), hidden size 1024.
Prints the ratio measured in this run. Targets: >= 10x on CPU, >= 100x on a GPU.
Usage: python benchmarks/bench_focus.py [--tokens 16384 --hidden 1024 --device cpu|cuda]
"""

import argparse
import time

import torch

from gpu_check import IMAGE_TOKEN, per_token_focus_loop, synchronize  # sibling benchmark (python puts benchmarks/ on sys.path)
from verl_vgpo.focus import visual_focus_scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: float32 on CPU (what a CPU model produces), bfloat16 on GPU")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    per_seq = args.tokens // args.sequences
    ids = torch.randint(0, 1000, (args.sequences, per_seq), generator=g)
    ids[:, 2 : 2 + per_seq // 4] = IMAGE_TOKEN
    input_ids = ids.reshape(-1).to(args.device)
    cu = (torch.arange(args.sequences + 1) * per_seq).to(args.device)
    hidden = torch.randn(input_ids.numel(), args.hidden, generator=g).to(args.device, getattr(torch, args.dtype))
    visual = torch.tensor([IMAGE_TOKEN], device=args.device)

    visual_focus_scores(hidden, input_ids, cu, [IMAGE_TOKEN])  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = visual_focus_scores(hidden, input_ids, cu, [IMAGE_TOKEN])
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    looped = per_token_focus_loop(hidden, input_ids, cu, visual)
    synchronize(device)
    t_loop = time.perf_counter() - start
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, {input_ids.numel()} packed tokens, hidden {args.hidden}, {args.dtype}")
    print(f"vectorised : {best * 1e3:9.2f} ms")
    print(f"per-token  : {t_loop * 1e3:9.2f} ms")
    print(f"ratio      : {t_loop / best:9.1f}x   (target >= 10x on CPU, >= 100x on GPU)")
    print(f"max |diff| : {float((ours.cpu() - looped).abs().max()):.2e}")


if __name__ == "__main__":
    main()
