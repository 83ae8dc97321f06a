"""The boxed-answer math reward on the answer forms real rollouts produce, and its loading by verl."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_vgpo.rewards.math_boxed import choice_letter, compute_score, last_boxed_content


def _acc(response: str, truth) -> float:
    return compute_score(data_source="mmk12", solution_str=response, ground_truth=truth)["acc"]


@pytest.mark.parametrize(
    "response, truth",
    [
        ("<think>half of it</think> The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
        ("so \\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{3}{4}}", "3/4"),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}"),
        ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
        ("angle is \\boxed{60^{\\circ}}", "60"),
        ("angle is \\boxed{60°}", "60^\\circ"),
        ("\\boxed{5\\text{ cm}}", "5"),
        ("\\boxed{12 \\text{ m}^2}", "12"),
        ("\\boxed{x=3}", "3"),
        ("\\boxed{(1,2)}", "(1, 2)"),
        ("first \\boxed{7}, corrected: \\boxed{8}", "8"),
        # multiple choice: the option letter decides, in any of the usual wrappings
        ("\\boxed{B}", "B"),
        ("\\boxed{(B)}", "B"),
        ("\\boxed{B. 12}", "B"),
        ("\\boxed{(C) 45^\\circ}", "C"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{A}", "(A)"),
        # references stored boxed (ViRL39K) and lists of accepted references
        ("\\boxed{17}", "\\boxed{17^\\circ}"),
        ("\\boxed{4}", ["3", "4"]),
        ("\\boxed{4}", np.array(["4"], dtype=object)),
    ],
)
def test_equivalent_answers_score_one(response, truth):
    assert _acc(response, truth) == 1.0


@pytest.mark.parametrize(
    "response, truth",
    [
        ("\\boxed{3}", "4"),
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{2\\sqrt{2}}", "2\\sqrt{3}"),
        ("The answer is 4.", "4"),  # no box: nothing to grade
        ("\\boxed{4", "4"),  # box never closed (truncated response)
        ("\\boxed{7}, corrected: \\boxed{8}", "7"),  # only the last box counts
        ("\\boxed{B}", "C"),
        ("\\boxed{(B) 12}", "C"),
        ("\\boxed{AB}", "A"),  # not an option letter
        ("\\boxed{}", "0"),
    ],
)
def test_wrong_or_missing_answers_score_zero(response, truth):
    assert _acc(response, truth) == 0.0


def test_format_weight_mixes_format_and_accuracy():
    good_format = "<think>2+2</think> so \\boxed{5}"
    bad_format = "2+2 so \\boxed{4}"
    wrong_but_formatted = compute_score("geo3k", good_format, "4", format_weight=0.1)
    right_unformatted = compute_score("geo3k", bad_format, "4", format_weight=0.1)
    assert wrong_but_formatted == {"score": pytest.approx(0.1), "acc": 0.0, "format": 1.0, "has_box": 1.0}
    assert right_unformatted == {"score": pytest.approx(0.9), "acc": 1.0, "format": 0.0, "has_box": 1.0}
    # default: accuracy only
    assert compute_score("geo3k", bad_format, "4")["score"] == 1.0


def test_every_result_has_the_same_keys():
    # verl stacks reward_extra_info per key over the batch: a missing key on one sample breaks it
    keys = {frozenset(compute_score("x", response, "1")) for response in ("\\boxed{1}", "none", "<think>a</think>")}
    assert len(keys) == 1


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="format_weight"):
        compute_score("x", "\\boxed{1}", "1", format_weight=1.5)
    with pytest.raises(ValueError, match="ground_truth"):
        compute_score("x", "\\boxed{1}", "")
    with pytest.raises(TypeError, match="ground_truth"):
        compute_score("x", "\\boxed{1}", 1)
    with pytest.raises(TypeError, match="response"):
        last_boxed_content(None)


def test_helpers():
    assert last_boxed_content("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed_content("\\fbox{3}") == "3"
    assert last_boxed_content("nothing") is None
    assert choice_letter("(E) none of these") == "E"
    assert choice_letter("12") is None
    assert choice_letter("A + B") is None


def test_verl_loads_it_as_custom_reward_function_with_kwargs():
    """verl's own loader (the one the reward loop uses) imports it by pkg:// path and forwards kwargs."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://verl_vgpo.rewards.math_boxed",
                    "name": "compute_score",
                    "reward_kwargs": {"format_weight": 0.5},
                }
            }
        }
    )
    reward_fn = get_custom_reward_fn(config)
    result = reward_fn(
        data_source="virl39k", solution_str="<think>ok</think>\\boxed{2}", ground_truth="2", extra_info={"index": 0}
    )
    assert result["score"] == 1.0 and result["format"] == 1.0
    result = reward_fn(data_source="virl39k", solution_str="\\boxed{3}", ground_truth="2", extra_info={})
    assert result["score"] == 0.0


def test_huge_boxed_expressions_are_compared_as_text_without_sympy(monkeypatch):
    from verl_vgpo.rewards import math_boxed

    def no_sympy(*args, **kwargs):
        raise AssertionError("a long answer must not reach the symbolic grader")

    monkeypatch.setattr(math_boxed, "grade_answer", no_sympy)
    huge = "+".join(f"\\sqrt{{{k}}}" for k in range(200))
    assert len(huge) > math_boxed.MAX_SYMBOLIC_ANSWER_CHARS
    assert math_boxed.answers_match(huge, huge)
    assert not math_boxed.answers_match(huge, "3")


# ---------------------------------------------------------------------------------------------------
# strict mode: the VGPO authors' rule (the paper recipes' default)
# ---------------------------------------------------------------------------------------------------


def _strict(response: str, truth) -> dict:
    return compute_score(data_source="virl39k", solution_str=response, ground_truth=truth, mode="strict")


@pytest.mark.parametrize(
    "response, truth, strict_acc, lenient_acc",
    [
        # both modes: mathruler's own equivalences
        ("<think>half</think> so \\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0),
        ("\\boxed{60^{\\circ}}", "60", 1.0, 1.0),
        ("\\boxed{\\text{B}}", "B", 1.0, 1.0),
        ("first \\boxed{7}, corrected: \\boxed{8}", "8", 1.0, 1.0),
        ("\\boxed{9}", "8", 0.0, 0.0),
        ("no box: 8", "8", 0.0, 0.0),
        # the authors remove spaces around < > / before extracting: "1 / 2" becomes "1/2"
        ("\\boxed{1 / 2}", "1/2", 1.0, 1.0),
        # what only the lenient mode accepts
        ("\\boxed{(B) 12}", "B", 0.0, 1.0),  # option letter with its value
        ("\\fbox{3}", "3", 0.0, 1.0),  # \fbox
        ("\\boxed{60°}", "60^\\circ", 0.0, 1.0),  # unicode degree sign
    ],
)
def test_strict_mode_is_the_authors_rule_and_differs_where_documented(response, truth, strict_acc, lenient_acc):
    assert _strict(response, truth)["acc"] == strict_acc
    assert _acc(response, truth) == lenient_acc


def test_strict_mode_grades_exactly_mathrulers_boxed_content():
    """Restated from the authors' compute_score_wo_format: normalise tags, extract, grade; nothing else."""
    import re

    from mathruler.grader import extract_boxed_content, grade_answer

    responses = ["< think >x</ think > \\boxed{\\frac{3}{4}}", "\\boxed{0.75}", "\\boxed{3/4 }", "\\boxed{x}", "none"]
    for response in responses:
        expected = float(grade_answer(extract_boxed_content(re.sub(r"\s*(<|>|/)\s*", r"\1", response)), "\\frac{3}{4}"))
        assert _strict(response, "\\frac{3}{4}")["acc"] == expected
    assert [_strict(response, "\\frac{3}{4}")["acc"] for response in responses] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_strict_mode_keys_format_rule_and_refusals():
    result = _strict("< think >reasoning</think>The answer is \\boxed{4}.", "4")
    assert set(result) == {"score", "acc", "format", "has_box"}  # "acc": the filter_groups metric
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0, "has_box": 1.0}
    assert _strict("\\boxed{4}", "4")["format"] == 0.0
    mixed = compute_score("virl39k", "<think>a</think>\\boxed{5}", "4", mode="strict", format_weight=0.1)
    assert mixed["score"] == pytest.approx(0.1) and mixed["acc"] == 0.0
    assert _strict("no box", "4")["has_box"] == 0.0
    with pytest.raises(TypeError, match="one reference string"):
        _strict("\\boxed{4}", ["3", "4"])
    with pytest.raises(ValueError, match="mode must be one of"):
        compute_score("virl39k", "\\boxed{4}", "4", mode="exact")
