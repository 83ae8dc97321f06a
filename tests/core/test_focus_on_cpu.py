"""visual_focus_scores: per-sequence prototypes in the packed layout, float32, NaN without visual tokens."""

import pytest
import torch
import torch.nn.functional as F

from verl_vgpo import focus
from verl_vgpo.focus import visual_focus_scores

IMAGE, VIDEO = 151655, 151656


def per_token_reference(hidden, input_ids, cu_seqlens, visual_ids):
    out = torch.full((hidden.shape[0],), float("nan"))
    for s in range(len(cu_seqlens) - 1):
        lo, hi = int(cu_seqlens[s]), int(cu_seqlens[s + 1])
        rows = [p for p in range(lo, hi) if int(input_ids[p]) in visual_ids]
        if not rows:
            continue
        proto = hidden[rows].double().mean(0)
        for p in range(lo, hi):
            out[p] = F.cosine_similarity(hidden[p].double(), proto, dim=0).item()
    return out


def packed(seed=0, H=16):
    g = torch.Generator().manual_seed(seed)
    # seq 0: two images; seq 1: text only; seq 2: video only; seq 3: image + video
    seqs = [
        [1, IMAGE, IMAGE, 2, 3, IMAGE, IMAGE, IMAGE, 4, 5, 6],
        [7, 8, 9, 10],
        [11, VIDEO, VIDEO, VIDEO, 12, 13],
        [IMAGE, 14, VIDEO, VIDEO, 15],
    ]
    ids = torch.tensor([t for s in seqs for t in s])
    cu = torch.tensor([0] + torch.tensor([len(s) for s in seqs]).cumsum(0).tolist())
    hidden = torch.randn(ids.numel(), H, generator=g)
    return hidden, ids, cu


def test_matches_per_token_reference_images_videos_text_only():
    hidden, ids, cu = packed()
    ours = visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO])
    ref = per_token_reference(hidden, ids, cu, {IMAGE, VIDEO})
    torch.testing.assert_close(ours, ref.float(), equal_nan=True, atol=1e-6, rtol=0)
    assert ours.dtype == torch.float32
    assert torch.isnan(ours[int(cu[1]) : int(cu[2])]).all()  # text-only sequence
    assert torch.isfinite(ours[int(cu[2]) : int(cu[3])]).all()  # video-only has a prototype


def test_image_only_visual_tokens_make_video_only_sequence_nan():
    hidden, ids, cu = packed()
    ours = visual_focus_scores(hidden, ids, cu, [IMAGE])
    torch.testing.assert_close(ours, per_token_reference(hidden, ids, cu, {IMAGE}).float(), equal_nan=True, atol=1e-6, rtol=0)
    assert torch.isnan(ours[int(cu[2]) : int(cu[3])]).all()


def test_bf16_hidden_state_is_scored_in_float32():
    hidden, ids, cu = packed()
    ours = visual_focus_scores(hidden.bfloat16(), ids, cu, [IMAGE, VIDEO])
    ref = per_token_reference(hidden.bfloat16().float(), ids, cu, {IMAGE, VIDEO})
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref.float(), equal_nan=True, atol=1e-5, rtol=0)


def test_padding_suffix_is_nan_and_sequences_do_not_leak():
    hidden, ids, cu = packed()
    pad = 5
    hidden_p = torch.cat([hidden, torch.randn(pad, hidden.shape[1])])
    ids_p = torch.cat([ids, torch.full((pad,), IMAGE)])  # visual-looking padding must not join any prototype
    ours = visual_focus_scores(hidden_p, ids_p, cu, [IMAGE, VIDEO])
    torch.testing.assert_close(ours[: hidden.shape[0]], visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO]), equal_nan=True)
    assert torch.isnan(ours[-pad:]).all()


def test_chunking_does_not_change_results(monkeypatch):
    hidden, ids, cu = packed(H=8)
    whole = visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO])
    monkeypatch.setattr(focus, "_CHUNK_ELEMENTS", 8 * 3)  # 3 rows per prototype chunk
    monkeypatch.setattr(focus, "_CHUNK_ROWS", 4)  # chunks that straddle sequence boundaries
    torch.testing.assert_close(visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO]), whole, equal_nan=True)


def test_per_sequence_result_independent_of_neighbours():
    hidden, ids, cu = packed()
    together = visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO])
    lo, hi = int(cu[3]), int(cu[4])
    alone = visual_focus_scores(hidden[lo:hi], ids[lo:hi], torch.tensor([0, hi - lo]), [IMAGE, VIDEO])
    torch.testing.assert_close(alone, together[lo:hi])


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(4, 2, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 4]), [IMAGE]), "total_tokens, H"),
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 9]), [IMAGE]), "cu_seqlens ends at 9"),
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 4]), []), "visual_token_ids is empty"),
    ],
)
def test_bad_input_is_explained(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        visual_focus_scores(*args)


def test_building_blocks_without_offsets_match(monkeypatch):
    # the engine's sequence-parallel path scores a shard from seq_ids alone
    hidden, ids, cu = packed()
    monkeypatch.setattr(focus, "_CHUNK_ROWS", 5)
    seq_ids = focus.sequence_ids(cu, hidden.shape[0])
    sums, counts = focus.visual_prototype_sums(hidden, ids, seq_ids, len(cu) - 1, [IMAGE, VIDEO])
    scores = focus.cosine_to_prototypes(hidden, seq_ids, focus.prototypes_from_sums(sums, counts))
    torch.testing.assert_close(scores, visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO]), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scores_stay_float32_under_autocast(dtype):
    # verl's engine runs the forward, hence the final-norm hook, under torch.autocast(param_dtype)
    g = torch.Generator().manual_seed(3)
    hidden, ids, cu = packed(H=64)
    hidden = (hidden + 40 * torch.randn(1, 64, generator=g)) * 8  # shared direction, |h|*|v| > fp16 max
    exact = visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO])
    with torch.autocast(device_type="cpu", dtype=dtype):
        under_autocast = visual_focus_scores(hidden, ids, cu, [IMAGE, VIDEO])
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact, equal_nan=True, atol=1e-6, rtol=0)
