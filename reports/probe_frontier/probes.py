"""Result 20 (reports/recipe.md): how much of the gate's work do the probes over generated text do, and at what cost?

    python reports/probe_frontier/probes.py runs/demo/export --out reports/probe_frontier/demo.json

On the validation prompts of `scripts/eval_classifier.py` (seed 0): the gate's first verdict (defaults: suffix screen
on); then every prompt of the groups below that it lets through (verdict <= the export's threshold) is answered
(32 new tokens, greedy, batches of 16) under `low` (nothing inserted: is the answer a refusal by itself?) and under
`high` with each probe policy: `high` stops a row where `medium` would insert the guide, and until then its text is
`low`'s, so "would intervene" is exactly where `medium` would. Counts per group: let through, answered without a
refusal (under `low`), and of those, the ones each policy would stop.
"""
import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from safety_signal.decoding import DecodingConfig, SafetyGatedGenerator  # noqa: E402
from safety_signal.gate import GatePolicy  # noqa: E402
from safety_signal.refusal import is_refusal  # noqa: E402
from scripts.eval_classifier import eval_set, gate_verdicts  # noqa: E402

GROUPS = ("harmful", "rephrase", "taxonomy_harmful", "wrapped_harmful", "suffix_harmful", "rephrase_past",
          "rephrase_future", "rephrase_story", "rephrase_used_to", "rephrase_hypothetical",
          "chat", "hard_negatives", "lookalikes", "taxonomy_twins", "wrapped_chat", "chat_story", "chat_past")
POLICIES = {  # name -> GatePolicy fields (level `high`); r2_10_tau3 is the shipped gate
    "r2_10_tau3": {}, "r2_10_tau2": {"tau": 2}, "r2_10_tau1": {"tau": 1},
    "r2_20_tau3": {"r2": 20, "r3": 20}, "r2_32_tau3": {"r2": 32, "r3": 32}, "r2_20_tau1": {"r2": 20, "r3": 20, "tau": 1},
}


@torch.inference_mode()
def main(export: str, out: str, batch_size: int = 16) -> None:
    module = SafetySignalLM.from_exported(export).eval()
    items = eval_set(0)
    probs = gate_verdicts(module, [p for p, *_ in items], GatePolicy())
    rows = [(p, y, g) for (p, y, g, _), prob in zip(items, probs) if g in GROUPS and prob <= module.safety.threshold]
    rows.sort(key=lambda r: len(r[0]))
    result: dict = {"export": export, "threshold": module.safety.threshold, "policies": {}}
    answered = None
    for name, fields in {"low": None, **POLICIES}.items():
        policy = GatePolicy(level="low") if fields is None else GatePolicy(level="high", **fields)
        generator = SafetyGatedGenerator(module, policy, DecodingConfig(max_new_tokens=32))
        start, answers = time.time(), []
        for i in range(0, len(rows), batch_size):
            answers += generator.generate([p for p, _, _ in rows[i:i + batch_size]])
        if answered is None:
            answered = [not is_refusal(a.text) for a in answers]
        counts = collections.defaultdict(lambda: {"let_through": 0, "answered": 0, "would_intervene": 0})
        for (_, _, group), a, ok in zip(rows, answers, answered):
            cell = counts[group]
            cell["let_through"] += 1
            cell["answered"] += ok
            cell["would_intervene"] += ok and a.intervention_step is not None
        result["policies"][name] = dict(sorted(counts.items()))
        print(name, f"{time.time() - start:.0f}s", json.dumps(result["policies"][name]), flush=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    main(args.export, args.out)
