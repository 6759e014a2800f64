"""Self-distilled benign answers: the base model's own greedy answers as LM targets for benign prompts.

Fine-tuning on another model's answers (ChatGPT's in ShareGPT) pulls the LM away from its own
helpful behaviour while it learns to refuse; training on its own answers keeps the benign part of
the LM loss near its minimum, so the update goes to refusals and the classifier.

Answers are generated once (greedy, plain HF `generate`, chat template, no `[CLS]` in the input
and `[CLS]` suppressed) and cached as JSON under the project cache folder
(`$SAFETY_SIGNAL_CACHE/self_distill/<model fingerprint>-<settings>.json`), one answer per prompt;
a later run only generates prompts the file lacks. The fingerprint hashes the model's weights
(the `[CLS]` rows the tokenizer adds are left out), so a changed model gets a new file.

With `openings` the answer is forced to start with a given opening ("Sure, here is how to ...:"),
which is how the base model's *harmful* answers to training harmful prompts are made: text the
response-window probes learn to flag and the LM never learns to write (`harmful_continuations`
in `SafetyMixDataModule`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safety_signal.io import write_text_atomic
from safety_signal.layout import format_prompt, left_pad
from safety_signal.model import cache_dir, cls_token_id, eos_token_ids
from safety_signal.refusal import is_refusal

SELF_DISTILL_VERSION = 1  # bump when generation or clean-up changes, so old caches are not reused
_SENTENCE_END = re.compile(r"[.!?)\]`]\s|\n")


def model_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the weights (names, shapes, bytes); embedding rows from `[CLS]` on are left out
    (they are freshly initialised by the resize)."""
    cls_id = cls_token_id(tokenizer)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        if tensor.dim() >= 1 and tensor.shape[0] > cls_id and tensor.shape[0] >= len(tokenizer):
            tensor = tensor[:cls_id]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(fingerprint: str, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "self_distill" / f"{fingerprint[:20]}-{key}.json"


def clean_answer(text: str, finished: bool, min_chars: int = 20) -> str | None:
    """The answer as an LM target, or None when it is unusable (a refusal, too short).

    An answer cut by the token budget is trimmed to its last complete sentence or line, so the
    target (which ends with EOS) does not teach stopping mid-sentence.
    """
    text = text.strip()
    if not finished:
        cuts = [m.end() for m in _SENTENCE_END.finditer(text + " ")]
        cut = max((c for c in cuts if c >= len(text) // 3), default=None)
        if cut is None:
            return None
        text = text[:cut].strip()
    if len(text) < min_chars or is_refusal(text):
        return None
    return text


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int,
    batch_size: int, chat_template: bool = True, openings: Sequence[str] | None = None,
) -> list[tuple[str, bool]]:
    """Greedy answers `(text, finished with EOS)`, batched with left padding, longest prompts first;
    with `openings`, answer i starts with `openings[i]` (forced, part of the text)."""
    was_training = model.training
    model.eval()
    eos_ids = set(eos_token_ids(model, tokenizer))
    openings = list(openings) if openings is not None else [""] * len(prompts)
    rows = [tokenizer(format_prompt(tokenizer, p, chat_template)[0] + o, add_special_tokens=False)["input_ids"]
            for p, o in zip(prompts, openings)]
    order = sorted(range(len(prompts)), key=lambda i: -len(rows[i]))
    out: list[tuple[str, bool]] = [("", False)] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids = left_pad([rows[i] for i in batch], tokenizer.pad_token_id).to(model.device)
        attention = left_pad([[1] * len(rows[i]) for i in batch], 0).to(model.device)
        generated = model.generate(
            input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, suppress_tokens=[cls_token_id(tokenizer)],
        )[:, ids.shape[1] :].tolist()
        for i, tokens in zip(batch, generated):
            ends = [k for k, t in enumerate(tokens) if t in eos_ids]
            finished = bool(ends)
            tokens = tokens[: ends[0]] if ends else tokens
            out[i] = (openings[i] + tokenizer.decode(tokens, skip_special_tokens=True), finished)
    model.train(was_training)
    return out


def self_distilled_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 16,
    chat_template: bool = True,
    path: str | Path | None = None,
    log=print,
    openings: dict[str, str] | None = None,
) -> dict[str, str]:
    """`{prompt: answer}` for the prompts with a usable answer, generated once and cached.

    The cache file is keyed by the model's fingerprint and the settings (`path` overrides it);
    prompts already in it are not generated again (unusable answers are cached as null).
    `openings`: `{prompt: opening}` every answer is forced to start with (a fixed function of the
    prompt, so cached answers stay valid); forced answers get a cache file of their own.
    """
    settings = {"max_new_tokens": max_new_tokens, "chat_template": chat_template, "version": SELF_DISTILL_VERSION}
    if openings is not None:
        settings["forced_opening"] = True
    fingerprint = model_fingerprint(model, tokenizer)
    path = Path(path) if path is not None else cache_path(fingerprint, settings)
    cached: dict[str, str | None] = {}
    if path.exists():
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("fingerprint") == fingerprint and payload.get("settings") == settings:
            cached = payload["answers"]
    todo = sorted({p for p in prompts if p not in cached})
    if todo:
        log(f"[self-distill] generating {len(todo)} answers ({len(cached)} cached) -> {path}")
        forced = [openings[p] for p in todo] if openings is not None else None
        generated = generate_answers(model, tokenizer, todo, max_new_tokens, batch_size, chat_template, forced)
        for prompt, (text, finished) in zip(todo, generated):
            cached[prompt] = clean_answer(text, finished)
        payload = {"fingerprint": fingerprint, "settings": settings, "answers": cached}
        write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False))
    return {p: cached[p] for p in prompts if cached.get(p)}
