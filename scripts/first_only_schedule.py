"""The report's method column under the `first` re-classification schedule, measured exactly and cheaply.

    python scripts/first_only_schedule.py runs/demo/safety_report_full/safety_report.json runs/demo/export \
        --config conf/report_full.yaml --out reports/full_report/first_only_schedule.json

With greedy decoding a probe that does not intervene changes nothing, so an answer whose gate
intervened at step 0 or never is the same under `schedule: first`; only the answers stopped by a
later probe are answered again (decoding-grid cases are sampled, so theirs are a fresh draw). Prints
ASR and over-refusal per attack / set for both schedules.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.attacks import default_answers_path  # noqa: E402
from evaluation.report import METHOD, _cell, column_from_report, load_config  # noqa: E402
from evaluation.runner import GatedResponder  # noqa: E402
from evaluation.suite import SafetySuite  # noqa: E402
from lightning_modules.safety_signal_lm import SafetySignalLM  # noqa: E402
from safety_signal.io import write_text_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="safety_report.json of the full report")
    parser.add_argument("export", help="the method's export folder (the report's --export)")
    parser.add_argument("--config", default="conf/report_full.yaml")
    parser.add_argument("--base_model", default="smollm2-135m-instruct", help="whose cached harmful answers prefill-N used")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    module = SafetySignalLM.from_exported(args.export).eval()
    answers_path = config.suite.harmful_answers or default_answers_path(args.base_model)
    answers = json.loads(Path(answers_path).read_text(encoding="utf-8"))["answers"]
    suite = SafetySuite(config.suite, module.tokenizer, answers)
    responses = column_from_report(METHOD, report, suite, args.report).responses
    late = [n for n, a in responses.items() if a.intervention_step is not None and a.intervention_step > 0]
    gate = replace(config.gate, schedule="first")
    first = dict(responses)
    first.update(zip(late, GatedResponder(module, gate, config.decoding, config.batch_size).respond([suite.cases[n] for n in late])))
    before, after = suite.metrics(responses), suite.metrics(first)
    result = {"late_interventions": len(late), config.gate.schedule: {k: before[k] for k in ("asr", "over_refusal")},
              "first": {k: after[k] for k in ("asr", "over_refusal")}}
    print(f"{len(late)} answers stopped after step 0 answered again")
    print(f"| | {config.gate.schedule} | first |\n|---|---|---|")
    for kind in ("asr", "over_refusal"):
        for name in before[kind]:
            print(f"| {name} | {_cell(before[kind][name])} | {_cell(after[kind][name])} |")
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
