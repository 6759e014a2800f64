"""The safety report on a tiny model has every row and column, in Markdown and JSON, from the CLI too."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation.report import ABLATIONS, BASE, METHOD, SFT, ReportConfig, main, run_report, to_markdown, write_report
from evaluation.suite import SuiteConfig
from safety_signal.config import SafetyConfig
from safety_signal.gate import GatePolicy
from lightning_modules.safety_signal_lm import SafetySignalLM
from tests.conftest import ROOT, tiny_overrides

ATTACKS = ["direct", "prefill", "prefill_5", "prefill_10", "prefill_20", "prefill_40", "decoding", "template", "suffix"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(tmp_path) -> ReportConfig:
    config = ReportConfig.from_yaml(ROOT / "conf" / "report.yaml")
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
    assert "agreement 82%" in markdown and "## Aim (from the issue)" in markdown
    assert json.loads(json_path.read_text())["columns"].keys() == result["columns"].keys()
    assert markdown == to_markdown(json.loads(json_path.read_text()))


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
    main(["--export", str(export), "--base-model", str(base), "--sft-baseline", str(base), "--config", str(config_path)])
    out = tmp_path / "run" / "safety_report"
    result = json.loads((out / "safety_report.json").read_text())
    assert list(result["columns"]) == [BASE, SFT, METHOD, "first-only"]
    assert result["attacks"] == ["direct", "prefill_5"]
    assert result["models"][METHOD] == str(export)
    assert (out / "safety_report.md").read_text().startswith("# Safety report")


def test_config_round_trips_through_yaml_types():
    config = ReportConfig(suite={"num_harmful": 3, "attacks": [{"kind": "direct"}]}, gate={"level": "high"})
    assert isinstance(config.suite, SuiteConfig) and config.suite.attacks[0].kind == "direct"
    assert isinstance(config.gate, GatePolicy) and config.gate.level == "high"
    assert ReportConfig(**config.to_dict()).to_dict() == config.to_dict()


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


def test_sft_baseline_config_trains_on_the_demo_data_and_recipe():
    """The report's SFT column is only a baseline if it saw the demo's data with the demo's optimiser."""
    import yaml

    demo, baseline = (yaml.safe_load((ROOT / "conf" / f"{n}.yaml").read_text()) for n in ("demo", "sft_baseline"))
    assert baseline["data"] == demo["data"]
    assert baseline["model"]["safety"]["phase"] == demo["model"]["safety"]["phase"]
    shared = ("model_name", "lr", "head_lr", "warmup_steps")
    assert {k: baseline["model"].get(k) for k in shared} == {k: demo["model"].get(k) for k in shared}
    assert {k: v for k, v in baseline["trainer"].items() if k not in ("default_root_dir", "logger", "callbacks")} == {
        k: v for k, v in demo["trainer"].items() if k not in ("default_root_dir", "logger", "callbacks")}


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
    main(["--checkpoint", str(ckpt), "--no-base", "--config", str(tmp_path / "report.yaml")])
    result = json.loads((tmp_path / "run" / "safety_report" / "safety_report.json").read_text())
    assert list(result["columns"]) == [METHOD] and result["models"][METHOD] == str(ckpt)
    # The checkpoint's weights, not a fresh random model: the same answers and verdicts as the module itself.
    direct = run_report(config, lambda: tiny_method, None, None, {BASE: "", SFT: "", METHOD: "tiny"}, progress=False)
    expected = json.loads(json.dumps(direct["columns"][METHOD]["metrics"]))
    assert result["columns"][METHOD]["metrics"]["classifier"] == pytest.approx(expected.pop("classifier"))
    assert {k: v for k, v in result["columns"][METHOD]["metrics"].items() if k != "classifier"} == expected
