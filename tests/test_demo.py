"""demo.py on the tiny model: the fit path and `--skip_fit true` (which reloads the export) agree."""

from __future__ import annotations

import pytest
import yaml

import demo
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_columns(report_md: str) -> list[list[str]]:
    """The table rows' cells after the base-model column (the base is re-initialised under --skip_fit)."""
    rows = [line.split("|")[1:-1] for line in report_md.splitlines() if line.startswith("| ")][1:]
    return [[row[0], *row[2:]] for row in rows]


@pytest.mark.slow
def test_demo_fit_then_skip_fit_give_the_same_trained_results(tmp_path):
    config = yaml.safe_load((ROOT / "conf" / "tiny.yaml").read_text())
    config["trainer"].update(max_steps=2, val_check_interval=None, default_root_dir=str(tmp_path), logger=False,
                             enable_checkpointing=False,
                             callbacks=[{"class_path": "callbacks.export.ExportPretrained",
                                         "init_args": {"dirpath": str(tmp_path / "export")}}])
    config["data"].update(num_harmful=8)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [f"--fit_configs=[{path}]", "--per_source", "1", "--max_new_tokens", "3", "--batch_size", "4"]

    text = demo.main(args)
    fitted = (tmp_path / "report.md").read_text()
    assert fitted == text + "\n"
    assert (tmp_path / "export" / "safety_head.safetensors").exists()
    demo.main(args + ["--skip_fit", "true"])
    reloaded = (tmp_path / "report.md").read_text()
    assert trained_columns(fitted) == trained_columns(reloaded)
    assert "classifier accuracy on harmful / benign" in reloaded


def test_demo_asks_the_prompts_the_report_asks(tiny_module):
    """One held-out sampling: the demo's table and the report's suite with matching counts and seed
    draw the same prompts."""
    from evaluation.suite import SafetySuite, SuiteConfig

    data = demo.held_out_prompts(3, seed=5)
    suite = SafetySuite(SuiteConfig(num_harmful=6, num_benign=3, seed=5, attacks=[{"kind": "direct"}]),
                        tiny_module.tokenizer)
    assert [p for p, y in zip(data.prompts, data.labels) if y == 1] == [p.prompt for p in suite.harmful]
    assert [p for p, y in zip(data.prompts, data.labels) if y == 0] == [p for ps in suite.benign.values() for p in ps]
    assert data.sources == [p.source for p in suite.harmful] + [n for n, ps in suite.benign.items() for _ in ps]
