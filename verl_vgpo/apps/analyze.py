"""``vgpo-analyze``: the visual-forgetting curve of one or more checkpoints on a verl RL parquet.

VGPO's premise is that a VLM's focus on the image fades as its response grows. This tool measures that
curve for any Hugging Face checkpoint (before training, after GRPO, after VGPO ...), with exactly the
scoring code training uses:

1. generate responses to the parquet's prompts (with their images): Hugging Face ``generate`` through
   :mod:`verl_vgpo.cpu.generation` (the hf_cpu rollout's helpers; CPU or GPU) or vLLM when installed;
   greedy by default;
2. score every response token in a teacher-forced forward over prompt + response: the training engine's
   hook on the language model's final norm (:class:`verl_vgpo.focus.FocusHook`, padded layout)
   computes :func:`verl_vgpo.focus.visual_focus_scores` in float32 -- the cosine of the token's last
   hidden state to the mean hidden state of the prompt's visual tokens;
3. aggregate over relative position u = (t-1)/(T-1) in the response, binned exactly like the training
   metric ``vgpo/focus/pos_bin_{k}`` (:func:`verl_vgpo.advantage.focus_position_bins`).

Response tokens are those training scores: the generated ids up to and including the end-of-sequence
token. Outputs in ``--out``:

* ``tokens.jsonl``: one line per response: ``model``, ``row``, ``response`` (text), ``response_tokens``
  (count), ``focus`` (per-token values; ``sample`` numbers the ``--n`` responses of a row);
* ``curve.csv``: ``model, bin, position_lo, position_hi, mean_focus, ci_low, ci_high, tokens``; the mean is
  token-weighted, the 95 % interval a normal approximation with the variance clustered by response
  (tokens of one response are not independent); empty when a bin has tokens of fewer than 2 responses;
* ``summary.json``: per model: mean focus, first and last third (u < 1/3, u >= 2/3, as the training
  metric), their ratio, responses, tokens and empty responses (counted, never dropped);
* ``forgetting.png``: focus against relative position (one line and band per model) and against the
  absolute token index.

    vgpo-analyze --model ckpt/before --model ckpt/after --label before --label after \\
        --data ~/data/easy_vqa/test.parquet --out analysis/ --max_rows 64
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

CI_Z = 1.959963984540054  # two-sided 95 % normal quantile
CURVE_COLUMNS = ("model", "bin", "position_lo", "position_hi", "mean_focus", "ci_low", "ci_high", "tokens")
# VGPOConfig.visual_tokens' default: the prototype is formed by image and video pads, as in training
DEFAULT_VISUAL_KINDS = ("image", "video")


class AnalyzeError(ValueError):
    """An input the analysis cannot use (raised with the reason, before any long computation)."""


# ---------------------------------------------------------------------------------------------------
# aggregation (pure torch over the records; tested on hand-made inputs)
# ---------------------------------------------------------------------------------------------------


def padded_focus(focus_lists: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-response focus lists: returns focus (R, L) float32 (0 at padding) and mask (R, L)."""
    length = max((len(values) for values in focus_lists), default=0)
    focus = torch.zeros(len(focus_lists), max(length, 1), dtype=torch.float32)
    mask = torch.zeros_like(focus)
    for row, values in enumerate(focus_lists):  # one copy per response, not per token
        if len(values):
            focus[row, : len(values)] = torch.as_tensor(values, dtype=torch.float32)
            mask[row, : len(values)] = 1.0
    return focus, mask


def clustered_mean_ci(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-weighted mean per column and its 95 % CI half-width, clustered by row (response).

    mean_k = sum_i S_ik / sum_i n_ik; Var = m/(m-1) * sum_i (S_ik - mean_k n_ik)^2 / (sum_i n_ik)^2 over
    the m rows with n_ik > 0 (the ratio estimator's cluster-robust variance). Half-width NaN for m < 2,
    mean NaN for an empty column.

    Args:
        sums: (R, K) float64 per-response sums of focus in each column.
        counts: (R, K) float64 per-response token counts.

    Returns:
        mean (K,), half_width (K,), tokens (K,), all float64.
    """
    tokens = counts.sum(dim=0)
    mean = sums.sum(dim=0) / tokens  # NaN where no token
    clusters = (counts > 0).sum(dim=0).to(torch.float64)
    residual = (sums - mean.unsqueeze(0) * counts).where(counts > 0, torch.zeros_like(sums))
    variance = clusters / (clusters - 1.0) * residual.pow(2).sum(dim=0) / tokens.pow(2)
    half_width = (CI_Z * variance.sqrt()).where(clusters >= 2, torch.full_like(mean, float("nan")))
    return mean, half_width, tokens


def position_bins(mask: torch.Tensor, bins: int):
    """Relative position u and bin of every token, exactly as the training metric computes them."""
    from verl_vgpo.advantage import focus_position_bins, position_fractions

    positions = position_fractions(mask)
    return positions.u, focus_position_bins(positions, bins).to(torch.int64)


def curve_rows(label: str, focus_lists: Sequence[Sequence[float]], bins: int) -> list[dict[str, Any]]:
    """curve.csv rows of one model: token-weighted mean focus per relative-position bin with its CI."""
    if bins < 1:
        raise AnalyzeError(f"--bins must be >= 1, got {bins}")
    focus, mask = padded_focus(focus_lists)
    _, bin_index = position_bins(mask, bins)
    bin_index = bin_index.where(mask > 0, torch.zeros_like(bin_index))
    sums = torch.zeros(focus.shape[0], bins, dtype=torch.float64).scatter_add_(1, bin_index, (focus * mask).double())
    counts = torch.zeros_like(sums).scatter_add_(1, bin_index, mask.double())
    mean, half_width, tokens = clustered_mean_ci(sums, counts)
    rows = []
    for k in range(bins):  # one row per bin
        m, h = float(mean[k]), float(half_width[k])
        rows.append(
            {
                "model": label,
                "bin": k,
                "position_lo": k / bins,
                "position_hi": (k + 1) / bins,
                "mean_focus": m,
                "ci_low": m - h,
                "ci_high": m + h,
                "tokens": int(tokens[k]),
            }
        )
    return rows


def index_curve(focus_lists: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Mean focus and 95 % CI against the absolute token index t = 1..max length (clustered by response)."""
    focus, mask = padded_focus(focus_lists)
    mean, half_width, tokens = clustered_mean_ci((focus * mask).double(), mask.double())
    keep = tokens > 0
    return {
        "index": (torch.arange(1, focus.shape[1] + 1)[keep]).tolist(),
        "mean": mean[keep].tolist(),
        "half_width": half_width[keep].tolist(),
        "responses": tokens[keep].tolist(),
    }


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def model_summary(label: str, model_path: str, focus_lists: Sequence[Sequence[float]], rows: int) -> dict[str, Any]:
    """summary.json entry of one model (token-weighted means; None where undefined)."""
    focus, mask = padded_focus(focus_lists)
    u, _ = position_bins(mask, 1)
    focus, mask = focus.double(), mask.double()
    total = float(mask.sum())

    def mean_where(select: torch.Tensor) -> float:
        n = float(select.sum())
        return float((focus * select).sum()) / n if n > 0 else float("nan")

    first = mean_where(mask * (u < 1.0 / 3.0))
    last = mean_where(mask * (u >= 2.0 / 3.0))
    empty = sum(1 for values in focus_lists if len(values) == 0)
    return {
        "model": model_path,
        "rows": rows,
        "responses": len(focus_lists),
        "empty_responses": empty,
        "tokens": int(total),
        "mean_focus": _finite_or_none(mean_where(mask)),
        "first_third": _finite_or_none(first),
        "last_third": _finite_or_none(last),
        "last_over_first": _finite_or_none(last / first) if first != 0.0 else None,
    }


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------


def resolve_labels(models: Sequence[str], labels: Optional[Sequence[str]]) -> list[str]:
    """One label per model: the given ones first, then folder names (made unique)."""
    labels = list(labels or [])
    if len(labels) > len(models):
        raise AnalyzeError(f"{len(labels)} --label values for {len(models)} --model values; give at most one per model")
    for model in models[len(labels) :]:
        base = os.path.basename(os.path.normpath(model)) or model
        name, suffix = base, 2
        while name in labels:
            name, suffix = f"{base}_{suffix}", suffix + 1
        labels.append(name)
    if len(set(labels)) != len(labels):
        raise AnalyzeError(f"labels must be distinct, got {labels}")
    return labels


def load_rows(parquet: str, max_rows: Optional[int], image_patch_size: int):
    """The parquet's prompts with their images (verl's process_image); every row must have an image."""
    from verl_vgpo.apps.evaluate import load_examples

    try:
        examples = load_examples([parquet], max_rows, image_patch_size)
    except ValueError as error:  # missing columns, placeholders without images, no rows
        raise AnalyzeError(str(error)) from error
    without = [example.index for example in examples if not example.images]
    if without:
        shown = ", ".join(map(str, without[:10])) + (" ..." if len(without) > 10 else "")
        raise AnalyzeError(
            f"{parquet}: {len(without)} of {len(examples)} rows have no images (rows {shown}); visual focus "
            "needs an image in every prompt (verl's RL parquet with an 'images' column)"
        )
    return examples


def check_model(loaded, path: str) -> tuple[list[int], torch.nn.Module]:
    """Visual token ids and final norm of a checkpoint, or a clear error for a model without them."""
    from verl_vgpo.focus import FocusCaptureError
    from verl_vgpo.focus import find_final_norm, visual_token_ids

    try:
        visual_ids = visual_token_ids(loaded.hf_config, DEFAULT_VISUAL_KINDS)
        norm = find_final_norm(loaded.model)
    except FocusCaptureError as error:
        raise AnalyzeError(f"{path}: {error}") from error
    if loaded.processor is None:
        raise AnalyzeError(f"{path}: no image processor; visual focus needs a vision-language checkpoint")
    vocab = loaded.model.get_input_embeddings().num_embeddings
    out_of_vocab = [token_id for token_id in visual_ids if not 0 <= token_id < vocab]
    if out_of_vocab:
        raise AnalyzeError(f"{path}: visual token ids {out_of_vocab} lie outside the vocabulary of {vocab} tokens")
    return visual_ids, norm


# ---------------------------------------------------------------------------------------------------
# generation and teacher-forced scoring
# ---------------------------------------------------------------------------------------------------


@dataclass
class PromptFeatures:
    """One prompt as the processor encodes it (unpadded) -- the inputs of the teacher-forced forward."""

    input_ids: torch.Tensor  # (P,)
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def prompt_features(processor, example) -> PromptFeatures:
    from verl_vgpo.cpu.generation import chat_inputs

    inputs = chat_inputs(processor, [example.messages], [example.images])
    return PromptFeatures(inputs["input_ids"][0], inputs["pixel_values"], inputs["image_grid_thw"])


def hf_responses(loaded, examples, n: int, temperature: float, seed: int, max_new_tokens: int, batch_size: int,
                 progress=None) -> list[list[list[int]]]:
    """Per example, ``n`` response id lists (cut after end-of-sequence), HF generate; the batch starting at
    example ``start`` is seeded with ``seed + start``."""
    from verl_vgpo.cpu import generation

    return generation.generate_conversations(
        loaded,
        [e.messages for e in examples],
        [e.images for e in examples],
        num_return_sequences=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed_for_batch=lambda start: seed + start,
        progress=progress,
    )


def vllm_responses(path: str, processor, examples, n: int, temperature: float, seed: int,
                   max_new_tokens: int) -> list[list[list[int]]]:
    """Per example, ``n`` response id lists from vLLM (GPU); the engine is released before scoring."""
    import gc

    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=seed, gpu_memory_utilization=0.5,
              limit_mm_per_prompt={"image": max(len(example.images) for example in examples)})
    params = SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
    requests = [
        {"prompt": processor.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=False),
         "multi_modal_data": {"image": e.images}}
        for e in examples
    ]
    outputs = llm.generate(requests, params)
    responses = [[list(completion.token_ids) for completion in output.outputs] for output in outputs]
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return responses


@torch.no_grad()
def teacher_forced_focus(loaded, norm, visual_ids: Sequence[int], features: Sequence[PromptFeatures],
                         responses: Sequence[Sequence[int]]) -> list[list[float]]:
    """Focus of every response token in one right-padded forward over prompt + response.

    The training engine's FocusHook (padded layout) scores the final norm's output with
    ``visual_focus_scores`` in float32; position p holds the focus of token p itself (not shifted).

    Args:
        features: B prompts (unpadded ids with their pixels).
        responses: B response id lists (may be empty).

    Returns:
        B lists of per-response-token focus values.
    """
    from verl_vgpo.cpu.generation import original_hf_forwards
    from verl_vgpo.focus import FocusHook, focus_hook

    sequences = [torch.cat([f.input_ids, torch.as_tensor(list(r), dtype=torch.long)]) for f, r in zip(features, responses)]
    lengths = torch.tensor([len(s) for s in sequences])
    width = int(lengths.max())
    device = loaded.device
    input_ids = torch.full((len(sequences), width), loaded.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    token_types = torch.zeros(input_ids.shape, dtype=torch.int32)
    image_id = getattr(loaded.hf_config, "image_token_id", None)
    video_id = getattr(loaded.hf_config, "video_token_id", None)
    for row, (feature, sequence, response) in enumerate(zip(features, sequences, responses)):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
        prompt_len = len(feature.input_ids)
        token_types[row, :prompt_len][feature.input_ids == image_id] = 1
        if video_id is not None:
            token_types[row, :prompt_len][feature.input_ids == video_id] = 2
        stray = [token_id for token_id in response if token_id in visual_ids]
        if stray:
            raise AnalyzeError(
                f"a response contains visual pad token(s) {sorted(set(stray))}; it cannot be scored against the "
                "prompt's image (generate with special tokens suppressed: --backend hf)"
            )
        if not bool(torch.isin(feature.input_ids, torch.tensor(list(visual_ids))).any()):
            raise AnalyzeError("a prompt has no visual pad tokens after processing: nothing to measure focus against")
    jagged = torch.nested.nested_tensor_from_jagged(
        torch.cat(sequences), torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    )
    hook = FocusHook(jagged, visual_ids, use_remove_padding=False)
    with original_hf_forwards(loaded.model), focus_hook(norm, hook):
        loaded.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            mm_token_type_ids=token_types.to(device),
            pixel_values=torch.cat([f.pixel_values for f in features]).to(device, loaded.model.dtype),
            image_grid_thw=torch.cat([f.image_grid_thw for f in features]).to(device),
            logits_to_keep=1,
        )
    if hook.focus is None:
        raise AnalyzeError("the model's final norm did not run in the forward; no focus scores")
    focus = hook.focus.float().cpu()
    offsets = hook.cu_seqlens.tolist()
    return [
        focus[offsets[row + 1] - len(response) : offsets[row + 1]].tolist()
        for row, response in enumerate(responses)
    ]


# ---------------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------------


def plot(curves: dict[str, list[dict]], index_curves: dict[str, dict], png_path: str) -> None:
    """forgetting.png: focus vs relative position (line + 95 % band per model) and vs token index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in curves.items():
        x = [(row["position_lo"] + row["position_hi"]) / 2 for row in rows]
        y = [row["mean_focus"] for row in rows]
        (line,) = left.plot(x, y, marker="o", label=label)
        low = [row["ci_low"] for row in rows]
        high = [row["ci_high"] for row in rows]
        left.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        curve = index_curves[label]
        right.plot(curve["index"], curve["mean"], color=line.get_color(), label=label)
        lower = [m - h if math.isfinite(h) else m for m, h in zip(curve["mean"], curve["half_width"])]
        upper = [m + h if math.isfinite(h) else m for m, h in zip(curve["mean"], curve["half_width"])]
        right.fill_between(curve["index"], lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
    left.set_xlabel("relative position in the response (t-1)/(T-1)")
    left.set_ylabel("visual focus (cosine to the image prototype)")
    left.set_title("focus vs relative position (95% CI)")
    right.set_xlabel("response token index t")
    right.set_title("focus vs absolute token index")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="Hugging Face checkpoint folder (repeatable)")
    parser.add_argument("--label", action="append", default=None, help="name of the model in the outputs (repeatable)")
    parser.add_argument("--data", required=True, help="verl RL parquet with images (as the converters write it)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max_rows", type=int, default=None, help="analyse only the first N rows")
    parser.add_argument("--bins", type=int, default=5, help="relative-position bins (training logs 5)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--n", type=int, default=1, help="responses per prompt (needs --temperature > 0 when > 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per generate / scoring forward")
    args = parser.parse_args(argv)
    if args.bins < 1 or args.n < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--bins, --n, --max_new_tokens and --batch_size must be >= 1")
    if args.max_rows is not None and args.max_rows < 1:
        parser.error("--max_rows must be >= 1")
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    if args.n > 1 and args.temperature == 0:
        parser.error("--n > 1 with greedy decoding repeats one response; set --temperature > 0")
    return args


def analyze_model(path: str, label: str, parquet: str, args, progress_factory) -> tuple[list[dict], int]:
    """tokens.jsonl records of one model (every response, empty ones included) and its row count."""
    from verl_vgpo.apps.evaluate import processor_patch_size
    from verl_vgpo.cpu import generation

    if args.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as error:
            raise AnalyzeError("--backend vllm: vLLM is not installed (use --backend hf)") from error
    loaded = generation.load_model(path)
    visual_ids, norm = check_model(loaded, path)
    try:
        patch = processor_patch_size(loaded.processor, path)
    except ValueError as error:
        raise AnalyzeError(str(error)) from error
    examples = load_rows(parquet, args.max_rows, patch)
    features = [prompt_features(loaded.processor, example) for example in examples]

    with progress_factory(total=len(examples), desc=f"{label}: generate") as bar:
        if args.backend == "vllm":
            responses = vllm_responses(path, loaded.processor, examples, args.n, args.temperature, args.seed,
                                       args.max_new_tokens)
            bar.update(len(examples))
        else:
            responses = hf_responses(loaded, examples, args.n, args.temperature, args.seed, args.max_new_tokens,
                                     args.batch_size, progress=bar)

    flat = [(row, sample, features[row], ids) for row, samples in enumerate(responses)
            for sample, ids in enumerate(samples)]
    records = []
    with progress_factory(total=len(flat), desc=f"{label}: score") as bar:
        for start in range(0, len(flat), args.batch_size):
            chunk = flat[start : start + args.batch_size]
            focus = teacher_forced_focus(loaded, norm, visual_ids, [c[2] for c in chunk], [c[3] for c in chunk])
            for (row, sample, _, ids), values in zip(chunk, focus):
                records.append(
                    {
                        "model": label,
                        "row": examples[row].index,
                        "sample": sample,
                        "response": loaded.tokenizer.decode(ids, skip_special_tokens=True),
                        "response_tokens": len(ids),
                        "focus": values,
                    }
                )
            bar.update(len(chunk))
    del loaded
    return records, len(examples)


def run(argv=None) -> dict[str, Any]:
    """The CLI without the exit code: writes the four outputs, returns summary.json's content."""
    from tqdm.auto import tqdm

    args = _parse_args(argv)
    labels = resolve_labels(args.model, args.label)
    for path in args.model:
        if not os.path.isdir(path):
            raise AnalyzeError(f"--model {path}: not a folder (a Hugging Face checkpoint folder is needed)")
    if not os.path.isfile(os.path.expanduser(args.data)):
        raise AnalyzeError(f"--data {args.data}: no such file")
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    started = time.perf_counter()
    all_records, curves, index_curves, summary = [], {}, {}, {"models": {}, "bins": args.bins}
    for path, label in zip(args.model, labels):
        records, rows = analyze_model(path, label, args.data, args, tqdm)
        focus_lists = [record["focus"] for record in records]
        curves[label] = curve_rows(label, focus_lists, args.bins)
        index_curves[label] = index_curve(focus_lists)
        summary["models"][label] = model_summary(label, path, focus_lists, rows)
        all_records.extend(records)

    with open(os.path.join(args.out, "tokens.jsonl"), "w", encoding="utf-8") as handle:
        for record in all_records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "curve.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        for rows in curves.values():
            for row in rows:
                writer.writerow({key: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                                 for key, v in row.items()})
    summary.update(
        data=args.data,
        backend=args.backend,
        temperature=args.temperature,
        n=args.n,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        seconds=time.perf_counter() - started,
    )
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, allow_nan=False)
    plot(curves, index_curves, os.path.join(args.out, "forgetting.png"))
    for label, entry in summary["models"].items():
        print(f"{label}: {entry['responses']} responses, {entry['tokens']} tokens, mean focus {entry['mean_focus']}, "
              f"first third {entry['first_third']}, last third {entry['last_third']}, "
              f"empty responses {entry['empty_responses']}")
    print(f"wrote tokens.jsonl, curve.csv, summary.json, forgetting.png to {args.out}")
    return summary


def main(argv=None) -> int:
    """Console script ``vgpo-analyze``: 0 on success, 2 for an input the analysis cannot use."""
    try:
        run(argv)
    except AnalyzeError as error:
        print(f"vgpo-analyze: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
