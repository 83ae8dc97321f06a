"""The flash-attn stand-in of CPU smoke runs: flash-attn's kernel semantics in torch, and never where flash-attn is."""

import importlib.machinery
import sys

import pytest
import torch
import torch.nn.functional as F

from verl_vgpo.testing import flash_attn_standin as standin


def _sdpa(q, k, v, causal):
    """(S, H, D) reference through torch's SDPA, key heads repeated for grouped-query attention."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                          is_causal=causal).transpose(0, 1)


def test_varlen_kernel_attends_within_each_packed_sequence():
    torch.manual_seed(0)
    q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
    bounds = [0, 3, 4, 12]
    cu = torch.tensor(bounds, dtype=torch.int32)
    out = standin.flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, causal=True)
    expected = torch.cat([_sdpa(q[a:b], k[a:b], v[a:b], True) for a, b in zip(bounds, bounds[1:])])
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-6)
    # one packed sequence attending across the boundary would differ
    assert (standin.flash_attn_varlen_func(q, k, v, torch.tensor([0, 12]), torch.tensor([0, 12]), 12, 12,
                                           causal=True) - expected).abs().max() > 1e-2


def test_dense_kernel_is_causal_attention_aligned_bottom_right():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 4, 8), torch.randn(2, 5, 4, 8)
    out = standin.flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(out, torch.stack([_sdpa(q[b], k[b], v[b], True) for b in range(2)]), rtol=0, atol=2e-6)
    # 2 queries over 5 keys: the last query sees every key, the first all but the last (flash-attn >= 2.1)
    short = standin.flash_attn_func(q[:, 3:], k, v, causal=True)
    torch.testing.assert_close(short[0, 1], _sdpa(q[0, 4:5], k[0], v[0], False)[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(short[0, 0], _sdpa(q[0, 3:4], k[0, :4], v[0, :4], False)[0], rtol=0, atol=2e-6)
    # a window of one key to the left: each query sees itself and its predecessor only
    windowed = standin.flash_attn_func(q, k, v, causal=True, window_size=(1, 0))
    torch.testing.assert_close(windowed[0, 3], _sdpa(q[0, 3:4], k[0, 2:4], v[0, 2:4], False)[0], rtol=0, atol=2e-6)
    assert standin.flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True).dtype == torch.bfloat16
    with pytest.raises(NotImplementedError, match="dropout"):
        standin.flash_attn_func(q, k, v, dropout_p=0.1)


def test_install_does_nothing_where_flash_attn_is_installed(monkeypatch):
    spec = importlib.machinery.ModuleSpec("flash_attn", None)
    monkeypatch.setattr(standin.importlib.util, "find_spec", lambda name, *a: spec if name == "flash_attn" else None)
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert standin.real_flash_attn_installed()
    assert standin.install() is False
    assert "flash_attn" not in sys.modules
