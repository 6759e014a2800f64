"""`serve.py` end to end: a server started here on the tiny model, driven by the official `openai` client.

The server tests are `slow` (one server subprocess for the module); the decode bookkeeping
(hold-back, multi-turn prompts) is tested in process in the fast tier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.decoding import SafetyGatedGenerator
from safety_signal.gate import GatePolicy
from serve import BatchDecoder, RequestError, RequestParser, ServeOptions, decoding_config
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
BENIGN = "How do I bake bread?"
HARMFUL = "Tell me a long story about a dragon who guards a library in the mountains."
CONTEXT = 256
SERVER_GATE = GatePolicy(schedule="periodic", period=4, tau=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lively_module() -> SafetySignalLM:
    torch.manual_seed(0)
    module = SafetySignalLM(config_overrides={**tiny_overrides(), "initializer_range": 0.2})
    module.configure_model()
    return module.eval()


def _separate(module: SafetySignalLM) -> None:
    """Random head weights, bias halfway between the two prompts' [CLS] logits: HARMFUL is malicious."""
    with torch.no_grad():
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        module.head.bias.zero_()
    probe = SafetyGatedGenerator(module, GatePolicy(level="low", schedule="first"))
    probe.decoding.max_new_tokens = 1
    logits = torch.logit(torch.tensor([a.verdict_probs[0] for a in probe.generate([HARMFUL, BENIGN])]))
    sign = 1.0 if logits[0] > logits[1] else -1.0
    with torch.no_grad():
        module.head.weight.mul_(sign)
        module.head.bias.fill_(-float(sign * (logits[0] + logits[1]) / 2))


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread):
    """(base_url, module loaded from the same export) with one server for the whole module."""
    export = tmp_path_factory.mktemp("export")
    module = _lively_module()
    _separate(module)
    module.export_pretrained(export)
    port = _free_port()
    log = open(export / "server.log", "w")
    gate_args = [f"--gate.schedule={SERVER_GATE.schedule}", f"--gate.period={SERVER_GATE.period}",
                 f"--gate.tau={SERVER_GATE.tau}"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--model", str(export), "--port", str(port), "--threads", "1",
         "--context_length", str(CONTEXT), "--default_max_tokens", "12", "--max_tokens_limit", "64",
         "--max_batch_size", "8", "--batch_timeout", "0.05", *gate_args],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        module = SafetySignalLM.from_exported(export).eval()  # while the server starts
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + (export / "server.log").read_text()[-4000:])
            time.sleep(0.5)
        yield base, module
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _expected(module, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed=None,
              gate: GatePolicy = SERVER_GATE):
    decoding = decoding_config({"max_tokens": max_tokens, "do_sample": temperature > 0,
                                "temperature": temperature if temperature > 0 else 1.0, "top_p": top_p, "seed": seed})
    return SafetyGatedGenerator(module, gate, decoding).generate([prompt])[0]


def _post(base: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _stream(client, prompt: str, **kwargs) -> tuple[str, str, dict, int]:
    text, finish, safety, chunks = "", None, None, 0
    for chunk in client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                stream=True, **kwargs):
        if not chunk.choices:  # the usage chunk (stream_options.include_usage)
            assert chunk.usage.completion_tokens > 0
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            text += choice.delta.content
            chunks += 1
        if choice.finish_reason:
            finish, safety = choice.finish_reason, choice.model_extra["safety"]
    return text, finish, safety, chunks


# ---------------------------------------------------------------------- answers equal the generator's
@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_models_endpoint_lists_the_export(client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("export")


@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 3}], ids=["greedy", "sampled"])
def test_non_streaming_answer_equals_the_generator(served, client, sampling):
    base, module = served
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": BENIGN}],
                                              max_tokens=20, **sampling)
    expected = _expected(module, BENIGN, 20, **sampling)
    choice = response.choices[0]
    assert choice.message.content == expected.text
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[expected.finish_reason]
    trace = choice.model_extra["safety"]
    assert trace["verdict_steps"] == expected.verdict_steps
    assert trace["verdict_probs"] == pytest.approx(expected.verdict_probs, abs=1e-4)
    assert trace["intervention_step"] == expected.intervention_step
    assert response.usage.completion_tokens == len(expected.token_ids)


@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_streaming_answer_equals_the_generator(served, client):
    _, module = served
    text, finish, safety, chunks = _stream(client, BENIGN, max_tokens=20, stream_options={"include_usage": True})
    expected = _expected(module, BENIGN, 20)
    if expected.intervened and expected.intervention_step > 0:  # hold-back dropped what it held
        ids = expected.token_ids
        assert text == module.tokenizer.decode(ids[: safety["leaked_tokens"]] + ids[expected.intervention_step:],
                                               skip_special_tokens=True)
    else:
        assert text == expected.text
    assert chunks > 1 and finish in ("stop", "length") and safety["verdict_steps"] == expected.verdict_steps


@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_stop_sequence_cuts_the_answer(served, client):
    _, module = served
    full = _expected(module, BENIGN, 20).text
    stop = full.split()[2]
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": BENIGN}],
                                              max_tokens=20, stop=[stop])
    assert response.choices[0].message.content == full[: full.find(stop)]
    assert response.choices[0].finish_reason == "stop"
    streamed, finish, _, _ = _stream(client, BENIGN, max_tokens=20, stop=stop)
    assert streamed == full[: full.find(stop)] and finish == "stop"


# ---------------------------------------------------------------------- the gate
@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_malicious_verdict_inserts_the_guide(served, client):
    _, module = served
    guide = module.safety.guide
    expected = _expected(module, HARMFUL, 24)
    assert expected.intervention_step == 0 and expected.text.startswith(guide)
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": HARMFUL}],
                                              max_tokens=24)
    choice = response.choices[0]
    assert choice.message.content == expected.text
    trace = choice.model_extra["safety"]
    assert trace["intervened"] and trace["intervention_step"] == 0 and trace["action"] == "guide"
    assert trace["verdict_probs"][0] > 0.5 and choice.finish_reason in ("stop", "length")
    text, finish, safety, _ = _stream(client, HARMFUL, max_tokens=24)
    assert text == expected.text and safety["leaked_tokens"] == 0 and finish in ("stop", "length")


@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_a_request_may_only_tighten_the_gate(served, client):
    base, module = served
    high = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": HARMFUL}],
                                          max_tokens=24, extra_body={"safety": {"level": "high"}})
    refused = _expected(module, HARMFUL, 24, gate=GatePolicy(**{**SERVER_GATE.to_dict(), "level": "high"}))
    assert high.choices[0].finish_reason == "content_filter" and refused.finish_reason == "refusal"
    assert high.choices[0].message.content == refused.text
    assert high.usage.completion_tokens == len(refused.token_ids)
    for override, param in [({"level": "low"}, "safety.level"), ({"threshold": 0.9}, "safety.threshold"),
                            ({"hold_back": False}, "safety.hold_back"), ({"tau": 5}, "safety.tau"),
                            ({"suffix_screen": False}, "safety.suffix_screen")]:
        status, body = _post(base, {"messages": [{"role": "user", "content": "hi"}], "safety": override})
        assert status == 400 and body["error"]["param"] == param, (override, body)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "word " * (2 * CONTEXT)}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": "yes"}, "stream_options"),
    (b"{not json", None),
])
@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_bad_requests_get_an_openai_400_and_the_server_keeps_serving(served, body, param):
    base, _ = served
    status, answer = _post(base, body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param and answer["error"]["message"]
    status, ok = _post(base, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200 and ok["choices"][0]["message"]["content"] is not None


@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=65)
    assert error.value.status_code == 400 and "max_tokens" in str(error.value)


# ---------------------------------------------------------------------- batching
@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_concurrent_requests_each_get_their_batch_one_answer(served, client):
    _, module = served
    prompts = [BENIGN, HARMFUL, "hi", "What is 2+2?", "Name three colours.", "Write a haiku about rain."]
    requests = [(prompts[i % len(prompts)], 6 + (i * 5) % 17, {} if i % 3 else {"temperature": 0.9, "seed": i})
                for i in range(16)]

    def ask(request):
        prompt, max_tokens, sampling = request
        response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=max_tokens, **sampling)
        return response.choices[0].message.content, response.choices[0].model_extra["safety"]["batch_size"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, requests))
    assert max(size for _, size in answers) > 1  # requests did share decode batches
    for (prompt, max_tokens, sampling), (answer, _) in zip(requests, answers):
        assert answer == _expected(module, prompt, max_tokens, **sampling).text


# ---------------------------------------------------------------------- hold-back (in process)
def test_hold_back_keeps_a_confirmed_verdicts_tokens_from_the_client(one_torch_thread, monkeypatch):
    module = _lively_module()
    calls = []

    def classify(hidden):  # probes turn malicious from step 6 on (call 0 is the prefill verdict)
        calls.append(None)
        return torch.full(hidden.shape[:-1], 10.0 if len(calls) > 6 else -10.0)

    options = ServeOptions(model="unused", model_id="tiny", gate=GatePolicy(schedule="each", tau=3).to_dict())
    parser = RequestParser(options, module.tokenizer, module.safety, 2048)
    results = {}
    for hold_back in (True, False):
        calls.clear()
        monkeypatch.setattr(module, "classify", classify)
        job = parser.parse({"messages": [{"role": "user", "content": BENIGN}], "max_tokens": 24, "stream": True})
        job["hold_back"] = hold_back
        sent, first = "", None
        for step, (event,) in enumerate(BatchDecoder(module).run([job])):
            if event["content"] and first is None:
                first = step
            sent += event["content"]
            trace = event.get("safety", trace if step else None)
        results[hold_back] = {"first": first, "trace": trace, "text": sent}
    calls.clear()
    answer = SafetyGatedGenerator(module, GatePolicy(**job["gate"]), decoding_config(job)).generate([BENIGN])[0]
    held, plain, ids = results[True], results[False], answer.token_ids
    decode = lambda tokens: module.tokenizer.decode(tokens, skip_special_tokens=True)  # noqa: E731
    # malicious from step 6, confirmed (tau = 3) at step 8: without hold-back the client saw 8 tokens
    # of the answer before the guide, with it 3 (tau tokens held, then everything while the verdict was pending)
    assert answer.intervention_step == plain["trace"]["intervention_step"] == held["trace"]["intervention_step"] == 8
    assert plain["trace"]["leaked_tokens"] == 8 and plain["text"] == answer.text
    assert held["trace"]["leaked_tokens"] == 3 and held["trace"]["withheld_tokens"] == 5
    assert held["text"] == decode(ids[:3] + ids[8:])
    assert held["first"] == 3 and plain["first"] == 0  # time to first token: tau steps later


def test_a_request_may_turn_the_suffix_screen_on_but_not_off():
    module = _lively_module()
    body = {"messages": [{"role": "user", "content": BENIGN}]}
    for server_screen in (False, True):
        for weaker in (False, True):
            options = ServeOptions(model="unused", model_id="tiny", allow_weaker_overrides=weaker,
                                   gate=GatePolicy(suffix_screen=server_screen).to_dict())
            parser = RequestParser(options, module.tokenizer, module.safety, 2048)
            assert parser.parse({**body, "safety": {"suffix_screen": True}})["gate"]["suffix_screen"] is True
            if server_screen and not weaker:
                with pytest.raises(RequestError) as error:
                    parser.parse({**body, "safety": {"suffix_screen": False}})
                assert error.value.param == "safety.suffix_screen"
            else:
                assert parser.parse({**body, "safety": {"suffix_screen": False}})["gate"]["suffix_screen"] is False


# ---------------------------------------------------------------------- loading and prompts
@pytest.mark.slow  # a server subprocess (about 10-30 s to start), or > 5 s
def test_a_lightning_checkpoint_loads_and_decodes_like_its_module(tmp_path, one_torch_thread):
    import lightning

    module = _lively_module()
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    from serve import describe_model, load_module

    tokenizer, safety, context = describe_model(str(path))
    loaded = load_module(str(path))
    assert safety == module.safety and context == module.model.config.max_position_embeddings
    parser = RequestParser(ServeOptions(model=str(path), model_id="ckpt", gate=SERVER_GATE.to_dict()),
                           tokenizer, safety, context)
    job = parser.parse({"messages": [{"role": "user", "content": BENIGN}], "max_tokens": 8})
    assert BatchDecoder(loaded).answers([job])[0]["content"] == _expected(module, BENIGN, 8).text


def test_a_conversation_marks_the_user_turns_as_the_query():
    from safety_signal.masks import Role
    from serve import encode_messages

    module = SafetySignalLM(config_overrides=tiny_overrides())  # the tokenizer is all this needs
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How do I bake bread?"}]
    encoded = encode_messages(module.tokenizer, messages, chat_template=True)
    query = [t for t, r in zip(encoded.input_ids, encoded.roles) if r == int(Role.QUERY)]
    assert module.tokenizer.decode(query).replace(" ", "") == "hithereHowdoIbakebread?".replace(" ", "")
    assert encoded.roles[0] == int(Role.CLS) and "Be brief." in module.tokenizer.decode(encoded.input_ids)


def test_batched_jobs_equal_their_batch_one_answers_in_process(one_torch_thread):
    module = _lively_module()
    _separate(module)
    parser = RequestParser(ServeOptions(model="unused", model_id="tiny", gate=SERVER_GATE.to_dict()),
                           module.tokenizer, module.safety, 2048)
    bodies = [
        {"messages": [{"role": "user", "content": BENIGN}], "max_tokens": 20},
        {"messages": [{"role": "user", "content": HARMFUL}], "max_tokens": 12, "stream": True},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "temperature": 0.9, "top_p": 0.8, "seed": 5},
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 7, "temperature": 1.3, "seed": 1},
    ]
    jobs = [parser.parse(body) for body in bodies]
    batched = BatchDecoder(module).answers(jobs)
    for job, body, result in zip(jobs, bodies, batched):
        expected = _expected(module, body["messages"][0]["content"], body["max_tokens"], body.get("temperature", 0.0),
                             body.get("top_p", 1.0), body.get("seed"))
        assert result["content"] == expected.text
        assert result["safety"]["verdict_steps"] == expected.verdict_steps
        assert result["safety"]["intervention_step"] == expected.intervention_step
        assert result["safety"]["batch_size"] == len(jobs) and result["usage"]["completion_tokens"] == len(expected.token_ids)
