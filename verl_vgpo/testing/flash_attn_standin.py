"""Test support: flash-attn's two kernel functions as exact torch code, for CPU smoke runs of packed sequences.

verl's Qwen2/2.5-VL packed-sequence path (``use_remove_padding=True``) replaces the model's attention with
``verl.models.transformers.qwen2_vl.qwen2_vl_attn_forward``, whose ``_custom_flash_attention_forward`` picks
flash-attn's varlen kernel (several sequences packed in one row) or transformers' ``_flash_attention_forward``
(dense kernel; a one-sequence micro-batch) by its inputs. flash-attn has no CPU build, so on CPU both kernel
names are undefined and that branching code has never run outside a GPU. This module supplies ONLY the two
kernels, ``flash_attn_func`` (dense) and ``flash_attn_varlen_func``, as plain torch softmax attention with
flash-attn's semantics (causal mask aligned bottom-right, grouped-query heads, sliding window, softcap), and
hands them to exactly the places that would import them from flash-attn:

* a ``flash_attn`` module in ``sys.modules`` (no ``bert_padding`` submodule, so verl's and transformers'
  own torch padding helpers stay in use);
* the module globals verl's ``qwen2_vl`` defines when flash-attn 2 is available (``flash_attn_func``,
  ``flash_attn_varlen_func`` and the three feature flags, computed the way verl computes them);
* transformers' lazily loaded flash-attention state (``lazy_import_flash_attention``), as loading a model with
  ``flash_attention_2`` would set it; transformers' ``is_flash_attn_2_available`` stays False, so no model
  picks flash attention by itself (the HF attention implementation stays ``sdpa``).

Everything else (verl's monkey patch, position-id handling, Ulysses all-to-all, unpadding) is verl's and
transformers' own code. It NEVER loads where the real flash-attn is installed: :func:`install` then does
nothing. Importing this module changes nothing; :mod:`verl_vgpo.testing.load_flash_attn_standin` calls
:func:`install`, and a smoke run names that module in verl's ``VERL_USE_EXTERNAL_MODULES`` (verl imports the
named modules in ``import verl``, before its plugins) for the driver and, through
``ray_kwargs.ray_init.runtime_env.env_vars``, for every Ray worker.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import logging
import math
import sys
import types

import torch

logger = logging.getLogger("verl_vgpo")

MODULE_NAME = "flash_attn"
# the version this stand-in reports: the flash-attn 2 API it follows (bottom-right causal alignment: >= 2.1)
STANDIN_VERSION = "2.8.3"
STANDIN_MARK = "verl_vgpo_flash_attn_standin"


def real_flash_attn_installed() -> bool:
    """True when a real flash-attn package can be imported (then the stand-in never loads)."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return not getattr(module, STANDIN_MARK, False)
    return importlib.util.find_spec(MODULE_NAME) is not None


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale, causal: bool,
               window_size: tuple[int, int], softcap: float) -> torch.Tensor:
    """One sequence: q (Sq, Hq, D), k / v (Sk, Hk, D) -> (Sq, Hq, D), flash-attn's semantics."""
    seq_q, heads_q, dim = q.shape
    seq_k, heads_k = k.shape[0], k.shape[1]
    if heads_q % heads_k:
        raise ValueError(f"flash-attn stand-in: {heads_q} query heads are not a multiple of {heads_k} key heads")
    if heads_k != heads_q:  # grouped-query attention: each key head serves heads_q / heads_k query heads
        k = k.repeat_interleave(heads_q // heads_k, dim=1)
        v = v.repeat_interleave(heads_q // heads_k, dim=1)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dim)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap and softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    # query i sits at key position i + (Sk - Sq): flash-attn >= 2.1 aligns the causal mask bottom-right
    query_pos = torch.arange(seq_q, device=q.device).unsqueeze(1) + (seq_k - seq_q)
    key_pos = torch.arange(seq_k, device=q.device).unsqueeze(0)
    allowed = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device)
    left, right = window_size
    if causal:
        right = 0
    if right >= 0:
        allowed &= key_pos <= query_pos + right
    if left >= 0:
        allowed &= key_pos >= query_pos - left
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a query row with no allowed key gives zeros, as flash-attn does
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


def _check_unsupported(dropout_p: float, alibi_slopes, return_attn_probs: bool) -> None:
    if dropout_p:
        raise NotImplementedError("flash-attn stand-in: dropout_p > 0 is not supported (verl trains with 0)")
    if alibi_slopes is not None:
        raise NotImplementedError("flash-attn stand-in: alibi_slopes are not supported")
    if return_attn_probs:
        raise NotImplementedError("flash-attn stand-in: return_attn_probs is not supported")


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's dense kernel: q (B, Sq, Hq, D), k / v (B, Sk, Hk, D) -> (B, Sq, Hq, D)."""
    _check_unsupported(dropout_p, alibi_slopes, return_attn_probs)
    return torch.stack([
        _attention(q[b], k[b], v[b], softmax_scale, causal, tuple(window_size), softcap) for b in range(q.shape[0])
    ])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn's varlen kernel: packed q (total_q, Hq, D), k / v (total_k, Hk, D), each sequence i at
    ``cu_seqlens[i]:cu_seqlens[i+1]``, attending only within itself -> (total_q, Hq, D)."""
    _check_unsupported(dropout_p, alibi_slopes, return_attn_probs)
    if block_table is not None:
        raise NotImplementedError("flash-attn stand-in: paged attention (block_table) is not supported")
    bounds_q = [int(x) for x in cu_seqlens_q.tolist()]
    bounds_k = [int(x) for x in cu_seqlens_k.tolist()]
    if len(bounds_q) != len(bounds_k):
        raise ValueError(f"flash-attn stand-in: cu_seqlens_q has {len(bounds_q)} entries, cu_seqlens_k {len(bounds_k)}")
    out = torch.zeros_like(q)
    for i in range(len(bounds_q) - 1):
        sq, eq, sk, ek = bounds_q[i], bounds_q[i + 1], bounds_k[i], bounds_k[i + 1]
        if eq > sq:
            out[sq:eq] = _attention(q[sq:eq], k[sk:ek], v[sk:ek], softmax_scale, causal, tuple(window_size), softcap)
    return out


def _standin_module() -> types.ModuleType:
    module = types.ModuleType(MODULE_NAME, "verl-vgpo's torch stand-in for flash-attn's kernels (CPU smoke runs)")
    # importlib.util.find_spec (transformers' availability checks) needs a spec on every sys.modules entry; no
    # distribution metadata backs it, so transformers still reports flash-attn 2 as unavailable
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE_NAME, None)
    module.__version__ = STANDIN_VERSION
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.flash_attn_with_kvcache = None
    setattr(module, STANDIN_MARK, True)
    return module


def install() -> bool:
    """Put the stand-in kernels where verl and transformers look for flash-attn's; False (and nothing changed)
    when the real flash-attn is installed. Idempotent."""
    if real_flash_attn_installed():
        logger.info("verl-vgpo: flash-attn is installed; its torch stand-in is not loaded")
        return False
    # verl's module (and transformers' flash-attention utilities) imported before the stand-in is visible
    import verl.models.transformers.qwen2_vl as qwen2_vl
    from transformers import modeling_flash_attention_utils as fa_utils

    module = sys.modules.setdefault(MODULE_NAME, _standin_module())

    # verl's Qwen2/2.5-VL patch: the names its "if is_flash_attn_2_available():" block would define

    qwen2_vl.flash_attn_func = module.flash_attn_func
    qwen2_vl.flash_attn_varlen_func = module.flash_attn_varlen_func
    qwen2_vl._flash_supports_window_size = "window_size" in inspect.signature(module.flash_attn_func).parameters
    qwen2_vl._flash_supports_deterministic = "deterministic" in inspect.signature(module.flash_attn_func).parameters
    qwen2_vl._flash_use_top_left_mask = False  # flash-attn >= 2.1: bottom-right alignment, as the kernels above

    # transformers' dense path (verl calls _flash_attention_forward without an implementation name): the state
    # lazy_import_flash_attention("flash_attention_2") leaves behind when flash-attn 2 is installed
    fa_utils._loaded_implementation = "flash_attention_2"
    fa_utils._flash_fn = module.flash_attn_func
    fa_utils._flash_varlen_fn = module.flash_attn_varlen_func
    fa_utils._flash_with_kvcache_fn = None
    fa_utils._pad_fn = fa_utils._pad_input
    fa_utils._unpad_fn = fa_utils._unpad_input
    fa_utils._process_flash_kwargs_fn = fa_utils._lazy_define_process_function(module.flash_attn_varlen_func)
    logger.info("verl-vgpo: flash-attn's kernels replaced by their torch stand-in (CPU smoke run)")
    return True
