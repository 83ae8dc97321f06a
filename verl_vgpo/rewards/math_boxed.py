"""Rule-based reward for multimodal math: the final answer is the content of the last ``\\boxed{...}``.

Plugged into verl as a custom reward function::

    reward.custom_reward_function.path=pkg://verl_vgpo.rewards.math_boxed
    reward.custom_reward_function.name=compute_score

verl's reward managers (``naive``, ``dapo``) call ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=...)`` with keyword arguments, plus whatever is listed under
``reward.custom_reward_function.reward_kwargs``. A dict result becomes the score (``score``) and
per-sample extra metrics (every other key), which is why every key is present for every sample.

Two modes (``reward.custom_reward_function.reward_kwargs.mode``):

* ``strict`` (the paper recipes' default): the VGPO authors' rule, nothing added. Their reward
  (``examples/reward_function/math.py:compute_score_wo_format`` in github.com/wzb-bupt/VGPO, the one
  ``train_vgpo_7B.sh`` uses) removes white space around ``<``, ``>`` and ``/`` in the response, takes
  ``mathruler.grader.extract_boxed_content`` (the last ``\\boxed{...}``; ``"None"`` when there is none) and
  scores ``mathruler.grader.grade_answer(boxed, ground_truth)``. The optional format term is their
  ``format_reward`` regex (``<think>.*</think>.*\\boxed{.*}.*`` over the whole normalised response).
* ``lenient`` (the function's default, kept for other data): the last ``\\boxed{}`` or ``\\fbox{}``;
  multiple-choice answers are compared by their option letter ("(B) 12", "B." and "\\text{B}" all mean B);
  the unicode degree sign and ``^{\\circ}`` are written as ``^\\circ`` and a final full stop is dropped;
  several accepted references (a list) may be given, and references stored boxed are unboxed; boxed
  answers over 300 characters are compared as text instead of by sympy (which has no time limit).
  Everything else is ``mathruler``'s ``grade_answer`` (sympy-based, the grader EasyR1 uses).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from mathruler.grader import extract_boxed_content, grade_answer

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# multiple-choice forms: "B", "(B)", "B.", "\text{B}", "(B) 12", "B. 12", "B: 12", "B) 12"
_BARE_CHOICE = re.compile(r"^\(?([A-H])\)?\.?$")
_TEXT_CHOICE = re.compile(r"^\\text\{\s*\(?([A-H])\)?\s*\}$")
_LABELLED_CHOICE = re.compile(r"^(?:\(([A-H])\)\s*|([A-H])[.:)]\s+)\S", re.DOTALL)
_THINK_PATTERN = re.compile(r"^\s*<think>.+?</think>", re.DOTALL)


def last_boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text`` with nested braces kept.

    Returns None when there is no box or the last box is never closed (a truncated response).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the response as a string, got {type(text).__name__}")
    start = -1
    for command in _BOX_COMMANDS:
        start = max(start, text.rfind(command + "{"))
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for position in range(opening, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1 : position].strip()
    return None


def choice_letter(answer: str) -> str | None:
    """Option letter of a multiple-choice answer ("(C) 45" -> "C"), None if it is not one."""
    answer = answer.strip()
    for pattern in (_BARE_CHOICE, _TEXT_CHOICE, _LABELLED_CHOICE):
        match = pattern.match(answer)
        if match:
            return next(group for group in match.groups() if group)
    return None


def _normalise(answer: str) -> str:
    answer = answer.strip()
    # mathruler knows ^\circ but not the unicode degree sign
    answer = answer.replace("^{\\circ}", "^\\circ").replace("°", "^\\circ")
    # a trailing full stop is sentence punctuation, not part of the value
    return answer.rstrip(".").strip()


# boxed answers longer than this are compared as text, never handed to sympy
MAX_SYMBOLIC_ANSWER_CHARS = 300


def answers_match(predicted: str, ground_truth: str) -> bool:
    """Whether ``predicted`` and ``ground_truth`` denote the same final answer."""
    bare_truth = _BARE_CHOICE.match(ground_truth.strip()) or _TEXT_CHOICE.match(ground_truth.strip())
    if bare_truth:
        # the reference is an option letter: only the letter of the prediction counts
        return choice_letter(predicted) == bare_truth.group(1)
    predicted, ground_truth = _normalise(predicted), _normalise(ground_truth)
    if len(predicted) > MAX_SYMBOLIC_ANSWER_CHARS:
        # mathruler simplifies with sympy without a time limit: a huge boxed expression could stall a
        # reward worker for minutes, so long answers are compared as text only
        return predicted == ground_truth
    return bool(grade_answer(predicted, ground_truth))


def follows_format(solution_str: str) -> bool:
    """Reasoning inside ``<think>...</think>`` first, then a closed ``\\boxed{}`` after it."""
    match = _THINK_PATTERN.match(solution_str)
    return bool(match) and last_boxed_content(solution_str[match.end() :]) is not None


def _reference_answers(ground_truth: Any) -> list[str]:
    if isinstance(ground_truth, str):
        references = [ground_truth]
    elif isinstance(ground_truth, Sequence) and not isinstance(ground_truth, bytes):
        references = list(ground_truth)
    else:
        # numpy arrays arrive from parquet list columns
        try:
            references = list(ground_truth.tolist())
        except AttributeError:
            raise TypeError(
                f"ground_truth must be a string or a list of strings, got {type(ground_truth).__name__}"
            ) from None
    if not references or not all(isinstance(item, str) and item.strip() for item in references):
        raise ValueError(f"ground_truth must hold non-empty strings, got {ground_truth!r}")
    # references may be stored boxed (ViRL39K stores "\boxed{17}"): compare the content
    return [last_boxed_content(item) or item.strip() for item in references]


# the VGPO authors' response clean-up ("handle qwen2.5vl-32b format") and format rule, restated
_AUTHORS_TAG_SPACING = re.compile(r"\s*(<|>|/)\s*")
_AUTHORS_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
MODES = ("strict", "lenient")


def strict_score_parts(solution_str: str, ground_truth: str) -> tuple[float, float, float]:
    """(acc, format, has_box) by the VGPO authors' rule: boxed content graded by ``grade_answer`` only."""
    if not isinstance(solution_str, str):
        raise TypeError(f"expected the response as a string, got {type(solution_str).__name__}")
    if not isinstance(ground_truth, str):
        raise TypeError(
            f"mode='strict' grades against one reference string (as the VGPO authors do), got "
            f"{type(ground_truth).__name__}; use mode='lenient' for lists of references"
        )
    response = _AUTHORS_TAG_SPACING.sub(r"\1", solution_str)
    boxed = extract_boxed_content(response)
    accuracy = float(bool(grade_answer(boxed, ground_truth)))
    format_score = float(_AUTHORS_FORMAT.fullmatch(response) is not None)
    return accuracy, format_score, float(boxed != "None")


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    format_weight: float = 0.0,
    mode: str = "lenient",
    **_unused: Any,
) -> dict[str, float]:
    """verl custom reward: 1 for a correct boxed answer, 0 otherwise (optionally mixed with format).

    ``score = (1 - format_weight) * acc + format_weight * format``; ``format_weight`` and ``mode``
    (``strict``: the VGPO authors' rule; ``lenient``: ours, see the module docstring) come from
    ``reward.custom_reward_function.reward_kwargs`` (defaults: accuracy only, lenient).
    ``data_source`` and ``extra_info`` are accepted because verl always passes them; the rule is the
    same for every source. Other keyword arguments verl may add (reward-router address, ...) are
    not used by a rule-based reward.
    """
    if not 0.0 <= float(format_weight) <= 1.0:
        raise ValueError(f"format_weight must lie in [0, 1], got {format_weight!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "strict":
        accuracy, format_score, has_box = strict_score_parts(solution_str, ground_truth)
        return {
            "score": (1.0 - format_weight) * accuracy + format_weight * format_score,
            "acc": accuracy,
            "format": format_score,
            "has_box": has_box,
        }
    references = _reference_answers(ground_truth)
    predicted = last_boxed_content(solution_str)
    accuracy = float(predicted is not None and any(answers_match(predicted, ref) for ref in references))
    format_score = float(follows_format(solution_str))
    return {
        "score": (1.0 - format_weight) * accuracy + format_weight * format_score,
        "acc": accuracy,
        "format": format_score,
        "has_box": float(predicted is not None),
    }
