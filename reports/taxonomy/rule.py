"""Result 12's decision rule (reports/recipe.md), written before the candidate's fits: Result 11's per-wrapper rule,
pooled over seeds 1 and 2, every fit scored on the validation set of its own seed (`scripts/eval_classifier.py
--seed S`), plus the generated groups of held-out harm-taxonomy templates.

    python reports/taxonomy/rule.py SHIPPED_S1 SHIPPED_S2 CANDIDATE_S1 CANDIDATE_S2

Each argument is `recipe_eval.json:export`. With one seed of each (two arguments) the verdict is interim.
Exit status 0 when the candidate passes.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frames_report" / "seeds23"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frames_report" / "second_seed"))
from by_wrapper_rule import registered_verdict  # noqa: E402
from pooled_rule import pooled  # noqa: E402
from evaluation.stats import wilson  # noqa: E402


def taxonomy_gain(shipped: tuple[dict, ...], candidate: tuple[dict, ...]) -> bool:
    """Recall on held-out taxonomy templates above the shipped fit's Wilson 95% interval."""
    sk, sn, _ = pooled(shipped, "recall_taxonomy_harmful")
    ck, cn, _ = pooled(candidate, "recall_taxonomy_harmful")
    gain = ck / cn > wilson(sk, sn)[1]
    print(f"recall_taxonomy_harmful: shipped {sk}/{sn} (Wilson upper {wilson(sk, sn)[1] * sn:.1f}), candidate {ck}/{cn}:",
          "gain" if gain else "NO GAIN")
    return gain


if __name__ == "__main__":
    # Not worse anywhere (Result 11's rule, benign twins counted as benign: a form must not read as harm), and better
    # where the lever aims.
    sys.exit(registered_verdict(sys.argv[1:], taxonomy_gain))
