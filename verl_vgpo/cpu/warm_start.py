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

    vgpo-tiny-vlm --warm-start --out artifacts/tiny_vlm_warm [--family qwen2_5_vl] [--preset test]
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

    def __post_init__(self) -> None:
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
    record = {
        "format_version": WARM_START_FORMAT_VERSION,
        "settings": dataclasses.asdict(settings),
        "model_size": size_record(resolve_size(settings.preset, family=settings.family, **sizes)),
        # the response format itself: a changed template is a changed warm start
        "target_example": easy_vqa.target_text("red", "circle", "yes"),
        "prompt_example": easy_vqa.prompt_text("is there a circle?"),
        "transformers_version": transformers.__version__,
    }
    if size_overrides:
        record["size_overrides"] = dict(sorted(size_overrides.items()))
    record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


# ---------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------


def _prompt_messages(question: str) -> list[dict]:
    from verl_vgpo.data.easy_vqa import prompt_text

    text = prompt_text(question).replace("<image>", "", 1)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _prompt_strings(processor, samples: list[dict]) -> list[str]:
    return [processor.apply_chat_template(_prompt_messages(sample["question"]), tokenize=False,
                                          add_generation_prompt=True) for sample in samples]


def _images(processor, samples: list[dict]):
    """The samples' images as verl's RL dataset hands them to the processor: resized by qwen_vl_utils'
    ``fetch_image`` (verl.utils.dataset.vision_utils.process_image), so supervised and RL inputs match."""
    from PIL import Image
    from qwen_vl_utils import fetch_image

    patch_size = processor.image_processor.patch_size
    return [fetch_image({"image": Image.open(sample["image_path"]).convert("RGB")}, image_patch_size=patch_size)
            for sample in samples]


def training_batch(processor, samples: list[dict]) -> dict:
    """Right-padded prompt+target batch; ``labels`` [B, L] are -100 except on the target and its end token."""
    import torch

    from verl_vgpo.data.easy_vqa import target_text

    tokenizer = processor.tokenizer
    prompts = _prompt_strings(processor, samples)
    targets = [target_text(s["color"], s["shape"], s["answer"]) + tokenizer.eos_token for s in samples]
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


def held_out_accuracy(model, processor, eval_size: int, seed: int, max_new_tokens: int = 32) -> dict:
    """Greedy strict exact match (the training reward) on ``eval_size`` easy-vqa test questions."""
    from verl_vgpo.data.easy_vqa import sample_questions
    from verl_vgpo.rewards.exact_match import exact_match

    samples = sample_questions("test", eval_size, seed=seed + 1)
    responses = greedy_answers(model, processor, samples, max_new_tokens)
    correct = [exact_match(response, sample["answer"]) for response, sample in zip(responses, samples)]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "examples": [
        {"question": s["question"], "answer": s["answer"], "response": r} for s, r in list(zip(samples, responses))[:5]]}


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


def train(model, processor, settings: WarmStartSettings, progress: bool = True) -> list[float]:
    """Supervised fine-tuning on easy-vqa train questions (seeded order); returns the loss per step."""
    import random

    import torch
    from tqdm import tqdm

    from verl_vgpo.data.easy_vqa import load_split

    samples = load_split("train")
    order = random.Random(settings.seed)
    needed = settings.steps * settings.batch_size
    stream = []
    while len(stream) < needed:  # epochs of seeded shuffles
        epoch = list(samples)
        order.shuffle(epoch)
        stream += epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    losses = []
    model.train()
    bar = tqdm(range(settings.steps), desc="warm start (SFT on easy-vqa)", disable=not progress, file=sys.stdout,
               mininterval=2.0)
    for step in bar:
        batch = training_batch(processor, stream[step * settings.batch_size:(step + 1) * settings.batch_size])
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
    return losses


def build_warm_start(out_dir: str | os.PathLike, settings: WarmStartSettings | None = None, progress: bool = True,
                     **size_overrides) -> str:
    """Build (or reuse) the warm-started tiny VLM in ``out_dir``; returns its path.

    ``size_overrides`` go to :func:`verl_vgpo.cpu.tiny_vlm.build_tiny_vlm` (and into the cache key).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from verl_vgpo.cpu.tiny_vlm import build_tiny_vlm

    settings = settings or WarmStartSettings()
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
        held_out = held_out_accuracy(model, processor, settings.eval_size, settings.seed, settings.max_new_tokens)
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
              f"on {held_out['n']} held-out easy-vqa test questions: {held_out['accuracy']:.3f}", flush=True)
        for example in held_out["examples"][:3]:
            print(f"  Q: {example['question']}  (answer {example['answer']})  -> {example['response']!r}", flush=True)
        print(out_path, flush=True)
    return str(out_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The warm-start options (shared by this module's CLI and ``vgpo-tiny-vlm --warm-start``)."""
    defaults = WarmStartSettings()
    parser.add_argument("--warm-steps", type=int, default=defaults.steps, help="optimiser steps of the warm start")
    parser.add_argument("--warm-batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--warm-lr", type=float, default=defaults.lr)
    parser.add_argument("--warm-eval-size", type=int, default=defaults.eval_size)


def settings_from_args(args: argparse.Namespace) -> WarmStartSettings:
    preset = args.preset or WarmStartSettings.preset
    return WarmStartSettings(seed=args.seed, family=args.family, preset=preset, steps=args.warm_steps,
                             batch_size=args.warm_batch_size, lr=args.warm_lr, eval_size=args.warm_eval_size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--preset", default=WarmStartSettings.preset)
    add_arguments(parser)
    args = parser.parse_args(argv)
    build_warm_start(args.out, settings_from_args(args))


if __name__ == "__main__":
    main()
