"""SLURM: the sbatch template on a real (single-node) Slurm, 2 CPU ranks, a forced requeue in the middle of a step.

CI starts the cluster with `scripts/slurm-local.sh up`; without `sbatch` (or a reachable
controller) the tests that submit jobs are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from cli import cli_main
from tests.helpers import ROOT, assert_same_weights, checkpoint_weights, subprocess_env, write_sources

TEMPLATE = ROOT / "scripts" / "slurm" / "train.sbatch"


def slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not installed"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        return f"no Slurm controller reachable: {ping.stdout.strip() or ping.stderr.strip()}"
    return None


_SLURM_MISSING = slurm_unavailable()
needs_slurm = pytest.mark.skipif(_SLURM_MISSING is not None, reason=str(_SLURM_MISSING))


def test_template_requeues_on_a_pre_timeout_signal_with_one_command():
    text = TEMPLATE.read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M))
    assert options["signal"] == "SIGUSR1@90"
    assert "requeue" in options and options["open-mode"] == "append"
    assert options["ntasks-per-node"] == options["gpus-per-node"]  # one task per device
    command = [line for line in text.splitlines() if line.startswith("srun ")]
    assert command == ['srun "$PYTHON" main.py fit --config "$CONFIG" --config conf/slurm.yaml --ckpt_path auto "$@"']


@pytest.mark.slow
def test_slurm_layer_enables_lightning_auto_requeue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(ROOT / "conf" / "tiny.yaml"), "--config", str(ROOT / "conf" / "slurm.yaml"),
                    write_sources(tmp_path / "data")], run=False)
    environment = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def wait_for(what: str, condition, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-6000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.5)


def wait_completed(job_id: str, log: Path, timeout: float = 300) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local.sh"), "wait", job_id, str(timeout)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"job {job_id}: {proc.stdout.strip()}\n{log.read_text()[-6000:] if log.exists() else ''}"


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_requeued_job_resumes_and_matches_an_uninterrupted_job(tmp_path):
    """Job A is stopped on both ranks in the middle of optimizer step 6 (one batch into the second
    epoch) and gets SIGUSR1: Lightning writes hpc_ckpt_1.ckpt and requeues it; the second run of
    the same command resumes from that checkpoint. Job B runs the same command uninterrupted."""
    markers = tmp_path / "markers"
    markers.mkdir()
    sources = write_sources(tmp_path / "data")

    def submit(name: str, *extra: str) -> tuple[str, Path, Path]:
        run, log = tmp_path / name, tmp_path / f"{name}.out"
        args = [
            str(ROOT / "conf" / "tiny.yaml"), sources,
            # 36 training examples, 2 ranks x 4 per step: 5 steps per epoch, so step 6 is mid-epoch 2
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.max_steps=8", "--trainer.limit_val_batches=0", "--trainer.logger=false",
            f"--trainer.default_root_dir={run}",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run / 'checkpoints'}", "--trainer.callbacks.save_last=true",
            "--trainer.callbacks.save_top_k=0", "--trainer.callbacks.every_n_train_steps=4",
            *extra,
        ]
        job = subprocess.run(
            ["sbatch", "--parsable", f"--job-name=test-{name}", f"--chdir={ROOT}", f"--output={log}",
             "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:15:00",
             str(TEMPLATE), *args],
            capture_output=True, text=True, check=True, env=subprocess_env(PYTHON=sys.executable),
        ).stdout.strip().split(";")[0]
        return job, run, log

    job_a, run_a, log_a = submit(
        "requeued", "--trainer.callbacks+=tests.helpers.PauseForRequeueSignal", "--trainer.callbacks.step=6",
        f"--trainer.callbacks.marker_dir={markers}",
    )
    job_b, run_b, log_b = submit("uninterrupted")
    try:
        wait_for("both ranks to pause at step 6", lambda: len(list(markers.glob("paused-*"))) == 2, 240, log_a)
        subprocess.run(["scancel", "--signal=USR1", job_a], check=True)  # what --signal=SIGUSR1@90 sends
        wait_for("the requeue", lambda: job_state(job_a).get("Restarts") == "1", 120, log_a)
        # The requeued job is held for `cred_expire` seconds; let it start as soon as the node is free.
        subprocess.run(["scontrol", "update", f"JobId={job_a}", "StartTime=now"], check=False)
        wait_completed(job_a, log_a)
        wait_completed(job_b, log_b)
    finally:
        subprocess.run(["scancel", job_a, job_b], capture_output=True)

    out = log_a.read_text()
    assert f"[sbatch] job {job_a} restart 0" in out and f"[sbatch] job {job_a} restart 1" in out
    assert "Handling auto-requeue signal: 10" in out
    assert "[resume] no checkpoint yet: starting fresh" in out
    assert f"[resume] {run_a / 'hpc_ckpt_1.ckpt'}" in out

    hpc = torch.load(run_a / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 6  # saved mid-step: step 6's update is not in it
    # 1 of 5 batches of epoch 2 on each rank
    assert hpc["SafetyMixDataModule"] == {"epoch": 1, "samples_done": 4, "batches_done": 1}

    step_a, weights_a = checkpoint_weights(run_a / "checkpoints" / "last.ckpt")
    step_b, weights_b = checkpoint_weights(run_b / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 8
    assert_same_weights(weights_a, weights_b)
