"""Rewards for CPU smoke runs of the recipes (``SMOKE=cpu``), where a random tiny model answers easy-vqa questions.

The recipes grade the last ``\\boxed{}`` strictly; a random tiny model never writes one, so every rollout would
score 0, every group would share one accuracy, and ``filter_groups`` (on in the recipes) would evict them all.
:func:`compute_score` keeps the recipe's 0/1-style accuracy metric but makes it reachable: the character
similarity of the response's final answer to the reference (as in :mod:`verl_vgpo.rewards.exact_match`),
rounded to quarters, is both ``score`` and ``acc``. Rollouts of one prompt then often differ (kept groups). Rows of
even ``extra_info["index"]`` score 0 whatever the answer, so their groups always agree and ``filter_groups`` evicts
and refills in every smoke run, not only when the sampled answers happen to agree.

:func:`compute_zero_score` returns 0 for everything: a run with it and ``filter_groups`` on must stop on its
own (``algorithm.filter_groups.max_num_gen_batches``), which the smoke tests check.
"""

from __future__ import annotations

import difflib

from verl_vgpo.data.easy_vqa import extract_answer, normalize_answer
from verl_vgpo.rewards.exact_match import ground_truth_text

LEVELS = 4  # similarity rounded to multiples of 1/LEVELS


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """Similarity of the final answer to the reference, rounded to quarters, as both score and acc.

    Extra keyword arguments (a recipe's ``reward_kwargs``, e.g. ``mode`` / ``format_weight``) are accepted and
    ignored, so a recipe's reward settings need no change in smoke mode.
    """
    if int((extra_info or {}).get("index", 1)) % 2 == 0:
        return {"score": 0.0, "acc": 0.0}
    answer = normalize_answer(ground_truth_text(ground_truth))
    response = extract_answer(solution_str)
    similarity = difflib.SequenceMatcher(a=response, b=answer, autojunk=False).ratio()
    level = round(similarity * LEVELS) / LEVELS
    return {"score": level, "acc": level}


def compute_zero_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """0 for every response (a broken reward): every group scores the same."""
    return {"score": 0.0, "acc": 0.0}
