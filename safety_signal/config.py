"""`SafetyConfig`: every setting that training and inference must share, with one source.

A model is trained with a mask phase, a chat-template rule, probe windows and a guide text, and
it must be decoded with exactly the same ones. They live here, are an argument of the training
module (and linked into the data module by the CLI), and are written next to an export as
`safety_config.json`, from which the generator, the report and the server read them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safety_signal.masks import Phase
from safety_signal.refusal import DEFAULT_GUIDE

SAFETY_CONFIG_FILE = "safety_config.json"


@dataclass
class SafetyConfig:
    """Settings shared by training and inference (plain types: LightningCLI YAML and JSON).

    Attributes:
        phase: `sft` ([CLS] reads the query, responses read [CLS]; prompts use the chat template)
            or `pretrain` ([CLS] reads all text, nothing reads [CLS]; plain text).
        use_cls: False trains and decodes the SFT baseline: nothing attends `[CLS]` (the
            pretrain-phase mask rule), so the LM learns the data exactly as without the signal.
        guide: the opening of every reasoned refusal, in the training data and inserted by
            strategic decoding.
        r1: R1 window, the query plus the first r1 response tokens.
        r2: R2 window, the latest r2 response tokens.
        r3: R3 window, r3 tokens after a benign-to-malicious switch (inference only).
        threshold: a verdict is malicious when its probability is above this (calibrated on the
            validation split when the training run asks for it).
        eos_token_ids: the tokens that end an answer; filled at export from the model's
            generation config and tokenizer (`None`: derive them from the loaded model).
    """

    phase: Phase = "sft"
    use_cls: bool = True
    guide: str = DEFAULT_GUIDE
    r1: int = 10
    r2: int = 10
    r3: int = 10
    threshold: float = 0.5
    eos_token_ids: list[int] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.phase not in ("sft", "pretrain"):
            raise ValueError(f"phase must be 'sft' or 'pretrain', got {self.phase!r}")
        if min(self.r1, self.r2, self.r3) < 1:
            raise ValueError("r1, r2 and r3 must be >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not self.guide.strip():
            raise ValueError("the guide text must not be empty")

    @property
    def mask_phase(self) -> Phase:
        """The mask rule the model is trained and decoded with (the baseline never attends [CLS])."""
        return self.phase if self.use_cls else "pretrain"

    @property
    def chat_template(self) -> bool:
        """Prompts are chat-formatted in the SFT phase and plain text in the pretraining phase."""
        return self.phase == "sft"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SafetyConfig":
        """Known keys only: an export also records facts about the model (cls token, lambda)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def save(self, folder: str | Path, **extra: Any) -> Path:
        path = Path(folder) / SAFETY_CONFIG_FILE
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "SafetyConfig":
        path = Path(folder) / SAFETY_CONFIG_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(values)

    @classmethod
    def coerce(cls, value: "SafetyConfig | dict[str, Any] | None") -> "SafetyConfig":
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls.from_dict(value)
