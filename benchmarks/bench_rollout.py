"""Benchmark: the hf_cpu rollout server answering one step's concurrent requests, batched vs one at a time.

verl's agent loop sends all of a step's requests (batch x n) to the rollout server at once. This sends the
same number of image prompts (easy_vqa questions, sampled at temperature 1 with log-probs, as a PPO rollout
asks) concurrently to ``HFCpuRolloutServer`` twice: serving one request per ``generate`` call
(``max_batch_size=1``, what the server did before it batched) and batching what is queued (the default),
and prints the wall time of each, the batch sizes the server formed and the ratio. The model is the tiny
VLM of ``--preset`` (default ``warm``, the demo's), built in ``--out`` if missing; one thread, as the
server actor runs in ``main_ppo`` on CPU.
Usage: python benchmarks/bench_rollout.py [--prompts 16 --n 8 --max-tokens 32 --out artifacts/bench_rollout]
"""

import argparse
import asyncio
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image

import verl  # noqa: F401  (loads the verl.plugins entry point)
from verl.workers.config import RolloutConfig
from verl_vgpo.cpu import rollout as hf_cpu
from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm


def image_prompts(server, count: int) -> list[tuple[list[int], list[Image.Image]]]:
    """``count`` easy_vqa (image, question) prompts as token ids with expanded image pads (as verl sends them)."""
    import easy_vqa

    questions = easy_vqa.get_train_questions()[0]
    prompts = []
    for index in range(count):
        image = Image.open(easy_vqa.get_train_image_paths()[index]).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[index]}]}]
        text = server.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = server.processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        prompts.append((ids, [image]))
    return prompts


def serve_one_step(server, prompts, n: int, params: dict) -> tuple[float, list]:
    """Send len(prompts) x n requests at once (after one warm-up request); wall seconds and the outputs."""

    async def run():
        first_ids, first_images = prompts[0]
        await server.generate(prompt_ids=first_ids, sampling_params=dict(params), request_id="warm-up",
                              image_data=first_images)
        server.batch_sizes.clear()
        start = time.perf_counter()
        outputs = await asyncio.gather(*[
            server.generate(prompt_ids=ids, sampling_params=dict(params), request_id=f"{index}-{sample}", image_data=images)
            for index, (ids, images) in enumerate(prompts) for sample in range(n)
        ])
        return time.perf_counter() - start, outputs

    return asyncio.run(run())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--preset", default="warm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_rollout"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = build_tiny_vlm(args.out.resolve() / f"tiny_vlm_{args.preset}", seed=0, preset=args.preset)
    config = RolloutConfig(name="hf_cpu", prompt_length=1024, response_length=args.max_tokens, tensor_model_parallel_size=1)
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    seconds = {}
    for mode, max_batch_size in (("one at a time", 1), ("batched", None)):
        torch.manual_seed(0)
        server = hf_cpu.HFCpuRolloutServer(config, OmegaConf.create({"path": model_path}), max_batch_size=max_batch_size)
        prompts = image_prompts(server, args.prompts)
        seconds[mode], outputs = serve_one_step(server, prompts, args.n, params)
        mean_tokens = sum(len(output.token_ids) for output in outputs) / len(outputs)
        print(f"{mode:14s} {seconds[mode]:8.2f} s  {len(outputs)} requests, {len(server.batch_sizes)} generate calls "
              f"(largest {max(server.batch_sizes)} rows), mean response {mean_tokens:.1f} tokens, "
              f"prompt {len(prompts[0][0])} tokens")
    print(f"tiny VLM preset {args.preset!r}, {args.prompts} prompts x n={args.n}, up to {args.max_tokens} new tokens, "
          f"{args.threads} thread(s): one at a time / batched = {seconds['one at a time'] / seconds['batched']:.2f}x")


if __name__ == "__main__":
    main()
