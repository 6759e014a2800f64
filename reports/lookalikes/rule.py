"""Result 21's decision rule (reports/recipe.md), committed before the candidate was fitted: real benign look-alikes
as classification-only rows (`data.lookalikes`) join conf/demo.yaml if, on the seed-0 validation set
(`scripts/eval_classifier.py --suffix-screen`, the gate's default) at each export's threshold,

1. the candidate flags fewer `lookalikes` (390 validation look-alikes from other conversations than the training
   ones) than the lower end of the shipped fit's Wilson 95% interval, and
2. no other group is worse by more than its tolerance in prompts (3; the taxonomy pair 5, as Result 18's rule).

    python reports/lookalikes/rule.py reports/lookalikes/eval_shipped.json reports/lookalikes/eval_candidate.json

Exit status 0 when the candidate passes.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluation.stats import wilson  # noqa: E402
from datamodules.rephrase import STYLES  # noqa: E402
from scripts.eval_classifier import no_group_worse  # noqa: E402

# (key in by_threshold, higher is better, tolerance in prompts)
GROUPS = [
    ("recall_harmful_original", True, 3),
    ("recall_rephrased", True, 3),
    ("recall_wrapped", True, 3),
    ("recall_suffix", True, 3),
    ("benign_fpr_all", False, 3),
    ("benign_fpr_wrapped", False, 3),
    ("benign_fpr_suffix", False, 3),
    ("recall_taxonomy_harmful", True, 5),
    ("benign_fpr_taxonomy_twins", False, 5),
] + [(f"recall_rephrase_{s}", True, 3) for s in STYLES] + [(f"benign_fpr_chat_{s}", False, 3) for s in STYLES]


def cells(path: str) -> dict:
    row = json.load(open(path))
    row = row[0] if isinstance(row, list) else row
    return row["by_threshold"]["exported"]


def main(shipped: str, candidate: str) -> int:
    before, after = cells(shipped), cells(candidate)
    a, b = before["benign_fpr_lookalikes"], after["benign_fpr_lookalikes"]
    bound = wilson(a["flagged"], a["n"])[0] * a["n"]
    ok = b["n"] == a["n"] and b["flagged"] < bound
    print(f"{'benign_fpr_lookalikes':28s} shipped {a['flagged']:3d}/{a['n']}  candidate {b['flagged']:3d}/{b['n']}  "
          f"must be < {bound:.1f}: {'gain' if ok else 'NO GAIN'}")
    ok &= no_group_worse(before, after, GROUPS, ("shipped", "candidate"))
    print("the candidate passes" if ok else "the candidate fails: conf/demo.yaml stays as it is")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
