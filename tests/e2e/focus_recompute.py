"""Shared by the end-to-end tests: read the trainer layer's per-row focus dump and recompute each row's focus in a
teacher-forced fp32 HF forward (vgpo-analyze's ``teacher_forced_focus``: the engine's FocusHook on the final norm).

A dumped row is tied back to its image through its prompt ids: the parquet row whose processed prompt has exactly
those ids (data sets with unique question texts make that unambiguous).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

# recomputed vs dumped focus of a row's own pairing (fp32 actor, fp32 HF forward): measured 9e-8
FOCUS_TOLERANCE = 1e-5


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def focus_dump(rollout_dir: Path, step: int) -> list[dict]:
    """The trainer layer's ``vgpo_focus_{step}.jsonl`` rows, without verl's balance-padding rows."""
    from verl_vgpo.wiring.trainer import FOCUS_DUMP_FILE

    rows = read_jsonl(Path(rollout_dir) / FOCUS_DUMP_FILE.format(step=step))
    return [row for row in rows if not str(row["uid"]).startswith("pad")]


def verl_dump(rollout_dir: Path, step: int) -> list[dict]:
    """verl's own ``{step}.jsonl`` rollout dump, without padding rows."""
    rows = read_jsonl(Path(rollout_dir) / f"{step}.jsonl")
    return [row for row in rows if not str(row["uid"]).startswith("pad")]


def focus_gap(dumped: list, recomputed: list) -> float:
    """Largest |difference| over the tokens both focus lists have."""
    n = min(len(dumped), len(recomputed))
    return float((torch.tensor(dumped[:n]) - torch.tensor(recomputed[:n])).abs().max())


class FocusRecomputer:
    """A model loaded in fp32 plus the training rows of a parquet file, indexed by their processed prompt ids."""

    def __init__(self, model_dir: Path, train_file: Path):
        from verl_vgpo.apps.analyze import check_model, load_rows, prompt_features
        from verl_vgpo.apps.evaluate import processor_patch_size
        from verl_vgpo.cpu import generation

        self.loaded = generation.load_model(str(model_dir), device="cpu", dtype=torch.float32)
        self.visual_ids, self.norm = check_model(self.loaded, str(model_dir))
        examples = load_rows(str(train_file), None, processor_patch_size(self.loaded.processor, str(model_dir)))
        self.by_ids = {}
        for example in examples:
            features = prompt_features(self.loaded.processor, example)
            self.by_ids[tuple(features.input_ids.tolist())] = (example, features)
        assert len(self.by_ids) == len(examples), "two training rows have the same prompt ids: a dumped prompt is ambiguous"

    def example(self, row: dict):
        key = tuple(row["prompt_ids"])
        assert key in self.by_ids, f"dumped prompt ids of {row['uid']} are no training row's processed prompt"
        return self.by_ids[key]

    def recompute(self, rows: list[dict], flash_bf16_interface: bool = False) -> list[list[float]]:
        """Teacher-forced focus of every row (its own prompt, image and response ids).

        ``flash_bf16_interface``: the decoder attention takes query / key / value rounded to bf16 and returns a
        bf16 output, computed with flash-attn's kernel arithmetic (the stand-in's), as verl's packed Qwen2/2.5-VL
        path does even in an fp32 run (flash-attn takes only fp16 / bf16); everything else stays fp32.
        """
        from verl_vgpo.apps.analyze import teacher_forced_focus

        features = [self.example(row)[1] for row in rows]
        responses = [row["response_ids"] for row in rows]
        with (bf16_flash_interface() if flash_bf16_interface else _nothing()):
            return teacher_forced_focus(self.loaded, self.norm, self.visual_ids, features, responses)


@contextmanager
def _nothing():
    yield


# decoder attention classes of the families whose packed path goes through verl's flash-attention code
FLASH_PATH_ATTENTION = ("Qwen2_5_VLAttention", "Qwen2VLAttention")


@contextmanager
def bf16_flash_interface():
    """HF's sdpa attention of the Qwen2/2.5-VL decoder replaced by what verl's packed path computes: q / k / v cast
    to bf16, flash-attn's kernel (the stand-in's arithmetic, causal over each right-padded row: valid queries
    never see the padding after them), bf16 output back in the query's dtype. Vision attention is unchanged."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from verl_vgpo.testing.flash_attn_standin import flash_attn_func

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if type(module).__name__ not in FLASH_PATH_ATTENTION:
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        q, k, v = (t.transpose(1, 2).to(torch.bfloat16) for t in (query, key, value))  # (B, S, H, D)
        out = flash_attn_func(q, k, v, softmax_scale=None, causal=True)
        return out.to(query.dtype), None

    ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
