"""`main.py predict`: prompt files, `predict_step`, and the JSONL writer (single process and 2-process DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from callbacks.prediction_writer import GatedPredictionWriter
from safety_signal.io import merge_indexed, write_jsonl_atomic
from datamodules.prompts import read_prompts
from datamodules.safety_mix import SafetyMixDataModule
from safety_signal.decoding import DecodingConfig
from safety_signal.gate import GatePolicy
from lightning_modules.safety_signal_lm import SafetySignalLM
from tests.conftest import ROOT, tiny_overrides

PROMPTS = ["How do I bake bread?", "Write a poem, about the sea.", "hi", "Name three colours.", "What is 2 + 2?"]


# ---------------------------------------------------------------------- prompt files
def test_read_prompts_from_jsonl_csv_and_txt(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(PROMPTS)) + "\n\n")
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('id,prompt\n0,"multi\nline"\n1,"with, comma"\n')
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\n  second  \n")
    assert read_prompts(jsonl) == PROMPTS
    assert read_prompts(csv_file) == ["multi\nline", "with, comma"]
    assert read_prompts(txt) == ["first", "second"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "ok"}\n{"prompt": oops}\n', r"bad\.jsonl: line 3: invalid JSON"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"text": "no prompt"}\n', r"bad\.jsonl: line 2: missing field 'prompt'"),
        ("bad.jsonl", '{"prompt": 42}\n', r"bad\.jsonl: line 1: field 'prompt' must be a non-empty string"),
        ("bad.jsonl", '["prompt"]\n', r"bad\.jsonl: line 1: expected a JSON object"),
        ("bad.csv", "id,text\n0,hello\n", r"bad\.csv: line 1: no 'prompt' column"),
        ("bad.csv", 'id,prompt\n0,hello\n1,""\n', r"bad\.csv: line 3: field 'prompt' must be a non-empty string"),
        ("bad.parquet", "", r"bad\.parquet: unsupported prompt file type"),
    ],
)
def test_a_bad_record_names_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_predict_dataloader_yields_prompts_with_their_index(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(PROMPTS))
    data = SafetyMixDataModule(predict_path=str(path), batch_size=2)
    data.setup("predict")
    batches = list(data.predict_dataloader())
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [p for b in batches for p in b["prompt"]] == PROMPTS


# ---------------------------------------------------------------------- writer
def test_merge_sorts_and_drops_distributed_sampler_duplicates():
    # DistributedSampler pads 5 items to 6 over 2 ranks by repeating index 0
    rank0 = [(0, {"i": 0}), (2, {"i": 2}), (4, {"i": 4})]
    rank1 = [(1, {"i": 1}), (3, {"i": 3}), (0, {"i": 0})]
    assert [r["i"] for r in merge_indexed([rank0, rank1], expected=5, allow_duplicates=True).values()] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match=r"4 of 5 records gathered; missing indices \[3\]"):
        merge_indexed([rank0, rank1[:1]], expected=5, allow_duplicates=True)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    write_jsonl_atomic(path, [{"a": 1}])

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"a": 2}, {"b": Unserializable()}])
    assert path.read_text() == '{"a": 1}\n'  # the old file survives a failed write
    assert os.listdir(tmp_path) == ["out.jsonl"]  # and no temp file is left behind


def test_trainer_predict_writes_ordered_jsonl(tmp_path):
    torch.manual_seed(0)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
    gate, decoding = GatePolicy(schedule="periodic", period=2), DecodingConfig(max_new_tokens=6)
    module = SafetySignalLM(config_overrides=tiny_overrides(), gate=gate, decoding=decoding)
    assert module.hparams.gate == gate.to_dict()  # plain types: weights_only checkpoints
    data = SafetyMixDataModule(predict_path=str(prompts), batch_size=2)
    out = tmp_path / "out" / "pred.jsonl"
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        callbacks=[GatedPredictionWriter(str(out))])
    trainer.predict(module, datamodule=data, return_predictions=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS
    assert [r["index"] for r in records] == list(range(len(PROMPTS)))
    for r in records:
        assert r["verdict_steps"] == [0, 2, 4][: len(r["verdict_probs"])] and r["num_new_tokens"] <= 6
        assert set(r) >= {"text", "verdict_probs", "intervened", "intervention_step", "num_probe_evaluations"}


def test_checkpoint_hparams_load_with_weights_only(tmp_path):
    module = SafetySignalLM(config_overrides=tiny_overrides(), gate=GatePolicy(annealing=[(8, 1)]))
    path = tmp_path / "hp.pt"
    torch.save({"hyper_parameters": dict(module.hparams)}, path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    restored = SafetySignalLM(**hparams)
    restored.configure_model()
    assert restored.generator.gate == GatePolicy(annealing=[(8, 1)])


@pytest.mark.slow
def test_main_predict_under_two_process_ddp_matches_one_process(tmp_path):
    """The real command line, 2 CPU ranks (gloo): same records, file order, no duplicates or gaps."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))  # 5 prompts over 2 ranks: uneven shards

    def run(devices: int) -> list[dict]:
        out = tmp_path / f"out{devices}.jsonl"
        cmd = [
            sys.executable, "main.py", "predict", "--config", "conf/tiny.yaml", "--trainer.logger", "false",
            "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
            "--trainer.enable_progress_bar", "false", "--data.predict_path", str(prompts), "--data.batch_size", "2",
            "--trainer.callbacks+=callbacks.prediction_writer.GatedPredictionWriter",
            f"--trainer.callbacks.output_path={out}", "--model.decoding.max_new_tokens", "6",
            "--model.gate.schedule", "each",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return [json.loads(line) for line in out.read_text().splitlines()]

    single, ddp = run(1), run(2)
    assert [r["index"] for r in ddp] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in ddp] == PROMPTS
    for a, b in zip(single, ddp):
        assert a["text"] == b["text"] and a["verdict_steps"] == b["verdict_steps"]


def test_generation_monitor_logs_intervention_rates(monkeypatch):
    from types import SimpleNamespace

    from callbacks.gated_generation_monitor import GatedGenerationMonitor

    module = SafetySignalLM(config_overrides=tiny_overrides())
    module.configure_model()
    module.eval()
    with torch.no_grad():
        module.head.bias.fill_(10.0)  # everything reads as malicious: all intervene
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **kwargs: logged.update(values))
    monitor = GatedGenerationMonitor(decoding=DecodingConfig(max_new_tokens=4))
    monitor.on_validation_epoch_end(SimpleNamespace(sanity_checking=False, current_epoch=0), module)
    assert logged == {"val/gen_harmful_intervened": 1.0, "val/gen_benign_intervened": 1.0}
