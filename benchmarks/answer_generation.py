"""Throughput of the base model's cached answers (`datamodules.self_distill.generate_answers`) by batch size.

The demo's first run writes the base model's answers once (continuations: 40 new tokens each, 564
prompts); this measures that step on the same kind of prompts, every batch size in one run, and how
many answers are token-for-token the same as at the first batch size (padding and batch shape change
float rounding, so a few greedy answers may differ).

    python benchmarks/answer_generation.py                               # 128 prompts, batch 16 / 32 / 64
    python benchmarks/answer_generation.py --prompts 256 --batch-sizes 16 64 --threads 2

Prompts: half AdvBench (training harmful, with the forced "Sure, here is" opening chosen per prompt
as the demo does) and half ShareGPT first turns (training benign), in a fixed order.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.safety_mix import continuation_row  # noqa: E402
from datamodules.self_distill import generate_answers  # noqa: E402
from datamodules.sources import DataSource, load_source  # noqa: E402
from safety_signal.model import load_causal_lm, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    half = args.prompts // 2
    harmful = [r.prompt for r in load_source(DataSource(name="advbench", limit=half))]
    benign = [r.prompt for r in load_source(DataSource(name="sharegpt", limit=args.prompts - half))]
    prompts = harmful + benign
    # the demo's per-prompt choice: about half of the harmful answers open with "Sure, here is ...:"
    openings = [continuation_row(p, 1, "harmful", "advbench", 0.5).prefill for p in harmful] + [""] * len(benign)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, tokenizer)

    rows, reference = [], None
    for batch_size in args.batch_sizes:
        start = time.perf_counter()
        answers = generate_answers(model, tokenizer, prompts, args.max_new_tokens, batch_size, openings=openings)
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(text[len(o):], add_special_tokens=False)["input_ids"])
                     for (text, _), o in zip(answers, openings))
        reference = reference or answers
        same = sum(a == b for a, b in zip(answers, reference))
        rows.append({"batch_size": batch_size, "seconds": round(seconds, 1), "new_tokens": tokens,
                     "tokens_per_s": round(tokens / seconds, 1), "same_as_first": same})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["seconds"]
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {datetime.date.today()}, {len(prompts)} prompts, "
          f"{args.max_new_tokens} new tokens")
    print("| batch | seconds | new tokens | tokens/s | time vs batch %d | same answers |" % rows[0]["batch_size"])
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['batch_size']} | {row['seconds']} | {row['new_tokens']} | {row['tokens_per_s']} | "
              f"{row['seconds'] / base:.2f}x | {row['same_as_first']}/{len(prompts)} |")


if __name__ == "__main__":
    main()
