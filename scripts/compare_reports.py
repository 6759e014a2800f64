"""Two safety reports over the same prompts, paired per prompt: one column of each (the method by default), every
attack's ASR and every benign set's over-refusal with the exact McNemar p, then the first verdict (AUROC, flags at
0.5), the reason fit and perplexity. Measures two recipes side by side; it never picks anything.

    python scripts/compare_reports.py A/safety_report.json B/safety_report.json --names "demo fit" "long"
        [--column "this method"] [--out comparison.json]

Prints a Markdown table (A | B | p; p from B vs A); `--out` also writes the paired tests as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.report import METHOD, auroc_cell, paired_tests  # noqa: E402
from evaluation.stats import format_p, format_rate  # noqa: E402
from safety_signal.io import write_json_atomic  # noqa: E402


def load_column(path: str | Path, column: str) -> dict[str, Any]:
    result = json.loads(Path(path).read_text())
    columns = result.get("columns", {})
    if column not in columns:
        raise SystemExit(f"{path}: no column {column!r} (it has {', '.join(columns) or 'none'})")
    return columns[column]


def _first_verdict_at(metrics: dict[str, Any], threshold: float) -> str:
    sweep = (metrics.get("classifier") or {}).get("threshold_sweep") or []
    point = next((p for p in sweep if abs(p["threshold"] - threshold) < 1e-9), None)
    if point is None:
        return "—"
    return f"{point['benign_flagged']['k']}/{point['benign_flagged']['n']} / {point['harmful_missed']['k']}/{point['harmful_missed']['n']}"


def _perplexity(column: dict[str, Any]) -> str:
    perplexity = (column.get("utility") or {}).get("perplexity") or {}
    # A preset without utility answers records perplexity 1.0 over 0 tokens.
    return f"{perplexity['perplexity']:.2f}" if perplexity.get("tokens") else "—"


def compare(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    """(Markdown table, paired tests of `second` vs `first`)."""
    tests = paired_tests({names[0]: first, names[1]: second}, first=names[1], against=(names[0],))
    tests = tests[f"{names[1]} vs {names[0]}"]
    a, b = first["metrics"], second["metrics"]
    lines = [f"| held-out | {names[0]} | {names[1]} | McNemar p |", "|---|---|---|---|"]
    for kind, label in (("asr", "ASR"), ("over_refusal", "over-refusal")):
        for name in a[kind]:
            if name not in b[kind]:
                continue
            lines.append(f"| {label} {name} | {format_rate(a[kind][name])} | {format_rate(b[kind][name])} | "
                         f"{format_p(tests[kind][name]['p'])} |")
    lines.append(f"| first-verdict AUROC | {auroc_cell(a.get('classifier'))} | {auroc_cell(b.get('classifier'))} | |")
    lines.append(f"| first verdict at 0.5: benign flagged / harmful missed | {_first_verdict_at(a, 0.5)} | "
                 f"{_first_verdict_at(b, 0.5)} | |")
    lines.append(f"| reason fit of gated refusals | {format_rate(a.get('reason_fit'))} | "
                 f"{format_rate(b.get('reason_fit'))} | |")
    lines.append(f"| perplexity of AlpacaEval references | {_perplexity(first)} | {_perplexity(second)} | |")
    return "\n".join(lines), tests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="safety_report.json of the reference (A)")
    parser.add_argument("second", help="safety_report.json of the candidate (B), same prompts")
    parser.add_argument("--names", nargs=2, default=("A", "B"))
    parser.add_argument("--column", default=METHOD, help=f"column of each report (default {METHOD!r})")
    parser.add_argument("--out", help="write the paired tests here as JSON")
    args = parser.parse_args(argv)
    table, tests = compare(load_column(args.first, args.column), load_column(args.second, args.column), tuple(args.names))
    print(table)
    if args.out:
        write_json_atomic(args.out, {"first": args.first, "second": args.second, "names": list(args.names),
                                     "column": args.column, "paired": tests})


if __name__ == "__main__":
    main()
