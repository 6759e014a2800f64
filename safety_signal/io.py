"""Nothing is lost: atomic file writes, and indexed records gathered from every rank.

- `write_text_atomic` / `write_json_atomic` / `write_jsonl_atomic`: a temp file next to the
  target, then `os.replace`, so a crash never leaves a half-written file behind.
- `gather_indexed`: every rank's `(index, record)` pairs, merged in index order on every rank
  (`all_gather_object`), with a clear error for a missing index and, where each index must be
  answered once, for a duplicate.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch.distributed as dist


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file next to `path`, then `os.replace` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def merge_indexed(
    per_rank: list[list[tuple[int, Any]]], expected: int | None = None, allow_duplicates: bool = False
) -> dict[int, Any]:
    """Records of all ranks by index. A missing index is an error; so is a duplicate unless allowed
    (a `DistributedSampler` pads the last batch with repeats: the first copy is kept)."""
    merged: dict[int, Any] = {}
    for records in per_rank:
        for index, record in records:
            index = int(index)
            if index in merged:
                if not allow_duplicates:
                    raise RuntimeError(f"index {index} was answered by two ranks")
                continue
            merged[index] = record
    if expected is not None:
        missing = sorted(set(range(expected)) - merged.keys())
        if missing or len(merged) != expected:
            raise RuntimeError(
                f"{len(merged)} of {expected} records gathered; missing indices {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )
    return dict(sorted(merged.items()))


def gather_indexed(
    records: list[tuple[int, Any]], expected: int | None = None, allow_duplicates: bool = False
) -> dict[int, Any]:
    """This rank's `(index, record)` pairs merged with every other rank's (the same on every rank)."""
    per_rank = [records]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, records)
    return merge_indexed(per_rank, expected, allow_duplicates)
