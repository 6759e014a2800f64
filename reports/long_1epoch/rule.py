"""Result 18's decision rule (reports/recipe.md), written before the one-pass fit was scored: one pass replaces two
in conf/demo_long.yaml if, on the seed-0 validation split at each export's threshold, no first-verdict group is worse
by more than 3 prompts (recall: harmful, rephrased, wrapped; flagged: chat + hard negatives, wrapped chat) and the
taxonomy pair by more than 5 (twins flagged; recall of their harmful counterparts).

    python reports/long_1epoch/rule.py reports/long/recipe_eval_long_s0.json reports/long_1epoch/recipe_eval_s0.json

Exit status 0 when one pass is kept.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.eval_classifier import no_group_worse  # noqa: E402

# (key in by_threshold, higher is better, tolerance in prompts)
GROUPS = [
    ("recall_harmful_original", True, 3),
    ("recall_rephrased", True, 3),
    ("recall_wrapped", True, 3),
    ("benign_fpr_all", False, 3),
    ("benign_fpr_wrapped", False, 3),
    ("recall_taxonomy_harmful", True, 5),
    ("benign_fpr_taxonomy_twins", False, 5),
]


def cells(path: str) -> dict:
    (row,) = json.load(open(path))
    return row["by_threshold"][str(row["exported_threshold"])]


def main(two_passes: str, one_pass: str) -> int:
    before, after = cells(two_passes), cells(one_pass)
    ok = no_group_worse(before, after, GROUPS, ("two passes", "one pass"))
    print("one pass replaces two" if ok else "the preset keeps two passes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
