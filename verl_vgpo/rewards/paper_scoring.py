"""How the peers score the VGPO paper's benchmarks: two rules, both reading the last ``\\boxed{}``.

* ``papo`` (the default): PAPO-Eval's rule (``papo_eval/eval_utils.py:compute_accuracy_boxed_math`` in
  github.com/xhguo7/PAPO-Eval): remove white space around ``<``, ``>`` and ``/`` in the response, take
  mathruler's ``extract_boxed_content`` (the last ``\\boxed{...}``; the string ``"None"`` when there is
  none) and score ``mathruler.grader.grade_answer(boxed, answer)``. It is the VGPO authors' training
  reward too (``compute_score_wo_format``), i.e. ``mode="strict"`` of :mod:`verl_vgpo.rewards.math_boxed`,
  which this module calls so the two cannot drift apart.
* ``lookback``: Look-Back's ``eval/cal_score.py:accuracy_reward`` (github.com/PKU-YuanGroup/Look-Back),
  the script the VGPO model cards say the paper's numbers follow. No white-space clean-up; the boxed
  content (``"None"`` without a box) is correct when (1) ``grade_answer`` accepts it, else (2)
  ``math_verify.verify(parse(boxed), parse(answer))`` does, else (3) the answer is one upper-case letter
  and that letter occurs anywhere in the upper-cased boxed content. Rule (3) is reproduced as written:
  it accepts ``\\boxed{A or C}`` for ``C``, and a response with no box at all (content ``"None"``) for
  the answers ``N``, ``O`` and ``E``.

``math_verify`` is a dependency of this package (setup.py); where it is missing anyway, the ``lookback`` rule
skips stage (2) and :func:`lookback_is_complete` says so (``vgpo-evaluate`` prints a warning and records it).

Plugged into verl or ``vgpo-evaluate --reward`` as ``pkg://verl_vgpo.rewards.paper_scoring:compute_score``
(``reward_kwargs: {scoring: lookback}`` for the second rule).
"""

from __future__ import annotations

import string
from typing import Any

from mathruler.grader import extract_boxed_content, grade_answer

from verl_vgpo.rewards.math_boxed import strict_score_parts

SCORINGS = ("papo", "lookback")
DEFAULT_SCORING = "papo"
# mathruler's extract_boxed_content returns this string when the response has no closed \boxed{}
NO_BOX = "None"


def _math_verify():
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return parse, verify


def lookback_is_complete() -> bool:
    """Whether Look-Back's second stage (``math_verify``) is available in this environment."""
    return _math_verify() is not None


def _reference(ground_truth: Any) -> str:
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"the paper protocols grade against one non-empty answer string, got {ground_truth!r}")
    return ground_truth


def papo_accuracy(response: str, ground_truth: str) -> float:
    """PAPO-Eval's rule (module docstring): 1.0 or 0.0."""
    accuracy, _, _ = strict_score_parts(response, _reference(ground_truth))
    return accuracy


def lookback_accuracy(response: str, ground_truth: str) -> float:
    """Look-Back's rule (module docstring): 1.0 or 0.0."""
    if not isinstance(response, str):
        raise TypeError(f"expected the response as a string, got {type(response).__name__}")
    ground_truth = _reference(ground_truth)
    boxed = extract_boxed_content(response)
    if grade_answer(boxed, ground_truth):
        return 1.0
    math_verify = _math_verify()
    if math_verify is not None:
        parse, verify = math_verify
        try:
            if float(verify(parse(boxed), parse(ground_truth))) > 0:
                return 1.0
        except Exception:  # noqa: BLE001 -- a parser failure is "not verified", as an unparsable answer
            pass
    if len(ground_truth) == 1 and ground_truth in string.ascii_uppercase and ground_truth in boxed.upper():
        return 1.0
    return 0.0


def has_answer(response: str) -> bool:
    """Whether a closed ``\\boxed{}`` can be read (the table's parse check). The same for both rules:
    PAPO's white-space clean-up touches only ``<``, ``>`` and ``/``, never a box or its braces."""
    return extract_boxed_content(response) != NO_BOX


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    scoring: str = DEFAULT_SCORING,
    **_unused: Any,
) -> dict[str, float]:
    """verl custom reward signature: ``{"score", "acc", "has_box"}`` by the ``scoring`` rule (same for
    every ``data_source``; ``extra_info`` and other keywords verl passes are not used)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    rule = papo_accuracy if scoring == "papo" else lookback_accuracy
    accuracy = rule(solution_str, ground_truth)
    return {"score": accuracy, "acc": accuracy, "has_box": float(has_answer(solution_str))}
