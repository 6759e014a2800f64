"""Serve a safety-gated model behind an OpenAI-compatible API (LitServe's `OpenAISpec`).

    python serve.py --model runs/demo/export                    # an export folder (or a Lightning .ckpt)
    python serve.py --model runs/demo/export --gate.level high  # the server's gate; --help lists every option

Endpoints: `POST /v1/chat/completions` (non-streaming and `stream: true`), `GET /v1/models`, `GET /health`.

- Decoding is `SafetyGatedGenerator`'s loop (`DecodeRun`), with the model's chat template and the
  request's `max_tokens` (or `max_completion_tokens`), `temperature` (0 = greedy, the server
  default when absent), `top_p`, `seed` and `stop`.
- Batching: LitServe collects concurrent requests (`max_batch_size`, `batch_timeout`) into one
  decode batch; requests with the same gate share one `DecodeRun`. Every row samples with its own
  settings and its own seeded RNG and stops at its own length and stop strings, so each answer is
  the one the same request gets alone (batch 1).
- The gate's settings are the export's `safety_config.json` (threshold, windows, guide) and the
  server's `--gate.*` options. A request may change them in an extension field `safety`
  (`{"level", "threshold", "tau", "schedule", "follow_up", "hold_back", "suffix_screen"}`) only towards a
  stricter gate (`level` up, `threshold` / `tau` down, `schedule: each`, `follow_up` / `hold_back` /
  `suffix_screen` on)
  unless the server runs with `--allow_weaker_overrides true`.
- The safety trace is the extension field `safety` of the choice (the final chunk's choice when
  streaming): verdict steps and probabilities, whether and at which step the gate intervened, and
  what the client saw before it. `finish_reason` stays standard: `stop`, `length`, or
  `content_filter` for a `high`-level refusal.
- Streaming holds back: a token is sent once it is `tau` tokens old and no malicious verdict is
  pending confirmation (streak > 0). When the gate confirms, the held tokens are dropped and the
  guide follows what was sent, so those tokens never reach the client. The streamed text of an
  intervened answer is therefore (sent tokens + guide + continuation), while a non-streamed
  answer is exactly `SafetyGatedGenerator`'s text (every token up to the guide included; its
  trace says how many preceded the intervention). Without an intervention both are identical.
- Bad input gets an OpenAI-style 400 naming the field before it reaches the model worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import litserve as ls
import torch
from fastapi import BackgroundTasks, Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.openai import OpenAISpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safety_signal.decoding import DecodeRun, DecodingConfig, SafetyGatedGenerator, filter_logits  # noqa: E402
from safety_signal.gate import GatePolicy  # noqa: E402
from safety_signal.layout import EncodedPrompt, encode_prompt  # noqa: E402
from safety_signal.masks import Role  # noqa: E402
from safety_signal.model import cls_token_id  # noqa: E402

logger = logging.getLogger("safety_signal.serve")

LEVELS = {"low": 0, "medium": 1, "high": 2}
ROLES = ("system", "developer", "user", "assistant")


# ---------------------------------------------------------------------- options and request parsing
@dataclass
class ServeOptions:
    """Everything the API process and the model worker share (plain data: it is pickled to the worker)."""

    model: str
    model_id: str
    gate: dict[str, Any]
    hold_back: bool = True
    allow_weaker_overrides: bool = False
    default_max_tokens: int = 256
    max_tokens_limit: int = 1024
    default_temperature: float = 0.0
    context_length: int | None = None
    threads: int | None = None


class RequestError(ValueError):
    """A client error: becomes an OpenAI-style 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": None}}


def load_module(source: str):
    """An export folder (`SafetySignalLM.from_exported`) or a Lightning checkpoint (weights only)."""
    from lightning_modules.safety_signal_lm import SafetySignalLM

    path = Path(source)
    if path.is_dir():
        module = SafetySignalLM.from_exported(path)
    elif path.is_file():
        module = SafetySignalLM.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"--model {source}: neither an export folder nor a checkpoint file")
    return module.eval()


def describe_model(source: str) -> tuple[Any, Any, int]:
    """What request validation needs, without weights or Lightning: (tokenizer, SafetyConfig, context length)."""
    from transformers import AutoConfig

    from safety_signal.config import SafetyConfig
    from safety_signal.model import load_tokenizer, resolve_model_path

    path = Path(source)
    if path.is_dir():
        tokenizer, safety = load_tokenizer(str(path)), SafetyConfig.load(path)
        config_dir, overrides = str(path), {}
    elif path.is_file():
        hparams = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
        name = hparams.get("model_name", "smollm2-135m-instruct")
        tokenizer = load_tokenizer(name, hparams.get("trust_remote_code", False))
        safety = SafetyConfig.coerce(hparams.get("safety"))
        config_dir, overrides = resolve_model_path(name), hparams.get("config_overrides") or {}
    else:
        raise FileNotFoundError(f"--model {source}: neither an export folder nor a checkpoint file")
    config = AutoConfig.from_pretrained(config_dir)
    context = int(overrides.get("max_position_embeddings", getattr(config, "max_position_embeddings", 2048)))
    return tokenizer, safety, context


def encode_messages(tokenizer, messages: list[dict[str, str]], chat_template: bool) -> EncodedPrompt:
    """`[CLS]` + the chat-formatted conversation; `[CLS]` reads the user turns' text (query role).

    One user message (the training layout) is exactly `encode_prompt`; for longer conversations
    every user turn's text is query and the rest (system prompt, earlier answers, markup) is template.
    """
    users = [m["content"] for m in messages if m["role"] == "user"]
    if len(messages) == 1 or not chat_template:
        return encode_prompt(tokenizer, "\n".join(users) if not chat_template else users[0], chat_template)
    if not tokenizer.chat_template:
        return encode_prompt(tokenizer, "\n".join(users), chat_template)
    text = tokenizer.apply_chat_template(
        [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages],
        tokenize=False, add_generation_prompt=True,
    )
    spans, cursor = [], 0
    for content in users:
        start = text.find(content, cursor)
        if start >= 0:
            spans.append((start, start + len(content)))
            cursor = start + len(content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    roles = [
        int(Role.QUERY) if any(s < qe and e > qs for qs, qe in spans) else int(Role.TEMPLATE)
        for s, e in enc["offset_mapping"]
    ]
    if not any(r == int(Role.QUERY) for r in roles):  # a template that rewrites the text: all of it is query
        roles = [int(Role.QUERY)] * len(roles)
    return EncodedPrompt([cls_token_id(tokenizer)] + list(enc["input_ids"]), [int(Role.CLS)] + roles)


class RequestParser:
    """Turns a request body into a decode job (a plain dict) or raises `RequestError`."""

    def __init__(self, options: ServeOptions, tokenizer=None, safety=None, context_length: int | None = None) -> None:
        if tokenizer is None:
            tokenizer, safety, context_length = describe_model(options.model)
        self.options = options
        self.tokenizer, self.safety = tokenizer, safety
        self.context_length = options.context_length or context_length
        self.server_gate = GatePolicy(**options.gate)

    def parse(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        messages = self._messages(body.get("messages"))
        n = body.get("n", 1)
        if n not in (None, 1):
            raise RequestError("Only n=1 is supported.", "n")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise RequestError("'stream' must be a boolean.", "stream")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise RequestError("'stream_options' must be an object.", "stream_options")
        temperature = self._number(body, "temperature", self.options.default_temperature, 0.0, 2.0)
        top_p = self._number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p <= 0.0:
            raise RequestError("'top_p' must be in (0, 1].", "top_p")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise RequestError("'seed' must be a non-negative integer.", "seed")
        stop = self._stop(body.get("stop"))
        gate, hold_back = self._gate(body.get("safety"))

        encoded = encode_messages(self.tokenizer, messages, self.safety.chat_template)
        prompt_tokens = len(encoded.input_ids)
        room = self.context_length - prompt_tokens
        if room < 1:
            raise RequestError(
                f"The prompt is {prompt_tokens} tokens long, more than the model's context of "
                f"{self.context_length} tokens leaves room for; shorten 'messages'.", "messages")
        field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(field_name)
        if max_tokens is None:
            max_tokens = min(self.options.default_max_tokens, room)
        elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= self.options.max_tokens_limit:
            raise RequestError(f"'{field_name}' must be an integer from 1 to {self.options.max_tokens_limit}, got {max_tokens!r}.", field_name)
        elif max_tokens > room:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens; the prompt takes {prompt_tokens} "
                f"and '{field_name}' asks for {max_tokens} more.", field_name)
        do_sample = temperature > 0
        return {
            "model": body.get("model") or self.options.model_id,
            "input_ids": encoded.input_ids,
            "roles": encoded.roles,
            "max_tokens": int(max_tokens),
            "do_sample": do_sample,
            "temperature": float(temperature) if do_sample else 1.0,
            "top_p": float(top_p),
            "seed": (seed if seed is not None else secrets.randbelow(2**31)) if do_sample else None,
            "stop": stop,
            "stream": stream,
            "include_usage": bool(stream_options.get("include_usage")),
            "hold_back": hold_back,
            "gate": gate.to_dict(),
        }

    # ------------------------------------------------------------------ fields
    @staticmethod
    def _messages(messages: Any) -> list[dict[str, str]]:
        if messages is None:
            raise RequestError("Missing required parameter: 'messages'.", "messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty array of messages.", "messages")
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RequestError(f"'messages[{i}]' must be an object with 'role' and 'content'.", f"messages[{i}]")
            role = message.get("role")
            if role not in ROLES:
                raise RequestError(
                    f"Invalid value {role!r} for 'messages[{i}].role': supported roles are {', '.join(ROLES)}.",
                    f"messages[{i}].role")
            content = message.get("content")
            if isinstance(content, list):  # content parts: text only
                texts = []
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise RequestError(f"'messages[{i}].content[{j}]' must be a text part; this model reads text only.",
                                           f"messages[{i}].content[{j}]")
                    texts.append(part["text"])
                content = "".join(texts)
            if not isinstance(content, str) or not content.strip():
                raise RequestError(f"'messages[{i}].content' must be a non-empty string.", f"messages[{i}].content")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "user" for m in out):
            raise RequestError("'messages' must contain at least one message with role 'user'.", "messages")
        return out

    @staticmethod
    def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
        value = body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise RequestError(f"'{name}' must be a number from {low} to {high}, got {value!r}.", name)
        return float(value)

    @staticmethod
    def _stop(stop: Any) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise RequestError("'stop' must be a non-empty string or an array of up to 4 non-empty strings.", "stop")
        return stops

    def _gate(self, override: Any) -> tuple[GatePolicy, bool]:
        """The server's gate with the request's `safety` overrides (stricter only, unless allowed)."""
        server, opts = self.server_gate, self.options
        hold_back = opts.hold_back
        if override is None:
            return server, hold_back
        if not isinstance(override, dict):
            raise RequestError("'safety' must be an object.", "safety")
        allowed = {"level", "threshold", "tau", "schedule", "follow_up", "hold_back", "suffix_screen"}
        unknown = set(override) - allowed
        if unknown:
            raise RequestError(f"Unknown field(s) {sorted(unknown)} in 'safety'; allowed: {sorted(allowed)}.", "safety")
        weaker = opts.allow_weaker_overrides
        values = server.to_dict()

        def refuse(name: str, why: str) -> None:
            raise RequestError(f"'safety.{name}' {why}: it would weaken the server's gate, which this server does not "
                               "allow (--allow_weaker_overrides).", f"safety.{name}")

        if "level" in override:
            level = override["level"]
            if level not in LEVELS:
                raise RequestError("'safety.level' must be 'low', 'medium' or 'high'.", "safety.level")
            if LEVELS[level] < LEVELS[server.level] and not weaker:
                refuse("level", f"{level!r} is below the server's {server.level!r}")
            values["level"] = level
        if "threshold" in override:
            threshold = override["threshold"]
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
                raise RequestError("'safety.threshold' must be a number in (0, 1).", "safety.threshold")
            current = server.threshold if server.threshold is not None else self.safety.threshold
            if threshold > current and not weaker:
                refuse("threshold", f"{threshold} is above the gate's {current}")
            values["threshold"] = float(threshold)
        if "tau" in override:
            tau = override["tau"]
            if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
                raise RequestError("'safety.tau' must be an integer >= 1.", "safety.tau")
            if tau > server.tau and not weaker:
                refuse("tau", f"{tau} is above the server's {server.tau}")
            values["tau"] = tau
        if "schedule" in override:
            schedule = override["schedule"]
            if schedule not in ("each", "first", "periodic", "annealing"):
                raise RequestError("'safety.schedule' must be 'each', 'first', 'periodic' or 'annealing'.", "safety.schedule")
            if schedule not in ("each", server.schedule) and not weaker:
                refuse("schedule", f"{schedule!r} probes less often than the server's {server.schedule!r}")
            values["schedule"] = schedule
        for name in ("follow_up", "hold_back", "suffix_screen"):
            if name in override:
                flag = override[name]
                if not isinstance(flag, bool):
                    raise RequestError(f"'safety.{name}' must be a boolean.", f"safety.{name}")
                current = opts.hold_back if name == "hold_back" else values[name]
                if current and not flag and not weaker:
                    refuse(name, "false")
                if name == "hold_back":
                    hold_back = flag
                else:
                    values[name] = flag
        return GatePolicy(**values), hold_back


# ---------------------------------------------------------------------- batched decoding of jobs
class RowSamplingGenerator(SafetyGatedGenerator):
    """`SafetyGatedGenerator` whose rows pick tokens with their own settings and their own seeded RNG.

    Row i samples exactly as a batch-1 `SafetyGatedGenerator` with `DecodingConfig(do_sample,
    temperature, top_p, seed)` of its job would, so sharing a batch changes no answer.
    """

    def __init__(self, module, gate: GatePolicy, max_new_tokens: int, jobs: list[dict[str, Any]]) -> None:
        super().__init__(module, gate, DecodingConfig(max_new_tokens=max_new_tokens, do_sample=False, seed=None))
        self.jobs = jobs
        device = module.model.device
        self.row_rngs = []
        for job in jobs:
            rng = None
            if job["do_sample"]:
                rng = torch.Generator(device=device)
                rng.manual_seed(job["seed"])
            self.row_rngs.append(rng)

    def _next_token(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        logits = logits.float()
        logits[:, self.module.cls_id] = float("-inf")
        chosen = logits.argmax(dim=-1)
        for row, (job, rng) in enumerate(zip(self.jobs, self.row_rngs)):
            if rng is not None:
                probs = filter_logits(logits[row : row + 1], job["temperature"], 0, job["top_p"]).softmax(dim=-1)
                chosen[row] = torch.multinomial(probs, 1, generator=rng)[0, 0]
        return chosen


def decoding_config(job: dict[str, Any]) -> DecodingConfig:
    """The batch-1 `DecodingConfig` a job's answer equals."""
    return DecodingConfig(max_new_tokens=job["max_tokens"], do_sample=job["do_sample"], temperature=job["temperature"],
                          top_p=job["top_p"], seed=job["seed"])


@dataclass
class _Row:
    """What one request's client has been sent, and what the gate did to it."""

    job: dict[str, Any]
    tau: int
    sent_text: str = ""
    released: int = 0  # tokens of the answer the client may see (hold-back)
    dropped_from: int | None = None  # at an intervention: [dropped_from, intervention) never reach the client
    finished: bool = False
    ids: list[int] = field(default_factory=list)


class BatchDecoder:
    """Decodes a batch of jobs; `run()` yields, per decode step, one event dict per job.

    An event is `{"content": delta}`; a job's last event also has `finish_reason`, `safety` (the
    trace) and `usage`. Jobs with different gates run one group after another.
    """

    def __init__(self, module) -> None:
        self.module = module
        self.tokenizer = module.tokenizer

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        groups: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(json.dumps(job["gate"], sort_keys=True), []).append(index)
        for rows in groups.values():
            for events in self._run_group([jobs[i] for i in rows]):
                out = [{"content": ""} for _ in jobs]
                for index, event in zip(rows, events):
                    out[index] = event
                yield out

    def answers(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run to the end: per job `{"content", "finish_reason", "safety", "usage"}` (content concatenated)."""
        results = [{"content": ""} for _ in jobs]
        for events in self.run(jobs):
            for result, event in zip(results, events):
                content = result["content"] + event.get("content", "")
                result.update(event)
                result["content"] = content
        return results

    @torch.inference_mode()
    def _run_group(self, jobs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        policy = GatePolicy(**jobs[0]["gate"])
        generator = RowSamplingGenerator(self.module, policy, max(j["max_tokens"] for j in jobs), jobs)
        run = DecodeRun(generator, [j["input_ids"] for j in jobs], [j["roles"] for j in jobs], [[] for _ in jobs])
        rows = [_Row(job, policy.tau) for job in jobs]
        gate = run.gate
        while not all(row.finished for row in rows):
            try:
                next(run)
                exhausted = False
            except StopIteration:
                exhausted = True
            lengths, streak = gate.lengths.tolist(), gate.streak.tolist()
            intervention, done, refused = gate.intervention_step.tolist(), gate.done.tolist(), gate.refused.tolist()
            step_tokens = run.tokens[:, run.step - 1].tolist() if run.step > 0 else []
            events = []
            for i, row in enumerate(rows):
                if row.finished:
                    events.append({"content": ""})
                    continue
                length = min(lengths[i], row.job["max_tokens"])
                if len(row.ids) < length:
                    row.ids.append(step_tokens[i])
                finished = exhausted or done[i] or length >= row.job["max_tokens"]
                events.append(self._update(row, run, i, streak[i], intervention[i], finished, refused[i]))
                if row.finished and not done[i]:
                    # At its own max_tokens or stop string: the row leaves the batch as at EOS (the
                    # decode loop compacts it away); the other rows' answers do not depend on it.
                    gate.done[i] = True
            yield events
            if exhausted:
                break

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _update(self, row: _Row, run: DecodeRun, i: int, streak: int, intervention: int, finished: bool,
                refused: bool) -> dict[str, Any]:
        job, ids = row.job, row.ids
        stream = job["stream"]
        hold_back = stream and job["hold_back"]
        if intervention >= 0 and row.dropped_from is None:
            # With hold-back the held tokens [released, intervention) are dropped; without, all were sent.
            row.dropped_from = row.released if hold_back else intervention
        if hold_back and row.dropped_from is not None:
            visible = ids[: row.dropped_from] + ids[intervention:]
        else:
            visible = ids
        if hold_back and intervention < 0:
            if streak == 0:  # no verdict pending: tokens older than tau can no longer be retracted
                row.released = max(row.released, len(ids) - row.tau)
            release = row.released
        else:
            release = len(visible)

        stops, stopped, full_text = job["stop"], False, ""
        if finished or refused or stops:
            if refused:
                refusal = self._decode(run.generator.refusal_ids)
                full_text = self._decode(ids[: row.dropped_from]) + refusal if stream else refusal
            else:
                full_text = self._decode(visible)
            for stop in stops:
                at = full_text.find(stop)
                if at >= 0:
                    full_text, stopped = full_text[:at], True
        finished = finished or stopped or refused
        if finished:
            text = full_text
        elif not stream:
            text = ""
        else:
            # an unfinished character, or a space the next token may join, waits for the next step
            text = self._decode(visible[:release]).rstrip("\ufffd").rstrip()
            if stops:  # the start of a stop string waits until it is known not to be one
                text = text[: max(0, len(full_text) - max(len(s) for s in stops) + 1)]
        delta = ""
        if text.startswith(row.sent_text):
            delta, row.sent_text = text[len(row.sent_text):], text
        elif finished:
            logger.warning("streamed text is not a prefix of the final text; the client keeps what it was sent")
        event: dict[str, Any] = {"content": delta}
        if finished:
            row.finished = True
            event.update(self._final(row, run, i, intervention, refused, stopped))
        return event

    def _final(self, row: _Row, run: DecodeRun, i: int, intervention: int, refused: bool, stopped: bool) -> dict[str, Any]:
        job, n = row.job, len(row.ids)
        last_step = intervention if refused else n - 1
        trace = run.gate.traces()[i]
        keep = [k for k, s in enumerate(trace.verdict_steps) if s <= last_step]
        intervened = 0 <= intervention <= last_step
        eos = set(run.generator.eos_ids)
        if refused:
            finish = "content_filter"
        elif stopped or (row.ids and row.ids[-1] in eos):
            finish = "stop"
        else:
            finish = "length"
        streamed_hold_back = job["stream"] and job["hold_back"]
        safety = {
            "level": run.generator.gate.level,
            "threshold": run.gate.threshold,
            "tau": run.generator.gate.tau,
            "verdict_steps": [trace.verdict_steps[k] for k in keep],
            "verdict_probs": [round(float(trace.verdict_probs[k]), 6) for k in keep],
            "num_probe_evaluations": max(0, len(keep) - 1),
            "intervened": intervened,
            "intervention_step": intervention if intervened else None,
            "action": ("refusal" if refused else "guide") if intervened and run.generator.gate.level != "low" else None,
            "hold_back": streamed_hold_back,
            # tokens of the model's own answer the client received before the gate intervened
            "leaked_tokens": (row.dropped_from if streamed_hold_back else intervention) if intervened else None,
            "withheld_tokens": (intervention - row.dropped_from) if intervened and streamed_hold_back else 0,
            "seed": job["seed"],
            "batch_size": len(run.generator.jobs),  # requests decoded together with this one
        }
        if refused:  # the answer is the fixed refusal (after what was already streamed)
            n = len(run.generator.refusal_ids) + (row.dropped_from if job["stream"] else 0)
        prompt_tokens = len(job["input_ids"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        return {"finish_reason": finish, "safety": safety, "usage": usage}


# ---------------------------------------------------------------------- LitServe

class SafetyOpenAISpec(OpenAISpec):
    """LitServe's OpenAI spec with request validation (400s), the `safety` extension field,
    standard finish reasons, `/v1/models`, and one decode job per request."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__()
        self.options = options
        self.parser: RequestParser | None = None

    def __getstate__(self):
        state = super().__getstate__()
        state["parser"] = None  # the worker does not validate; the tokenizer stays in the API process
        return state

    def pre_setup(self, lit_api) -> None:
        super().pre_setup(lit_api)
        self.add_endpoint("/v1/models", self.list_models, ["GET"])

    def setup(self, server) -> None:
        super().setup(server)
        if self.parser is None:
            self.parser = RequestParser(self.options)

    def populate_context(self, context, request) -> None:
        pass

    async def list_models(self, request: Request):
        model = {"id": self.options.model_id, "object": "model", "created": 0, "owned_by": "safety-signal"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completion(self, request: Request, background_tasks: BackgroundTasks):
        try:
            try:
                body = await request.json()
            except Exception:
                raise RequestError("The request body is not valid JSON.")
            job = self.parser.parse(body)
        except RequestError as error:
            return JSONResponse(error.body(), status_code=400)
        uid = uuid.uuid4()
        queue: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        events = self.data_streamer(queue, event, send_status=True)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": job["model"]}
        if job["stream"]:
            return StreamingResponse(self._stream(uid, events, meta, job["include_usage"]),
                                     media_type="text/event-stream",
                                     background=background_tasks)
        try:
            content, final = [], {}
            async for data, status in events:
                if status == LitAPIStatus.ERROR:
                    return JSONResponse(_server_error(data), status_code=getattr(data, "status_code", 500))
                item = json.loads(data)
                content.append(item.get("content") or "")
                final.update({k: v for k, v in item.items() if k != "content"})
        finally:
            self.response_buffer.pop(uid, None)
        choice = {"index": 0, "message": {"role": "assistant", "content": "".join(content)},
                  "finish_reason": final.get("finish_reason", "stop"), "logprobs": None, "safety": final.get("safety")}
        return JSONResponse({**meta, "object": "chat.completion", "choices": [choice], "usage": final.get("usage")})

    async def _stream(self, uid, events, meta, include_usage: bool):
        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
            body = {**meta, "object": "chat.completion.chunk", "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for data, status in events:
                if status == LitAPIStatus.ERROR:
                    yield f"data: {json.dumps(_server_error(data))}\n\n"
                    return
                item = json.loads(data)
                if item.get("content"):
                    yield chunk({"content": item["content"]})
                if "finish_reason" in item:
                    yield chunk({}, item["finish_reason"], safety=item.get("safety"))
                    if include_usage:
                        usage = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": item.get("usage")}
                        yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.response_buffer.pop(uid, None)

class SafetyGatedAPI(ls.LitAPI):
    """The model worker: one `BatchDecoder` step per yield, one event per request."""

    def __init__(self, options: ServeOptions, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         spec=SafetyOpenAISpec(options))
        self.options = options

    def setup(self, device) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.module = load_module(self.options.model)
        if str(device).startswith(("cuda", "mps")):
            self.module.to(device)
        self.decoder = BatchDecoder(self.module)

    def decode_request(self, request, **kwargs):
        return request

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x, **kwargs):
        jobs = list(x) if self.max_batch_size > 1 else [x]
        for events in self.decoder.run(jobs):
            # A step where no request has news (held tokens, non-streamed answers) sends nothing.
            if any(event["content"] or "finish_reason" in event for event in events):
                yield events if self.max_batch_size > 1 else events[0]

    def unbatch(self, output):
        yield from output

    def encode_response(self, output, **kwargs):
        yield from output


def _server_error(data: Any) -> dict[str, Any]:
    message = getattr(data, "detail", None) or "Internal server error"
    return {"error": {"message": str(message), "type": "server_error", "param": None, "code": None}}


def build_server(options: ServeOptions, max_batch_size: int = 8, batch_timeout: float = 0.02, timeout: float = 300):
    api = SafetyGatedAPI(options, max_batch_size, batch_timeout)
    return ls.LitServer(api, accelerator="auto", workers_per_device=1, timeout=timeout)


def serve(
    model: str = "runs/demo/export",
    host: str = "127.0.0.1",
    port: int = 8000,
    model_id: str | None = None,
    gate: GatePolicy | None = None,
    hold_back: bool = True,
    allow_weaker_overrides: bool = False,
    max_batch_size: int = 8,
    batch_timeout: float = 0.02,
    default_max_tokens: int = 256,
    max_tokens_limit: int = 1024,
    default_temperature: float = 0.0,
    context_length: int | None = None,
    threads: int | None = None,
    timeout: float = 300.0,
    log_level: str = "warning",
) -> None:
    """Serve a safety-gated model with an OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`).

    Args:
        model: an export folder (`SafetySignalLM.export_pretrained`) or a Lightning checkpoint (.ckpt).
        host: interface to listen on (127.0.0.1, 0.0.0.0 or ::).
        port: TCP port.
        model_id: the name `/v1/models` lists (default: the folder or file name).
        gate: the server's gate policy (level, schedule, tau, ...); threshold and windows default
            to the export's `safety_config.json`.
        hold_back: stream with a hold-back of `tau` tokens, so a confirmed verdict's guide comes
            before the harmful tokens reach the client.
        allow_weaker_overrides: let a request's `safety` field weaken the gate (`level: low`,
            a higher threshold, no hold-back, ...). Off: requests may only make it stricter.
        max_batch_size: concurrent requests decoded in one batch.
        batch_timeout: seconds the worker waits to fill a batch.
        default_max_tokens: `max_tokens` of a request that sets none (clamped to the context).
        max_tokens_limit: the largest `max_tokens` a request may ask for.
        default_temperature: temperature of a request that sets none (0: greedy, reproducible).
        context_length: the model's context in tokens (default: the model config's
            `max_position_embeddings`); longer prompts get a 400.
        threads: torch CPU threads of the model worker (default: torch's choice).
        timeout: seconds a request may wait in the queue.
        log_level: uvicorn's log level.
    """
    source = str(Path(model))
    options = ServeOptions(
        model=source,
        model_id=model_id or Path(source).name or source,
        gate=(gate or GatePolicy()).to_dict(),
        hold_back=hold_back,
        allow_weaker_overrides=allow_weaker_overrides,
        default_max_tokens=default_max_tokens,
        max_tokens_limit=max_tokens_limit,
        default_temperature=default_temperature,
        context_length=context_length,
        threads=threads,
    )
    server = build_server(options, max_batch_size, batch_timeout, timeout)

    def terminate(signum, frame):  # SIGTERM shuts down like Ctrl+C: LitServe then stops its uvicorn fork too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(serve, as_positional=False)
