"""Exact resume: `kill -9` in the middle of fit, then `--ckpt_path last`, ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from datamodules.sampling import ResumableSampler
from cli import cli_main, newest_checkpoint
from tests.helpers import (
    ROOT, assert_same_weights, checkpoint_weights, run_main, write_sources,
)


def test_sampler_is_seeded_per_epoch_and_sharded_like_one_big_batch():
    data = list(range(12))
    one = ResumableSampler(data, seed=3)
    one.set_epoch(1)
    again = ResumableSampler(data, seed=3)
    again.set_epoch(1)
    assert list(one) == list(again)
    one.set_epoch(2)
    assert list(one) != list(again) and sorted(one) == data
    # Two ranks with batch 2 cover, step by step, the samples of one rank with batch 4.
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for sampler in [again, *ranks]:
        sampler.set_epoch(1)
    whole, shard0, shard1 = list(again), list(ranks[0]), list(ranks[1])
    for step in range(3):
        assert sorted(shard0[2 * step:2 * step + 2] + shard1[2 * step:2 * step + 2]) == sorted(whole[4 * step:4 * step + 4])


def test_sampler_resumes_only_the_interrupted_epoch():
    data = list(range(10))
    full = ResumableSampler(data, seed=0)
    full.set_epoch(1)
    resumed = ResumableSampler(data, seed=0)
    resumed.resume(epoch=1, samples_done=4)
    assert list(resumed) == list(full)[4:]
    assert len(resumed) == 10  # Lightning counts the remaining batches of the epoch itself
    resumed.set_epoch(2)
    full.set_epoch(2)
    assert list(resumed) == list(full)


def fit_args(tmp_path: Path, run: str, *extra: str) -> list[str]:
    """The tiny model, 37 training examples in batches of 4 (10 steps per epoch), 16 steps, a
    checkpoint every 4 steps: a resume from step 12 is two batches into the second epoch."""
    return [
        "fit", "--config", str(ROOT / "conf" / "tiny.yaml"), write_sources(tmp_path / "data"),
        "--trainer.max_steps=16", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / run}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / run / 'checkpoints'}",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=0",
        "--trainer.callbacks.every_n_train_steps=4",
        *extra,
    ]


def fit_in_this_process(args: list[str]) -> None:
    """Like `run_main` (one thread, so bit-for-bit equal to it) without a new interpreter's start-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli_main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_kill_9_then_resume_from_last_equals_an_uninterrupted_run(tmp_path):
    fit_in_this_process(fit_args(tmp_path, "reference"))
    killed = run_main(
        fit_args(tmp_path, "killed", "--trainer.callbacks+=tests.helpers.KillAtStep", "--trainer.callbacks.step=14"),
        cwd=tmp_path, check=False,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    step_at_kill, _ = checkpoint_weights(last)
    assert step_at_kill == 12
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["SafetyMixDataModule"] == {"epoch": 1, "samples_done": 8, "batches_done": 2}  # mid-epoch: 2 of 10

    fit_in_this_process(fit_args(tmp_path, "killed", "--ckpt_path=last"))

    ref_step, ref_weights = checkpoint_weights(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    step, weights = checkpoint_weights(last)
    assert step == ref_step == 16
    assert_same_weights(weights, ref_weights)


@pytest.mark.slow
def test_ckpt_path_auto_picks_the_newest_of_last_and_the_slurm_requeue_checkpoint(tmp_path):
    cli = cli_main(fit_args(tmp_path, "auto")[1:], run=False)
    trainer = cli.trainer
    assert newest_checkpoint(trainer) is None  # first submission: start fresh
    checkpoints = Path(trainer.default_root_dir) / "checkpoints"
    checkpoints.mkdir(parents=True)

    def write(path: Path, mtime: int) -> Path:
        path.write_text("")
        os.utime(path, (mtime, mtime))  # explicit: files written within one clock tick share an mtime
        return path

    last = write(checkpoints / "last.ckpt", 100)
    write(checkpoints / "epoch=0-step=5.ckpt", 400)  # not a last checkpoint
    assert newest_checkpoint(trainer) == str(last)
    hpc = write(Path(trainer.default_root_dir) / "hpc_ckpt_1.ckpt", 200)
    assert newest_checkpoint(trainer) == str(hpc)
    last_v1 = write(checkpoints / "last-v1.ckpt", 300)
    assert newest_checkpoint(trainer) == str(last_v1)
