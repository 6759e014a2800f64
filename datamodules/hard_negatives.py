"""Hard negatives: benign requests that share words and topics with harmful ones (label 0).

The classifier trained on harmful prompts vs ordinary chat learns topic words ("kill", "bomb",
"hack", "poison") instead of harm, and flags "How do I kill a frozen process?" or "What was the
Watergate scandal?". These prompts sit right next to the harmful ones in wording and topic but
ask for something helpful, so they teach the boundary:

| family | what |
|---|---|
| `homonym_tech` | computing senses of violent words (kill a process, execute a script, abort a merge) |
| `homonym_everyday` | everyday senses (shoot a photo, crack an egg, beat a level, blow up a balloon) |
| `figurative` | idioms and figures of speech (killing it on stage, bury the hatchet) |
| `safety_education` | safety, medical, security and chemistry questions asked to stay safe |
| `history_news` | history and news about crimes, attacks and disasters |
| `fiction` | stories and scenes with conflict, crime or war that instruct nothing |
| `definitions` | what a harmful-sounding term means |
| `about_harm` | questions about harm (effects, signs, prevention, law), not instructions for it |
| `nonexistent_groups` | "discrimination" questions about groups that do not exist |
| `public_privacy` | facts about public figures and fictional characters |

Every template and filler is this project's own wording (none is taken from an evaluation set;
`tests/test_recipe.py` checks the output against the held-out sets for exact matches and n-gram
overlap). Generation is a seeded function of `(seed, count)`: all template x filler combinations,
de-duplicated, shuffled. Each prompt keeps its template id, so a validation split can hold out
whole templates (`template_split`) and measure generalisation to unseen phrasings.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from datamodules.sources import SafetyRecord

HARD_NEGATIVE_SOURCE = "hard_negatives"

_OS = ("Linux", "macOS", "Windows 11", "Ubuntu", "a Raspberry Pi", "a remote Debian server")
_PROC = ("frozen", "zombie", "hung", "runaway background", "stuck Python", "Node.js", "Java", "Chrome helper")
_LANG = ("Python", "Bash", "PowerShell", "Ruby", "Perl", "JavaScript", "R")
_WHEN = ("every hour with cron", "when my computer starts", "from another script", "inside a Docker container",
         "on a schedule in Windows Task Scheduler", "after a git push")  # fmt: skip
_PHOTO = ("portrait", "landscape", "wedding", "product", "night-sky", "wildlife", "street", "food")
_LIGHT = ("in low light", "with only a phone", "at golden hour", "indoors without a flash", "on a cloudy day")
_GAME = ("Elden Ring", "Super Mario Odyssey", "Hollow Knight", "chess openings against my uncle", "Celeste",
         "a Pokemon gym")  # fmt: skip
_PEOPLE = ("boss", "roommate", "toddler", "coach", "landlord", "professor", "little brother")
_ANNOY = ("endless meetings", "loud music at midnight", "constant questions", "impossible deadlines",
          "surprise quizzes", "group chat messages")  # fmt: skip
_IDIOMS = ("bury the hatchet", "kill two birds with one stone", "take a stab at it", "shoot for the moon",
           "blow off steam", "bite the bullet", "pull the trigger on a decision", "go in for the kill",
           "drop a bombshell", "stab someone in the back", "get away with murder", "be under the gun",
           "add fuel to the fire", "break a leg", "beat a dead horse", "be armed to the teeth")  # fmt: skip
_EVENTS = ("job interview", "stand-up comedy set", "piano recital", "sales pitch", "debate final",
           "first marathon", "thesis defence", "karaoke night")  # fmt: skip
_CHEM_PAIRS = (("bleach", "ammonia"), ("bleach", "vinegar"), ("two different drain cleaners", "each other"),
               ("hydrogen peroxide", "vinegar"), ("bleach", "rubbing alcohol"))  # fmt: skip
_CONDITIONS = ("a stroke", "carbon monoxide poisoning", "a severe allergic reaction", "heat stroke",
               "an opioid overdose", "hypothermia", "sepsis", "a concussion", "alcohol poisoning")  # fmt: skip
_FIRST_AID = ("has a deep cut from a kitchen knife", "was bitten by a snake", "swallowed some bleach",
              "is choking on food", "has a bad burn from hot oil", "fainted after donating blood",
              "was stung by a wasp and is swelling up")  # fmt: skip
_DISPOSE = ("old prescription painkillers", "lithium batteries", "expired fireworks", "a broken mercury thermometer",
            "leftover paint thinner", "used needles from insulin injections", "an old car battery")  # fmt: skip
_STORE = ("pool chlorine tablets", "gasoline for the lawnmower", "paint thinner", "garden fertilizer",
          "propane tanks", "fireworks before a holiday")  # fmt: skip
_AUDIENCE = ("my elderly parents", "the staff of a small business", "high-school students", "new employees",
             "my grandmother", "a non-technical team")  # fmt: skip
_ATTACKS = ("phishing", "social engineering", "SIM-swap", "tech-support scam", "ransomware", "romance scam")
_DEFENCES = (("a firewall", "port scans"), ("two-factor authentication", "stolen passwords"),
             ("an intrusion detection system", "network attacks"), ("disk encryption", "laptop theft"),
             ("a password manager", "credential reuse"), ("email filtering", "malicious attachments"))  # fmt: skip
_ACCOUNTS = ("email account", "Instagram account", "bank account", "Steam account", "work laptop")
_HISTORY = ("the Watergate scandal", "the collapse of Enron", "the Great Train Robbery of 1963",
            "the Oklahoma City bombing", "the Rwandan genocide", "the Chernobyl disaster", "the Lockerbie bombing",
            "Bernie Madoff's Ponzi scheme", "the Cambridge Analytica scandal", "the WannaCry ransomware outbreak",
            "the Chicago Tylenol poisonings of 1982", "the Salem witch trials", "the St. Valentine's Day Massacre",
            "the assassination of Archduke Franz Ferdinand", "the Gunpowder Plot of 1605",
            "the theft of the Mona Lisa in 1911", "the Boston Marathon bombing", "the Tokyo subway sarin attack",
            "the Lufthansa heist", "the Stuxnet worm")  # fmt: skip
_FIGURES = ("Al Capone", "Napoleon Bonaparte", "Julius Caesar", "Genghis Khan", "Bonnie and Clyde",
            "Jesse James", "Frank Abagnale", "Ned Kelly")  # fmt: skip
_CRIMES_STORY = ("stole the museum's diamond", "poisoned the wealthy baron", "robbed the village bank",
                 "sabotaged the space station", "forged the royal letters", "kidnapped the prince's falcon")  # fmt: skip
_PLACES = ("on a snowed-in train", "in a Victorian manor", "at a seaside hotel", "on a Mars colony",
           "in a small fishing village")  # fmt: skip
_BATTLES = (("a dragon", "an army of knights"), ("two rival wizards", "each other"),
            ("a band of space pirates", "a galactic fleet"), ("a giant robot", "a sea monster"))  # fmt: skip
_WARS = ("the First World War", "the Trojan War", "a war on a distant planet", "the American Civil War")
_TERMS = ("money laundering", "a Ponzi scheme", "ransomware", "insider trading", "genocide", "a botnet",
          "a Trojan horse program", "identity theft", "extortion", "a hate crime", "propaganda", "doxxing",
          "a logic bomb", "a pyramid scheme", "embezzlement", "arson", "a war crime", "radicalisation",
          "a Molotov cocktail", "a keylogger", "human trafficking", "a pipe bomb", "cyberstalking", "a deepfake",
          "blackmail", "a hitman", "a dirty bomb", "credit card skimming")  # fmt: skip
_TERM_PAIRS = (("a virus", "a worm"), ("fraud", "theft"), ("murder", "manslaughter"), ("a hacker", "a cracker"),
               ("assault", "battery"), ("misinformation", "disinformation"), ("parole", "probation"),
               ("a terrorist attack", "a hate crime"))  # fmt: skip
_DRUGS = ("methamphetamine", "heroin", "alcohol", "nicotine", "cocaine", "fentanyl", "cannabis", "ecstasy")
_THREATS_KIDS = ("online grooming", "cyberbullying", "drug dealers near school", "sextortion scams",
                 "violent extremist content online", "strangers in online games")  # fmt: skip
_SIGNS = ("being abused at home", "a victim of human trafficking", "being radicalised online",
          "being groomed by an adult online", "in a controlling relationship", "thinking about suicide")  # fmt: skip
_DETECT = ("counterfeit banknotes", "drunk drivers", "credit card fraud", "insider trading",
           "money laundering through small businesses", "forged signatures", "art forgeries")  # fmt: skip
_VICTIMS = ("identity theft", "domestic violence", "online harassment", "burglary", "a romance scam", "stalking")
_HARMS = (("cyberbullying", "teenagers"), ("hate speech", "minority communities"), ("drunk driving", "families"),
          ("revenge porn", "its victims"), ("misinformation", "public health"), ("child labour", "children"),
          ("racial profiling", "communities"), ("gambling addiction", "households"))  # fmt: skip
_FAKE_GROUPS = ("garden gnomes", "unicorns", "purple aliens", "talking teapots", "robots from Mars", "centaurs",
                "mermaids", "snowmen", "time-travelling dinosaurs", "sentient toasters")  # fmt: skip
_RIGHTS = ("vote in elections", "open bank accounts", "run for president", "attend university",
           "own property", "serve on juries", "adopt pets", "get a driving licence")  # fmt: skip
_FICTIONAL = ("Sherlock Holmes", "Harry Potter", "SpongeBob SquarePants", "Paddington Bear", "Bruce Wayne",
              "Homer Simpson", "Hercule Poirot", "Frodo Baggins", "Tony Stark", "Lisa Simpson")  # fmt: skip
_FICTIONAL_FACTS = ("home address", "date of birth", "phone number", "bank account details", "secret identity",
                    "favourite food", "workplace")  # fmt: skip
_PUBLIC = ("Barack Obama", "Marie Curie", "Albert Einstein", "Angela Merkel", "Nelson Mandela", "Ada Lovelace",
           "Serena Williams", "Abraham Lincoln", "Frida Kahlo", "Winston Churchill")  # fmt: skip
_PUBLIC_FACTS = ("Where did {} go to school?", "When was {} born?", "What is {} best known for?",
                 "How did {} meet their spouse?", "What awards did {} win?", "Where is {} buried or living now?",
                 "What was {}'s first job?")  # fmt: skip
_ORGS = ("the White House", "the United Nations headquarters", "the British Museum", "NASA",
         "the European Parliament", "the Louvre")  # fmt: skip

# family -> templates; each template is (text with {0}, {1} slots, filler lists per slot or pairs).
_Template = tuple[str, tuple]
FAMILIES: dict[str, tuple[_Template, ...]] = {
    "homonym_tech": (
        ("How do I kill a {0} process on {1}?", (_PROC, _OS)),
        ("What's the safest way to terminate a {0} process that is eating all my memory on {1}?", (_PROC, _OS)),
        ("How can I execute a {0} script {1}?", (_LANG, _WHEN)),
        ("Write a one-line command that kills every {0} process owned by my user on {1}.", (_PROC, _OS)),
        ("How do I force-quit an app that stopped responding on {0}?", (_OS,)),
        ("How do I cleanly kill the worker threads of a {0} program when it gets Ctrl+C?", (_LANG,)),
        ("How do I abort a {0} in {1} without losing my work?", (("rebase", "merge", "cherry-pick", "long-running query", "migration"), ("git", "PostgreSQL", "MySQL", "my IDE"))),
        ("How can I purge {0} on {1}?", (("old Docker images", "the package cache", "stale log files", "orphaned packages", "the DNS cache"), _OS)),
        ("What's the fastest way to nuke my {0} folder and reinstall everything?", (("node_modules", "virtualenv", "build", ".cache", "target"),)),
        ("How do I hijack the {0} key in {1} to run my own shortcut?", (("Caps Lock", "F1", "Escape", "right Alt"), _OS)),
        ("How do I exploit {0} to speed up my {1} code?", (("vectorisation", "multithreading", "caching", "lazy evaluation", "memoisation"), _LANG)),
        ("Explain how to attack a {0} problem in a coding interview.", (("dynamic programming", "graph search", "sliding window", "two-pointer", "recursion"),)),
        ("How do I kill {0} on {1}?", (("a tmux session", "a hanging SSH connection", "a background job", "a Jupyter kernel", "a stuck Docker container", "a Windows service"), _OS)),
        ("How can I crack the {0} chapter of my {1} course?", (("recursion", "pointers", "concurrency", "regular expressions"), _LANG)),
    ),
    "homonym_everyday": (
        ("What's the best way to shoot a {0} photo {1}?", (_PHOTO, _LIGHT)),
        ("How do I shoot a {0} video on a tight budget?", (("music", "wedding", "travel", "cooking", "short film"),)),
        ("How do I crack {0} without making a mess?", (("an egg", "a coconut", "walnuts", "a lobster claw", "crab legs"),)),
        ("How can I blow up {0} quickly?", (("balloons for a party", "an inflatable pool", "an air mattress", "a photo to poster size"),)),
        ("Any tips to beat the final boss in {0}?", (_GAME,)),
        ("How do I butcher a {0} at home for {1}?", (("whole chicken", "pork shoulder", "leg of lamb", "whole salmon"), ("a barbecue", "a Sunday roast", "meal prep"))),
        ("How do I steal {0} in baseball?", (("second base", "third base", "a base without getting caught"),)),
        ("How can I smash {0}?", (("my tennis serve", "a volleyball spike", "my sales targets", "a badminton shot"),)),
        ("What's the best knife for chopping {0}?", (("onions", "bread", "pumpkin", "herbs", "raw chicken"),)),
        ("How do I get rid of {0} in my {1}?", (("weeds", "ants", "fruit flies", "moss", "mice"), ("garden", "kitchen", "lawn", "garage"))),
        ("How do I choke up on a {0} for better control?", (("baseball bat", "golf club", "hockey stick"),)),
        ("How do I make a baking soda volcano erupt {0}?", (("higher", "longer", "with red foam", "more than once"),)),
        ("How do I take out {0} in {1}?", (("the rook", "an enemy tower", "the opponent's queen", "the boss's shield"), _GAME)),
        ("What is the best way to terminate {0}?", (("a lease early", "a gym contract", "a phone contract", "a freelance agreement politely"),)),
        ("How do I trap {0} humanely?", (("a mouse in my kitchen", "a squirrel in my attic", "a raccoon in the yard"),)),
    ),
    "figurative": (
        ("My {0} is killing me with {1}; how do I cope?", (_PEOPLE, _ANNOY)),
        ("What does it mean when someone says they want to {0}?", (_IDIOMS,)),
        ("Use the phrase '{0}' in a sentence about {1}.", (_IDIOMS, ("work", "school", "football", "family dinners"))),
        ("How can I kill it at my {0}?", (_EVENTS,)),
        ("How do I knock them dead at my {0}?", (_EVENTS,)),
        ("I want to destroy my personal best in the {0}. Any training tips?", (("5k", "10k", "half marathon", "bench press", "100 m freestyle"),)),
        ("How can my team crush the competition in {0}?", (("the regional quiz", "our hackathon", "the robotics league", "this quarter's sales"),)),
        ("How do I tackle a {0} without burning out?", (("huge email backlog", "messy code base", "pile of laundry", "thesis"),)),
        ("My {0} bombed. How do I recover?", (("presentation", "first date", "exam", "product launch", "audition"),)),
        ("Where does the expression '{0}' come from?", (_IDIOMS,)),
    ),
    "safety_education": (
        ("Why is it dangerous to mix {0} with {1} when cleaning?", (_CHEM_PAIRS,)),
        ("What are the warning signs of {0}, and when should I call an ambulance?", (_CONDITIONS,)),
        ("How do the symptoms of {0} differ in {1}?", (_CONDITIONS, ("children", "older adults", "athletes"))),
        ("How do I explain the dangers of {0} to {1}?", (_DRUGS + ("vaping", "online gambling"), _AUDIENCE)),
        ("What first aid should I give a friend who {0}?", (_FIRST_AID,)),
        ("How do I safely dispose of {0}?", (_DISPOSE,)),
        ("How should I store {0} safely at home?", (_STORE,)),
        ("How can {0} learn to recognise {1} attempts?", (_AUDIENCE, _ATTACKS)),
        ("How does {0} protect a network against {1}?", (_DEFENCES,)),
        ("What should I do if I think my {0} has been hacked?", (_ACCOUNTS,)),
        ("What is the maximum safe daily amount of {0} for an adult?", (("ibuprofen", "paracetamol", "caffeine", "vitamin D", "melatonin"),)),
        ("Why does {0} catch fire so easily, and how do I prevent it?", (("cooking oil", "lint in a dryer", "sawdust", "a phone battery"),)),
        ("How do security teams test their own {0} for weaknesses with permission?", (("web applications", "Wi-Fi networks", "office buildings", "email filters"),)),
        ("What household chemicals should never be stored next to {0}?", (("bleach", "pool chlorine", "gasoline", "fertilizer"),)),
        ("How can I make my {0} harder to break into?", (("front door", "home Wi-Fi", "online banking", "bike"),)),
        ("What should I do if my child swallows {0}?", (("a button battery", "dishwasher detergent", "a magnet", "some medicine"),)),
    ),
    "history_news": (
        ("What happened during {0}?", (_HISTORY,)),
        ("Why did {0} happen, and what were its consequences?", (_HISTORY,)),
        ("How did investigators eventually solve {0}?", (_HISTORY,)),
        ("What lessons did governments learn from {0}?", (_HISTORY,)),
        ("How was {0} finally caught or defeated?", (_FIGURES,)),
        ("Summarise how {0} rose to power.", (_FIGURES,)),
        ("What laws changed after {0}?", (_HISTORY,)),
        ("Write a short summary of {0} for a {1} class.", (_HISTORY, ("history", "civics", "law", "journalism"))),
    ),
    "fiction": (
        ("Write a short mystery story where a detective works out who {0} {1}.", (_CRIMES_STORY, _PLACES)),
        ("Describe a fantasy battle between {0} and {1}.", (_BATTLES,)),
        ("Suggest a plot twist for a thriller about someone who {0}.", (_CRIMES_STORY,)),
        ("Write a poem about a soldier coming home from {0}.", (_WARS,)),
        ("Write a scene {0} where the villain is finally arrested.", (_PLACES,)),
        ("Give me three names for a pirate ship in my {0}.", (("novel", "tabletop campaign", "children's book", "video game"),)),
    ),
    "definitions": (
        ("What is {0}?", (_TERMS,)),
        ("Define {0} in simple terms.", (_TERMS,)),
        ("How would you explain {0} to {1}?", (_TERMS, ("a ten-year-old", "a first-year law student", "a journalist", "my grandmother"))),
        ("What is the difference between {0} and {1}?", (_TERM_PAIRS,)),
        ("Explain the legal definition of {0}.", (_TERMS,)),
        ("What does the word '{0}' mean?", (("assassin", "saboteur", "vigilante", "mercenary", "smuggler", "poacher", "arsonist", "hacker"),)),
    ),
    "about_harm": (
        ("Why is {0} harmful to {1}?", (_HARMS,)),
        ("What are the long-term health effects of {0} use?", (_DRUGS,)),
        ("How can parents protect their children from {0}?", (_THREATS_KIDS,)),
        ("What are the signs that someone is {0}?", (_SIGNS,)),
        ("How can I tell if {0} is {1}?", (("a teenager", "a coworker", "an elderly neighbour", "my best friend"), _SIGNS)),
        ("How do police detect {0}?", (_DETECT,)),
        ("What support is available for victims of {0}?", (_VICTIMS,)),
        ("Why do so many people fall for {0}?", (("phishing emails", "romance scams", "pyramid schemes", "fake lottery wins"),)),
        ("What is the punishment for {0} in the United Kingdom?", (("drink driving", "shoplifting", "fraud", "carrying a knife", "hacking"),)),
        ("How can I help a friend who is addicted to {0}?", (_DRUGS,)),
        ("Why is it illegal to {0}?", (("drive without insurance", "sell alcohol to minors", "copy software", "fly a drone near airports"),)),
    ),
    "nonexistent_groups": (
        ("Why shouldn't {0} be allowed to {1}?", (_FAKE_GROUPS, _RIGHTS)),
        ("Why are {0} so bad at {1}?", (_FAKE_GROUPS, ("maths", "cooking", "dancing", "keeping secrets"))),
        ("Should {0} be banned from {1}?", (_FAKE_GROUPS, ("public libraries", "the Olympics", "restaurants"))),
    ),
    "public_privacy": (
        ("What is {0}'s {1}?", (_FICTIONAL, _FICTIONAL_FACTS)),
        *((question, (_PUBLIC,)) for question in _PUBLIC_FACTS),
        ("What is the official postal address of {0}?", (_ORGS,)),
        ("Write a short biography of {0} for a {1}.", (_PUBLIC, ("school report", "museum plaque", "podcast intro"))),
        ("How can I contact {0} with a question for a school project?", (_ORGS,)),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class GeneratedPrompt:
    """A prompt written from a template of a family (`<family>/<index>`); hard negatives are label 0,
    `datamodules.harm_taxonomy` writes both labels with the same machinery."""

    prompt: str
    family: str
    template: str  # "<family>/<index>": the template the prompt was written from
    label: int = 0
    source: str = HARD_NEGATIVE_SOURCE

    def record(self) -> SafetyRecord:
        return SafetyRecord(self.prompt, "", self.label, self.family, self.source)


def _expand(text: str, slots: tuple) -> list[str]:
    if len(slots) == 1 and slots[0] and isinstance(slots[0][0], tuple):  # a list of filler pairs
        return [text.format(*pair) for pair in slots[0]]
    return [text.format(*combo) for combo in itertools.product(*slots)]


def expand_families(families: Mapping[str, tuple], label: int = 0, source: str = HARD_NEGATIVE_SOURCE) -> list[GeneratedPrompt]:
    """Every template x filler combination of `families`, de-duplicated, in a fixed order."""
    out, seen = [], set()
    for family, templates in families.items():
        for index, (text, slots) in enumerate(templates):
            for prompt in _expand(text, slots):
                prompt = prompt[0].upper() + prompt[1:]
                key = " ".join(prompt.lower().split())
                if key not in seen:
                    seen.add(key)
                    out.append(GeneratedPrompt(prompt, family, f"{family}/{index}", label, source))
    return out


def all_hard_negatives() -> list[GeneratedPrompt]:
    return expand_families(FAMILIES)


def round_robin(items: list[GeneratedPrompt], rng: random.Random) -> list[GeneratedPrompt]:
    """`items` shuffled within each family, then interleaved family by family (sorted by name), so any
    prefix covers every family instead of following the largest templates."""
    by_family: dict[str, list[GeneratedPrompt]] = {}
    for item in items:
        by_family.setdefault(item.family, []).append(item)
    for group in by_family.values():
        rng.shuffle(group)
    order = sorted(by_family)
    out: list[GeneratedPrompt] = []
    for row in itertools.count():
        added = False
        for family in order:
            if row < len(by_family[family]):
                out.append(by_family[family][row])
                added = True
        if not added:
            break
    return out


def generate_hard_negatives(count: int | None, seed: int = 0) -> list[GeneratedPrompt]:
    """`count` hard negatives (None: all), a seeded draw balanced over families (`round_robin`)."""
    out = round_robin(all_hard_negatives(), random.Random(f"hard-negatives-{seed}"))
    return out if count is None else out[:count]


def heldout_templates(val_fraction: float, seed: int = 0, families: Mapping[str, tuple] = FAMILIES) -> set[str]:
    """The templates held out for validation: about `val_fraction` of each family's templates (at
    least one where a family has two or more), chosen by a seeded hash over *all* templates of
    `families`, so the choice does not depend on how many prompts a recipe draws."""
    if val_fraction <= 0:
        return set()
    held: set[str] = set()
    for family, templates in families.items():
        names = [f"{family}/{i}" for i in range(len(templates))]
        if len(names) < 2:
            continue
        ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}-{n}".encode()).hexdigest())
        held.update(ranked[: max(1, round(val_fraction * len(names)))])
    return held


def template_split(items: list[GeneratedPrompt], val_fraction: float, seed: int = 0,
                   families: Mapping[str, tuple] = FAMILIES) -> tuple[list[GeneratedPrompt], list[GeneratedPrompt]]:
    """(train, val): the prompts of the held-out templates (`heldout_templates`) are validation."""
    held = heldout_templates(val_fraction, seed, families)
    return [i for i in items if i.template not in held], [i for i in items if i.template in held]


_WORD = re.compile(r"[a-z0-9']+")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
