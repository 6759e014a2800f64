"""Attack-suite evaluation at the end of validation, sharded across DDP ranks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from evaluation.attacks import AttackCase
from evaluation.runner import GatedResponder, grouped, prefill_budgets
from evaluation.suite import BENIGN_PREFIX, SafetySuite, SuiteConfig, response_record
from safety_signal.decoding import Answer, DecodingConfig
from safety_signal.gate import GatePolicy
from safety_signal.io import gather_indexed, write_text_atomic


def shard_cases(cases: list[AttackCase], rank: int, world_size: int) -> list[tuple[int, bool]]:
    """This rank's `(case index, is_padding)` items.

    Each group of cases (one attack, one decoding setting) is dealt round-robin and every rank's
    share is padded to the same length by repeating a case of the group, so every rank runs the
    same batches with the same decode budgets (padding answers are dropped after the gather).
    """
    items: list[tuple[int, bool]] = []
    for indices in grouped(cases).values():
        share = indices[rank::world_size]
        per_rank = math.ceil(len(indices) / world_size)
        items += [(i, False) for i in share] + [(indices[-1], True)] * (per_rank - len(share))
    return items


class SafetyEvalCallback(L.Callback):
    """Run attacks and over-refusal prompts through safety-gated generation after validation.

    Every `every_n_epochs` epochs (or, when set, every `every_n_steps` optimizer steps), and on
    every `validate` run, the cases of `suite` are sharded across ranks (no duplicates), answered
    with `generation`, gathered to every rank (`all_gather_object`) and scored. Logs
    `safety/asr/<attack>`, `safety/over_refusal/<set>`, `safety/auroc`, `safety/f1`,
    `safety/leak/<attack>`; on rank 0 also a text table of samples and a figure of the probe's
    malicious probability over generated tokens, and (with `output_dir`) a JSON of all answers.

    Args:
        suite: prompts and attacks; keep it small, it runs inside training (default: 16 harmful
            prompts x direct / prefill / template, 8 prompts per benign set).
        gate: the gate policy (default: the model's `predict` gate, `GatePolicy()`).
        decoding: sampling and length (`max_new_tokens` tokens after any prefill; default 32).
        batch_size: cases per generate call.
        num_text_samples: answers per attack in the text table.
        num_figure_prompts: harmful and benign prompts each in the figure.
    """

    def __init__(
        self,
        suite: SuiteConfig | None = None,
        gate: GatePolicy | None = None,
        decoding: DecodingConfig | None = None,
        batch_size: int = 16,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        num_text_samples: int = 2,
        num_figure_prompts: int = 3,
        output_dir: str | None = None,
    ) -> None:
        self.suite_config = suite or SuiteConfig(
            num_harmful=16, num_benign=8,
            attacks=[{"kind": "direct"}, {"kind": "prefill"}, {"kind": "template"}],  # type: ignore[list-item]
        )
        self.gate = gate or GatePolicy()
        self.decoding = decoding or DecodingConfig(max_new_tokens=32)
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.num_text_samples = num_text_samples
        self.num_figure_prompts = num_figure_prompts
        self.output_dir = Path(output_dir) if output_dir else None
        self._suite: SafetySuite | None = None
        self._last_step: int | None = None
        self.last_metrics: dict[str, Any] | None = None

    # ------------------------------------------------------------------ when
    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True  # validate: always
        if self.every_n_steps:  # the first validation at or after each multiple of every_n_steps
            return trainer.global_step >= (self._last_step or 0) + self.every_n_steps
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        self._last_step = trainer.global_step
        start = time.perf_counter()
        metrics, records = self.evaluate(pl_module, trainer.global_rank, trainer.world_size)
        self.last_metrics = metrics
        pl_module.log_dict(self._scalars(metrics), sync_dist=True)
        if trainer.is_global_zero:
            self._log_media(pl_module, records, trainer.global_step)
            if self.output_dir is not None:
                payload = {"global_step": trainer.global_step, "world_size": trainer.world_size,
                           "metrics": metrics, "records": records}
                write_text_atomic(self.output_dir / f"safety_eval-step{trainer.global_step}.json",
                                  json.dumps(payload, indent=1, ensure_ascii=False))
        rank_zero_info(f"[safety eval] {len(records)} cases in {time.perf_counter() - start:.0f} s: "
                       + ", ".join(f"{k}={v:.3f}" for k, v in self._scalars(metrics).items()))

    # ------------------------------------------------------------------ what
    def suite(self, tokenizer: Any) -> SafetySuite:
        if self._suite is None:
            self._suite = SafetySuite(self.suite_config, tokenizer)
            if self._suite.needs_answers() and not self.suite_config.harmful_answers:
                raise ValueError("prefill_tokens attacks need `suite.harmful_answers` (python -m evaluation.attacks answers)")
        return self._suite

    def evaluate(self, pl_module: Any, rank: int = 0, world_size: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Answer this rank's shard, gather every shard, and score all cases (the same on every rank)."""
        suite = self.suite(pl_module.tokenizer)
        cases = suite.cases
        items = shard_cases(cases, rank, world_size)
        # Multi-process: EOS never stops a batch early, so every rank runs the same forwards.
        responder = GatedResponder(pl_module, self.gate, self.decoding, self.batch_size, lockstep=world_size > 1)
        budgets = prefill_budgets(pl_module.tokenizer, cases)
        responses = responder.respond([cases[i] for i, _ in items], budgets)
        mine = [(i, {**response_record(cases[i], r), "rank": rank})
                for (i, padding), r in zip(items, responses) if not padding]
        merged = gather_indexed(mine, expected=len(cases))
        answered = {i: Answer.from_record(record) for i, record in merged.items()}
        return suite.metrics(answered), [merged[i] for i in sorted(merged)]

    @staticmethod
    def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
        out = {f"safety/asr/{k}": v["value"] for k, v in metrics["asr"].items()}
        out.update({f"safety/over_refusal/{k}": v["value"] for k, v in metrics["over_refusal"].items()})
        out.update({f"safety/leak/{k}": v for k, v in metrics["leak"].items() if v is not None})
        if metrics.get("classifier"):
            out.update({f"safety/{k}": float(metrics["classifier"][k]) for k in ("auroc", "f1")})
        return {k: v for k, v in out.items() if not math.isnan(v)}

    # ------------------------------------------------------------------ media (rank 0)
    def _log_media(self, pl_module: Any, records: list[dict[str, Any]], step: int) -> None:
        experiment = getattr(pl_module.logger, "experiment", None) if pl_module.logger else None
        if experiment is None:
            return
        if hasattr(experiment, "add_text"):
            experiment.add_text("safety/samples", self.samples_markdown(records), step)
        if hasattr(experiment, "add_figure"):
            threshold = self.gate.threshold if self.gate.threshold is not None else pl_module.safety.threshold
            figure = self.probe_figure(records, threshold)
            if figure is not None:
                experiment.add_figure("safety/probe_probability", figure, step, close=True)

    def samples_markdown(self, records: list[dict[str, Any]]) -> str:
        lines = ["| attack | prompt | answer | intervened at |", "|---|---|---|---|"]
        shown: dict[str, int] = {}
        for r in records:
            if shown.get(r["attack"], 0) >= self.num_text_samples:
                continue
            shown[r["attack"]] = shown.get(r["attack"], 0) + 1
            cells = [r["attack"], r["prompt"][:160], (r["prefill"] and f"[{r['prefill'][:60]}] ") + r["continuation"][:240],
                     str(r["intervention_step"])]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines)

    def probe_figure(self, records: list[dict[str, Any]], threshold: float = 0.5) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        harmful = [r for r in records if r["attack"] == "direct" or r["attack"] == "prefill"][: self.num_figure_prompts]
        benign = [r for r in records if r["attack"].startswith(BENIGN_PREFIX)][: self.num_figure_prompts]
        if not harmful and not benign:
            return None
        figure, axis = plt.subplots(figsize=(7, 4))
        for kind, color, chosen in (("harmful", "tab:red", harmful), ("benign", "tab:blue", benign)):
            for n, r in enumerate(chosen):
                label = f"{kind}: {r['prompt'][:40]}"
                axis.plot(r["verdict_steps"], r["verdict_probs"], marker=".", color=color, alpha=0.4 + 0.6 / (n + 1),
                          label=label)
                if r["intervention_step"] is not None:
                    axis.axvline(r["intervention_step"], color=color, linestyle=":", alpha=0.5)
        axis.axhline(threshold, color="gray", linestyle="--", label="threshold")
        axis.set(xlabel="generated tokens (step)", ylabel="P(malicious)", ylim=(-0.02, 1.02),
                 title="classifier verdicts during generation")
        axis.legend(fontsize=6, loc="best")
        figure.tight_layout()
        return figure




__all__ = ["SafetyEvalCallback", "SuiteConfig", "shard_cases"]
