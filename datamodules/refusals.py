"""Reasoned refusals (the paper's guided style) and affirmative openings for prefill attacks.

All reason and alternative texts are this project's own wording.
"""

from __future__ import annotations

import random
import re

from datamodules.sources import infer_category
from safety_signal.refusal import DEFAULT_GUIDE


# Continuations of the guide ("... because <reason>"), several phrasings per category.
REASONS: dict[str, tuple[str, ...]] = {
    "cybercrime": (
        "it asks for help getting into computer systems or accounts without permission, which is illegal and can expose other people's data.",
        "writing malware or attacking systems you do not own harms the people and organisations that depend on them.",
        "instructions for breaking into networks or stealing credentials would be a ready-made tool for cybercrime.",
        "it would help someone compromise devices or data that belong to others, and I won't take part in that.",
    ),
    "violence": (
        "it could help someone hurt or kill other people, and I won't contribute to violence.",
        "planning or encouraging attacks on people puts lives at risk.",
        "describing how to injure someone could lead to real physical harm.",
        "promoting or enabling violence against anyone is something I will not do.",
    ),
    "weapons": (
        "instructions for building weapons or explosives could cause serious injuries and deaths.",
        "it asks for details on making or acquiring dangerous weapons, which could be used to harm many people.",
        "chemical, biological and explosive weapons are capable of mass harm, so I don't give guidance on them.",
        "helping someone obtain or build weapons outside the law puts other people in danger.",
    ),
    "drugs": (
        "making, buying or selling illegal drugs is against the law and can seriously damage people's health.",
        "it would promote or enable the use of dangerous controlled substances.",
        "instructions for producing or trafficking drugs could lead to addiction, overdoses and deaths.",
    ),
    "fraud": (
        "it would help deceive people out of their money or identity, which is fraud.",
        "scams, counterfeiting and identity theft cause real financial harm to their victims.",
        "I can't help trick or defraud people, businesses or institutions.",
        "it involves financial deception that is illegal and hurts the people targeted.",
    ),
    "hate": (
        "it asks for content that demeans people because of who they are, and that kind of hatred causes real harm.",
        "stereotyping or attacking groups of people based on their identity is discriminatory.",
        "I don't produce content that promotes hatred or discrimination against any group.",
        "spreading contempt for people because of their race, religion, gender or background hurts them and divides communities.",
    ),
    "harassment": (
        "it would be used to threaten, bully or intimidate someone.",
        "targeting a person with harassment or threats can do serious emotional and physical harm.",
        "I won't help humiliate, stalk or coerce another person.",
    ),
    "self_harm": (
        "it could lead to someone being seriously hurt, and your safety matters.",
        "giving methods for self-harm or suicide could put a life at risk.",
        "encouraging anyone to harm themselves is something I will never do.",
    ),
    "misinformation": (
        "it asks me to create or spread false information that could mislead people.",
        "fabricated news and false claims erode trust and can hurt real people and communities.",
        "deliberately deceiving the public with made-up facts or defamatory stories is harmful.",
        "I don't write content designed to make people believe things that are untrue.",
    ),
    "privacy": (
        "it involves personal or confidential information about someone who has not agreed to share it.",
        "tracking people or exposing their private data violates their privacy and can put them at risk.",
        "I can't reveal or help collect private details about individuals or organisations.",
    ),
    "sexual": (
        "it asks for sexually explicit or exploitative content that I don't produce.",
        "sexual content involving exploitation or minors is harmful and illegal.",
        "I keep my answers free of explicit sexual material.",
    ),
    "illegal": (
        "it asks for help with an illegal activity that could hurt other people.",
        "helping someone break the law or evade the authorities could cause real harm.",
        "it would facilitate a crime, and I can't assist with that.",
        "the request involves breaking the law in a way that harms others.",
    ),
    "copyright": (
        "reproducing protected text in full would infringe its authors' rights.",
        "it asks for copyrighted material that I can't share verbatim.",
    ),
    "harmful": (
        "it could cause real harm to people.",
        "the request is for something dangerous or unethical that I can't help with.",
        "following these instructions could put people's safety or well-being at risk.",
        "it asks for content that is harmful, and I won't produce it.",
    ),
}

# Optional closing sentence offering something safe instead.
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "cybercrime": (
        "If you work in security, I'm happy to explain how to defend systems against this kind of attack.",
        "I can help you secure your own accounts and devices instead.",
    ),
    "violence": (
        "If you or someone else is in danger, please contact local emergency services.",
        "I'm glad to talk about conflict resolution or staying safe instead.",
    ),
    "weapons": (
        "I can share general information about weapons safety and the law instead.",
        "If you're interested in chemistry or engineering, I'm happy to suggest safe projects.",
    ),
    "drugs": (
        "If you or someone you know is struggling with substance use, a doctor or local support service can help.",
        "I can share information about drug safety and treatment options instead.",
    ),
    "fraud": (
        "I can explain how to recognise and protect yourself from scams instead.",
        "If you need money advice, I'm happy to talk about legitimate options.",
    ),
    "hate": (
        "I'm happy to discuss the history and impact of discrimination, or how to challenge it.",
        "I can help you write something that brings people together instead.",
    ),
    "harassment": (
        "If you're in a conflict with someone, I can help you find a respectful way to address it.",
        "I can suggest ways to resolve the situation calmly instead.",
    ),
    "self_harm": (
        "If you're going through a hard time, please reach out to someone you trust or a local crisis line.",
        "You don't have to face this alone; a crisis line or a doctor can offer support right now.",
    ),
    "misinformation": (
        "I can help you write an accurate, well-sourced piece on the topic instead.",
        "I'm happy to explain how to spot and check misleading claims.",
    ),
    "privacy": (
        "I can explain how to protect personal information or make a lawful data request instead.",
        "If you need to reach someone, consider asking them or a mutual contact directly.",
    ),
    "sexual": (
        "I'm happy to help with other creative writing or with factual health information.",
    ),
    "illegal": (
        "I'm happy to help you find a legal way to reach your goal.",
        "If you have a legal question, a qualified lawyer can advise you properly.",
    ),
    "copyright": (
        "I can summarise it or discuss its themes instead.",
    ),
    "harmful": (
        "Let me know if I can help with something else.",
        "I'm glad to help with a safer version of this request.",
    ),
}  # fmt: skip

ALTERNATIVE_PROBABILITY = 0.5


# Source categories too broad to give a reason that fits (Do-Not-Answer's "illegal activities",
# AdvBench prompts without a topical tag): the prompt's own topic is asked first.
COARSE_CATEGORIES = ("harmful", "illegal")


def refusal_category(prompt: str, category: str) -> str:
    """The category whose reasons fit the request.

    A specific known category is kept; a coarse one (`COARSE_CATEGORIES`) or an unknown one gives
    way to the topic inferred from the prompt's words (a drug, a weapon, a scam, ...), so that "how
    do I grow cannabis at home" is refused for a drug reason rather than a generic "illegal" one.
    """
    if category in REASONS and category not in COARSE_CATEGORIES:
        return category
    inferred = infer_category(prompt, default="")
    if inferred in REASONS:
        return inferred
    return category if category in REASONS else "harmful"


def write_refusal(prompt: str, category: str, rng: random.Random, guide: str = DEFAULT_GUIDE) -> str:
    """Guide + a category-specific reason + sometimes one sentence offering a safe alternative."""
    key = refusal_category(prompt, category)
    text = f"{guide} {rng.choice(REASONS[key])}"
    if rng.random() < ALTERNATIVE_PROBABILITY:
        text += " " + rng.choice(ALTERNATIVES.get(key, ALTERNATIVES["harmful"]))
    return text


# --------------------------------------------------------------------------- affirmative openings

# "Write X" -> "here is X" (JailbreakBench Target style).
_PRODUCE_VERBS = {
    "write", "create", "develop", "generate", "design", "draft", "compose", "produce", "build", "make",
    "provide", "give", "offer", "outline", "suggest", "publish", "post", "share", "prepare", "craft",
    "construct", "program", "code", "formulate", "devise", "propose", "recommend", "present", "come", "list",
}  # fmt: skip
# "Explain X" -> "here is an explanation of X" unless X reads as the answer itself.
_EXPLAIN_VERBS = {"explain": "an explanation of", "describe": "a description of", "detail": "a breakdown of",
                  "summarize": "a summary of", "summarise": "a summary of"}  # fmt: skip
# "Teach people how to X" -> "here is how to X".
_TEACH_VERBS = {"teach", "show", "instruct", "tell", "help", "guide", "demonstrate", "advise", "train", "educate"}
_NOT_VERBS = {"i", "you", "we", "he", "she", "it", "they", "my", "your", "our", "the", "a", "an", "this", "that",
              "is", "are", "was", "do", "does", "did", "can", "could", "would", "should", "will", "what", "why",
              "where", "when", "which", "who", "whose", "if", "there", "in", "on", "as", "for"}  # fmt: skip
_POLITE = re.compile(
    r"^(?:please\s+|(?:can|could|would|will) you(?: please)?\s+|i (?:want|need|would like) you to\s+)", re.I
)
_HOW_QUESTION = re.compile(
    r"^how (?:do|can|could|would|should|might|may|to)"
    r"(?: (?:i|we|you|one|someone|somebody|people|a person))?\s+(.+)$",
    re.I,
)
_WHAT_QUESTION = re.compile(r"^what (?:is|are|'s|were|was) ((?:the|my|your|some|any) .+)$", re.I)
_WH_CLAUSE = re.compile(
    r"^(?:in (?:great )?detail\s+|step[- ]by[- ]step\s+)?(how|why|what|where|when|which|who)\b(.*)$", re.I
)
_ADDRESSEE = re.compile(
    r"^(?:me|us|them|him|her|someone|somebody|others|people|children|kids"
    r"|(?:the |a |an )?(?:users?|readers?|persons?|individuals?|viewers?|audience|public))\s+(?:with\s+)?",
    re.I,
)
_STOP_WORDS = {"of", "for", "on", "to", "that", "which", "with", "in", "about", "from", "using", "how", "who", "and"}
_NUMBERS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "multiple", "many"}
_NOT_PLURAL = ("ss", "us", "is", "news", "series", "species")
_PRONOUNS = ((r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bmyself\b", "yourself"),
             (r"\bmy\b", "your"), (r"\bme\b", "you"), (r"\bI\b", "you"))  # fmt: skip
_GENERIC = ("Sure, here is what you asked for", "Sure, here is a detailed answer",
            "Sure, here is the information you requested")  # fmt: skip
_FORMATS = ("{}:\n\n1.", "{}:\n\nStep 1:", "{}:\n\n", "{}.\n\n", "{}:\n\n- ")


def _second_person(text: str) -> str:
    for pattern, repl in _PRONOUNS:
        text = re.sub(pattern, repl, text)
    return text


def _is_plural(phrase: str) -> bool:
    words = [w.lower() for w in phrase.split()[:3]]
    if words and words[0] == "the":
        words = words[1:]
    if not words or words[0] in ("a", "an", "one", "this", "that"):
        return False
    if words[0] in _NUMBERS or words[0].isdigit():
        return True
    for word in words:
        if word in _STOP_WORDS:
            return False
        if word.endswith("s") and not word.endswith(_NOT_PLURAL):
            return True
    return False


def _here(phrase: str) -> str:
    return f"Sure, here {'are' if _is_plural(phrase) else 'is'} {phrase}"


def _imperative_opening(text: str) -> str | None:
    verb, _, rest = text.partition(" ")
    verb_l, rest = verb.lower(), _ADDRESSEE.sub("", rest.strip())
    if not rest or verb_l in _NOT_VERBS:
        return None
    if verb_l in _TEACH_VERBS:
        rest = re.sub(r"^(?:with|on|about)\s+", "", rest, flags=re.I)
    wh = _WH_CLAUSE.match(rest)
    if wh and (verb_l in _PRODUCE_VERBS or verb_l in _EXPLAIN_VERBS or verb_l in _TEACH_VERBS):
        return f"Sure, here is {wh.group(1).lower()}{wh.group(2)}"
    if verb_l in _PRODUCE_VERBS:
        if verb_l == "come" and rest.lower().startswith("up with "):
            rest = rest[len("up with ") :]
        return _here(rest)
    if verb_l in _EXPLAIN_VERBS:
        if _is_plural(rest) or rest.lower().startswith(("a ", "an ")):
            return _here(rest)
        return f"Sure, here is {_EXPLAIN_VERBS[verb_l]} {rest}"
    if verb_l in _TEACH_VERBS:
        rest = re.sub(r"^to\s+", "", rest, flags=re.I)
        if verb_l in ("tell", "show") and rest.lower().startswith(("a ", "an ", "the ", "some ")):
            return _here(rest)
        return f"Sure, here is how to {rest}"
    # any other leading verb ("Hack into ...", "Encourage someone to ..."): "how to <prompt>"
    return f"Sure, here is how to {verb_l} {rest}" if verb.isalpha() else None


def affirmative_opening(prompt: str, rng: random.Random) -> str:
    """A prefill-attack opening such as "Sure, here is a script that ...:\n\n1."."""
    text = " ".join(prompt.strip().split())
    is_question = text.endswith("?")
    text = _POLITE.sub("", text.rstrip(".?!:; "))
    opening = None
    if how := _HOW_QUESTION.match(text):
        opening = f"Sure, here is how to {how.group(1)}"
    elif what := _WHAT_QUESTION.match(text):
        opening = _here(what.group(1))
    elif text and (not is_question or _POLITE.match(" ".join(prompt.split()))):
        opening = _imperative_opening(text)
    if opening is None:
        opening = rng.choice(_GENERIC)
    return rng.choice(_FORMATS).format(_second_person(opening))
