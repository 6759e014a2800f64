"""Training-step cost of the explicit safety signal, measured in one run.

1. Step time: `SafetySignalLM` (SFT mask, [CLS] + probes, LM + BCE loss) vs the plain HF
   causal-LM step (`model(input_ids, labels=...)`) on the same real tokens, same optimizer.
2. Throughput: `Trainer.fit` on `SafetySignalLM` vs a raw PyTorch loop running the same
   module's loss (the Lightning overhead).

    python benchmarks/train_step.py                       # SmolLM2-135M, batch 4 x 256
    python benchmarks/train_step.py --tiny --steps 20     # quick check on the tiny model

    python benchmarks/train_step.py --precision --batch-size 8 --length 128   # 3. only
    python benchmarks/train_step.py --optimizer --steps 5                     # 4. only

3. Precision (`--precision`): `Trainer.fit` throughput under `bf16-mixed` (CPU autocast, float32 master
   weights) vs `32-true`, same module, batches and seed, alternated.
4. Optimizer (`--optimizer`): one AdamW step over the module's parameters, torch's default CPU implementation vs
   the fused kernel `SafetySignalLM.configure_optimizers` uses on CPU, alternated.

Targets: step-time ratio <= 1.05x, Lightning throughput >= 0.95x of the raw loop.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safety_signal.layout import ProbeConfig, collate_examples, encode_example  # noqa: E402
from safety_signal.masks import Role  # noqa: E402
from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def make_batch(module: SafetySignalLM, batch_size: int, length: int, probes: ProbeConfig) -> dict:
    """`batch_size` harmful/benign examples whose real part is exactly `length` tokens."""
    filler = " ".join(["The quick brown fox jumps over the lazy dog."] * (length // 4))
    examples = []
    for i in range(batch_size):
        prompt = "Explain how a bread oven works." if i % 2 == 0 else "Explain how to pick a lock."
        ex = encode_example(module.tokenizer, prompt, filler, i % 2, module.safety, probes, max_length=length)
        assert len(ex.input_ids) == length
        examples.append(ex)
    return collate_examples(examples, module.tokenizer.pad_token_id, module.cls_id)


def plain_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The same real tokens without [CLS] / probes, and the same LM targets."""
    real = (batch["roles"] >= Role.TEMPLATE) & (batch["roles"] <= Role.RESPONSE)
    n = int(real[0].sum())
    ids = batch["input_ids"][real].view(-1, n)
    targets = batch["lm_targets"][real].view(-1, n)
    return ids, targets


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def machine() -> str:
    return f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"


def time_optimizer(module: SafetySignalLM, args: argparse.Namespace) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    seconds: dict[str, list[float]] = {"default": [], "fused": []}
    for _ in range(args.repeats):
        for name in seconds:
            optimizer = torch.optim.AdamW(params, lr=1e-6, fused=(name == "fused") or None)
            seconds[name].append(time_steps(optimizer.step, args.steps, args.warmup))
    default, fused = min(seconds["default"]), min(seconds["fused"])
    print(machine())
    print(f"AdamW step over {sum(p.numel() for p in params) / 1e6:.1f} M parameters, best of {args.repeats}:")
    print(f"default: {default * 1000:8.1f} ms   fused: {fused * 1000:8.1f} ms   ratio fused/default: {fused / default:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2-135M")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the measurements to cancel drift")
    parser.add_argument("--precision", action="store_true", help="only measure bf16-mixed vs 32-true under Trainer.fit")
    parser.add_argument("--optimizer", action="store_true", help="only measure AdamW's step, default vs fused")
    args = parser.parse_args()
    torch.manual_seed(0)

    module = SafetySignalLM(config_overrides=TINY if args.tiny else None, attn_implementation="sdpa")
    module.configure_model()
    module.train()
    if args.optimizer:
        time_optimizer(module, args)
        return
    probes = ProbeConfig(max_probes=args.max_probes)
    batch = make_batch(module, args.batch_size, args.length, probes)
    ids, targets = plain_inputs(batch)
    n_probe_tokens = int((batch["roles"] == Role.PROBE).sum())
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)

    def ours() -> None:
        loss = module.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain() -> None:
        loss = module.model(input_ids=ids, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Lightning vs a raw loop over the same module, data and optimizer settings.
    tokens_per_step = ids.numel()
    n_batches = args.steps + args.warmup
    loader = DataLoader([batch] * n_batches, batch_size=None)

    def raw_loop() -> float:
        opt = torch.optim.AdamW(module.parameters(), lr=1e-6, fused=True)  # as configure_optimizers on CPU
        start = None
        for i, b in enumerate(loader):
            if i == args.warmup:
                start = time.perf_counter()
            loss = module.compute_losses(b)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return args.steps * tokens_per_step / (time.perf_counter() - start)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.tps = args.steps * tokens_per_step / (time.perf_counter() - self.start)

    def lightning_loop(precision: str = "32-true") -> float:
        timer = Timer()
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=n_batches, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
            precision=precision,
        )
        trainer.fit(module, train_dataloaders=loader)
        return timer.tps

    name = "tiny random Llama" if args.tiny else "SmolLM2-135M-Instruct"
    header = (f"{machine()}\n"
              f"model: {name}; batch {args.batch_size} x {args.length} real tokens + {n_probe_tokens} probe tokens "
              f"(max_probes={args.max_probes}); {args.steps} timed steps after {args.warmup} warmup, best of {args.repeats}")
    if args.precision:
        tps = {"32-true": [], "bf16-mixed": []}
        for _ in range(args.repeats):
            for precision in tps:
                tps[precision].append(lightning_loop(precision))
        fp32, bf16 = max(tps["32-true"]), max(tps["bf16-mixed"])
        print(header)
        print(f"Lightning fit, 32-true:    {fp32:9.1f} tokens/s")
        print(f"Lightning fit, bf16-mixed: {bf16:9.1f} tokens/s")
        print(f"step-time ratio bf16/fp32: {fp32 / bf16:9.3f}x")
        return

    t_ours, t_plain = [], []
    for _ in range(args.repeats):
        t_plain.append(time_steps(plain, args.steps, args.warmup))
        t_ours.append(time_steps(ours, args.steps, args.warmup))
    step_ours, step_plain = min(t_ours), min(t_plain)

    tps_raw, tps_pl = [], []
    for _ in range(args.repeats):
        tps_raw.append(raw_loop())
        tps_pl.append(lightning_loop())
    raw, pl = max(tps_raw), max(tps_pl)

    print(header)
    print(f"plain HF step:        {step_plain * 1000:9.1f} ms")
    print(f"SafetySignalLM step:  {step_ours * 1000:9.1f} ms")
    print(f"step-time ratio:      {step_ours / step_plain:9.3f}x  (target <= 1.05x)")
    print(f"raw loop:             {raw:9.1f} tokens/s")
    print(f"Lightning fit:        {pl:9.1f} tokens/s")
    print(f"throughput ratio:     {pl / raw:9.3f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
