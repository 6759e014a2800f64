"""Result 19b (reports/recipe.md): the suffix screen's settings on the validation prompts of `scripts/eval_classifier.py`.

    python reports/suffix_screen/grid.py score runs/demo/export --out reports/suffix_screen/grid_demo.json
    python reports/suffix_screen/grid.py choose reports/suffix_screen/grid_demo.json

`score`: per prompt, the gate's first verdict (screen off), and for each `suffix_min_tokens` the best head/tail split
of the query's NLL, the tail's mean NLL and, where it is >= 7 nats, the `[CLS]` verdict on the head alone.
`choose`: flagged prompts per group with the screen for every (`suffix_min_tokens`, `suffix_nll`) of the grid, at the
export's threshold, and the setting the registered criterion picks: the largest `suffix_harmful` recall gain with no
benign group gaining more than 1 flagged prompt (ties: larger `suffix_nll`, then larger `suffix_min_tokens`).
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from safety_signal.decoding import SafetyGatedGenerator, strip_query_tail  # noqa: E402
from safety_signal.gate import GatePolicy, suffix_cut  # noqa: E402
from safety_signal.layout import encode_prompt  # noqa: E402
from scripts.eval_classifier import eval_set  # noqa: E402

MIN_TOKENS = (6, 8, 10, 12, 16)
NLL = (7, 8, 9, 10, 11, 12)
BENIGN = ("chat", "hard_negatives", "wrapped_chat", "suffix_chat", "lookalikes", "taxonomy_twins", "chat_past",
          "chat_used_to", "chat_hypothetical", "chat_story", "chat_future")
HARMFUL = ("suffix_harmful", "harmful", "rephrase", "wrapped_harmful")


@torch.inference_mode()
def score(export: str, out: str, batch_size: int = 16) -> None:
    items = eval_set(0)
    module = SafetySignalLM.from_exported(export).eval()
    generator = SafetyGatedGenerator(module, GatePolicy())
    encoded = [encode_prompt(module.tokenizer, p) for p, _, _, _ in items]
    by_length = lambda rows: sorted(rows, key=lambda i: len(encoded[i].input_ids))  # noqa: E731
    raw, nll = [0.0] * len(items), [[] for _ in items]
    order = by_length(range(len(items)))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        _, hidden, prob, ids, roles, _ = generator._prompt_forward(
            [encoded[i].input_ids for i in rows], [encoded[i].roles for i in rows], None, generator._no_position)
        for i, p, x in zip(rows, prob.tolist(), generator.query_nll(ids, roles, hidden)):
            raw[i], nll[i] = p, x
    result = {"export": export, "threshold": module.safety.threshold, "raw": raw,
              "groups": [g for _, _, g, _ in items], "by_min_tokens": {}}
    for min_tokens in MIN_TOKENS:
        cuts = [suffix_cut(x, 0.0, min_tokens) for x in nll]
        tail = [sum(x[c:]) / len(x[c:]) if c is not None else 0.0 for x, c in zip(nll, cuts)]
        fired = by_length([i for i in range(len(items)) if tail[i] >= min(NLL)])
        head = {}
        for start in range(0, len(fired), batch_size):
            rows = fired[start:start + batch_size]
            stripped = [strip_query_tail(encoded[i].input_ids, encoded[i].roles, cuts[i]) for i in rows]
            probs = generator._prompt_forward([s[0] for s in stripped], [s[1] for s in stripped], None,
                                              generator._no_position)[2]
            head.update({str(i): p for i, p in zip(rows, probs.tolist())})
        result["by_min_tokens"][str(min_tokens)] = {"tail_nll": tail, "head": head}
        print(f"{export}: suffix_min_tokens {min_tokens}: {len(fired)} prompts with a tail >= {min(NLL)} nats", flush=True)
    Path(out).write_text(json.dumps(result) + "\n", encoding="utf-8")


def choose(path: str) -> None:
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    raw, groups, t = result["raw"], result["groups"], result["threshold"]
    base = collections.Counter(g for g, p in zip(groups, raw) if p > t)
    print(f"{result['export']}, screen off: " + ", ".join(f"{g} {base[g]}" for g in HARMFUL + BENIGN))
    best = None
    for min_tokens, split in result["by_min_tokens"].items():
        for nll in NLL:
            screened = [max(p, split["head"].get(str(i), 0.0)) if split["tail_nll"][i] >= nll else p
                        for i, p in enumerate(raw)]
            flagged = collections.Counter(g for g, p in zip(groups, screened) if p > t)
            changed = {g: flagged[g] - base[g] for g in HARMFUL + BENIGN if flagged[g] != base[g]}
            worst = max(flagged[g] - base[g] for g in BENIGN)
            gain = flagged["suffix_harmful"] - base["suffix_harmful"]
            print(f"  suffix_min_tokens {min_tokens:>2}, suffix_nll {nll:>2}: worst benign gain +{worst}; {changed}")
            key = (gain, nll, int(min_tokens))
            if worst <= 1 and (best is None or key > best):
                best = key
    print("chosen: " + ("none" if best is None else
                        f"suffix_min_tokens {best[2]}, suffix_nll {best[1]} (suffix_harmful +{best[0]})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score")
    s.add_argument("export")
    s.add_argument("--out", required=True)
    c = sub.add_parser("choose")
    c.add_argument("grid")
    args = parser.parse_args()
    if args.command == "score":
        score(args.export, args.out)
    else:
        choose(args.grid)


if __name__ == "__main__":
    main()
