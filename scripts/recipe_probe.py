"""Head-only ablation of the recipe's *data* levers on frozen SmolLM2 features (a cheap proxy).

    python scripts/recipe_probe.py --out reports/recipe_probe.json

A full fine-tuning run per recipe variant does not fit a shared 2-core CPU (one SmolLM2 step of
batch 8 took 35-60 s there). This measures what each data lever does to a classifier when the LM
is frozen: the base model's final-normed hidden states (the `[CLS]` token's, and the mean over the
query tokens) are computed once per prompt, and a logistic-regression head is trained per variant
on that variant's training prompts. The evaluation set is fixed (see `scripts/eval_classifier.py`:
the hash-split validation prompts, hard negatives from held-out templates, rephrasings of
validation harmful prompts), halved into a calibration half (threshold for 5% benign FPR) and a
test half (rates with Wilson intervals). No held-out evaluation set is read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.calibration import pick_threshold  # noqa: E402
from datamodules.hard_negatives import generate_hard_negatives, template_split  # noqa: E402
from datamodules.rephrase import rephrasings  # noqa: E402
from datamodules.safety_mix import build_mix, default_sources, in_validation, match_form  # noqa: E402
from datamodules.sources import load_source  # noqa: E402
from evaluation.stats import auroc, wilson  # noqa: E402
from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from safety_signal.layout import collate_examples, encode_example  # noqa: E402
from safety_signal.masks import Role  # noqa: E402
from scripts.eval_classifier import half  # noqa: E402


@torch.inference_mode()
def features(module, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    tok, safety = module.tokenizer, module.safety
    rows = [encode_example(tok, p, "", 0, safety, None, max_length=192, classify_only=True) for p in prompts]
    rows = [r if r is not None else encode_example(tok, "", "", 0, safety, None, max_length=10**6, classify_only=True) for r in rows]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = collate_examples(rows[start : start + batch_size], tok.pad_token_id, module.cls_id, safety.phase)
        module(batch, lm_logits=False)
        # re-run to get hidden states: `forward` returns classifier logits only, so hook the hidden state
        hidden = module._last_hidden
        roles = batch["roles"]
        cls = hidden[roles == Role.CLS]
        query = (roles == Role.QUERY).unsqueeze(-1).float()
        mean = (hidden * query).sum(1) / query.sum(1).clamp(min=1)
        out.append(torch.cat([cls, mean], dim=-1).float())
    return torch.cat(out)


def train_head(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-3, steps: int = 300) -> torch.nn.Linear:
    torch.manual_seed(0)
    mu, sd = x.mean(0), x.std(0) + 1e-4
    head = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=steps)
    pos = y.sum().clamp(min=1)
    pos_weight = (len(y) - pos) / pos  # balanced classes, as the paper's 50/50 mix

    def closure():
        opt.zero_grad()
        logits = head((x - mu) / sd).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        loss = loss + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head.mu, head.sd = mu, sd
    return head


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-pool", type=int, default=500)
    parser.add_argument("--eval-per-group", type=int, default=150)
    parser.add_argument("--out", default=None)
    parser.add_argument("--config-overrides", default=None, help="JSON: a tiny random stand-in (smoke test)")
    parser.add_argument("--eval-limit", type=int, default=None, help="smoke test: cap the evaluation harmful/chat prompts")
    args = parser.parse_args()
    t0 = time.time()
    seed, val_fraction = 0, 0.1
    rng = random.Random(0)
    records = [r for src in default_sources() for r in load_source(src, seed=seed)]
    harmful = [r for r in records if r.label == 1]
    benign = [r for r in records if r.label == 0]
    # the demo's own data: 160 SFT harmful prompts (+ prefill copies) and form-matched benign at 2:1
    demo = build_mix(harmful, benign, 160, 2.0, 0.25, val_fraction, seed)
    demo_train = {(ex.prompt, ex.label) for ex in demo.train}
    harmful_train = [r for r in harmful if not in_validation(r.prompt, val_fraction, seed)]
    harmful_val = [r for r in harmful if in_validation(r.prompt, val_fraction, seed)]
    rng.shuffle(harmful_train)
    extra_harmful = [r.prompt for r in harmful_train if (r.prompt, 1) not in demo_train][: args.per_pool]
    used = {p for p, _ in demo_train}
    benign_train = [r for r in benign if not in_validation(r.prompt, val_fraction, seed) and r.prompt not in used]
    rng.shuffle(benign_train)
    extra_benign = [r.prompt for r in match_form(benign_train, extra_harmful, args.per_pool)]
    hn_train, hn_val = template_split(generate_hard_negatives(None, seed), val_fraction, seed)
    hard = [h.prompt for h in hn_train][: args.per_pool]
    pool_for_rephrase = [p for p, y in demo_train if y == 1] + extra_harmful
    reph = [t for p in pool_for_rephrase for t in rephrasings(p, 1, rng)][: args.per_pool]
    # fixed evaluation set
    benign_val = [r for r in benign if in_validation(r.prompt, val_fraction, seed) and r.prompt not in used]
    rng.shuffle(benign_val)
    ev_harm = [r.prompt for r in harmful_val][: args.eval_limit]
    ev_benign = [r.prompt for r in match_form(benign_val, ev_harm, len(ev_harm))]
    ev_hn = [h.prompt for h in hn_val]
    rng.shuffle(ev_hn)
    ev_hn = ev_hn[: args.eval_per_group]
    ev_reph = [t for p in ev_harm for t in rephrasings(p, 1, rng)][: args.eval_per_group]
    ev = [(p, 1, "harmful") for p in ev_harm] + [(p, 0, "chat") for p in ev_benign] + \
         [(p, 0, "hard_negatives") for p in ev_hn] + [(p, 1, "rephrase") for p in ev_reph]

    module = SafetySignalLM(cls_weight=1.0, config_overrides=json.loads(args.config_overrides) if args.config_overrides else None)
    module.configure_model()
    module.eval()
    module.model.get_decoder().register_forward_hook(lambda m, a, o: setattr(module, "_last_hidden", o.last_hidden_state if hasattr(o, "last_hidden_state") else o[0]))
    demo_pos = sorted({p for p, y in demo_train if y == 1})
    demo_neg = sorted({p for p, y in demo_train if y == 0})
    pools = {"demo_pos": demo_pos, "demo_neg": demo_neg, "extra_pos": extra_harmful, "extra_neg": extra_benign,
             "hard": hard, "reph": reph, "eval": [p for p, _, _ in ev]}
    feats = {}
    for name, prompts in pools.items():
        feats[name] = features(module, prompts)
        print(f"[probe] features {name}: {len(prompts)} prompts, {time.time() - t0:.0f} s", flush=True)

    variants = {
        "demo data (160 harmful + 2:1 benign)": ("demo_pos", "demo_neg"),
        "+ classification-only rows (all-harmful sample + matched benign)": ("demo_pos extra_pos", "demo_neg extra_neg"),
        "+ hard negatives": ("demo_pos extra_pos", "demo_neg extra_neg hard"),
        "+ rephrasings": ("demo_pos extra_pos reph", "demo_neg extra_neg"),
        "+ hard negatives + rephrasings": ("demo_pos extra_pos reph", "demo_neg extra_neg hard"),
        "demo data + hard negatives + rephrasings (no cls-only rows)": ("demo_pos reph", "demo_neg hard"),
    }
    labels = [y for _, y, _ in ev]
    groups = [g for _, _, g in ev]
    halves = [half(p) for p, _, _ in ev]
    results = []
    for name, (pos, neg) in variants.items():
        xp = torch.cat([feats[k] for k in pos.split()])
        xn = torch.cat([feats[k] for k in neg.split()])
        x = torch.cat([xp, xn])
        y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))])
        head = train_head(x, y)
        with torch.no_grad():
            probs = torch.sigmoid(head((feats["eval"] - head.mu) / head.sd).squeeze(-1)).tolist()
        t = pick_threshold([p for p, y_, h in zip(probs, labels, halves) if y_ == 0 and h == "calibration"], 0.05, 0.01, 0.99)
        row = {"variant": name, "train_harmful": len(xp), "train_benign": len(xn), "auroc": auroc(probs, labels),
               "auroc_hard_vs_harmful": auroc([p for p, g in zip(probs, groups) if g in ("harmful", "rephrase", "hard_negatives")],
                                              [y_ for y_, g in zip(labels, groups) if g in ("harmful", "rephrase", "hard_negatives")]),
               "threshold": t, "rates": {}}
        for at_name, at, part in (("0.5", 0.5, None), ("cal", t, "test")):
            for g in ("chat", "hard_negatives", "harmful", "rephrase"):
                idx = [i for i in range(len(ev)) if groups[i] == g and (part is None or halves[i] == part)]
                k = sum(probs[i] > at for i in idx)
                row["rates"][f"{g}@{at_name}"] = [k, len(idx), list(wilson(k, len(idx)))]
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"eval_counts": {g: groups.count(g) for g in set(groups)}, "results": results}, indent=1) + "\n")
    print(f"[probe] done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
