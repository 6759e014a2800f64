"""Write the trained model as a standard Hugging Face folder at the end of fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lightning_modules.safety_signal_lm import SafetySignalLM


class ExportPretrained(L.Callback):
    """Export model + tokenizer (with `[CLS]`) + head safetensors to `dirpath` when fit ends."""

    def __init__(self, dirpath: str = "runs/export") -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: SafetySignalLM) -> None:
        full_state_dict = None
        if isinstance(trainer.strategy, FSDPStrategy):
            # Each rank holds a shard: every rank must take part in gathering the full weights
            # (a collective), which land on rank 0 only, in CPU memory.
            offload = trainer.strategy.root_device.type != "cpu"
            full_state_dict = _gather_fsdp_state_dict(trainer.strategy.model, offload_to_cpu=offload)
        if trainer.is_global_zero:
            pl_module.export_pretrained(self.dirpath, full_state_dict=full_state_dict)
        trainer.strategy.barrier()


def _gather_fsdp_state_dict(fsdp_module: torch.nn.Module, offload_to_cpu: bool) -> dict[str, torch.Tensor]:
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=offload_to_cpu, rank0_only=True)
    with FSDP.state_dict_type(fsdp_module, StateDictType.FULL_STATE_DICT, config):
        return fsdp_module.state_dict()
