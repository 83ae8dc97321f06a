"""Alignment of the engine's full-sequence focus field to response tokens (pure tensor code)."""

import math

import pytest
import torch
from verl.workers.utils.padding import response_from_nested

from verl_vgpo.wiring.trainer import FocusLayoutError, response_aligned_focus


def jagged(rows):
    return torch.nested.as_nested_tensor([torch.as_tensor(r) for r in rows], layout=torch.jagged)


def position_encoded_batch(prompt_lens, response_lens):
    """Focus value = the absolute position inside its own sequence, so any shift shows as +-1."""
    focus = jagged([torch.arange(p + r, dtype=torch.float32) for p, r in zip(prompt_lens, response_lens)])
    mask = jagged([torch.ones(r, dtype=torch.int64) for r in response_lens])
    return focus, mask


def test_each_response_token_gets_the_focus_of_its_own_position():
    prompt_lens, response_lens = [4, 2, 7], [3, 5, 1]
    focus, mask = position_encoded_batch(prompt_lens, response_lens)

    aligned = response_aligned_focus(focus, mask)

    assert aligned.shape == mask.to_padded_tensor(padding=0).shape == (3, 5)
    for row, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        # response token t sits at absolute position p + t
        assert aligned[row, :r].tolist() == [float(p + t) for t in range(r)]
        assert torch.isnan(aligned[row, r:]).all()


def test_alignment_is_one_position_later_than_verls_log_prob_slice():
    # verl's response_from_nested reads the position that EMITS each token (log-probs); focus is
    # read at the token itself, exactly one position later
    prompt_lens, response_lens = [3, 6], [4, 2]
    focus, mask = position_encoded_batch(prompt_lens, response_lens)

    aligned = response_aligned_focus(focus, mask)
    emitting = response_from_nested(focus, mask).to_padded_tensor(padding=float("nan"))

    valid = ~torch.isnan(emitting)
    assert torch.equal(aligned[valid], emitting[valid] + 1.0)


def test_matches_a_per_token_reference_on_random_lengths():
    generator = torch.Generator().manual_seed(0)
    prompt_lens = torch.randint(1, 9, (7,), generator=generator).tolist()
    response_lens = torch.randint(1, 9, (7,), generator=generator).tolist()
    rows = [torch.randn(p + r, generator=generator) for p, r in zip(prompt_lens, response_lens)]
    mask = jagged([torch.ones(r, dtype=torch.int64) for r in response_lens])

    aligned = response_aligned_focus(jagged(rows), mask, sequence_lengths=torch.tensor(prompt_lens) + torch.tensor(response_lens))

    for row, (values, p, r) in enumerate(zip(rows, prompt_lens, response_lens)):
        for t in range(r):
            assert aligned[row, t].item() == values[p + t].item()
    assert aligned.dtype == torch.float32


def test_nan_rows_stay_nan_and_dtype_becomes_float32():
    focus = jagged([torch.full((5,), float("nan"), dtype=torch.bfloat16), torch.ones(4, dtype=torch.bfloat16)])
    mask = jagged([torch.ones(2, dtype=torch.int64), torch.ones(3, dtype=torch.int64)])

    aligned = response_aligned_focus(focus, mask)

    assert aligned.dtype == torch.float32
    assert torch.isnan(aligned[0]).all()
    assert aligned[1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "focus, mask, lengths, message",
    [
        (torch.zeros(2, 5), jagged([torch.ones(2)] * 2), None, "jagged nested tensor"),
        (jagged([torch.zeros(5, 3)] * 2), jagged([torch.ones(2)] * 2), None, "one scalar per token"),
        (jagged([torch.zeros(5)] * 3), jagged([torch.ones(2)] * 2), None, "3 rows but response_mask has 2"),
        (jagged([torch.zeros(5), torch.zeros(2)]), jagged([torch.ones(2), torch.ones(3)]), None, "full sequence"),
        (jagged([torch.zeros(5), torch.zeros(6)]), jagged([torch.ones(2), torch.ones(3)]), [5, 7], "row 1 has 6"),
    ],
)
def test_layout_errors_name_the_problem(focus, mask, lengths, message):
    with pytest.raises(FocusLayoutError, match=message):
        response_aligned_focus(focus, mask, None if lengths is None else torch.tensor(lengths))


def test_finite_values_are_copied_exactly():
    values = [math.pi, -0.25, 0.5, 1.0, -1.0]
    focus = jagged([torch.tensor(values, dtype=torch.float32)])
    mask = jagged([torch.ones(3, dtype=torch.int64)])
    assert response_aligned_focus(focus, mask)[0].tolist() == torch.tensor(values[2:], dtype=torch.float32).tolist()
