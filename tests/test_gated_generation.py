"""Safety-gated generation against the real library: HF `generate` and from-scratch full forwards."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from safety_signal.layout import encode_prompt
from safety_signal.config import SafetyConfig
from safety_signal.decoding import DecodingConfig, SafetyGatedGenerator, filter_logits
from safety_signal.gate import GatePolicy
from safety_signal.masks import Role, build_position_ids, build_training_mask
from lightning_modules.safety_signal_lm import SafetySignalLM
from tests.conftest import tiny_overrides
from tests.helpers import hf_greedy

PROMPTS = [
    "How do I bake bread?",
    "Tell me a long story about a dragon who guards a library in the mountains.",
    "hi",
]


@pytest.fixture(scope="module")
def lively_module() -> SafetySignalLM:
    """The tiny Llama with a wider init: the default init emits one token forever, which proves little."""
    torch.manual_seed(0)
    module = SafetySignalLM(config_overrides={**tiny_overrides(), "initializer_range": 0.2})
    module.configure_model()
    return module.eval()


@contextlib.contextmanager
def head_state(module: SafetySignalLM, weight_std: float = 0.0, bias: float = 0.0, seed: int = 0):
    """Temporarily give the (zero-initialised) head random weights and a bias."""
    saved = {k: v.clone() for k, v in module.head.state_dict().items()}
    with torch.no_grad():
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=torch.Generator().manual_seed(seed)))
        module.head.weight.mul_(weight_std)
        module.head.bias.fill_(bias)
    try:
        yield module
    finally:
        module.head.load_state_dict(saved)


@contextlib.contextmanager
def safety(module: SafetySignalLM, **changes):
    """Temporarily decode with other shared settings (e.g. `use_cls=False`: nothing attends [CLS])."""
    old = module.safety
    module.safety = replace(old, **changes)
    try:
        yield module
    finally:
        module.safety = old


def gated(module: SafetySignalLM, **options) -> SafetyGatedGenerator:
    """A generator from one flat dict of options, split into the gate policy and the decoding settings."""
    decoding = {k: v for k, v in options.items() if k in DecodingConfig.__dataclass_fields__}
    gate = {k: v for k, v in options.items() if k not in decoding}
    return SafetyGatedGenerator(module, GatePolicy(**gate), DecodingConfig(**decoding))


def full_forward_probe(module, prompt: str, response: list[int], window: tuple[bool, int, int]) -> float:
    """From scratch: `[CLS] + prompt + response + probe` with the training mask; the probe's probability."""
    enc = encode_prompt(module.tokenizer, prompt)
    n = len(enc.input_ids)
    ids = torch.tensor([enc.input_ids + response + [module.cls_id]])
    roles = torch.tensor([enc.roles + [int(Role.RESPONSE)] * len(response) + [int(Role.PROBE)]])
    w_query, w_start, w_end = (torch.zeros_like(roles) for _ in range(3))
    w_query = (roles == Role.CLS) | (roles == Role.PROBE) & window[0]
    w_start[0, -1], w_end[0, -1] = n + window[1], n + window[2]
    mask = build_training_mask(roles, w_query, w_start, w_end, module.safety.mask_phase, dtype=module.model.dtype)
    with torch.no_grad():
        _, hidden = module.model_forward(
            input_ids=ids, attention_mask=mask, position_ids=build_position_ids(roles), use_cache=False
        )
        return torch.sigmoid(module.classify(hidden[0, -1]).float()).item()


def full_forward_greedy(module, prompt: str, steps: int) -> list[int]:
    """From scratch, no cache: greedy decoding of `[CLS] + prompt` with the training mask at every step."""
    enc = encode_prompt(module.tokenizer, prompt)
    ids, roles = list(enc.input_ids), list(enc.roles)
    out = []
    for _ in range(steps):
        r = torch.tensor([roles])
        zeros = torch.zeros_like(r)
        mask = build_training_mask(r, r == Role.CLS, zeros, zeros, module.safety.mask_phase)
        with torch.no_grad():
            logits = module.model(input_ids=torch.tensor([ids]), attention_mask=mask,
                                  position_ids=build_position_ids(r)).logits[0, -1]
        logits[module.cls_id] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        ids.append(token)
        roles.append(int(Role.RESPONSE))
    return out


# ---------------------------------------------------------------------- gating off == HF generate
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "batched_padded"])
def test_gating_off_matches_hf_generate_tiny(lively_module, prompts):
    # pretrain phase: nothing attends [CLS], so the LM path is the unmodified model
    with safety(lively_module, use_cls=False):
        expected = hf_greedy(lively_module, prompts, 24)
        ours = gated(lively_module, level="low", schedule="first", max_new_tokens=24).generate(prompts)
    assert [o.token_ids for o in ours] == expected
    assert len(set(expected[0])) > 3  # a varied continuation, not one repeated token


@pytest.mark.slow
def test_gating_off_matches_hf_generate_smollm2(smollm2_module):
    prompts = ["What is the capital of France?", "Give me three tips for staying healthy while working from home."]
    with safety(smollm2_module, use_cls=False):
        config = dict(level="low", schedule="first", max_new_tokens=16)
        generator = gated(smollm2_module, **config)
        for batch in (prompts[:1], prompts):
            assert [o.token_ids for o in generator.generate(batch)] == hf_greedy(smollm2_module, batch, 16)


def test_sft_cached_decoding_matches_full_forward(lively_module):
    # sft phase: responses attend [CLS] through the cache exactly as in the training mask
    out = gated(lively_module, level="low", schedule="first", max_new_tokens=12)
    ours = out.generate(PROMPTS[:2])
    for prompt, o in zip(PROMPTS[:2], ours):
        assert o.token_ids == full_forward_greedy(lively_module, prompt, len(o.token_ids))


# ---------------------------------------------------------------------- probes == full forward
def _probe_case(rule: str, steps: int, r: int):
    """Config + expected window per step for one strategic-attention rule, and a logit override."""
    config = dict(level="low", schedule="each", max_new_tokens=steps, r1=r, r2=r, r3=r, tau=100)
    forced: set[int] = set()
    if rule == "R1":  # every verdict malicious: the first one puts the row in R1 for good
        config["threshold"] = 1e-9
        windows = {t: (True, 0, min(t, r)) for t in range(1, steps)}
    elif rule == "R2":  # nothing is ever malicious
        config["threshold"] = 1 - 1e-9
        windows = {t: (False, max(0, t - r), t) for t in range(1, steps)}
    else:  # R3: forced malicious at steps S..S+r, so step S+r+1 reads [S-r, S+r) and then falls back to R2
        config["threshold"] = 0.99
        switch = 6
        forced = set(range(switch, switch + r + 1))
        windows = {t: (False, max(0, t - r), t) for t in range(1, steps)}
        windows[switch + r + 1] = (False, switch - r, switch + r)
        windows.update({t: (False, switch - r, min(t, switch + r)) for t in forced if t > switch})
    return config, windows, forced


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("rule", ["R1", "R2", "R3"])
def test_probe_through_cache_matches_full_forward(lively_module, monkeypatch, rule, fuse):
    steps, r = 16, 3
    config, windows, forced = _probe_case(rule, steps, r)
    real_classify = lively_module.classify
    calls = []

    def classify(hidden):  # the n-th call is step n (schedule `each`); forced steps read as malicious
        logits = real_classify(hidden)
        step = len(calls)
        calls.append(step)
        return logits + 50.0 if step in forced else logits

    with head_state(lively_module, weight_std=0.15):
        monkeypatch.setattr(lively_module, "classify", classify)
        outs = gated(lively_module, **config, fuse_probe=fuse).generate(PROMPTS[:2])
        monkeypatch.undo()
        for prompt, out in zip(PROMPTS[:2], outs):
            assert out.verdict_steps == list(range(steps))
            checked = 0
            for step, prob in zip(out.verdict_steps[1:], out.verdict_probs[1:]):
                if step in forced:
                    continue
                expected = full_forward_probe(lively_module, prompt, out.token_ids[:step], windows[step])
                assert prob == pytest.approx(expected, abs=1e-4), (step, windows[step])
                checked += 1
            assert checked >= steps - 1 - len(forced)
    # the probability varies with the window (the comparison is not vacuous)
    assert len({round(p, 4) for p in outs[0].verdict_probs}) > 3


@pytest.mark.slow
def test_probe_matches_full_forward_smollm2(smollm2_module):
    config = dict(level="low", schedule="each", max_new_tokens=10, r2=4, threshold=1 - 1e-9)
    with head_state(smollm2_module, weight_std=0.05):
        prompts = ["What is the capital of France?", "Name a fruit."]
        outs = gated(smollm2_module, **config).generate(prompts)
        for prompt, out in zip(prompts, outs):
            for step, prob in zip(out.verdict_steps, out.verdict_probs):
                if step == 0:
                    continue
                window = (False, max(0, step - 4), step)
                assert prob == pytest.approx(full_forward_probe(smollm2_module, prompt, out.token_ids[:step], window),
                                             abs=1e-4)


# ---------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "schedule, extra, expected",
    [
        ("each", {}, list(range(1, 30))),
        ("first", {}, []),
        ("periodic", {"period": 4}, [4, 8, 12, 16, 20, 24, 28]),
        ("annealing", {"annealing": [(6, 1), (14, 4), (22, 8)]}, [1, 2, 3, 4, 5, 6, 8, 12, 16]),
    ],
)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_schedule_reevaluates_exactly_at_claimed_steps(lively_module, schedule, extra, expected, fuse):
    probe_tokens_per_forward = []

    def count(_module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] <= 2:  # decode forwards (the prefill holds the [CLS] itself)
            probe_tokens_per_forward.append(int((ids[0] == lively_module.cls_id).sum()))

    config = dict(level="low", schedule=schedule, max_new_tokens=30, fuse_probe=fuse, **extra)
    handle = lively_module.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        out = gated(lively_module, **config).generate(PROMPTS[:1])[0]
    finally:
        handle.remove()
    assert len(out.token_ids) == 30 and out.finish_reason == "length"
    if fuse:  # one forward per decode step: forward i feeds y_{i-1} at step i
        steps_with_probe = [i + 1 for i, n in enumerate(probe_tokens_per_forward) if n]
        assert len(probe_tokens_per_forward) == 29
    else:  # a separate probe forward follows the decode forward of its step
        steps_with_probe, step = [], 0
        for n in probe_tokens_per_forward:
            if n:
                steps_with_probe.append(step)
            else:
                step += 1
    assert steps_with_probe == expected
    assert out.verdict_steps == [0] + expected
    assert out.num_probe_evaluations == len(expected)


# ---------------------------------------------------------------------- strategic decoding
def test_malicious_head_inserts_guide_at_step_0(lively_module):
    with head_state(lively_module, bias=10.0):
        config = dict(level="medium", schedule="each", max_new_tokens=20)
        generator = gated(lively_module, **config)
        out = generator.generate(PROMPTS[:1])[0]
        assert out.intervention_step == 0 and out.intervened
        assert out.token_ids[: len(generator.guide_ids)] == generator.guide_ids
        assert out.text.startswith(lively_module.safety.guide)
        assert out.verdict_probs[0] > 0.99 and len(out.token_ids) == 20  # it keeps generating after the guide

        high = gated(lively_module, level="high", max_new_tokens=20).generate(PROMPTS[:1])
        assert high[0].text == GatePolicy().refusal and high[0].finish_reason == "refusal"
        assert high[0].intervention_step == 0

        low = gated(lively_module, level="low", max_new_tokens=20).generate(PROMPTS[:1])
        assert not low[0].intervened and low[0].token_ids[:3] != generator.guide_ids[:3]


def _verdicts_by_step(module, monkeypatch, malicious_steps: set[int]):
    """Replace the head's verdict: step n (the n-th classify call, schedule `each`) is malicious iff listed."""
    calls = []

    def classify(hidden):
        step = len(calls)
        calls.append(step)
        return torch.full(hidden.shape[:-1], 10.0 if step in malicious_steps else -10.0)

    monkeypatch.setattr(module, "classify", classify)


@pytest.mark.parametrize("tau", [1, 3])
def test_turning_malicious_inserts_after_tau_consecutive_verdicts(lively_module, monkeypatch, tau):
    k, steps = 5, 24
    _verdicts_by_step(lively_module, monkeypatch, set(range(k, steps)))
    generator = gated(lively_module, level="medium", schedule="each", tau=tau,
                                                                 max_new_tokens=steps)
    out = generator.generate(PROMPTS[:1])[0]
    assert out.intervention_step == k + tau - 1
    guide = generator.separated_guide_ids  # after response text the guide opens a new paragraph
    assert out.token_ids[k + tau - 1 : k + tau - 1 + len(guide)] == guide
    monkeypatch.undo()
    plain = gated(lively_module, level="low", schedule="first", max_new_tokens=steps)
    assert out.token_ids[: k + tau - 1] == plain.generate(PROMPTS[:1])[0].token_ids[: k + tau - 1]

    _verdicts_by_step(lively_module, monkeypatch, set(range(k, steps)))
    high = gated(lively_module, level="high", schedule="each", tau=tau,
                                                            max_new_tokens=steps).generate(PROMPTS[:1])[0]
    assert high.intervention_step == k + tau - 1 and high.finish_reason == "refusal"
    assert high.verdict_steps == list(range(k + tau))  # the row stops at the intervention


@pytest.mark.parametrize("follow_up", [True, False])
def test_sparse_schedule_follows_up_a_malicious_verdict_every_step(lively_module, monkeypatch, follow_up):
    # periodic(4): probes at 4, 8, 12, ...; row 0's verdicts turn malicious from the 3rd probe (step 12),
    # row 1 stays benign. One false alarm variant: only the probe of step 12 is malicious.
    def classify_from(first_malicious_call: int, last_malicious_call: int):
        calls = []

        def classify(hidden):
            call = len(calls)
            calls.append(call)
            logits = torch.full(hidden.shape[:-1], -10.0)
            logits[0] = 10.0 if first_malicious_call <= call <= last_malicious_call else -10.0
            return logits
        return classify

    config = dict(level="medium", schedule="periodic", period=4, tau=3, max_new_tokens=24,
                          follow_up=follow_up)
    monkeypatch.setattr(lively_module, "classify", classify_from(3, 10**6))
    row0, row1 = gated(lively_module, **config).generate(PROMPTS[:2])
    if follow_up:  # confirmed at steps 13 and 14 instead of 16 and 20; `medium` then goes on
        assert row0.verdict_steps == [0, 4, 8, 12, 13, 14, 16, 20] and row0.intervention_step == 14
    else:
        assert row0.verdict_steps == [0, 4, 8, 12, 16, 20] and row0.intervention_step == 20
    # The follow-up probes ran for the whole batch but count only for the confirming row.
    assert row1.verdict_steps == [0, 4, 8, 12, 16, 20] and not row1.intervened

    monkeypatch.setattr(lively_module, "classify", classify_from(3, 3))
    alarm, _ = gated(lively_module, **config).generate(PROMPTS[:2])
    assert not alarm.intervened
    assert alarm.verdict_steps == ([0, 4, 8, 12, 13, 16, 20] if follow_up else [0, 4, 8, 12, 16, 20])


def test_single_step_false_alarms_return_to_r2_without_insertion(lively_module, monkeypatch):
    # isolated alarms (and two in a row, one short of tau) never add up: each benign verdict resets
    alarms = {4, 9, 10, 15}
    _verdicts_by_step(lively_module, monkeypatch, alarms)
    config = dict(level="medium", schedule="each", tau=3, max_new_tokens=20)
    out = gated(lively_module, **config).generate(PROMPTS[:1])[0]
    monkeypatch.undo()
    plain = gated(lively_module, level="low", schedule="first", max_new_tokens=20)
    assert not out.intervened
    assert out.token_ids == plain.generate(PROMPTS[:1])[0].token_ids
    assert [s for s, p in zip(out.verdict_steps, out.verdict_probs) if p > 0.5] == sorted(alarms)


def test_prefill_is_forced_and_the_guide_follows_it(lively_module):
    prefill = "Sure, here is"
    with head_state(lively_module, bias=10.0):
        generator = gated(lively_module, level="medium", max_new_tokens=20)
        out = generator.generate(PROMPTS[:1], prefills=[prefill])[0]
    prefill_ids = lively_module.tokenizer(prefill, add_special_tokens=False)["input_ids"]
    assert out.token_ids[: len(prefill_ids) + len(generator.separated_guide_ids)] == (
        prefill_ids + generator.separated_guide_ids)
    assert prefill + "\n\n" + lively_module.safety.guide in out.text  # never glued to the prefill's last word
    assert out.intervention_step == 0


# ---------------------------------------------------------------------- batching and sampling
def _separating_head(module, malicious_prompt: str, benign_prompt: str):
    """Random head weights with the bias set halfway between two prompts' [CLS] logits."""
    with head_state(module, weight_std=0.3, seed=1):
        probe = gated(module, level="low", schedule="first", max_new_tokens=1)
        p = [o.verdict_probs[0] for o in probe.generate([malicious_prompt, benign_prompt])]
        weight = module.head.weight.clone()
    logit = torch.logit(torch.tensor(p))
    sign = 1.0 if logit[0] > logit[1] else -1.0
    return weight * sign, -float(sign * (logit[0] + logit[1]) / 2)


def test_mixed_batch_rows_equal_their_batch_one_outputs(lively_module):
    weight, bias = _separating_head(lively_module, PROMPTS[1], PROMPTS[0])
    saved = {k: v.clone() for k, v in lively_module.head.state_dict().items()}
    with torch.no_grad():
        lively_module.head.weight.copy_(weight)
        lively_module.head.bias.fill_(bias)
    try:
        config = dict(level="medium", schedule="periodic", period=2, tau=1, r2=4, max_new_tokens=24)
        generator = gated(lively_module, **config)
        prefills = ["", "", "Sure, here is"]
        batched = generator.generate(PROMPTS, prefills=prefills)
        singles = [generator.generate([p], prefills=[f])[0] for p, f in zip(PROMPTS, prefills)]
    finally:
        lively_module.head.load_state_dict(saved)
    assert batched[1].intervention_step == 0 and batched[0].verdict_probs[0] < 0.5  # a mixed batch
    for b, s in zip(batched, singles):
        assert b.token_ids == s.token_ids
        assert b.verdict_steps == s.verdict_steps
        assert b.verdict_probs == pytest.approx(s.verdict_probs, abs=1e-4)
        assert (b.intervention_step, b.num_probe_evaluations, b.finish_reason) == (
            s.intervention_step, s.num_probe_evaluations, s.finish_reason)


def test_sampling_with_a_fixed_seed_is_reproducible(lively_module):
    def sample(seed):
        config = dict(level="low", schedule="each", do_sample=True, temperature=0.9, top_p=0.95, top_k=100,
                              seed=seed, max_new_tokens=16)
        return [o.token_ids for o in gated(lively_module, **config).generate(PROMPTS[:2])]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 50, 1.0), (1.3, 0, 0.9), (0.5, 20, 0.8)])
def test_sampling_filters_match_hf_logits_warpers(temperature, top_k, top_p):
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 3
    expected = logits.clone()
    for warper in [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + (
        [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    ):
        expected = warper(None, expected)
    ours = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    torch.testing.assert_close(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])


def test_gate_policy_round_trips_as_plain_dict():
    config = GatePolicy(annealing=[[8, 1], [32, 4]], level="high")
    plain = config.to_dict()
    assert plain["annealing"] == [[8, 1], [32, 4]] and GatePolicy(**plain) == config
    with pytest.raises(ValueError, match="level"):
        GatePolicy(level="extreme")


def test_compaction_drops_finished_rows_from_the_forward_without_changing_any_answer(lively_module):
    prompts = PROMPTS + ["Name a fruit.", "Write a poem about the sea."]
    options = dict(level="medium", schedule="each", tau=1, max_new_tokens=24)
    # EOS wins wherever the model's top token is one that rows 0, 1 and 3 emit at step 22, so rows
    # finish at different steps (a hook on the LM head: the embeddings, tied here, stay as they are).
    with head_state(lively_module, weight_std=0.3, seed=2):
        unstopped = gated(lively_module, **options).generate(prompts)
    stop_tokens = torch.tensor([unstopped[row].token_ids[22] for row in (0, 1, 3)])
    eos = lively_module.tokenizer.eos_token_id

    def eos_instead(_module, _args, logits):
        top = logits.argmax(dim=-1, keepdim=True)
        logits = logits.clone()
        logits[..., eos] = torch.where(torch.isin(top, stop_tokens), logits.max(dim=-1, keepdim=True).values + 1,
                                       logits[..., eos : eos + 1]).squeeze(-1)
        return logits

    batch_sizes = []
    hooks = [
        lively_module.model.lm_head.register_forward_hook(eos_instead),
        lively_module.model.register_forward_pre_hook(
            lambda _m, _a, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True),
    ]
    try:
        with head_state(lively_module, weight_std=0.3, seed=2):
            compact = gated(lively_module, **options).generate(prompts)
            forwards = list(batch_sizes)
            full = gated(lively_module, **options, compact=False).generate(prompts)
            singles = [gated(lively_module, **options).generate([p])[0] for p in prompts]
    finally:
        for hook in hooks:
            hook.remove()
    finished_early = [a for a in full if a.finish_reason == "eos" and len(a.token_ids) < 24]
    assert 2 <= len(finished_early) < len(prompts)  # the comparison is not vacuous
    assert min(forwards) < len(prompts)  # finished rows left the forward
    for a, b, s in zip(compact, full, singles):
        assert a.token_ids == b.token_ids == s.token_ids
        assert a.verdict_steps == b.verdict_steps == s.verdict_steps
        assert a.verdict_probs == pytest.approx(b.verdict_probs, abs=1e-5)
        assert a.intervention_step == b.intervention_step == s.intervention_step


# ---------------------------------------------------------------------- suffix screen
def test_query_nll_from_the_prefill_matches_a_plain_lm_forward(lively_module, monkeypatch):
    """The screen's NLL comes from the prefill (with [CLS] in the row): it must be the plain LM's, as HF computes it."""
    monkeypatch.setattr("safety_signal.decoding.NLL_CHUNK", 5)  # several chunks, one cut inside a row
    generator = gated(lively_module)
    prompts = PROMPTS[:2]
    encoded = [encode_prompt(lively_module.tokenizer, p) for p in prompts]
    out, hidden, _, ids, key_roles, _ = generator._prompt_forward(
        [e.input_ids for e in encoded], [e.roles for e in encoded], None, generator._no_position)
    ours = generator.query_nll(ids, key_roles, hidden)
    for prompt, enc, row in zip(prompts, encoded, ours):
        plain_ids = torch.tensor([enc.input_ids[1:]])  # without [CLS]: the plain chat-formatted text
        with torch.no_grad():
            logits = lively_module.model(input_ids=plain_ids).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], plain_ids[0, 1:], reduction="none")
        query = [i for i, r in enumerate(enc.roles[1:]) if r == Role.QUERY and i >= 1]
        assert len(row) == len(query) > 3
        torch.testing.assert_close(torch.tensor(row), nll[[i - 1 for i in query]], rtol=1e-4, atol=1e-4)
    # A row too short to be cut is skipped; the others are unchanged.
    short, long = sorted(len(row) for row in ours)
    skipped = generator.query_nll(ids, key_roles, hidden, min_tokens=short + 1)
    assert sorted(map(len, skipped)) == [0, long]
    torch.testing.assert_close(torch.tensor(max(skipped, key=len)), torch.tensor(max(ours, key=len)))


def test_suffix_screen_takes_the_larger_verdict_of_the_query_and_its_head(lively_module, monkeypatch):
    """With an NLL profile whose tail is the suffix, the screened verdict is max(whole query, query without it)."""
    head_text, suffix = "Tell me a long story about a dragon who guards a library", " zq vex plork brindle quux snarf"
    tokenizer = lively_module.tokenizer
    whole = encode_prompt(tokenizer, head_text + suffix)
    head = encode_prompt(tokenizer, head_text)
    n_head = sum(r == Role.QUERY for r in head.roles)
    n_query = sum(r == Role.QUERY for r in whole.roles)
    query_ids = lambda enc: [t for t, r in zip(enc.input_ids, enc.roles) if r == Role.QUERY]  # noqa: E731
    assert query_ids(whole)[:n_head] == query_ids(head)  # the suffix starts on a token boundary

    def profile(self, ids, key_roles, hidden, min_tokens=0):  # low NLL over the request, high over the suffix
        return [[2.0] * n_head + [12.0] * (n_query - n_head)] * ids.shape[0]

    monkeypatch.setattr(SafetyGatedGenerator, "query_nll", profile)
    with head_state(lively_module, weight_std=0.5, bias=0.0, seed=3):
        plain = gated(lively_module, suffix_screen=False).first_verdicts([head_text + suffix, head_text])
        screen = dict(suffix_screen=True, suffix_nll=8.0, suffix_min_tokens=4)
        screened = gated(lively_module, **screen).first_verdicts([head_text + suffix])
        assert not torch.isclose(plain[0], plain[1])  # the suffix changes the verdict, so the test can tell
        torch.testing.assert_close(screened[0], torch.maximum(plain[0], plain[1]))
        # The gate starts from the screened verdict: the trace's step-0 probability is it.
        answer = gated(lively_module, **screen, max_new_tokens=3).generate([head_text + suffix])[0]
        assert answer.verdict_probs[0] == pytest.approx(float(screened[0]), abs=1e-5)


def test_suffix_screen_changes_nothing_when_no_tail_is_unlikely(lively_module, monkeypatch):
    monkeypatch.setattr(SafetyGatedGenerator, "query_nll",
                        lambda self, ids, key_roles, hidden, min_tokens=0: [[3.0] * 40 for _ in range(ids.shape[0])])
    with head_state(lively_module, weight_std=0.5, seed=1):
        off = gated(lively_module, max_new_tokens=6, schedule="each", suffix_screen=False).generate(PROMPTS)
        on = gated(lively_module, max_new_tokens=6, schedule="each", suffix_screen=True).generate(PROMPTS)
    assert [a.token_ids for a in on] == [a.token_ids for a in off]
    assert [a.verdict_probs for a in on] == [a.verdict_probs for a in off]
