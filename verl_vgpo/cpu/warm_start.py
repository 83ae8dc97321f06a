"""A warm-started tiny VLM: the random tiny model fine-tuned supervised on easy-vqa, offline, in minutes.

RL from a random tiny model never earns a strict reward, so nothing can be learned; from a model that
already answers some easy-vqa questions, RL has signal and room. This module builds the random model
(verl_vgpo.cpu.tiny_vlm) and trains it with plain PyTorch on easy-vqa's train split to produce the
responses of verl_vgpo.data.easy_vqa (rationale, then "Answer: <word>"), loss on the response tokens
only. It then prints greedy exact-match accuracy on held-out test questions.

* deterministic for a seed: fixed sample order, fixed number of optimiser steps, seeded init;
* cached: the folder records its settings (:data:`SETTINGS_FILE`, with their hash); the same settings
  reuse it, other settings rebuild it, a folder holding anything else is refused;
* offline: the model, tokenizer and data all come from the installed packages.

Defaults: the tiny VLM's ``warm`` preset (16 image tokens, background-centred pixel normalisation), 250
optimiser steps of 32 samples, about 1 minute on 2 CPU cores.

Tasks (:data:`TASKS`): ``easy-vqa`` (default, above) or ``grid`` (:mod:`verl_vgpo.data.grid`: 2 x 2 grids,
a chain of one clause per cell, then the answer). For ``grid`` the images get 3 x 3 merged tokens per cell
(:data:`GRID_TOKENS_PER_CELL_SIDE`; 36 in all, with the ``warm`` preset's 16 a cell would get 2 x 2), the
model first learns single easy-vqa shapes (``pretrain_steps``, 250) and then the grid (300 steps), and the
held-out report adds per-kind accuracy, per-cell colour and shape accuracy from the chain's clauses, and
chance levels (:func:`grid_held_out`). Measurements: docs/experiments.md.

    vgpo-tiny-vlm --warm-start --out artifacts/tiny_vlm_warm [--family qwen2_5_vl] [--preset test]
    vgpo-tiny-vlm --warm-start --task grid --out artifacts/tiny_vlm_warm_grid
    python -m verl_vgpo.cpu.warm_start --out DIR [--warm-steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "warm_start_settings.json"
# bumped whenever the training recipe or the response format changes, so old folders are rebuilt
WARM_START_FORMAT_VERSION = 2
TASKS = ("easy-vqa", "grid")
DEFAULT_TASK = "easy-vqa"
# merged image tokens along each side of a grid cell: the image side is 2 cells x this x patch x merge pixels
GRID_TOKENS_PER_CELL_SIDE = 3
# settings that differ from the dataclass defaults per task (the chain is ~40 tokens, easy-vqa's ~12)
# grid pre-trains on single easy-vqa images first: 300 grid steps from the random model left it at chance on
# every cell (loss flat at the no-vision level from step 50 on; docs/experiments.md), while easy-vqa's warm start
# learns to see colours within 250 steps
TASK_DEFAULTS: dict[str, dict] = {"easy-vqa": {}, "grid": {"max_new_tokens": 64, "steps": 300, "pretrain_steps": 250}}


def check_task(task: str) -> str:
    """``task`` itself, or a ValueError naming the known tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown warm-start task {task!r}; choose one of {list(TASKS)}")
    return task


@dataclass(frozen=True)
class WarmStartSettings:
    """What determines a warm start (all of it goes into the cache key)."""

    seed: int = 0
    family: str = "qwen2_5_vl"
    preset: str = "warm"
    steps: int = 250  # optimiser steps
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_new_tokens: int = 32
    eval_size: int = 200  # held-out test questions for the accuracy printed at the end
    task: str = DEFAULT_TASK
    pretrain_steps: int = 0  # easy-vqa steps on the same model before the task's own (a curriculum for grid)

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.pretrain_steps < 0:
            raise ValueError(f"warm start: pretrain_steps must be >= 0, got {self.pretrain_steps}")
        for name in ("steps", "batch_size", "eval_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"warm start: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"warm start: lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warm start: warmup_steps must be >= 0, got {self.warmup_steps}")


def settings_record(settings: WarmStartSettings, **size_overrides) -> dict:
    """The cache key of a warm start: its settings, the model's resolved sizes (so an edited preset is a new
    warm start), the response format and the transformers version, with their hash."""
    import transformers

    from verl_vgpo.cpu.tiny_vlm import resolve_size, size_record
    from verl_vgpo.data import easy_vqa

    sizes = {name: value for name, value in size_overrides.items() if name != "model_vocab_size"}
    recorded_settings = dataclasses.asdict(settings)
    if settings.task == DEFAULT_TASK and not settings.pretrain_steps:
        del recorded_settings["task"]  # easy-vqa warm starts built before tasks existed keep their hash
        del recorded_settings["pretrain_steps"]
    record = {
        "format_version": WARM_START_FORMAT_VERSION,
        "settings": recorded_settings,
        "model_size": size_record(resolve_size(settings.preset, family=settings.family, **sizes)),
        # the response format itself: a changed template is a changed warm start
        "target_example": easy_vqa.target_text("red", "circle", "yes"),
        "prompt_example": easy_vqa.prompt_text("is there a circle?"),
        "transformers_version": transformers.__version__,
    }
    if settings.task == "grid":
        from verl_vgpo.data import grid

        record["target_example"] = grid.target_text([("red", "circle")] * grid.CELLS, "red")
        record["prompt_example"] = grid.prompt_text("what color is the shape in cell 1?")
    if size_overrides:
        record["size_overrides"] = dict(sorted(size_overrides.items()))
    record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


# ---------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------


def _prompt_messages(question: str, prompt: str | None = None) -> list[dict]:
    """The chat turn of one sample: its own ``prompt`` text (grid samples carry one), else easy-vqa's."""
    from verl_vgpo.data.easy_vqa import prompt_text

    text = (prompt if prompt is not None else prompt_text(question)).replace("<image>", "", 1)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _prompt_strings(processor, samples: list[dict]) -> list[str]:
    return [processor.apply_chat_template(_prompt_messages(sample["question"], sample.get("prompt")), tokenize=False,
                                          add_generation_prompt=True) for sample in samples]


def _target(sample: dict) -> str:
    """The supervised response of one sample: its own ``target`` (grid samples carry one), else easy-vqa's."""
    from verl_vgpo.data.easy_vqa import target_text

    return sample["target"] if "target" in sample else target_text(sample["color"], sample["shape"], sample["answer"])


def _images(processor, samples: list[dict]):
    """The samples' images as verl's RL dataset hands them to the processor: resized by qwen_vl_utils'
    ``fetch_image`` (verl.utils.dataset.vision_utils.process_image), so supervised and RL inputs match."""
    from PIL import Image
    from qwen_vl_utils import fetch_image

    patch_size = processor.image_processor.patch_size
    return [fetch_image({"image": sample["image"] if "image" in sample else Image.open(sample["image_path"]).convert("RGB")},
                        image_patch_size=patch_size)
            for sample in samples]


def training_batch(processor, samples: list[dict]) -> dict:
    """Right-padded prompt+target batch; ``labels`` [B, L] are -100 except on the target and its end token."""
    import torch

    tokenizer = processor.tokenizer
    prompts = _prompt_strings(processor, samples)
    targets = [_target(s) + tokenizer.eos_token for s in samples]
    tokenizer.padding_side = "right"
    full = processor(text=[p + t for p, t in zip(prompts, targets)], images=_images(processor, samples), padding=True,
                     return_tensors="pt")
    # prompt length in tokens: the text tokens plus the expansion of the one image pad to the image's tokens
    merge = processor.image_processor.merge_size ** 2
    image_tokens = full["image_grid_thw"].prod(dim=-1) // merge
    text_tokens = torch.tensor([len(ids) for ids in tokenizer(prompts)["input_ids"]])
    prompt_lengths = text_tokens + image_tokens - 1
    positions = torch.arange(full["input_ids"].shape[1])[None, :]
    labels = full["input_ids"].masked_fill(positions < prompt_lengths[:, None], -100)
    labels = labels.masked_fill(full["attention_mask"] == 0, -100)
    return {**full, "labels": labels}


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------


def greedy_answers(model, processor, samples: list[dict], max_new_tokens: int = 32, batch_size: int = 32) -> list[str]:
    """Greedy responses (decoded text) for easy-vqa samples, left-padded batches."""
    import torch

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    special_ids = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    responses = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            inputs = processor(text=_prompt_strings(processor, chunk), images=_images(processor, chunk), padding=True,
                               return_tensors="pt")
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                    suppress_tokens=special_ids, repetition_penalty=1.0)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            responses += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return responses


def held_out_accuracy(model, processor, eval_size: int, seed: int, max_new_tokens: int = 32,
                      task: str = DEFAULT_TASK) -> dict:
    """Greedy strict exact match (the training reward) on ``eval_size`` held-out test questions of ``task``."""
    from verl_vgpo.data.easy_vqa import sample_questions
    from verl_vgpo.rewards.exact_match import exact_match

    if check_task(task) == "grid":
        return grid_held_out(model, processor, eval_size, seed, max_new_tokens)
    samples = sample_questions("test", eval_size, seed=seed + 1)
    responses = greedy_answers(model, processor, samples, max_new_tokens)
    correct = [exact_match(response, sample["answer"]) for response, sample in zip(responses, samples)]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "examples": [
        {"question": s["question"], "answer": s["answer"], "response": r} for s, r in list(zip(samples, responses))[:5]]}


def _share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def grid_held_out(model, processor, eval_size: int, seed: int, max_new_tokens: int = 64) -> dict:
    """Greedy exact match on ``eval_size`` grid questions built from easy-vqa's test images (seed + 1), with
    per-kind accuracy, per-cell colour / shape accuracy read off the response's clauses (a cell the response
    does not name counts as wrong) and chance levels: ``uniform`` (one answer drawn from the kind's answer
    set) and ``best_constant`` (the most frequent answer of each kind among these questions, i.e. the best a
    model ignoring the image can do)."""
    from collections import Counter

    from verl_vgpo.data import grid
    from verl_vgpo.data.easy_vqa import SHAPES
    from verl_vgpo.rewards.exact_match import exact_match

    sampler = grid.GridSampler("test", seed + 1)
    samples = [sampler.sample(index) for index in range(eval_size)]
    responses = greedy_answers(model, processor, samples, max_new_tokens)
    correct = [bool(exact_match(r, s["answer"])) for r, s in zip(responses, samples)]
    parsed = [grid.parse_cells(response) for response in responses]
    colors = sorted({color for s in samples for color, _ in s["cells"]})
    uniform = {"color": 1 / len(colors), "shape": 1 / len(SHAPES), "count": 1 / (grid.CELLS + 1)}
    by_kind, best_constant = {}, {}
    for kind in grid.KINDS:
        rows = [i for i, s in enumerate(samples) if s["kind"] == kind]
        if rows:
            by_kind[kind] = _share(correct[i] for i in rows)
            best_constant[kind] = Counter(samples[i]["answer"] for i in rows).most_common(1)[0][1] / len(rows)
    weights = Counter(s["kind"] for s in samples)
    cell_colors = [s["cells"][cell][0] for s in samples for cell in range(grid.CELLS)]
    return {
        "accuracy": _share(correct), "n": len(correct), "by_kind": by_kind,
        "chance": {
            "uniform": sum(uniform[k] * n for k, n in weights.items()) / len(samples),
            "best_constant": sum(best_constant[k] * n for k, n in weights.items()) / len(samples),
            "by_kind_uniform": {k: uniform[k] for k in by_kind}, "by_kind_best_constant": best_constant,
            "cell_color_uniform": 1 / len(colors),
            "cell_color_best_constant": Counter(cell_colors).most_common(1)[0][1] / len(cell_colors),
        },
        "cell_color_accuracy": [_share(p.get(cell + 1, ("", ""))[0] == s["cells"][cell][0]
                                       for p, s in zip(parsed, samples)) for cell in range(grid.CELLS)],
        "cell_shape_accuracy": [_share(p.get(cell + 1, ("", ""))[1] == s["cells"][cell][1]
                                       for p, s in zip(parsed, samples)) for cell in range(grid.CELLS)],
        "all_cells_named": _share(len(p) == grid.CELLS for p in parsed),
        "examples": [{"question": s["question"], "answer": s["answer"], "target": s["target"], "response": r}
                     for s, r in list(zip(samples, responses))[:5]],
    }


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------


def _learning_rate(step: int, settings: WarmStartSettings) -> float:
    """Linear warm-up, then cosine decay to 10 % (step counts from 0)."""
    warmup = min(settings.warmup_steps, settings.steps)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _training_stream(settings: WarmStartSettings):
    """A function step -> that step's samples (seeded): easy-vqa's train questions in epochs of seeded
    shuffles, or fresh grid samples of easy-vqa's train images (built per step, never held in memory)."""
    import random

    batch = settings.batch_size
    if settings.task == "grid":
        from verl_vgpo.data.grid import GridSampler

        sampler = GridSampler("train", settings.seed)
        return lambda step: [sampler.sample(index) for index in range(step * batch, (step + 1) * batch)]
    from verl_vgpo.data.easy_vqa import load_split

    samples = load_split("train")
    order = random.Random(settings.seed)
    needed = settings.steps * batch
    stream = []
    while len(stream) < needed:  # epochs of seeded shuffles
        epoch = list(samples)
        order.shuffle(epoch)
        stream += epoch
    return lambda step: stream[step * batch:(step + 1) * batch]


def train(model, processor, settings: WarmStartSettings, progress: bool = True) -> list[float]:
    """Supervised fine-tuning on the task's train questions (seeded order); returns the loss per step."""
    import torch
    from tqdm import tqdm

    if settings.pretrain_steps:  # the curriculum's first phase: easy-vqa's single shapes, its own schedule
        first = dataclasses.replace(settings, task=DEFAULT_TASK, steps=settings.pretrain_steps, pretrain_steps=0)
        pretrain_losses = train(model, processor, first, progress)
        model.train()
    else:
        pretrain_losses = []
    batch_samples = _training_stream(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    losses = []
    model.train()
    bar = tqdm(range(settings.steps), desc=f"warm start (SFT on {settings.task})", disable=not progress,
               file=sys.stdout, mininterval=2.0)
    for step in bar:
        batch = training_batch(processor, batch_samples(step))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return pretrain_losses + losses


def task_size_overrides(settings: WarmStartSettings, **size_overrides) -> dict:
    """The model sizes a task needs, under the caller's overrides: for ``grid`` a square image of
    2 x :data:`GRID_TOKENS_PER_CELL_SIDE` merged tokens per side, so each cell gets its own tokens."""
    from verl_vgpo.cpu.tiny_vlm import resolve_size

    if settings.task != "grid":
        return dict(size_overrides)
    sizes = {name: value for name, value in size_overrides.items() if name != "model_vocab_size"}
    size = resolve_size(settings.preset, family=settings.family, **sizes)
    side = 2 * GRID_TOKENS_PER_CELL_SIDE * size.patch_size * size.spatial_merge_size
    return {"min_pixels": side * side, "max_pixels": side * side, **size_overrides}


def build_warm_start(out_dir: str | os.PathLike, settings: WarmStartSettings | None = None, progress: bool = True,
                     **size_overrides) -> str:
    """Build (or reuse) the warm-started tiny VLM in ``out_dir``; returns its path.

    ``size_overrides`` go to :func:`verl_vgpo.cpu.tiny_vlm.build_tiny_vlm` (and into the cache key), over the
    task's own (:func:`task_size_overrides`).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    settings = settings or WarmStartSettings()
    size_overrides = task_size_overrides(settings, **size_overrides)
    out_path = Path(out_dir).resolve()
    record = settings_record(settings, **size_overrides)
    settings_path = out_path / SETTINGS_FILE
    if settings_path.exists():
        existing = json.loads(settings_path.read_text())
        if existing.get("hash") == record["hash"]:
            if progress:
                print(f"warm start: reusing {out_path} (settings {record['hash']}, held-out accuracy "
                      f"{existing.get('held_out', {}).get('accuracy', float('nan')):.3f})", flush=True)
            return str(out_path)
        if progress:
            print(f"warm start: settings changed ({existing.get('hash')} -> {record['hash']}), rebuilding {out_path}",
                  flush=True)
    elif out_path.exists() and any(out_path.iterdir()):
        raise FileExistsError(f"{out_path} exists, is not empty and holds no warm start; refusing to overwrite it")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        start = time.monotonic()
        base_dir = build_tiny_vlm(staging / "random", seed=settings.seed, preset=settings.preset,
                                  family=settings.family, **size_overrides)
        processor = AutoProcessor.from_pretrained(base_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32)
            losses = train(model, processor, settings, progress)
        train_s = time.monotonic() - start
        held_out = held_out_accuracy(model, processor, settings.eval_size, settings.seed, settings.max_new_tokens,
                                     task=settings.task)
        final = staging / "model"
        model.save_pretrained(final)
        processor.save_pretrained(final)
        for name in os.listdir(base_dir):  # tokenizer files and the random build's own settings record
            if not (final / name).exists():
                shutil.copy(Path(base_dir) / name, final / name)
        record.update(train_s=round(train_s, 1), final_loss=losses[-1], held_out=held_out)
        (final / SETTINGS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        final.chmod(0o755)
        if out_path.exists():
            shutil.rmtree(out_path)
        os.rename(final, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress:
        print(f"warm start: {settings.steps} steps in {train_s:.0f}s, final loss {losses[-1]:.3f}; greedy exact match "
              f"on {held_out['n']} held-out {settings.task} test questions: {held_out['accuracy']:.3f}", flush=True)
        if "chance" in held_out:
            chance = held_out["chance"]
            print(f"  chance: {chance['uniform']:.3f} (uniform answer), {chance['best_constant']:.3f} (best constant "
                  f"answer per kind); by kind {json.dumps(held_out['by_kind'])}", flush=True)
            print(f"  per-cell colour accuracy {[round(a, 3) for a in held_out['cell_color_accuracy']]} (chance "
                  f"{chance['cell_color_uniform']:.3f} uniform, {chance['cell_color_best_constant']:.3f} most frequent "
                  f"colour); per-cell shape accuracy {[round(a, 3) for a in held_out['cell_shape_accuracy']]}", flush=True)
        for example in held_out["examples"][:3]:
            print(f"  Q: {example['question']}  (answer {example['answer']})  -> {example['response']!r}", flush=True)
        print(out_path, flush=True)
    return str(out_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The warm-start options (shared by this module's CLI and ``vgpo-tiny-vlm --warm-start``)."""
    defaults = WarmStartSettings()
    parser.add_argument("--task", default=DEFAULT_TASK, choices=TASKS,
                        help="what to fine-tune on (default %(default)s; grid: verl_vgpo.data.grid)")
    parser.add_argument("--warm-steps", type=int, default=None,
                        help=f"optimiser steps of the warm start (default {defaults.steps}; grid: "
                             f"{TASK_DEFAULTS['grid']['steps']})")
    parser.add_argument("--warm-batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--warm-lr", type=float, default=defaults.lr)
    parser.add_argument("--warm-eval-size", type=int, default=defaults.eval_size)


def task_settings(task: str = DEFAULT_TASK, **settings) -> WarmStartSettings:
    """WarmStartSettings of ``task``: its defaults (:data:`TASK_DEFAULTS`) under the ``settings`` given; an
    unknown task is a ValueError naming the known ones."""
    return WarmStartSettings(**{**TASK_DEFAULTS[check_task(task)], **settings, "task": task})


def settings_from_args(args: argparse.Namespace) -> WarmStartSettings:
    """WarmStartSettings from the parsed options (the task's defaults where an option is not given)."""
    given = {"seed": args.seed, "family": args.family, "preset": args.preset or WarmStartSettings.preset,
             "batch_size": args.warm_batch_size, "lr": args.warm_lr, "eval_size": args.warm_eval_size}
    if args.warm_steps is not None:
        given["steps"] = args.warm_steps
    return task_settings(getattr(args, "task", DEFAULT_TASK), **given)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--preset", default=WarmStartSettings.preset)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    build_warm_start(args.out, settings)


if __name__ == "__main__":
    main()
