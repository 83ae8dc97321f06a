"""Exact-match reward for short-answer VQA (e.g. easy-vqa), in the signature verl's reward managers call.

Use with verl's custom reward function hook:

    reward.custom_reward_function.path=pkg://verl_vgpo.rewards.exact_match
    reward.custom_reward_function.name=compute_score           # strict: 1.0 or 0.0
    reward.custom_reward_function.name=compute_graded_score    # exact match, else partial credit

Both return ``{"score": float, "acc": float}``; ``acc`` is always the strict exact match of the final
answer, so verl logs real accuracy even when the graded score is used for training. The final answer is
read with :func:`verl_vgpo.data.easy_vqa.extract_answer` (the text after the last "Answer:", else the
whole response), the one definition of the response format shared with the data and the warm start; the
strict reward is the training reward of warm-started models (demo, experiment).

Why a graded variant: a randomly initialised tiny model (CPU demos, CI) essentially never emits an exact
answer, so a strict 0/1 reward is 0 for every rollout, every group advantage is 0 and the run shows nothing.
The graded score keeps exact match as the only way to reach 1.0 and gives a smaller, dense credit for
character-level closeness to the answer, so rollouts of one prompt get different rewards.
"""

from __future__ import annotations

import difflib

from verl_vgpo.data.easy_vqa import extract_answer, normalize_answer

# the graded score stays strictly below an exact match
PARTIAL_CREDIT_SCALE = 0.5


def ground_truth_text(ground_truth) -> str:
    # verl stores reward_model.ground_truth as written in the parquet; a one-element list is accepted too
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    if not isinstance(ground_truth, str) or not normalize_answer(ground_truth):
        raise ValueError(
            f"exact_match reward needs a non-empty string ground truth (reward_model.ground_truth), got {ground_truth!r}"
        )
    return ground_truth


def exact_match(solution_str: str, ground_truth) -> float:
    """1.0 when the response's normalised final answer equals the normalised ground truth, else 0.0."""
    return float(extract_answer(solution_str) == normalize_answer(ground_truth_text(ground_truth)))


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """Strict exact-match reward (verl custom reward function signature)."""
    accuracy = exact_match(solution_str, ground_truth)
    return {"score": accuracy, "acc": accuracy}


def compute_graded_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """1.0 for an exact match, else PARTIAL_CREDIT_SCALE x character similarity to the answer (< 1.0)."""
    accuracy = exact_match(solution_str, ground_truth)
    if accuracy == 1.0:
        return {"score": 1.0, "acc": 1.0}
    response = extract_answer(solution_str)
    answer = normalize_answer(ground_truth_text(ground_truth))
    similarity = difflib.SequenceMatcher(a=response, b=answer, autojunk=False).ratio()
    return {"score": PARTIAL_CREDIT_SCALE * similarity, "acc": 0.0}
