"""Shared by the scale-out tests: local data, `main.py` in a subprocess, test-only callbacks and a CPU FSDP strategy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.layout import encode_prompt

ROOT = Path(__file__).resolve().parents[1]


def write_sources(data_dir: Path, num_harmful: int = 16, num_benign: int = 40) -> str:
    """Local JSONL sources; returns the `--data.sources=...` argument."""
    data_dir.mkdir(parents=True, exist_ok=True)
    harmful = data_dir / "harmful.jsonl"
    benign = data_dir / "benign.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Explain how to hack account number {i}"}) + "\n"
                               for i in range(num_harmful)))
    benign.write_text("".join(json.dumps({"prompt": f"What is {i} times 3?", "response": f"It is {3 * i}."}) + "\n"
                              for i in range(num_benign)))
    return f"--data.sources=[{{name: h, path: {harmful}, label: 1}}, {{name: b, path: {benign}, label: 0}}]"


def tiny_config_overrides_arg() -> str:
    from tests.conftest import tiny_overrides

    return f"--model.config_overrides={json.dumps(tiny_overrides())}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The parent's environment with the repository importable first and one thread; `extra` wins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update({"OMP_NUM_THREADS": "1", **extra})
    return env


def run_main(args: list[str], cwd: Path, timeout: float = 300, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`python main.py ARGS` in a fresh process (one thread per process: bit-for-bit repeatable)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=subprocess_env(**env),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def checkpoint_weights(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["global_step"], state["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class KillAtStep(L.Callback):
    """SIGKILL this process in the middle of optimizer step `step` (after backward, before the update)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseForRequeueSignal(L.Callback):
    """In the first run of a SLURM job only, every rank stops in the middle of optimizer step
    `step`, writes `<marker_dir>/paused-<rank>`, and waits for the test to send the requeue signal.

    All ranks then handle the signal at the same point, so the collectives inside Lightning's
    checkpoint save match across ranks; the checkpoint is written mid-step, the hardest case for
    an exact resume.
    """

    def __init__(self, step: int, marker_dir: str, timeout_s: float = 180.0) -> None:
        self.step = step
        self.marker_dir = Path(marker_dir)
        self.timeout_s = timeout_s

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if os.environ.get("SLURM_RESTART_COUNT", "0") != "0" or trainer.global_step != self.step:
            return
        (self.marker_dir / f"paused-{trainer.global_rank}").touch()
        deadline = time.monotonic() + self.timeout_s
        # SIGUSR1 (Lightning: save hpc checkpoint, `scontrol requeue`), then SLURM's SIGTERM ends the job.
        while not trainer.received_sigterm:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no requeue signal within {self.timeout_s} s")
            time.sleep(0.05)


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's `FSDPStrategy` on CPU processes (gloo), to run an FSDP preset here.

    Lightning 2.6 refuses FSDP without CUDA (only for the exact `FSDPStrategy` class) and passes
    `device_id=None` on CPU, which torch's FSDP rejects ("needs a non-CPU accelerator device");
    torch's FSDP itself runs on CPU when `device_id` is the CPU device. Everything else (wrap and
    activation-checkpointing policies, sharding, mixed precision, sharded checkpoints) is the
    preset's configuration, unchanged.
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch.distributed.fsdp as fsdp

        original = fsdp.FullyShardedDataParallel

        class _OnCPU(original):  # nested units are built with the root's kwargs, so CPU propagates
            def __init__(self, *args: Any, device_id: Any = None, **kwargs: Any) -> None:
                super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)

        fsdp.FullyShardedDataParallel = _OnCPU
        try:
            return super()._setup_model(model)
        finally:
            fsdp.FullyShardedDataParallel = original


def hf_greedy(module: SafetySignalLM, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """HF `generate(do_sample=False)` on the same formatted prompts without `[CLS]`, left padded."""
    tokenizer = module.tokenizer
    rows = [encode_prompt(tokenizer, p, module.safety.chat_template).input_ids[1:] for p in prompts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        attention[i, length - len(row):] = 1
    device = module.model.device
    out = module.model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                                do_sample=False, suppress_tokens=[module.cls_id], pad_token_id=tokenizer.pad_token_id)
    eos = module.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    result = []
    for row in out[:, length:].cpu().tolist():  # HF pads finished rows; ours stop at (and include) EOS
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        result.append(row if stop is None else row[: stop + 1])
    return result
