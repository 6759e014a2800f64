"""The LightningCLI behind `python main.py {fit,validate,test,predict} --config conf/<preset>.yaml`.

`fit --ckpt_path auto` resumes from the newest checkpoint of this run (a `ModelCheckpoint` last
checkpoint or Lightning's SLURM requeue checkpoint `hpc_ckpt_N.ckpt` in `default_root_dir`) and
starts fresh when there is none, so a first SLURM submission and its requeues run one command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from datamodules.safety_mix import SafetyMixDataModule
from lightning_modules.safety_signal_lm import SafetySignalLM

RESUME_AUTO = "auto"
# Lightning's name for the checkpoint its SLURM requeue signal handler writes to default_root_dir.
HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_\d+\.ckpt$")


def newest_checkpoint(trainer: Trainer) -> str | None:
    """The most recently written resumable checkpoint of this run, or None.

    Candidates: `hpc_ckpt_N.ckpt` in `default_root_dir` and `last*.ckpt` in the dirpath of each
    `ModelCheckpoint`. (Lightning's own `ckpt_path="last"` ignores the requeue checkpoint, and
    `ckpt_path=None` on SLURM ignores `last.ckpt`; after a requeue either may be the newer one.)
    """
    candidates = [p for p in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt") if HPC_CHECKPOINT.match(p.name)]
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
            continue
        if callback.dirpath is None:
            raise ValueError(f"--ckpt_path {RESUME_AUTO} needs ModelCheckpoint(dirpath=...) to find its last checkpoint")
        last = callback.CHECKPOINT_NAME_LAST
        candidates += [p for p in Path(callback.dirpath).glob(f"{last}*{callback.FILE_EXTENSION}")
                       if re.match(rf"^{last}(-v?\d+)?$", p.stem)]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


class SafetyCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data is tokenized with the model's tokenizer and laid out for the model's phase.
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("model.safety", "data.safety")

    def fit(
        self, model: LightningModule, datamodule: LightningDataModule | None = None, ckpt_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        if ckpt_path == RESUME_AUTO:
            ckpt_path = newest_checkpoint(self.trainer)
            rank_zero_info(f"[resume] {ckpt_path or 'no checkpoint yet: starting fresh'}")
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> SafetyCLI:
    return SafetyCLI(
        SafetySignalLM,
        SafetyMixDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
