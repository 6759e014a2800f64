"""Result 15's decision rule (reports/recipe.md), written before the candidate's fits: conf/demo.yaml with less
classification-only data (350 instead of 700 classification-only harmful prompts, 150 + 150 instead of 300 + 300
continuations; `config_c15_s{1,2}.yaml`) against the same recipe with all of it (Result 13's float32 fits), seeds 1
and 2, every fit scored on its own seed's validation set (`scripts/eval_classifier.py --seed S`). Result 13's
conditions 1 and 2 (Result 11's per-wrapper rule, no more flagged benign taxonomy twins); the lever buys time, not a
validation gain, so condition 3 is the demo's wall time (`python demo.py` at most 25 minutes, idle, the base model's
answers cached; benchmarks/RESULTS.md), not here.

    python reports/demo_time/rule.py FULL_S1 FULL_S2 CANDIDATE_S1 CANDIDATE_S2

Each argument is `recipe_eval.json:export`. With one seed of each (two arguments) the verdict is interim.
Exit status 0 when the candidate passes.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frames_report" / "seeds23"))
from by_wrapper_rule import no_gain_needed, registered_verdict  # noqa: E402

if __name__ == "__main__":
    sys.exit(registered_verdict(sys.argv[1:], no_gain_needed("the lever is the demo's wall time (benchmarks/RESULTS.md)")))
