"""The 7B presets, each run for a few steps on CPU with the tiny stand-in model (config override).

Every run keeps the preset's own settings (precision, strategy options, quantization, LoRA,
callbacks) and overrides only what cannot run here: the hub model (its tokenizer and config
come from the built-in SmolLM2 and `config_overrides`), the GPU accelerator and device count,
the data (local files), and the run length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from safetensors.torch import load_file
from torch.distributed.fsdp import ShardingStrategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

from lightning_modules.adapters import ADAPTER_DIR
from lightning_modules.safety_signal_lm import HEAD_FILE, SafetySignalLM
from cli import cli_main
from tests.helpers import ROOT, checkpoint_weights, run_main, tiny_config_overrides_arg, write_sources

PRESETS = {
    "llama2-7b-fsdp": {"model_name": "meta-llama/Llama-2-7b-hf", "cls_weight": 0.1, "lr": 2e-5},
    "mistral-7b-instruct-fsdp": {"model_name": "mistralai/Mistral-7B-Instruct-v0.2", "cls_weight": 0.01, "lr": 2e-5},
    "llama2-7b-qlora": {"model_name": "meta-llama/Llama-2-7b-hf", "cls_weight": 0.1, "quantization": "4bit"},
    "llama2-7b-lora-8bit": {"model_name": "meta-llama/Llama-2-7b-hf", "cls_weight": 0.1, "quantization": "8bit"},
}


def preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / f"{name}.yaml").read_text())


def on_cpu(name: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "conf" / f"{name}.yaml"),
        "--model.model_name=smollm2-135m-instruct", tiny_config_overrides_arg(),
        "--trainer.accelerator=cpu", "--trainer.devices=1", write_sources(tmp_path / "data"),
        "--data.batch_size=2", "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=2",
        *extra,
    ]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_the_paper_recipe(name):
    config = preset(name)
    for key, value in PRESETS[name].items():
        assert config["model"][key] == value
    trainer, data = config["trainer"], config["data"]
    effective_batch = trainer["devices"] * trainer.get("num_nodes", 1) * data["batch_size"] * trainer["accumulate_grad_batches"]
    assert effective_batch == 72
    assert trainer["max_epochs"] == 1 and trainer["precision"] == "bf16-mixed" and config["model"]["safety"]["phase"] == "sft"


@pytest.mark.parametrize("name, layer", [("llama2-7b-fsdp", LlamaDecoderLayer), ("mistral-7b-instruct-fsdp", MistralDecoderLayer)])
def test_fsdp_preset_strategy_instantiates(name, layer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main([*on_cpu(name, tmp_path), "--trainer.devices=2", "--trainer.strategy.class_path=tests.helpers.CPUFSDPStrategy"],
                   run=False)
    strategy = cli.trainer.strategy
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {layer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {layer}
    assert cli.trainer.precision_plugin.precision == "bf16-mixed"


@pytest.mark.slow
def test_llama2_fsdp_preset_trains_on_two_cpu_processes(tmp_path):
    """Real FSDP (2 gloo processes): wrap + activation checkpointing per decoder layer, bf16 mixed
    precision, a sharded checkpoint and the gathered export. The [CLS] head only learns if the
    decoder hook still captures the final hidden state inside the FSDP-wrapped model."""
    run_main(["fit", *on_cpu("llama2-7b-fsdp", tmp_path), "--trainer.devices=2",
              "--trainer.strategy.class_path=tests.helpers.CPUFSDPStrategy", "--trainer.max_steps=2",
              "--trainer.enable_progress_bar=false"], cwd=tmp_path)
    run = tmp_path / "runs" / "llama2-7b-fsdp"
    assert (run / "checkpoints" / "last.ckpt").is_dir()  # one shard per rank
    export = run / "export"
    head = load_file(export / HEAD_FILE)
    assert head["weight"].abs().sum() > 0  # the head was trained through the hook
    module = SafetySignalLM.from_exported(export)
    assert module.model.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)


@pytest.mark.slow
def test_mistral_preset_runs_a_few_steps_in_one_cpu_process(tmp_path, monkeypatch):
    """The preset's model, data, precision and callbacks (its FSDP strategy is checked above)."""
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *on_cpu("mistral-7b-instruct-fsdp", tmp_path), "--trainer.strategy=auto",
                    "--trainer.max_steps=2", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.global_step == 2 and cli.model.hparams.cls_weight == 0.01
    assert (tmp_path / "runs" / "mistral-7b-instruct-fsdp" / "export" / HEAD_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, layer_type", [("llama2-7b-qlora", Linear4bit), ("llama2-7b-lora-8bit", Linear8bitLt)])
def test_quantized_lora_preset_trains_checkpoints_and_exports(name, layer_type, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *on_cpu(name, tmp_path), "--trainer.max_steps=2", "--trainer.enable_progress_bar=false"])
    module: SafetySignalLM = cli.model
    assert isinstance(module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, layer_type)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert any("trainable_tokens_delta" in n for n in trainable)  # the [CLS] embedding row
    assert all("lora_" in n or "trainable_tokens" in n or n.startswith("head.") for n in trainable)

    # The checkpoint holds only the trained weights, loads with weights_only, and restores them.
    run = tmp_path / "runs" / name
    cli.trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    step, weights = checkpoint_weights(run / "checkpoints" / "last.ckpt")
    assert step == 2 and set(weights) == trainable
    fresh = SafetySignalLM(**{k: v for k, v in module.hparams.items() if not k.startswith("_")})
    fresh.configure_model()
    fresh.on_load_checkpoint({"state_dict": weights})
    fresh.load_state_dict(weights, strict=False)
    for name_, param in fresh.named_parameters():
        if name_ in trainable:
            assert torch.equal(param, weights[name_])

    # Export: the adapters alone, and a plain HF model with them merged into a full-precision base.
    export = run / "export"
    assert json.loads((export / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == preset(name)["model"]["lora"]["r"]
    dtype = preset(name)["model"]["dtype"]  # the export's dtype: the base is rebuilt in it, then merged
    exported = SafetySignalLM.from_exported(export, dtype=dtype)
    assert not hasattr(exported.model, "peft_config")
    embedding = exported.model.get_input_embeddings().weight
    base = SafetySignalLM(model_name="smollm2-135m-instruct", config_overrides=module.hparams.config_overrides, dtype=dtype)
    base_embedding = base._load_full_precision_base().get_input_embeddings().weight
    # peft keeps the trained values of the [CLS] row (not a difference): they replace the base row.
    cls_row = next(p for n, p in module.named_parameters() if "trainable_tokens_delta" in n)[0]
    assert torch.equal(embedding[module.cls_id], cls_row.to(embedding.dtype))
    assert not torch.equal(embedding[module.cls_id], base_embedding[module.cls_id])
    other_rows = torch.ones(embedding.shape[0], dtype=torch.bool)
    other_rows[module.cls_id] = False
    assert torch.equal(embedding[other_rows], base_embedding[other_rows])
    torch.testing.assert_close(exported.head.weight, module.head.weight.float())


def test_quantization_needs_lora():
    with pytest.raises(ValueError, match="lora"):
        SafetySignalLM(quantization="4bit")


@pytest.mark.slow
def test_hidden_state_hook_survives_peft_wrapping():
    """With LoRA the decoder hook sees the same final-normed hidden state the LM head reads."""
    from tests.conftest import tiny_overrides
    from tests.test_model import make_batch

    module = SafetySignalLM(config_overrides=tiny_overrides(), lora={"r": 4, "dropout": 0.0})
    module.configure_model()
    batch = make_batch(module)
    out, hidden = module.model_forward(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    lm_head = module.model.get_output_embeddings()
    torch.testing.assert_close(lm_head(hidden), out.logits)
