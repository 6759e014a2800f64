"""Write the trained model as a standard Hugging Face folder at the end of fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_modules.safety_signal_lm import SafetySignalLM


class ExportPretrained(L.Callback):
    """Export model + tokenizer (with `[CLS]`) + head safetensors to `dirpath` when fit ends."""

    def __init__(self, dirpath: str = "runs/export") -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: SafetySignalLM) -> None:
        # Under FSDP every rank must take part in gathering the full state dict; only rank 0 writes.
        if trainer.is_global_zero:
            pl_module.export_pretrained(self.dirpath)
        trainer.strategy.barrier()
