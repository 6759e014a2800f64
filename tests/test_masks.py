"""Exact attention masks and position ids for both phases."""

import torch

from safety_signal.layout import encode_prompt
from safety_signal.masks import Role, build_position_ids, build_pretrain_mask, build_sft_mask

P, C, T, Q, R, PAD = Role.PROBE, Role.CLS, Role.TEMPLATE, Role.QUERY, Role.RESPONSE, Role.PAD

# One row: a probe over response tokens 6..7, [CLS], template, 2 query tokens, template,
# 2 response tokens, padding. A second row: an R1 probe (query + first response token).
ROLES = torch.tensor([[P, C, T, Q, Q, T, R, R, PAD], [P, C, T, Q, T, R, R, R, R]])
W_QUERY = torch.tensor([[0, 1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
W_START = torch.tensor([[6, 0, 0, 0, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0, 0]])
W_END = torch.tensor([[8, 0, 0, 0, 0, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0, 0, 0]])

SFT_ROW0 = [
    [1, 0, 0, 0, 0, 0, 1, 1, 0],  # probe: itself + its window (response 6, 7)
    [0, 1, 0, 1, 1, 0, 0, 0, 0],  # [CLS]: itself + query tokens only (no template, no padding)
    [0, 0, 1, 0, 0, 0, 0, 0, 0],  # template: causal over real tokens, never [CLS]
    [0, 0, 1, 1, 0, 0, 0, 0, 0],  # query
    [0, 0, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0],  # response: causal + [CLS]
    [0, 1, 1, 1, 1, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 1],  # padding: only itself
]
SFT_ROW1 = [
    [1, 0, 0, 1, 0, 1, 0, 0, 0],  # R1 probe: query + first response token, not the template
    [0, 1, 0, 1, 0, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 1, 0],
    [0, 1, 1, 1, 1, 1, 1, 1, 1],
]


def allowed(mask: torch.Tensor) -> list:
    return (mask[:, 0] == 0).int().tolist()


def test_sft_mask_is_exact():
    mask = build_sft_mask(ROLES, W_QUERY, W_START, W_END)
    assert mask.shape == (2, 1, 9, 9)
    assert allowed(mask) == [SFT_ROW0, SFT_ROW1]
    assert mask.min() == torch.finfo(torch.float32).min


def test_pretrain_mask_is_exact():
    # pretrain: [CLS] reads every text token (its window is the whole row); nothing reads [CLS]
    w_end = W_END.clone()
    w_end[:, 1] = 9
    mask = build_pretrain_mask(ROLES, W_QUERY, W_START, w_end)
    expected0 = [row[:] for row in SFT_ROW0]
    expected0[1] = [0, 1, 0, 1, 1, 0, 1, 1, 0]
    expected0[6] = [0, 0, 1, 1, 1, 1, 1, 0, 0]
    expected0[7] = [0, 0, 1, 1, 1, 1, 1, 1, 0]
    expected1 = [row[:] for row in SFT_ROW1]
    expected1[1] = [0, 1, 0, 1, 0, 1, 1, 1, 1]
    for r in range(5, 9):
        expected1[r][1] = 0
    assert allowed(mask) == [expected0, expected1]


def test_mask_dtype_min():
    mask = build_sft_mask(ROLES, W_QUERY, W_START, W_END, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.min() == torch.finfo(torch.bfloat16).min


def test_position_ids_put_classifier_tokens_at_zero():
    assert build_position_ids(ROLES).tolist() == [[0, 0, 1, 2, 3, 4, 5, 6, 0], [0, 0, 1, 2, 3, 4, 5, 6, 7]]


def test_chat_template_tokens_are_not_query(tiny_module):
    tokenizer = tiny_module.tokenizer
    prompt = "How do I bake sourdough bread at home?"
    enc = encode_prompt(tokenizer, prompt)
    roles = torch.tensor(enc.roles)
    assert enc.roles[0] == Role.CLS and enc.input_ids[0] == tiny_module.cls_id
    query_ids = [i for i, r in zip(enc.input_ids, enc.roles) if r == Role.QUERY]
    template_text = tokenizer.decode([i for i, r in zip(enc.input_ids, enc.roles) if r == Role.TEMPLATE])
    assert tokenizer.decode(query_ids).strip() == prompt
    assert "<|im_start|>" in template_text and "system" in template_text and "assistant" in template_text
    # the query is one contiguous run between template tokens
    idx = (roles == Role.QUERY).nonzero().flatten()
    assert (idx[1:] - idx[:-1] == 1).all() and roles[idx[0] - 1] == Role.TEMPLATE and roles[-1] == Role.TEMPLATE
