"""verl_vgpo.rewards.paper_scoring: PAPO-Eval's and Look-Back's rules on planted answers."""

import re
import string

import pytest
from mathruler.grader import extract_boxed_content, grade_answer

from verl_vgpo.rewards.paper_scoring import compute_score, has_answer, lookback_accuracy, papo_accuracy

# (response, answer, papo, lookback)
PLANTED = [
    ("<think>see the plot</think> \\boxed{B}", "B", 1.0, 1.0),  # boxed letter
    ("The answer is B", "B", 0.0, 0.0),  # bare letter, no box: neither rule reads it
    ("\\boxed{(B)}", "B", 1.0, 1.0),
    ("\\boxed{B. 12}", "B", 0.0, 1.0),  # grade_answer refuses, Look-Back's letter rule accepts
    ("\\boxed{A or C}", "C", 0.0, 1.0),  # the letter rule accepts a letter anywhere in the box
    ("\\boxed{2.50}", "2.5", 1.0, 1.0),  # trailing zeros
    ("\\boxed{12.0}", "12", 1.0, 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0, 1.0),  # fraction against decimal
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0),
    ("\\boxed{3} so finally \\boxed{4}", "4", 1.0, 1.0),  # several boxes: the last counts
    ("\\boxed{3} so finally \\boxed{4}", "3", 0.0, 0.0),
    ("", "3", 0.0, 0.0),  # empty response
    ("", "E", 0.0, 1.0),  # Look-Back reads "None" for a missing box, which contains E (reproduced as written)
    ("The answer is E.", "E", 0.0, 1.0),
    ("< think >x</ think > \\boxed{ 1 / 2 }", "1/2", 1.0, 1.0),  # white space around < > /
    ("\\boxed{a < / b}", "a</b", 1.0, 1.0),
    ("\\boxed{17", "17", 0.0, 0.0),  # a box never closed (truncated response)
]


def papo_eval_restated(predict: str, ground_truth: str) -> float:
    """PAPO-Eval's compute_accuracy_boxed_math, restated from its description (github.com/xhguo7/PAPO-Eval,
    papo_eval/eval_utils.py): the reference the rule must equal on every planted case."""
    predict = re.sub(r"\s*(<|>|/)\s*", r"\1", predict)
    return 1.0 if grade_answer(extract_boxed_content(predict), ground_truth) else 0.0


@pytest.mark.parametrize("response, answer, papo, lookback", PLANTED)
def test_planted_answers(response, answer, papo, lookback):
    assert papo_accuracy(response, answer) == papo == papo_eval_restated(response, answer)
    assert lookback_accuracy(response, answer) == lookback
    for scoring, expected in (("papo", papo), ("lookback", lookback)):
        result = compute_score("mathvista", response, answer, scoring=scoring)
        assert result["acc"] == result["score"] == expected
        assert result["has_box"] == float("\\boxed{" in response and response.strip() != "\\boxed{17")


def test_lookback_second_stage_is_math_verify():
    """A case only math_verify accepts: without it Look-Back's rule would score 0."""
    pytest.importorskip("math_verify")
    response, answer = "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}"  # mathruler refuses unreduced fractions
    assert not grade_answer(extract_boxed_content(response), answer)
    assert lookback_accuracy(response, answer) == 1.0
    assert papo_accuracy(response, answer) == 0.0


def test_letter_rule_only_for_one_upper_case_letter():
    assert lookback_accuracy("\\boxed{abc}", "b") == 0.0  # lower case is not an option letter
    assert lookback_accuracy("\\boxed{CD}", "CD") == 1.0  # grade_answer, not the letter rule
    assert lookback_accuracy("\\boxed{XY}", "Y") == 1.0
    assert all(lookback_accuracy("no box", letter) == float(letter in "NONE") for letter in string.ascii_uppercase)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="scoring must be one of"):
        compute_score("mathvista", "\\boxed{1}", "1", scoring="vote")
    with pytest.raises(ValueError, match="one non-empty answer string"):
        papo_accuracy("\\boxed{1}", "")
    assert papo_accuracy("\\boxed{1}", ["1"]) == 1.0  # a one-element list, as parquet list columns arrive
    assert not has_answer("no box here") and has_answer("\\boxed{}")
