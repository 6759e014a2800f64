"""Answer attack cases with a model: safety-gated generation (the method) or plain HF `generate` (baselines).

Both responders batch cases of one group (same attack, same decoding overrides) and give every
case `max_new_tokens` tokens *after* its prefill, so a prefill-40 case is not cut short; the
gated answer is then cut to the same `prefill + max_new_tokens` tokens as the plain one, except
that a guide the gate started within that length is kept whole (the judge sees the refusal; the
tokens before it are counted by the leak measure).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.decoding import Answer, DecodingConfig, SafetyGatedGenerator
from safety_signal.gate import GatePolicy
from safety_signal.layout import format_prompt, left_pad
from safety_signal.model import eos_token_ids

GroupKey = tuple[str, tuple[tuple[str, Any], ...]]


class Case(Protocol):
    """What a responder answers (`evaluation.attacks.Case` is one): a prompt, an optional
    prefill forced at the start of the response, and decoding overrides shared by its group."""

    attack: str
    prompt: str
    prefill: str
    decoding: tuple[tuple[str, Any], ...]

    @property
    def decoding_overrides(self) -> dict[str, Any]: ...


def group_key(case: Case) -> GroupKey:
    return case.attack, case.decoding


def grouped(cases: Sequence[Case]) -> dict[GroupKey, list[int]]:
    """Case indices per group, groups in order of first appearance."""
    groups: dict[GroupKey, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(group_key(case), []).append(i)
    return groups


def prefill_token_counts(tokenizer: Any, cases: Sequence[Case]) -> list[int]:
    """Tokens of each prefill, tokenized on its own as the generator does."""
    return [len(tokenizer(c.prefill, add_special_tokens=False)["input_ids"]) if c.prefill else 0 for c in cases]


def prefill_budgets(tokenizer: Any, cases: Sequence[Case]) -> dict[GroupKey, int]:
    """Longest prefill per group: with it every batch of a group runs the same number of steps."""
    budgets: dict[GroupKey, int] = {}
    for case, count in zip(cases, prefill_token_counts(tokenizer, cases)):
        key = group_key(case)
        budgets[key] = max(budgets.get(key, 0), count)
    return budgets


def _batches(cases: Sequence[Case], batch_size: int) -> Iterator[list[int]]:
    for indices in grouped(cases).values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


class GatedResponder:
    """The method: `SafetyGatedGenerator` with `gate` and `decoding`; an attack's decoding overrides
    (the decoding grid) apply per case group.

    `lockstep`: every batch runs exactly `max_new_tokens + prefill budget` decode steps (EOS does
    not stop a row; each answer is cut after its first EOS afterwards, which gives the answer an
    early stop gives, since rows never see each other). Sharded strategies need it: every rank
    must run the same forwards. It does not hold for `level: high` batches that are refused whole.
    """

    def __init__(
        self, module: SafetySignalLM, gate: GatePolicy, decoding: DecodingConfig, batch_size: int = 16,
        lockstep: bool = False, progress: bool = False, description: str = "gated",
    ) -> None:
        self.module = module
        self.gate = gate
        self.decoding = decoding
        self.batch_size = batch_size
        self.lockstep = lockstep
        self.progress = progress
        self.description = description

    def respond(self, cases: Sequence[Case], budgets: dict[GroupKey, int] | None = None) -> list[Answer]:
        tokenizer = self.module.tokenizer
        prefill_counts = prefill_token_counts(tokenizer, cases)
        guide_len = len(tokenizer(self.module.safety.guide, add_special_tokens=False)["input_ids"])  # as the generator
        responses: list[Answer | None] = [None] * len(cases)
        batches = list(_batches(cases, self.batch_size))
        for batch in tqdm(batches, desc=self.description, disable=not self.progress, leave=False):
            key = group_key(cases[batch[0]])
            budget = budgets[key] if budgets is not None else max(prefill_counts[i] for i in batch)
            # Room for a guide queued near the end, so a late intervention is written out whole.
            decoding = replace(self.decoding, **cases[batch[0]].decoding_overrides,
                               max_new_tokens=self.decoding.max_new_tokens + budget + guide_len)
            generator = SafetyGatedGenerator(self.module, self.gate, decoding)
            eos_ids = list(generator.eos_ids)
            if self.lockstep:
                generator.eos_ids = []
            outputs = generator.generate([cases[i].prompt for i in batch], [cases[i].prefill for i in batch])
            for i, out in zip(batch, outputs):
                if self.lockstep:
                    out = _cut_at_eos(out, eos_ids, tokenizer)
                responses[i] = self._cut_to_budget(out, prefill_counts[i], guide_len)
        return responses  # type: ignore[return-value]

    def _cut_to_budget(self, out: Answer, num_prefill: int, guide_len: int) -> Answer:
        tokenizer = self.module.tokenizer
        # As long as a plain answer (the prefill plus max_new_tokens), plus the rest of a guide the
        # gate started inside that length (it follows any prefill still being forced).
        keep = num_prefill + self.decoding.max_new_tokens
        if out.intervention_step is not None and out.finish_reason != "refusal" and out.intervention_step < keep:
            keep = max(keep, max(out.intervention_step, num_prefill) + guide_len)
        ids = out.token_ids[:keep]
        return replace(
            out,
            token_ids=ids,
            continuation=tokenizer.decode(ids[num_prefill:], skip_special_tokens=True),
            text=tokenizer.decode(ids, skip_special_tokens=True),
            num_prefill_tokens=num_prefill,
        )


def _cut_at_eos(out: Answer, eos_ids: list[int], tokenizer: Any) -> Answer:
    """The output an early-stopping run gives: tokens through the first EOS, verdicts up to that step."""
    if out.finish_reason == "refusal":
        return out
    eos_step = next((step for step, token in enumerate(out.token_ids) if token in eos_ids), None)
    if eos_step is None:
        return out
    token_ids = out.token_ids[: eos_step + 1]
    # A verdict at step t is taken before y_t is emitted: the row was still running for t <= eos_step.
    kept = [i for i, step in enumerate(out.verdict_steps) if step <= eos_step]
    intervention = out.intervention_step if out.intervention_step is not None and out.intervention_step <= eos_step else None
    return replace(
        out,
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        continuation=tokenizer.decode(token_ids[out.num_prefill_tokens :], skip_special_tokens=True),
        token_ids=token_ids,
        verdict_steps=[out.verdict_steps[i] for i in kept],
        verdict_probs=[out.verdict_probs[i] for i in kept],
        intervention_step=intervention,
        num_probe_evaluations=len(kept) - 1,
        finish_reason="eos",
    )


class PlainResponder:
    """A baseline: the module's HF model with `generate`, no `[CLS]` anywhere (it is also suppressed).

    The prompt is chat-formatted as in training; a prefill is appended to the prompt tokens, so the
    model continues it. Sampling settings seed torch's global RNG per batch.
    """

    def __init__(
        self, module: SafetySignalLM, max_new_tokens: int = 32, batch_size: int = 16, progress: bool = False,
        description: str = "plain",
    ) -> None:
        self.module = module
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.description = description

    @torch.inference_mode()
    def respond(self, cases: Sequence[Case], budgets: dict[GroupKey, int] | None = None) -> list[Answer]:
        module, tokenizer = self.module, self.module.tokenizer
        model = module.model
        prefill_counts = prefill_token_counts(tokenizer, cases)
        eos = set(eos_token_ids(model, tokenizer))
        responses: list[Answer | None] = [None] * len(cases)
        batches = list(_batches(cases, self.batch_size))
        for batch in tqdm(batches, desc=self.description, disable=not self.progress, leave=False):
            rows, prefill_ids = [], []
            for i in batch:
                text = format_prompt(tokenizer, cases[i].prompt, module.safety.chat_template)[0]
                prefill = tokenizer(cases[i].prefill, add_special_tokens=False)["input_ids"] if cases[i].prefill else []
                rows.append(tokenizer(text, add_special_tokens=False)["input_ids"] + prefill)
                prefill_ids.append(prefill)
            input_ids = left_pad(rows, tokenizer.pad_token_id)
            attention = left_pad([[1] * len(ids) for ids in rows], 0)
            width = input_ids.shape[1]
            decoding = {"do_sample": False, **cases[batch[0]].decoding_overrides}
            seed = decoding.pop("seed", None)
            if decoding.get("do_sample") and seed is not None:
                torch.manual_seed(seed)
            if not decoding.get("do_sample"):
                decoding = {"do_sample": False}
            out = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                suppress_tokens=[module.cls_id], **decoding,
            )
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                if any(t in eos for t in new):
                    new = new[: next(j for j, t in enumerate(new) if t in eos) + 1]
                continuation = tokenizer.decode(new, skip_special_tokens=True)
                responses[i] = Answer(
                    text=cases[i].prefill + continuation,
                    continuation=continuation,
                    token_ids=prefill_ids[row] + new,
                    num_prefill_tokens=prefill_counts[i],
                    finish_reason="eos" if new and new[-1] in eos else "length",
                )
        return responses  # type: ignore[return-value]
