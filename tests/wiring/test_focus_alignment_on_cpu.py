"""Alignment of focus to response tokens (pure tensor code): the engine's cut of each row's response out of
the packed full-sequence scores, and the trainer's padding of that response-only field."""

import math

import pytest
import torch
from verl.workers.utils.padding import response_from_nested

from verl_vgpo.focus import response_focus
from verl_vgpo.wiring.trainer import FocusLayoutError, response_aligned_focus


def jagged(rows):
    return torch.nested.as_nested_tensor([torch.as_tensor(r) for r in rows], layout=torch.jagged)


def position_encoded_micro_batch(prompt_lens, response_lens):
    """Packed focus whose value is the absolute position inside its own sequence (any shift shows as +-1),
    the micro-batch's cu_seqlens and its response mask."""
    full = [torch.arange(p + r, dtype=torch.float32) for p, r in zip(prompt_lens, response_lens)]
    cu_seqlens = torch.tensor([0, *[p + r for p, r in zip(prompt_lens, response_lens)]]).cumsum(0)
    mask = jagged([torch.ones(r, dtype=torch.int64) for r in response_lens])
    return torch.cat(full), cu_seqlens, mask, jagged(full)


def engine_then_trainer(prompt_lens, response_lens):
    packed, cu_seqlens, mask, _ = position_encoded_micro_batch(prompt_lens, response_lens)
    return response_aligned_focus(response_focus(packed, cu_seqlens, mask), mask), mask


def test_each_response_token_gets_the_focus_of_its_own_position():
    prompt_lens, response_lens = [4, 2, 7], [3, 5, 1]

    aligned, mask = engine_then_trainer(prompt_lens, response_lens)

    assert aligned.shape == mask.to_padded_tensor(padding=0).shape == (3, 5)
    for row, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        # response token t sits at absolute position p + t
        assert aligned[row, :r].tolist() == [float(p + t) for t in range(r)]
        assert torch.isnan(aligned[row, r:]).all()


def test_engine_field_is_response_only_and_jagged_like_the_response_mask():
    packed, cu_seqlens, mask, _ = position_encoded_micro_batch([4, 2, 7], [3, 5, 1])

    field = response_focus(packed, cu_seqlens, mask)

    assert field.is_nested and field.dtype == torch.float32
    assert field.offsets().tolist() == mask.offsets().tolist() == [0, 3, 8, 9]
    assert field.values().tolist() == [4.0, 5.0, 6.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_alignment_is_one_position_later_than_verls_log_prob_slice():
    # verl's response_from_nested reads the position that EMITS each token (log-probs); focus is
    # read at the token itself, exactly one position later
    prompt_lens, response_lens = [3, 6], [4, 2]
    _, _, mask, full = position_encoded_micro_batch(prompt_lens, response_lens)

    aligned, _ = engine_then_trainer(prompt_lens, response_lens)
    emitting = response_from_nested(full, mask).to_padded_tensor(padding=float("nan"))

    valid = ~torch.isnan(emitting)
    assert torch.equal(aligned[valid], emitting[valid] + 1.0)


def test_matches_a_per_token_reference_on_random_lengths():
    generator = torch.Generator().manual_seed(0)
    prompt_lens = torch.randint(1, 9, (7,), generator=generator).tolist()
    response_lens = torch.randint(1, 9, (7,), generator=generator).tolist()
    rows = [torch.randn(p + r, generator=generator) for p, r in zip(prompt_lens, response_lens)]
    cu_seqlens = torch.tensor([0, *[len(row) for row in rows]]).cumsum(0)
    mask = jagged([torch.ones(r, dtype=torch.int64) for r in response_lens])

    aligned = response_aligned_focus(response_focus(torch.cat(rows), cu_seqlens, mask), mask)

    for row, (values, p, r) in enumerate(zip(rows, prompt_lens, response_lens)):
        for t in range(r):
            assert aligned[row, t].item() == values[p + t].item()
    assert aligned.dtype == torch.float32


def test_the_cut_depends_on_each_row_alone():
    # the same rows split into other micro-batches, or in another order, give each row the same values
    generator = torch.Generator().manual_seed(1)
    prompt_lens, response_lens = [5, 3, 8, 2, 6], [4, 7, 1, 3, 2]
    rows = [torch.randn(p + r, generator=generator) for p, r in zip(prompt_lens, response_lens)]

    def cut(indices):
        cu_seqlens = torch.tensor([0, *[len(rows[i]) for i in indices]]).cumsum(0)
        mask = jagged([torch.ones(response_lens[i], dtype=torch.int64) for i in indices])
        field = response_focus(torch.cat([rows[i] for i in indices]), cu_seqlens, mask)
        return {i: field[k] for k, i in enumerate(indices)}

    whole = cut(range(5))
    for split in ([[0, 1], [2, 3, 4]], [[4, 2], [0], [3, 1]]):
        for indices in split:
            for i, values in cut(indices).items():
                assert torch.equal(values, whole[i])


def test_nan_rows_stay_nan_and_dtype_becomes_float32():
    focus = jagged([torch.full((2,), float("nan"), dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)])
    mask = jagged([torch.ones(2, dtype=torch.int64), torch.ones(3, dtype=torch.int64)])

    aligned = response_aligned_focus(focus, mask)

    assert aligned.dtype == torch.float32
    assert torch.isnan(aligned[0]).all()
    assert aligned[1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "focus, mask, message",
    [
        (torch.zeros(2, 5), jagged([torch.ones(2)] * 2), "jagged nested tensor"),
        (jagged([torch.zeros(2, 3)] * 2), jagged([torch.ones(2)] * 2), "one scalar per token"),
        (jagged([torch.zeros(2)] * 3), jagged([torch.ones(2)] * 2), "3 rows but response_mask has 2"),
        # a full-sequence field (an older engine) is refused, not silently cut
        (jagged([torch.zeros(5), torch.zeros(6)]), jagged([torch.ones(2), torch.ones(3)]), "row 0 has 5 positions"),
        (jagged([torch.zeros(2), torch.zeros(2)]), jagged([torch.ones(2), torch.ones(3)]), "row 1 has 2 positions"),
    ],
)
def test_layout_errors_name_the_problem(focus, mask, message):
    with pytest.raises(FocusLayoutError, match=message):
        response_aligned_focus(focus, mask)


def test_finite_values_are_copied_exactly():
    values = [math.pi, -0.25, 0.5, 1.0, -1.0]
    mask = jagged([torch.ones(3, dtype=torch.int64)])
    field = response_focus(torch.tensor(values, dtype=torch.float32), torch.tensor([0, 5]), mask)
    assert response_aligned_focus(field, mask)[0].tolist() == torch.tensor(values[2:], dtype=torch.float32).tolist()
