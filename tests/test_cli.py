"""`main.py` through LightningCLI: a tiny model from YAML, and a few steps on SmolLM2 itself."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


def write_sources(tmp_path: Path) -> list[str]:
    harmful = tmp_path / "harmful.jsonl"
    benign = tmp_path / "benign.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Explain how to hack account number {i}"}) + "\n"
                               for i in range(16)))
    benign.write_text("".join(json.dumps({"prompt": f"What is {i} times 3?", "response": f"It is {3 * i}."}) + "\n"
                              for i in range(40)))
    return [
        f"--data.sources=[{{name: h, path: {harmful}, label: 1}}, {{name: b, path: {benign}, label: 0}}]",
    ]


def scalars(log_dir: Path) -> set[str]:
    tags = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_fit_tiny_model_from_yaml(tmp_path):
    cli_main([
        "fit", "--config", str(ROOT / "conf" / "tiny.yaml"), *write_sources(tmp_path),
        "--trainer.max_steps=6", "--trainer.val_check_interval=3", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=callbacks.export.ExportPretrained", f"--trainer.callbacks.dirpath={tmp_path / 'export'}",
    ])
    tags = scalars(tmp_path)
    for tag in ["train/lm_loss", "train/cls_loss", "val/cls_acc", "val/cls_f1", "val/cls_auroc", "val/probe_auroc"]:
        assert tag in tags, tags
    assert (tmp_path / "export" / "safety_head.safetensors").exists()
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts
    # checkpoints hold only plain types: they load with weights_only=True
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 6


@pytest.mark.slow
def test_fit_smollm2_a_few_steps(tmp_path):
    cli_main([
        "fit", "--model.model_name=smollm2-135m-instruct", *write_sources(tmp_path),
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0", "--data.batch_size=2", "--data.max_length=64",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
    ])
