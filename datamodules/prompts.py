"""Read prompts for `main.py predict` from JSONL (field `prompt`), CSV (column `prompt`) or plain text.

Every error names the file, the line and the field, so a bad record in a large file is found at once.
"""

from __future__ import annotations

import csv
from pathlib import Path

from datamodules.sources import read_jsonl

PROMPT_FIELD = "prompt"


def read_prompts(path: str | Path, field: str = PROMPT_FIELD) -> list[str]:
    """Prompts in file order.

    `.jsonl`: one JSON object per non-blank line, prompt in `field`. `.csv`: a header row with a
    `field` column (quoted fields may span lines). `.txt`: one prompt per non-blank line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, field)
    if suffix == ".csv":
        return _read_csv(path, field)
    if suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise ValueError(f"{path}: unsupported prompt file type {suffix!r}; use .jsonl, .csv or .txt")


def _read_jsonl(path: Path, field: str) -> list[str]:
    prompts = []
    for line_number, record in read_jsonl(path):
        if field not in record:
            raise ValueError(f"{path}: line {line_number}: missing field {field!r}")
        prompts.append(_check_prompt(record[field], path, line_number, field))
    return prompts


def _read_csv(path: Path, field: str) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise ValueError(f"{path}: line 1: no {field!r} column (columns: {reader.fieldnames})")
        for row in reader:
            # `line_num` is the line the record ends on (a quoted prompt may span several lines).
            prompts.append(_check_prompt(row[field], path, reader.line_num, field))
    return prompts


def _check_prompt(value: object, path: Path, line_number: int, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: line {line_number}: field {field!r} must be a non-empty string, got {value!r}")
    return value
