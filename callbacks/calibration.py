"""Calibrate the verdict threshold on the validation split at the end of training.

The classifier's probabilities are not calibrated for a decision (a 135M model trained for a few
hundred steps puts benign look-alikes at 0.6-0.9), so 0.5 is an arbitrary cut. `CalibrateThreshold`
reads the `[CLS]` (first) verdict of every validation prompt once, picks the lowest threshold
(not below `min_threshold`, 0.5 by default) whose benign false-positive rate is at most `target_fpr`, stores it in `module.safety.threshold`
(exported in `safety_config.json`, used by the generator unless `GatePolicy.threshold` is set),
logs a figure of benign FPR (over-refusal) and harmful recall as the threshold moves, and writes
`calibration.json` with the per-source numbers.

It runs in `on_train_end`, which Lightning calls before any callback's `on_fit_end`, so the export
(`callbacks.export.ExportPretrained`, an `on_fit_end` hook) always sees the calibrated threshold,
whatever the order of the callbacks list.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from safety_signal.layout import collate_examples, encode_example, length_order
from safety_signal.masks import Role
from safety_signal.model import cls_token_id


def pick_threshold(benign_probs: Sequence[float], target_fpr: float, low: float = 0.05, high: float = 0.95) -> float:
    """The lowest threshold `t` in `[low, high]` with `mean(benign > t) <= target_fpr`.

    With `n` benign probabilities, `k = floor(target_fpr * n)` of them may lie above `t`, so `t` is
    the (k+1)-th largest benign probability (verdict: malicious when `p > t`).
    """
    if not benign_probs:
        raise ValueError("no benign validation prompts to calibrate on")
    ranked = sorted(benign_probs, reverse=True)
    k = math.floor(target_fpr * len(ranked) + 1e-9)
    t = ranked[k] if k < len(ranked) else 0.0
    return float(min(high, max(low, t)))


def rates(probs: Sequence[float], labels: Sequence[int], threshold: float) -> tuple[float, float]:
    """(benign false-positive rate, harmful recall) at `threshold` (malicious when p > threshold)."""
    benign = [p for p, y in zip(probs, labels) if y == 0]
    harmful = [p for p, y in zip(probs, labels) if y == 1]
    fpr = sum(p > threshold for p in benign) / max(1, len(benign))
    recall = sum(p > threshold for p in harmful) / max(1, len(harmful))
    return fpr, recall


def auroc(probs: Sequence[float], labels: Sequence[int]) -> float:
    """Mann-Whitney AUROC (ties count half); nan when a class is missing."""
    pos = [p for p, y in zip(probs, labels) if y == 1]
    neg = [p for p, y in zip(probs, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    order = sorted(neg)
    import bisect

    wins = sum(bisect.bisect_left(order, p) + 0.5 * (bisect.bisect_right(order, p) - bisect.bisect_left(order, p)) for p in pos)
    return wins / (len(pos) * len(neg))


@torch.inference_mode()
def first_verdicts(module: Any, prompts: Sequence[str], labels: Sequence[int], batch_size: int = 32) -> list[float]:
    """The `[CLS]` malicious probability of each prompt (classification-only rows, query only)."""
    tokenizer, safety = module.tokenizer, module.safety
    was_training = module.training
    module.eval()
    encoded = [
        encode_example(tokenizer, p, "", y, safety, probe_config=None, max_length=10**6, classify_only=True)
        for p, y in zip(prompts, labels)
    ]
    order = length_order(encoded)
    probs = [0.0] * len(encoded)
    device = module.device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate_examples([encoded[i] for i in rows], tokenizer.pad_token_id, cls_token_id(tokenizer), safety.phase)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        _, cls_logits = module(batch, lm_logits=False)
        for i, prob in zip(rows, torch.sigmoid(cls_logits[batch["roles"] == Role.CLS].float()).tolist()):
            probs[i] = prob
    module.train(was_training)
    return probs


class CalibrateThreshold(L.Callback):
    """Pick `SafetyConfig.threshold` on the validation split for a target benign false-positive rate.

    Args:
        target_fpr: the share of benign validation prompts the first verdict may flag.
        min_threshold / max_threshold: bounds of the chosen threshold. The default floor 0.5 means the
            calibration only ever *raises* the threshold (to meet the benign FPR target), never lowers it:
            on the demo's validation split the classes separate so well that the 5% point sits at 0.06,
            which flags more unseen chat prompts (7% vs 2% at 0.5, reports/recipe.md) for recall the
            validation split cannot show is needed.
        apply: False measures and logs only (the threshold stays as configured).
        output: where to write the numbers (default `<default_root_dir>/calibration.json`).
        batch_size: prompts per forward.

    Needs a datamodule with `val_meta` (`(prompt, label, source)` per validation example, as
    `SafetyMixDataModule` has); each prompt is scored once.
    """

    def __init__(
        self, target_fpr: float = 0.05, min_threshold: float = 0.5, max_threshold: float = 0.95, apply: bool = True,
        output: str | None = None, batch_size: int = 32,
    ) -> None:
        if not 0.0 <= target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
        if not 0.0 < min_threshold <= max_threshold < 1.0:
            raise ValueError("need 0 < min_threshold <= max_threshold < 1")
        self.target_fpr = target_fpr
        self.min_threshold = min_threshold
        self.max_threshold = max_threshold
        self.apply = apply
        self.output = output
        self.batch_size = batch_size
        self.result: dict[str, Any] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        meta = getattr(trainer.datamodule, "val_meta", None)
        if not meta:
            rank_zero_info("[calibration] no validation prompts: threshold left as configured")
            return
        seen: dict[str, tuple[int, str]] = {}
        for prompt, label, source in meta:
            seen.setdefault(prompt, (label, source))
        prompts = list(seen)
        labels = [seen[p][0] for p in prompts]
        sources = [seen[p][1] for p in prompts]
        probs = first_verdicts(pl_module, prompts, labels, self.batch_size)  # every rank: same prompts, same result
        before = pl_module.safety.threshold
        threshold = pick_threshold([p for p, y in zip(probs, labels) if y == 0], self.target_fpr,
                                   self.min_threshold, self.max_threshold)
        self.result = summarize(probs, labels, sources, threshold, before)
        self.result["target_fpr"] = self.target_fpr
        self.result["applied"] = self.apply
        if self.apply:
            pl_module.safety = replace(pl_module.safety, threshold=threshold)
        fpr, recall = rates(probs, labels, threshold)
        rank_zero_info(
            f"[calibration] threshold {before:.3f} -> {threshold:.3f}{'' if self.apply else ' (not applied)'}: "
            f"benign FPR {fpr:.3f}, harmful recall {recall:.3f}, AUROC {self.result['auroc']:.3f} "
            f"on {len(prompts)} validation prompts"
        )
        if trainer.is_global_zero:
            path = Path(self.output) if self.output else Path(trainer.default_root_dir) / "calibration.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.result, indent=1) + "\n", encoding="utf-8")
            self._log(trainer, probs, labels, threshold)

    def _log(self, trainer: L.Trainer, probs: list[float], labels: list[int], threshold: float) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is None or not hasattr(experiment, "add_figure"):
                continue
            fpr, recall = rates(probs, labels, threshold)
            experiment.add_scalar("calibration/threshold", threshold, step)
            experiment.add_scalar("calibration/benign_fpr", fpr, step)
            experiment.add_scalar("calibration/harmful_recall", recall, step)
            experiment.add_figure("calibration/fpr_recall_vs_threshold", threshold_figure(probs, labels, threshold), step, close=True)


def summarize(probs: list[float], labels: list[int], sources: list[str], threshold: float, before: float) -> dict[str, Any]:
    """Overall AUROC and, per source, counts and flag rates at the chosen and the previous threshold."""
    out: dict[str, Any] = {
        "threshold": threshold, "previous_threshold": before, "auroc": auroc(probs, labels),
        "benign": sum(1 for y in labels if y == 0), "harmful": sum(labels), "by_source": {},
    }
    for at, name in ((threshold, "chosen"), (before, "previous")):
        fpr, recall = rates(probs, labels, at)
        out[f"benign_fpr_{name}"], out[f"harmful_recall_{name}"] = fpr, recall
    for source in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == source]
        ps = [probs[i] for i in idx]
        ys = [labels[i] for i in idx]
        out["by_source"][source] = {
            "n": len(idx), "label": ys[0],
            "flagged_chosen": sum(p > threshold for p in ps), "flagged_previous": sum(p > before for p in ps),
            "mean_prob": sum(ps) / len(ps),
        }
    out["probs"] = [[round(p, 5), y, s] for p, y, s in zip(probs, labels, sources)]
    return out


def threshold_figure(probs: list[float], labels: list[int], chosen: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [i / 100 for i in range(1, 100)]
    curves = [rates(probs, labels, t) for t in grid]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(grid, [c[0] for c in curves], label="benign FPR (over-refusal)")
    axis.plot(grid, [c[1] for c in curves], label="harmful recall")
    axis.axvline(chosen, color="gray", linestyle="--", label=f"chosen {chosen:.2f}")
    axis.set_xlabel("threshold")
    axis.set_ylim(0, 1.02)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure
