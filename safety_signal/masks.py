"""Attention masks for the explicit safety signal.

Every token carries a role. Real tokens (template, query, response) attend causally to real
tokens, exactly as in the unmodified model. Classifier tokens (`[CLS]` and probes) sit at
position 0 and attend themselves plus a *window* of text tokens:

    window = (query tokens if `window_query`) + (text tokens with index in [window_start, window_end))

Template tokens (BOS, system prompt, chat markup) and padding are never in a window (rule R4).
Nothing attends a probe; in the SFT phase response tokens also attend `[CLS]`.

The same function builds the full training mask (queries = keys = the whole sequence) and the
incremental masks used against a KV cache during generation (queries = the new tokens).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

import torch

Phase = Literal["pretrain", "sft"]


class Role(IntEnum):
    PAD = 0
    TEMPLATE = 1  # BOS, system prompt, chat-template markup
    QUERY = 2  # the user's request text
    RESPONSE = 3  # assistant text (prefill, response, EOS, generated tokens)
    CLS = 4  # the [CLS] token: attended by response tokens in the SFT phase
    PROBE = 5  # a [CLS] copy attended by nothing


def build_attention_mask(
    query_roles: torch.Tensor,
    key_roles: torch.Tensor,
    query_index: torch.Tensor,
    window_query: torch.Tensor,
    window_start: torch.Tensor,
    window_end: torch.Tensor,
    phase: Phase,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive 4D mask `[B, 1, Q, K]`: 0 where attention is allowed, `finfo(dtype).min` elsewhere.

    Args:
        query_roles: `[B, Q]` roles of the tokens being computed.
        key_roles: `[B, K]` roles of every key (cache + new tokens).
        query_index: `[B, Q]` key-column of each query token (for causality and self-attention).
        window_query, window_start, window_end: `[B, Q]` window of each classifier token
            (ignored for other roles).
    """
    allowed = _allowed(query_roles, key_roles, query_index, window_query, window_start, window_end, phase)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _allowed(query_roles, key_roles, query_index, window_query, window_start, window_end, phase: Phase) -> torch.Tensor:
    q_role = query_roles[:, :, None]
    k_role = key_roles[:, None, :]
    k_idx = torch.arange(key_roles.shape[1], device=key_roles.device)[None, None, :]
    q_idx = query_index[:, :, None]

    q_real = (q_role >= Role.TEMPLATE) & (q_role <= Role.RESPONSE)
    k_real = (k_role >= Role.TEMPLATE) & (k_role <= Role.RESPONSE)
    k_text = (k_role == Role.QUERY) | (k_role == Role.RESPONSE)
    q_classifier = (q_role == Role.CLS) | (q_role == Role.PROBE)

    allowed = q_real & k_real & (k_idx <= q_idx)
    if phase == "sft":
        allowed |= (q_role == Role.RESPONSE) & (k_role == Role.CLS) & (k_idx <= q_idx)
    in_window = (window_query[:, :, None] & (k_role == Role.QUERY)) | (
        (k_idx >= window_start[:, :, None]) & (k_idx < window_end[:, :, None])
    )
    allowed |= q_classifier & k_text & in_window
    # Every row attends itself: classifier tokens read their own embedding, and padding rows
    # stay finite instead of averaging over nothing.
    allowed |= k_idx == q_idx
    return allowed


def build_training_mask(
    roles: torch.Tensor,
    window_query: torch.Tensor,
    window_start: torch.Tensor,
    window_end: torch.Tensor,
    phase: Phase,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Full-sequence mask for a training batch (`roles` is `[B, T]`)."""
    index = torch.arange(roles.shape[1], device=roles.device).expand_as(roles)
    return build_attention_mask(roles, roles, index, window_query, window_start, window_end, phase, dtype)


def build_sft_mask(roles, window_query, window_start, window_end, dtype=torch.float32) -> torch.Tensor:
    return build_training_mask(roles, window_query, window_start, window_end, "sft", dtype)


def build_pretrain_mask(roles, window_query, window_start, window_end, dtype=torch.float32) -> torch.Tensor:
    return build_training_mask(roles, window_query, window_start, window_end, "pretrain", dtype)


def build_position_ids(roles: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier tokens and padding at position 0; real tokens count 1, 2, ... in order.

    `offset` (`[B]`) continues the count after tokens already in a KV cache.
    """
    real = (roles >= Role.TEMPLATE) & (roles <= Role.RESPONSE)
    positions = torch.cumsum(real.long(), dim=1)
    if offset is not None:
        positions = positions + offset[:, None]
    return torch.where(real, positions, torch.zeros_like(positions))


# ---------------------------------------------------------------------- per-layer-type masks
# Transformers models with sliding-window layers build one mask per layer type themselves
# (`{"full_attention": ..., "sliding_attention": ...}`); a single 4D tensor passed in is used
# as-is by *every* layer, so a sliding layer would read past its window. These functions derive
# the mask of each layer type from the project's full mask.
#
# HF's rule (masking_utils.sliding_window_overlay): query `q` reads key `k` iff
# `q - sliding_window < k <= q`, i.e. itself and the `sliding_window - 1` keys before it. Ours,
# for every row: itself plus the `sliding_window - 1` *latest* keys its full-mask row allows.
# For a real token those are exactly HF's keys (real tokens are contiguous: the keys with
# position > position - sliding_window); `[CLS]` (position 0) stays visible to a response token
# while that token's position is below the window, as a token at position 0 would. A classifier
# row (`[CLS]`, probe) reads the latest `sliding_window - 1` keys of its window: the same keys
# whether the probe sits before its window (training layout) or after it (reading the KV cache).


def sliding_window_mask(mask: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """The mask of a sliding-window layer, from a full mask `[B, 1|H, Q, K]`.

    `mask` is additive (0 allowed, any negative value blocked) or boolean (True allowed). The
    queries are the last `Q` key columns (a forward against a cache of `K - Q` entries), as in HF.
    `sliding_window=None` returns `mask` unchanged.
    """
    if sliding_window is None:
        return mask
    if sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    allowed = mask if mask.dtype == torch.bool else mask == 0
    q_len, k_len = mask.shape[-2], mask.shape[-1]
    self_col = torch.arange(k_len - q_len, k_len, device=mask.device)[:, None] == torch.arange(k_len, device=mask.device)
    others = allowed & ~self_col
    # keys counted from the right: 1 = the latest allowed key other than the row itself
    from_right = others.flip(-1).int().cumsum(-1).flip(-1)
    keep = (others & (from_right < sliding_window)) | (allowed & self_col)
    if mask.dtype == torch.bool:
        return keep
    return mask.masked_fill(~keep, torch.finfo(mask.dtype).min)


def layer_type_masks(mask: torch.Tensor, windows: dict[str, int | None]) -> dict[str, torch.Tensor]:
    """`{layer_type: mask}` for a model that takes one mask per layer type.

    `windows` maps each layer type to its sliding window (None: full attention); equal windows
    share one tensor.
    """
    by_window: dict[int | None, torch.Tensor] = {}
    out = {}
    for layer_type, window in windows.items():
        if window not in by_window:
            by_window[window] = sliding_window_mask(mask, window)
        out[layer_type] = by_window[window]
    return out
