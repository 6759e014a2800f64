"""Turn (prompt, response) pairs into token ids with roles, LM targets and classifier probes.

Training layout of one row (probes first, so the LM logits are one contiguous tail slice):

    [probe ... probe] [CLS] [template + query tokens] [prefill + response + EOS] [pad ...]

Probe windows are indices into this row; see `safety_signal.masks` for the attention rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from safety_signal.config import SafetyConfig
from safety_signal.masks import Role, build_position_ids
from safety_signal.model import cls_token_id
from safety_signal.refusal import GUIDE_SEPARATOR

IGNORE_INDEX = -100


@dataclass
class ProbeConfig:
    """How many extra `[CLS]` probes are trained and how they are labelled.

    Their windows are those of strategic attention at inference: R1 (query + first `r1`
    response tokens) and sliding R2 windows of `r2` tokens, both from `SafetyConfig`.
    """

    stride: int = 5  # a window ends every `stride` response tokens
    max_probes: int = 16  # per sequence; windows are thinned evenly beyond this
    harmful_fraction: float = 0.5  # a window is labelled malicious when this share of it is harmful text


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    roles: list[int]


@dataclass
class EncodedExample:
    input_ids: list[int]
    roles: list[int]
    lm_targets: list[int]
    label: int
    # (window_query, start, end, label) per probe, indices into input_ids (before probes are prepended)
    probes: list[tuple[bool, int, int, int]] = field(default_factory=list)
    classify_only: bool = False  # no response, no LM target: trained through [CLS] and R1 only


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool) -> tuple[str, int, int]:
    """The prompt as the model sees it, and the character span of the user's text inside it."""
    if chat_template and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = (tokenizer.bos_token or "") + prompt + "\n"
    start = text.rfind(prompt)
    if start < 0:  # a template that rewrites the content; tag every token as query rather than fail
        return text, 0, len(text)
    return text, start, start + len(prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool = True) -> EncodedPrompt:
    """`[CLS]` + the formatted prompt, with each token's role (query vs template markup)."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; offsets are needed to find query tokens")
    text, q_start, q_end = format_prompt(tokenizer, prompt, chat_template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    roles = [int(Role.QUERY) if s < q_end and e > q_start else int(Role.TEMPLATE) for s, e in enc["offset_mapping"]]
    return EncodedPrompt([cls_token_id(tokenizer)] + list(enc["input_ids"]), [int(Role.CLS)] + roles)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    label: int,
    safety: SafetyConfig,
    probe_config: ProbeConfig,
    prefill: str = "",
    prefill_harmful: bool = False,
    max_length: int = 256,
    classify_only: bool = False,
    train_guide: bool = True,
) -> EncodedExample | None:
    """Encode one training example; `None` if the prompt alone does not fit in `max_length`.

    The LM is trained on `response` (+ EOS) only; `prefill` is context and never a target.
    Probe labels: R1 (query + first r1 tokens) carries the request label; a sliding window is
    malicious when at least `harmful_fraction` of it is harmful prefill text.

    `classify_only`: a labelled prompt without a response (`response` must be empty). The row is
    `[CLS] + prompt` with no LM target, trained only through `[CLS]` and the R1 probe (which, with
    no response tokens, reads the query as `[CLS]` does), so it costs a short forward and adds
    nothing to the LM loss. With a `prefill` (an answer the LM must never learn to write), the row
    is `[CLS] + prompt + prefill`, still with no LM target, and also trains the response-window
    probes on it, labelled as above.

    `train_guide=False`: a response that opens with the guide (`safety.guide`, after an optional
    `GUIDE_SEPARATOR`) keeps the guide as context, tokenized as strategic decoding inserts it, and
    only the reason after it is an LM target. The LM then never learns to open a refusal by itself
    (a 135M LM learns it as "refuse often", benign prompts included); refusing is the classifier's
    call, and the LM learns to explain the refusal the gate starts.
    """
    head = encode_prompt(tokenizer, prompt, safety.chat_template)
    if classify_only and response:
        raise ValueError("a classification-only example has no response")
    if classify_only and not prefill:
        if len(head.input_ids) > max_length:
            return None
        q0 = len(head.input_ids)
        return EncodedExample(
            head.input_ids, head.roles, [IGNORE_INDEX] * q0, label, [(True, q0, q0, label)], classify_only=True
        )
    prefill_ids = tokenizer(prefill, add_special_tokens=False)["input_ids"] if prefill else []
    guide, reason = "", response
    if not train_guide:
        for opening in (safety.guide, GUIDE_SEPARATOR + safety.guide):
            if response.startswith(opening):
                guide, reason = opening, response[len(opening):]
    guide_ids = tokenizer(guide, add_special_tokens=False)["input_ids"] if guide else []
    response_ids = [] if classify_only else tokenizer(reason, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(head.input_ids)
    if room < 1:
        return None
    prefill_ids = prefill_ids[:room]
    guide_ids = guide_ids[: room - len(prefill_ids)]
    response_ids = response_ids[: room - len(prefill_ids) - len(guide_ids)]

    input_ids = head.input_ids + prefill_ids + guide_ids + response_ids
    roles = head.roles + [int(Role.RESPONSE)] * (len(prefill_ids) + len(guide_ids) + len(response_ids))
    lm_targets = [IGNORE_INDEX] * (len(head.input_ids) + len(prefill_ids) + len(guide_ids)) + response_ids
    harmful = [False] * len(head.input_ids) + [prefill_harmful] * len(prefill_ids) + [False] * (len(guide_ids) + len(response_ids))

    q0, end = len(head.input_ids), len(input_ids)
    cfg = probe_config
    r1_probe = (True, q0, min(q0 + safety.r1, end), label)
    windows = []
    for stop in range(q0 + cfg.stride, end + cfg.stride, cfg.stride):
        stop = min(stop, end)
        start = max(q0, stop - safety.r2)
        share = sum(harmful[start:stop]) / (stop - start)
        windows.append((False, start, stop, int(share >= cfg.harmful_fraction)))
        if stop == end:
            break
    windows = _thin(windows, cfg.max_probes - 1)
    return EncodedExample(input_ids, roles, lm_targets, label, [r1_probe] + windows, classify_only=classify_only)


def _thin(windows: list, keep: int) -> list:
    """Keep every malicious window and spread the rest evenly (deterministic)."""
    if len(windows) <= keep:
        return windows
    positive = [w for w in windows if w[3] == 1][:keep]
    negative = [w for w in windows if w[3] == 0]
    slots = keep - len(positive)
    if slots > 0 and negative:
        step = len(negative) / slots
        negative = [negative[int(i * step)] for i in range(min(slots, len(negative)))]
    else:
        negative = []
    return sorted(positive + negative, key=lambda w: w[2])


def length_order(examples: Sequence[EncodedExample]) -> list[int]:
    """Indices of `examples`, shortest first: evaluation batches cut from this order pad to rows of similar length
    (a wrapped prompt can be 20x a chat one), and each row's result is its own, not its padding's."""
    return sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))


def collate_examples(
    examples: list[EncodedExample], pad_token_id: int, cls_id: int, phase: str = "sft"
) -> dict[str, torch.Tensor]:
    """Batch examples into the training layout (probes first, right padding).

    Returns `input_ids`, `roles`, `position_ids`, `lm_targets`, the windows of classifier tokens
    (`window_query`, `window_start`, `window_end`) and `cls_labels` (-1 for non-classifier tokens).
    """
    n_probes = max(len(e.probes) for e in examples)
    length = n_probes + max(len(e.input_ids) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    roles = torch.full((batch, length), int(Role.PAD), dtype=torch.long)
    lm_targets = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    window_query = torch.zeros((batch, length), dtype=torch.bool)
    window_start = torch.zeros((batch, length), dtype=torch.long)
    window_end = torch.zeros((batch, length), dtype=torch.long)
    cls_labels = torch.full((batch, length), -1.0)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, n_probes : n_probes + n] = torch.tensor(ex.input_ids)
        roles[row, n_probes : n_probes + n] = torch.tensor(ex.roles)
        lm_targets[row, n_probes : n_probes + n] = torch.tensor(ex.lm_targets)
        # main [CLS] at the head of the real block: the query (sft) or every text token (pretrain)
        window_query[row, n_probes] = True
        if phase == "pretrain":
            window_start[row, n_probes], window_end[row, n_probes] = n_probes, n_probes + n
        cls_labels[row, n_probes] = ex.label
        for slot, (w_query, start, end, label) in enumerate(ex.probes):
            input_ids[row, slot] = cls_id
            roles[row, slot] = int(Role.PROBE)
            window_query[row, slot] = w_query
            window_start[row, slot], window_end[row, slot] = start + n_probes, end + n_probes
            cls_labels[row, slot] = label
    return {
        "input_ids": input_ids,
        "roles": roles,
        "position_ids": build_position_ids(roles),
        "lm_targets": lm_targets,
        "window_query": window_query,
        "window_start": window_start,
        "window_end": window_end,
        "cls_labels": cls_labels,
        "num_probe_slots": n_probes,
        "classify_only": all(e.classify_only for e in examples),
    }


def left_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """`[B, max_len]` long tensor of `rows`, padded on the left with `value` (decoding layout)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
    return out
