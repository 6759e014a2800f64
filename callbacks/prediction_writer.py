"""Write `predict` results as one JSONL file, in input order, from any number of ranks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter


class GatedPredictionWriter(BasePredictionWriter):
    """Collect `(index, record)` pairs from `predict_step` and write them to `output_path`.

    Each rank keeps its own records; at the end of the epoch they are gathered to rank 0
    (`all_gather_object`), sorted by index, de-duplicated (a `DistributedSampler` pads the last
    batch with repeats) and checked for gaps, then written atomically (temp file + `os.replace`),
    so a crashed run never leaves a truncated file behind.
    """

    def __init__(self, output_path: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        self._records: list[tuple[int, dict[str, Any]]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction: list[tuple[int, dict[str, Any]]], batch_indices, batch, batch_idx,
        dataloader_idx,
    ) -> None:
        self._records.extend(prediction)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_rank = [self._records]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, self._records)
        # Every rank merges (and so fails alike on a gap) instead of waiting at the barrier for rank 0.
        records = merge_predictions(per_rank, expected=_dataset_size(trainer))
        if trainer.is_global_zero:
            write_jsonl_atomic(self.output_path, records)
        trainer.strategy.barrier()
        self._records = []


def merge_predictions(
    per_rank: list[list[tuple[int, dict[str, Any]]]], expected: int | None = None
) -> list[dict[str, Any]]:
    """Records of all ranks in index order; duplicate indices are kept once; gaps are an error."""
    by_index: dict[int, dict[str, Any]] = {}
    for records in per_rank:
        for index, record in records:
            by_index.setdefault(int(index), record)
    indices = sorted(by_index)
    if expected is not None:
        missing = sorted(set(range(expected)) - set(indices))
        if missing or len(indices) != expected:
            raise RuntimeError(
                f"predictions for {len(indices)} of {expected} prompts; missing indices {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )
    return [by_index[i] for i in indices]


def write_jsonl_atomic(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _dataset_size(trainer: L.Trainer) -> int | None:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
