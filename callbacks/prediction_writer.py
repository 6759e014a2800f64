"""Write `predict` results as one JSONL file, in input order, from any number of ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from safety_signal.io import gather_indexed, write_jsonl_atomic


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
        # Every rank merges (and so fails alike on a gap) instead of waiting at the barrier for rank 0.
        records = gather_indexed(self._records, expected=_dataset_size(trainer), allow_duplicates=True)
        if trainer.is_global_zero:
            write_jsonl_atomic(self.output_path, records.values())
        trainer.strategy.barrier()
        self._records = []


def _dataset_size(trainer: L.Trainer) -> int | None:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
