"""Result 14's decision rule (reports/recipe.md), written before the candidate's fits: conf/demo.yaml trained under
bf16-mixed autocast against the same recipe in float32 (Result 13's candidate fits), seeds 1 and 2, every fit scored
on its own seed's validation set (`scripts/eval_classifier.py --seed S`). Result 13's conditions 1 and 2 (Result 11's
per-wrapper rule, no more flagged benign taxonomy twins); the lever buys time, not a validation gain, so condition 3
is the training-step ratio that `benchmarks/train_step.py --precision` measures (benchmarks/RESULTS.md), not here.

    python reports/precision/rule.py FP32_S1 FP32_S2 BF16_S1 BF16_S2

Each argument is `recipe_eval.json:export`. With one seed of each (two arguments) the verdict is interim.
Exit status 0 when the candidate passes.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frames_report" / "seeds23"))
from by_wrapper_rule import no_gain_needed, registered_verdict  # noqa: E402

if __name__ == "__main__":
    sys.exit(registered_verdict(sys.argv[1:], no_gain_needed("the lever is training speed (benchmarks/RESULTS.md)")))
