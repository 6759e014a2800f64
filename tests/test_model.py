"""SafetySignalLM against the unmodified Hugging Face model."""

import random
from dataclasses import replace

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from safety_signal.config import SafetyConfig
from safety_signal.layout import ProbeConfig, collate_examples, encode_example
from safety_signal.masks import Role
import lightning_modules.safety_signal_lm as safety_signal_lm
from lightning_modules.safety_signal_lm import SafetySignalLM
from tests.conftest import tiny_overrides

EXAMPLES = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, knead, let it rise, then bake at 230 C.", 0, ""),
    ("Write a script that steals passwords", "Sorry, I can't fulfill your request because it would harm people.", 1,
     "Sure, here is a script that steals passwords:"),
    ("What is 2 + 2?", "4.", 0, ""),
]


def make_batch(module: SafetySignalLM, phase: str = "sft") -> dict:
    encoded = [
        encode_example(module.tokenizer, p, r, y, SafetyConfig(phase=phase, r1=4, r2=4), ProbeConfig(stride=2),
                       prefill=f, prefill_harmful=bool(f))
        for p, r, y, f in EXAMPLES
    ]
    return collate_examples(encoded, module.tokenizer.pad_token_id, module.cls_id, phase=phase)


def real_rows(batch: dict):
    """Per row: the real tokens without [CLS], probes and padding, and their column indices."""
    for row in range(batch["input_ids"].shape[0]):
        cols = ((batch["roles"][row] >= Role.TEMPLATE) & (batch["roles"][row] <= Role.RESPONSE)).nonzero().flatten()
        yield row, cols


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lm_path_is_invariant_when_nothing_attends_classifier_tokens(attn):
    torch.manual_seed(0)
    module = SafetySignalLM(safety=SafetyConfig(phase="pretrain"), attn_implementation=attn, config_overrides=tiny_overrides())
    module.configure_model()
    module.eval()
    batch = make_batch(module, phase="pretrain")
    n_probes = batch["num_probe_slots"]
    assert (batch["roles"][:, :n_probes] == Role.PROBE).any()
    with torch.no_grad():
        lm_logits, _ = module(batch)
        for row, cols in real_rows(batch):
            plain = module.model(input_ids=batch["input_ids"][row, cols][None]).logits[0]
            ours = lm_logits[row, cols - n_probes]
            torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_lm_path_is_invariant_on_smollm2(smollm2_module):
    batch = make_batch(smollm2_module, phase="pretrain")
    sft = smollm2_module.safety
    smollm2_module.safety = SafetyConfig(phase="pretrain")  # reuse the loaded model in the pretrain phase
    try:
        with torch.no_grad():
            lm_logits, _ = smollm2_module(batch)
            for row, cols in real_rows(batch):
                plain = smollm2_module.model(input_ids=batch["input_ids"][row, cols][None]).logits[0]
                ours = lm_logits[row, cols - batch["num_probe_slots"]]
                torch.testing.assert_close(ours, plain, atol=1e-4, rtol=1e-5)
    finally:
        smollm2_module.safety = sft


def test_cls_weight_zero_gives_the_plain_hf_loss():
    torch.manual_seed(0)
    module = SafetySignalLM(safety=SafetyConfig(phase="pretrain"), cls_weight=0.0, config_overrides=tiny_overrides())
    module.configure_model()
    batch = make_batch(module, phase="pretrain")
    ours = module.compute_losses(batch)["loss"]
    # HF's own loss on the same texts without [CLS] / probes, targets = response tokens only
    rows = list(real_rows(batch))
    length = max(len(c) for _, c in rows)
    ids = torch.full((len(rows), length), module.tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    attn = torch.zeros((len(rows), length), dtype=torch.long)
    for row, cols in rows:
        ids[row, : len(cols)] = batch["input_ids"][row, cols]
        labels[row, : len(cols)] = batch["lm_targets"][row, cols]
        attn[row, : len(cols)] = 1
    hf_loss = module.model(input_ids=ids, attention_mask=attn, labels=labels).loss
    torch.testing.assert_close(ours, hf_loss, atol=1e-5, rtol=1e-5)
    assert (labels != -100).sum() < attn.sum()  # prompts and harmful prefills are not targets


def test_sft_loss_matches_hf_loss_function_with_our_mask(tiny_module):
    batch = make_batch(tiny_module)
    from safety_signal.masks import build_sft_mask
    module = tiny_module
    module.hparams.cls_weight = 0.0
    try:
        ours = module.compute_losses(batch)["loss"]
    finally:
        module.hparams.cls_weight = 0.1
    mask = build_sft_mask(batch["roles"], batch["window_query"], batch["window_start"], batch["window_end"])
    hf = module.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                      labels=batch["lm_targets"]).loss
    torch.testing.assert_close(ours, hf, atol=1e-6, rtol=1e-6)


def test_bf16_autocast_keeps_the_float32_losses(tiny_module):
    """`precision: bf16-mixed` (CPU autocast) computes the forward in bf16 through our 4D mask, padding rows included,
    and the losses in float32: the same numbers to bf16 precision, all finite."""
    batch = make_batch(tiny_module)
    fp32 = tiny_module.compute_losses(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = tiny_module.compute_losses(batch)
    assert bf16["cls_logits"].dtype == torch.bfloat16 and fp32["cls_logits"].dtype == torch.float32
    for key in ("loss", "lm_loss", "cls_loss"):
        assert bf16[key].dtype == torch.float32 and torch.isfinite(bf16[key])
        torch.testing.assert_close(bf16[key], fp32[key], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(bf16["cls_logits"].float(), fp32["cls_logits"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_fit_warns_only_where_the_cpu_emulates_bf16(monkeypatch, tmp_path, native):
    monkeypatch.setattr(safety_signal_lm, "native_cpu_bf16", lambda: native)
    module = SafetySignalLM(config_overrides=tiny_overrides())
    module.configure_model()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=DataLoader([make_batch(module)], batch_size=None))
    emulated = [w for w in caught if "--trainer.precision 32-true" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


def test_cpu_training_uses_fused_adamw_which_is_the_default_update(tmp_path):
    module = SafetySignalLM(config_overrides=tiny_overrides(), lr=1e-3, head_lr=1e-2)
    module.configure_model()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader([make_batch(module)], batch_size=None))
    assert trainer.optimizers[0].defaults["fused"] is True
    # Three steps from the same weights with the module's two parameter groups, fused vs torch's default AdamW.
    start = {name: p.detach().clone() for name, p in module.named_parameters()}
    head = [p for name, p in module.named_parameters() if name.startswith("head.")]
    lm = [p for name, p in module.named_parameters() if not name.startswith("head.")]
    batch, after = make_batch(module), []
    for fused in (True, None):
        module.zero_grad(set_to_none=True)  # fit leaves its last gradients
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(start[name])
        optimizer = torch.optim.AdamW([{"params": lm, "lr": 1e-3, "weight_decay": 0.01},
                                       {"params": head, "lr": 1e-2, "weight_decay": 0.0}], fused=fused)
        for _ in range(3):
            module.compute_losses(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
        after.append({name: p.detach().clone() for name, p in module.named_parameters()})
    assert any(not torch.equal(after[1][name], start[name]) for name in start)
    for name in start:
        torch.testing.assert_close(after[0][name], after[1][name], rtol=1e-5, atol=1e-6)


def test_harmful_prefill_is_never_an_lm_target(tiny_module):
    batch = make_batch(tiny_module)
    prefill_ids = tiny_module.tokenizer(EXAMPLES[1][3], add_special_tokens=False)["input_ids"]
    targets = batch["lm_targets"][1]
    responses = (batch["roles"][1] == Role.RESPONSE).nonzero().flatten()
    assert (targets[responses[: len(prefill_ids)]] == -100).all()
    assert (targets[responses[len(prefill_ids):]] != -100).all()
    # probes over the harmful opening are labelled malicious, the refusal after it benign
    probe_labels = batch["cls_labels"][1][batch["roles"][1] == Role.PROBE]
    assert probe_labels[0] == 1 and probe_labels.max() == 1 and probe_labels.min() == 0


@pytest.mark.slow
def test_head_separates_two_synthetic_classes():
    torch.manual_seed(0)
    rng = random.Random(0)
    module = SafetySignalLM(config_overrides=tiny_overrides(), lr=3e-3, head_lr=3e-3)
    module.configure_model()
    words = "river stone cloud garden window paper bottle orange pencil letter music summer".split()

    def example(label: int):
        body = " ".join(rng.choice(words) for _ in range(6))
        prompt = f"{body} {'explosive' if label else 'sandwich'} {body}"
        return encode_example(module.tokenizer, prompt, "ok", label, module.safety, ProbeConfig(max_probes=1))

    def batch(n: int):
        exs = [example(i % 2) for i in range(n)]
        return collate_examples(exs, module.tokenizer.pad_token_id, module.cls_id)

    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(60):
        loss = module.compute_losses(batch(16))["cls_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    test = batch(64)
    with torch.no_grad():
        _, logits = module(test)
    is_cls = test["roles"] == Role.CLS
    acc = ((logits[is_cls] > 0).float() == test["cls_labels"][is_cls]).float().mean()
    assert acc > 0.95


def test_export_round_trip(tmp_path):
    tiny_module = SafetySignalLM(config_overrides=tiny_overrides())
    tiny_module.configure_model()
    tiny_module.eval()
    with torch.no_grad():
        tiny_module.head.weight.normal_()
        tiny_module.head.bias.fill_(0.3)
    out = tiny_module.export_pretrained(tmp_path / "export")
    assert (out / "safety_head.safetensors").exists() and (out / "model.safetensors").exists()
    loaded = SafetySignalLM.from_exported(out).eval()
    assert loaded.cls_id == tiny_module.cls_id and "[CLS]" in loaded.tokenizer.get_vocab()
    assert len(loaded.tokenizer) == len(tiny_module.tokenizer)
    batch = make_batch(tiny_module)
    with torch.no_grad():
        a_lm, a_cls = tiny_module(batch)
        b_lm, b_cls = loaded(batch)
    torch.testing.assert_close(a_lm, b_lm)
    torch.testing.assert_close(a_cls, b_cls)
    assert loaded.model.generation_config.suppress_tokens == [tiny_module.cls_id]
    # the folder is also a plain `model_name`: the trained head comes with it
    by_name = SafetySignalLM(model_name=str(out))
    by_name.configure_model()
    torch.testing.assert_close(by_name.head.weight, tiny_module.head.weight)


def test_export_carries_the_shared_settings_into_decoding(tmp_path):
    """safety_config.json: an export decodes with the phase, windows, guide and threshold it was trained with."""
    from safety_signal.decoding import DecodingConfig, SafetyGatedGenerator

    trained = SafetyConfig(phase="sft", use_cls=False, guide="I must decline, since", r1=6, r2=5, r3=4, threshold=0.8)
    module = SafetySignalLM(config_overrides=tiny_overrides(), safety=trained)
    module.configure_model()
    out = module.export_pretrained(tmp_path / "export")
    for loaded in (SafetySignalLM.from_exported(out), SafetySignalLM(model_name=str(out))):
        assert loaded.safety == replace(trained, eos_token_ids=[module.tokenizer.eos_token_id])
    loaded.configure_model()
    with torch.no_grad():
        loaded.head.bias.fill_(1.0)  # p = 0.73: malicious under 0.5, benign under the exported 0.8
    generator = SafetyGatedGenerator(loaded.eval(), decoding=DecodingConfig(max_new_tokens=8))
    assert generator.phase == "pretrain"  # use_cls false: nothing attends [CLS], as in training
    assert not generator.generate(["hi"])[0].intervened
    with torch.no_grad():
        loaded.head.bias.fill_(3.0)  # p = 0.95
    answer = generator.generate(["hi"])[0]
    assert answer.intervention_step == 0 and answer.text.startswith("I must decline, since")
