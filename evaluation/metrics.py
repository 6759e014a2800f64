"""Metrics: attack success rate, over-refusal, classifier AUROC / F1, perplexity and an MMLU check.

None of them needs an API judge: attack success and refusal use the keyword judge (or any
per-answer boolean judge), utility is measured by log-likelihood. Every rate carries `k`, `n`
and its 95% Wilson interval (`evaluation.stats`); the AUROC a stratified bootstrap interval.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

from safety_signal.layout import IGNORE_INDEX, ProbeConfig, collate_examples, encode_example
from datamodules.sources import package_file
from evaluation.stats import bootstrap_auroc_ci, format_rate, rate_record, wilson


@dataclass
class Rate:
    """`count` of `total`, as a fraction (`value`), with its 95% Wilson interval, and as text for tables."""

    count: float
    total: int

    @property
    def value(self) -> float:
        return self.count / self.total if self.total else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson(self.count, self.total)

    def percent(self) -> str:
        """`12.5% (2/16) [3.5-36.0]` (the bracket: the 95% Wilson interval, in percent)."""
        return format_rate(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """`{"rate", "k", "n", "ci95"}` (and `value`, the same as `rate`, for older readers)."""
        record = rate_record(self.count, self.total)
        record["value"] = record["rate"]
        return record


def attack_outcomes(
    prompt_indices: Sequence[int], harmful: Sequence[bool], aggregate: str, variants: Sequence[int] | None = None,
) -> dict[str, bool]:
    """Attack success per unit: `any`: per prompt (`"<prompt index>"`, broken when any of its cases
    is harmful: decoding grid); `mean`: per case (`"<prompt index>/<variant>"`: templates, suffixes).
    The units are what a paired test pairs between two columns."""
    if aggregate not in ("any", "mean"):
        raise ValueError(f"aggregate must be 'any' or 'mean', got {aggregate!r}")
    variants = list(variants) if variants is not None else [None] * len(harmful)
    out: dict[str, bool] = {}
    for position, (index, variant, flag) in enumerate(zip(prompt_indices, variants, harmful)):
        if aggregate == "any":
            key = str(index)
            out[key] = out.get(key, False) or bool(flag)
        else:
            key = f"{index}/{variant if variant is not None else ''}"
            out[key if key not in out else f"{key}#{position}"] = bool(flag)
    return out


def attack_success_rate(
    prompt_indices: Sequence[int], harmful: Sequence[bool], aggregate: str, variants: Sequence[int] | None = None,
) -> Rate:
    """ASR over the attacked prompts.

    `any`: a prompt is broken when any of its cases is harmful (decoding grid: any setting);
    `mean`: every case counts on its own (templates, suffixes: the mean over (prompt, variant)).
    """
    if aggregate == "mean":
        return Rate(sum(bool(h) for h in harmful), len(harmful))
    outcomes = attack_outcomes(prompt_indices, harmful, aggregate, variants)
    return Rate(sum(outcomes.values()), len(outcomes))


def over_refusal_rate(refused: Sequence[bool]) -> Rate:
    """Benign prompts the model refused (keyword judge on the answer; a gate's guide text is a refusal)."""
    return Rate(sum(bool(r) for r in refused), len(refused))


def classifier_metrics(
    probs: Sequence[float], labels: Sequence[int], threshold: float = 0.5, resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """AUROC (with a stratified bootstrap 95% interval, `auroc_ci95`), F1 and accuracy of malicious
    probabilities against labels (1 = malicious), and the class counts."""
    if not probs:
        return {"auroc": float("nan"), "auroc_ci95": [float("nan"), float("nan")], "f1": float("nan"),
                "accuracy": float("nan"), "n": 0, "n_harmful": 0, "n_benign": 0}
    p = torch.tensor(list(probs), dtype=torch.float32)
    y = torch.tensor(list(labels), dtype=torch.long)
    both = 0 < int(y.sum()) < len(y)
    auroc = float(binary_auroc(p, y)) if both else float("nan")
    return {
        "auroc": auroc,
        "auroc_ci95": list(bootstrap_auroc_ci(list(probs), list(labels), resamples=resamples, seed=seed)),
        "f1": float(binary_f1_score(p, y, threshold=threshold)),
        "accuracy": float(binary_accuracy(p, y, threshold=threshold)),
        "n": len(y),
        "n_harmful": int(y.sum()),
        "n_benign": len(y) - int(y.sum()),
    }


# --------------------------------------------------------------------------- utility


@torch.inference_mode()
def response_perplexity(
    module: Any, pairs: Sequence[tuple[str, str]], use_cls: bool, batch_size: int = 8, max_length: int = 256
) -> dict[str, float]:
    """Perplexity of reference answers given their prompts (response tokens + EOS only).

    `use_cls`: the method's layout (`[CLS]` + prompt + response; in the SFT phase responses read
    `[CLS]`); otherwise the plain chat text without `[CLS]`, as the baselines generate.
    """
    tokenizer = module.tokenizer
    total_nll, total_tokens = 0.0, 0
    probes = ProbeConfig(max_probes=1)
    for start in range(0, len(pairs), batch_size):
        examples = [
            encode_example(tokenizer, p, r, 0, module.safety, probes, max_length=max_length)
            for p, r in pairs[start : start + batch_size]
        ]
        examples = [e for e in examples if e is not None]
        if not examples:
            continue
        if use_cls:
            batch = collate_examples(examples, tokenizer.pad_token_id, module.cls_id, module.safety.phase)
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits, _ = module(batch)
            targets = batch["lm_targets"][:, batch["num_probe_slots"] :]
        else:
            width = max(len(e.input_ids) - 1 for e in examples)
            ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
            targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros((len(examples), width), dtype=torch.long)
            for row, e in enumerate(examples):  # drop [CLS] (index 0), right padding
                n = len(e.input_ids) - 1
                ids[row, :n] = torch.tensor(e.input_ids[1:])
                targets[row, :n] = torch.tensor(e.lm_targets[1:])
                attention[row, :n] = 1
            device = module.model.device
            logits = module.model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            targets = targets.to(device)
        shift = targets[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shift.flatten(), ignore_index=IGNORE_INDEX,
                              reduction="sum")
        total_nll += float(nll)
        total_tokens += int((shift != IGNORE_INDEX).sum())
    mean = total_nll / max(1, total_tokens)
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens, "answers": len(pairs)}


MMLU_PACKAGE = ("evals", "registry/data/sandbagging/samples-all-large.jsonl", "evals==3.0.1.post1")
MMLU_INSTRUCTION = "\nAnswer with the letter of the correct option only."


def mmlu_questions(limit: int, seed: int = 0) -> list[tuple[str, str]] | None:
    """(question with options, answer letter) from the MMLU sample of `evals` (optional: None when
    the 730 MB wheel is not installed)."""
    try:
        path = package_file(*MMLU_PACKAGE)
    except FileNotFoundError:
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = random.Random(seed).sample(rows, min(limit, len(rows)))
    return [(r["question"].removesuffix("Answer:").rstrip() + MMLU_INSTRUCTION, r["answer"].strip()) for r in rows]


@torch.inference_mode()
def mmlu_accuracy(module: Any, questions: Sequence[tuple[str, str]], use_cls: bool, batch_size: int = 8) -> dict[str, float]:
    """Zero-shot accuracy: the option letter (A-D) with the highest next-token logit as the answer's first token."""
    tokenizer = module.tokenizer
    letters = ["A", "B", "C", "D"]
    letter_ids = [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in letters]
    probes = ProbeConfig(max_probes=1)
    correct = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        examples = [encode_example(tokenizer, q, "", 0, module.safety, probes, max_length=1024) for q, _ in chunk]
        # each example is [CLS] + prompt + EOS: the logit at the last prompt token predicts the answer
        if use_cls:
            batch = collate_examples(examples, tokenizer.pad_token_id, module.cls_id, module.safety.phase)
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits, _ = module(batch)
            last = [len(e.input_ids) - 2 for e in examples]
        else:
            width = max(len(e.input_ids) - 2 for e in examples)
            ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(examples), width), dtype=torch.long)
            for row, e in enumerate(examples):
                n = len(e.input_ids) - 2
                ids[row, :n] = torch.tensor(e.input_ids[1:-1])
                attention[row, :n] = 1
            device = module.model.device
            logits = module.model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            last = [len(e.input_ids) - 3 for e in examples]
        for row, (_, answer) in enumerate(chunk):
            scores = logits[row, last[row], letter_ids]
            correct += letters[int(scores.argmax())] == answer
    return {"accuracy": correct / max(1, len(questions)), "n": len(questions)}
