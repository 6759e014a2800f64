"""Safety-gated generation: a decode loop on the Hugging Face KV cache, gated by `SafetyGate`.

`generate()` cannot take the 4D masks the classifier tokens need, so this is our own loop,
shaped like transformers' `_sample`: forward, gate, pick, stop. Rows are left padded and advance
in lock-step: at step `t` every row emits its response token `y_t`.

    prefill   [pad ...] [CLS] [template + query]           -> y_0, first verdict (window: the query)
    step t    [y_{t-1}] (+ a probe at position 0)          -> y_t, re-evaluation over a window

A probe is the `[CLS]` token with role PROBE. It attends itself plus a window of the cache and
nothing attends it; it sits *after* the real token in the same forward (so the real token cannot
see it), and its KV entry, the last one, is cropped from the cache afterwards. When to probe,
over which window, and what a verdict changes is the gate's business (`safety_signal.gate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Literal, Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from safety_signal.config import SafetyConfig
from safety_signal.gate import MIN_HEAD_TOKENS, GatePolicy, GateTrace, SafetyGate, suffix_cut
from safety_signal.layout import encode_prompt, left_pad
from safety_signal.masks import Role, build_attention_mask, build_position_ids, build_training_mask
from safety_signal.model import eos_token_ids
from safety_signal.refusal import GUIDE_SEPARATOR

FinishReason = Literal["eos", "length", "refusal"]
# Query tokens whose LM-head logits the suffix screen holds at once.
NLL_CHUNK = 512


class GateableModel(Protocol):
    """What the generator needs of a model with a safety head (`SafetySignalLM` is one)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    cls_id: int
    safety: SafetyConfig

    def model_forward(self, **model_kwargs: Any) -> tuple[Any, torch.Tensor]: ...

    def classify(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DecodingConfig:
    """How tokens are picked and when a row stops; independent of the gate.

    Attributes:
        max_new_tokens: response tokens per row, forced ones (prefill, guide) included.
        do_sample, temperature, top_p, top_k: sampling (greedy when `do_sample` is false;
            `top_k=0` and `top_p=1.0` disable those filters).
        seed: seeds a generator private to each `generate` call (None: torch's global RNG).
        fuse_probe: run a due probe in the same forward as the next decode token (measured
            faster, see benchmarks/RESULTS.md) instead of a separate forward.
        compact: drop finished rows from the model's forward (and the KV cache) once they are a
            quarter of it; answers are unchanged, the batch just stops paying for rows at EOS.
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = 0
    fuse_probe: bool = True
    compact: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """One answer: the record every part of the project (predict, evaluation, server) uses.

    `text` is the whole response (an attacker's prefill included), `continuation` what follows
    the prefill (a guide the gate inserted included). `verdict_steps[i]` is the step of the i-th
    evaluation (0 = the `[CLS]` verdict at prefill, t >= 1 = a probe that saw y_0 .. y_{t-1});
    `verdict_probs[i]` its malicious probability. `intervention_step` is the step whose verdict
    triggered the guide (`medium`) or the refusal (`high`). Plain-decoding baselines leave the
    verdict fields empty. `new_tokens` stands in for `token_ids` in an answer read back from a
    record (`from_record`; records keep no token ids): its `num_new_tokens`.
    """

    text: str
    continuation: str = ""
    token_ids: list[int] = field(default_factory=list)
    num_prefill_tokens: int = 0
    verdict_steps: list[int] = field(default_factory=list)
    verdict_probs: list[float] = field(default_factory=list)
    intervention_step: int | None = None
    num_probe_evaluations: int = 0
    finish_reason: str = ""
    new_tokens: int | None = None

    @property
    def intervened(self) -> bool:
        return self.intervention_step is not None

    @property
    def num_new_tokens(self) -> int:
        """Response tokens after the prefill."""
        if self.new_tokens is not None and not self.token_ids:
            return self.new_tokens
        return max(0, len(self.token_ids) - self.num_prefill_tokens)

    @property
    def leaked_tokens(self) -> int | None:
        """Tokens the model itself generated before the gate intervened (prefill tokens are the
        attacker's, not a leak); None when the gate did not intervene."""
        if self.intervention_step is None:
            return None
        return max(0, self.intervention_step - self.num_prefill_tokens)

    def to_record(self) -> dict[str, Any]:
        """JSON-able (token ids left out: the text is what people and judges read)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("token_ids", "new_tokens")}
        record.update(num_new_tokens=self.num_new_tokens, intervened=self.intervened, leaked_tokens=self.leaked_tokens)
        record["verdict_probs"] = [round(float(p), 6) for p in self.verdict_probs]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Answer":
        """The answer of a `to_record` record (extra keys ignored), whose `to_record` is that record
        again: the token ids are gone, so their count is kept in `new_tokens`."""
        names = {f.name for f in fields(cls)} - {"new_tokens"}
        answer = cls(**{k: v for k, v in record.items() if k in names})
        if not answer.token_ids and "num_new_tokens" in record:
            answer.new_tokens = record["num_new_tokens"]
        return answer


class SafetyGatedGenerator:
    """Generate with a model that has a safety head, re-classifying on the fly and intervening.

    Args:
        module: the model (`SafetySignalLM`, or anything with the `GateableModel` attributes);
            its `safety` config gives the mask phase, chat-template rule, windows, guide,
            threshold and EOS ids it was trained with.
        gate: when to probe and how to intervene (default `GatePolicy()`).
        decoding: sampling and length (default `DecodingConfig()`).

    Example:
        >>> generator = SafetyGatedGenerator(module.eval(), GatePolicy(level="medium"), DecodingConfig(max_new_tokens=64))
        >>> answer = generator.generate(["How do I bake bread?"])[0]
        >>> answer.text, answer.verdict_probs, answer.intervened
    """

    def __init__(
        self, module: GateableModel, gate: GatePolicy | None = None, decoding: DecodingConfig | None = None
    ) -> None:
        self.module = module
        self.gate = gate or GatePolicy()
        self.decoding = decoding or DecodingConfig()
        self.safety: SafetyConfig = module.safety
        self.phase = self.safety.mask_phase
        tokenizer = module.tokenizer
        self.tokenizer = tokenizer
        self.guide_ids = tokenizer(self.safety.guide, add_special_tokens=False)["input_ids"]
        # After response text the guide follows a paragraph break (as in the prefill-recovery training rows).
        self.separated_guide_ids = tokenizer(GUIDE_SEPARATOR + self.safety.guide, add_special_tokens=False)["input_ids"]
        self.refusal_ids = tokenizer(self.gate.refusal, add_special_tokens=False)["input_ids"]
        self.eos_ids = list(self.safety.eos_token_ids or eos_token_ids(module.model, tokenizer))

    # ------------------------------------------------------------------ public
    def tokenize_prefills(self, prefills: list[str] | None, batch: int) -> list[list[int]]:
        """A prefill is tokenized on its own, as the guide; one separating space is kept as text."""
        if prefills is None:
            return [[] for _ in range(batch)]
        if len(prefills) != batch:
            raise ValueError(f"{len(prefills)} prefills for {batch} prompts")
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in prefills]

    @torch.inference_mode()
    def generate(self, prompts: list[str], prefills: list[str] | None = None) -> list[Answer]:
        """Gated generation for a batch of prompts.

        `prefills` (optional, one per prompt) start the response with given text (the prefilling
        attack): it is forced token by token, counts as response text for the windows, and a
        guide queued while it is being forced follows it.
        """
        run = self.start(prompts, prefills)
        for _ in run:
            pass
        return run.answers()

    def start(self, prompts: list[str], prefills: list[str] | None = None) -> "DecodeRun":
        """A decode run to drive step by step (streaming): iterate it, then call `answers()`."""
        encoded = [encode_prompt(self.tokenizer, p, self.safety.chat_template) for p in prompts]
        prefill_ids = self.tokenize_prefills(prefills, len(prompts))
        return DecodeRun(self, [e.input_ids for e in encoded], [e.roles for e in encoded], prefill_ids)

    @torch.inference_mode()
    def first_verdicts(self, prompts: list[str]) -> torch.Tensor:
        """The gate's step-0 verdict on each prompt (suffix screen included when the policy asks), no decoding."""
        encoded = [encode_prompt(self.tokenizer, p, self.safety.chat_template) for p in prompts]
        input_ids, roles = [e.input_ids for e in encoded], [e.roles for e in encoded]
        _, hidden, first_prob, ids, key_roles, _ = self._prompt_forward(input_ids, roles, None, self._no_position)
        if self.gate.suffix_screen:
            first_prob = self._screen_suffix(input_ids, roles, ids, key_roles, hidden, first_prob)
        return first_prob

    @torch.inference_mode()
    def generate_from_ids(
        self, input_ids: list[list[int]], roles: list[list[int]], prefill_ids: list[list[int]] | None = None
    ) -> list[Answer]:
        """Like `generate`, from `encode_prompt` outputs (`[CLS]` first, roles per token)."""
        run = DecodeRun(self, input_ids, roles, prefill_ids or [[] for _ in input_ids])
        for _ in run:
            pass
        return run.answers()

    # ------------------------------------------------------------------ forwards
    def _prefill(
        self, input_ids: list[list[int]], roles: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """`[pad ...] [CLS] [template + query]`, left padded: next-token logits, first verdict, cache.

        Also returns the key roles of the cache and each row's last real position (y_j sits at
        `last_position + 1 + j`; classifier tokens keep position 0).
        """
        # No config: plain full-length layers for every model, as the 4D mask covers all layers.
        cache = DynamicCache()
        out, hidden, first_prob, ids, key_roles, positions = self._prompt_forward(input_ids, roles, cache, 1)
        if self.gate.suffix_screen:
            first_prob = self._screen_suffix(input_ids, roles, ids, key_roles, hidden, first_prob)
        return out.logits[:, -1], first_prob, cache, key_roles, positions.max(dim=1).values

    def _prompt_forward(
        self, input_ids: list[list[int]], roles: list[list[int]], cache: DynamicCache | None, logits_to_keep: Any
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompts' forward: (model output, hidden states, `[CLS]` verdict, ids, key roles, positions)."""
        module, model = self.module, self.module.model
        batch = len(input_ids)
        ids = left_pad(input_ids, self.tokenizer.pad_token_id).to(model.device)
        key_roles = left_pad(roles, int(Role.PAD)).to(model.device)
        positions = build_position_ids(key_roles)
        is_cls = key_roles == Role.CLS
        no_window = torch.zeros_like(key_roles)
        # The training mask: [CLS] reads the query only (R4: no BOS, padding or template tokens).
        mask = build_training_mask(key_roles, is_cls, no_window, no_window, self.phase, dtype=model.dtype)
        out, hidden = module.model_forward(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
        )
        cls_hidden = hidden[torch.arange(batch, device=model.device), is_cls.int().argmax(dim=1)]
        first_prob = torch.sigmoid(module.classify(cls_hidden).float())
        return out, hidden, first_prob, ids, key_roles, positions

    def query_nll(
        self, ids: torch.Tensor, key_roles: torch.Tensor, hidden: torch.Tensor, min_tokens: int = 0
    ) -> list[list[float]]:
        """Per row, the LM's NLL of each query token after the one before it, from the prompt forward's
        hidden states (query and template tokens never read `[CLS]`, so this is the plain LM's NLL).
        Rows with fewer than `min_tokens` such tokens get an empty list and cost nothing."""
        real = (key_roles >= Role.TEMPLATE) & (key_roles <= Role.RESPONSE)
        scored = (key_roles[:, 1:] == Role.QUERY) & real[:, :-1]
        scored &= scored.sum(dim=1, keepdim=True) >= min_tokens
        head, states, targets = self.module.model.get_output_embeddings(), hidden[:, :-1][scored], ids[:, 1:][scored]
        # In chunks: a batch of long prompts times a large vocabulary would otherwise be gigabytes of logits.
        nll = torch.cat([
            torch.nn.functional.cross_entropy(head(states[i:i + NLL_CHUNK]).float(), targets[i:i + NLL_CHUNK],
                                              reduction="none")
            for i in range(0, len(states), NLL_CHUNK)
        ]) if len(states) else states.new_zeros(0)
        return [row.tolist() for row in nll.split(scored.sum(dim=1).tolist())]

    def _screen_suffix(
        self, input_ids: list[list[int]], roles: list[list[int]], ids: torch.Tensor, key_roles: torch.Tensor,
        hidden: torch.Tensor, first_prob: torch.Tensor,
    ) -> torch.Tensor:
        """The first verdict, raised to the verdict on the query without its high-NLL tail where one is found."""
        gate = self.gate
        # A query shorter than a head plus a tail cannot be cut: its NLL is not computed.
        nlls = self.query_nll(ids, key_roles, hidden, MIN_HEAD_TOKENS + gate.suffix_min_tokens)
        cuts = [suffix_cut(nll, gate.suffix_nll, gate.suffix_min_tokens) for nll in nlls]
        rows = [row for row, cut in enumerate(cuts) if cut is not None]
        if not rows:
            return first_prob
        stripped_ids, stripped_roles = zip(*(strip_query_tail(input_ids[r], roles[r], cuts[r]) for r in rows))
        stripped = self._prompt_forward(list(stripped_ids), list(stripped_roles), None, self._no_position)[2]
        index = torch.tensor(rows, device=first_prob.device)
        return first_prob.index_copy(0, index, torch.maximum(first_prob[index], stripped))

    def _decode_forward(
        self,
        cache: DynamicCache,
        key_roles: torch.Tensor,
        token_mask: torch.Tensor,
        token: torch.Tensor,
        position: torch.Tensor,
        window: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed the last emitted token; with a window, also evaluate a probe. Returns (logits, probe hidden).

        `key_roles` / `token_mask` cover the cache plus the new token (its mask row).
        """
        module, dtype = self.module, self.module.model.dtype
        if window is None or not self.decoding.fuse_probe:
            out, _ = module.model_forward(
                input_ids=token[:, None], attention_mask=token_mask, position_ids=position[:, None], cache=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1]
            if window is None:
                return logits, None
            return logits, self._probe_forward(cache, key_roles, window)

        # Fused: [real token, probe]. The probe comes last so the real token cannot attend it
        # (and the masks forbid it anyway) and its KV entry is the cache's tail, cropped below.
        batch, keys = key_roles.shape
        probe = torch.full((batch, 1), int(Role.PROBE), dtype=torch.long, device=key_roles.device)
        all_keys = torch.cat([key_roles, probe], dim=1)
        query_index = torch.arange(keys - 1, keys + 1, device=key_roles.device).expand(batch, 2)
        w_query, w_start, w_end = window
        zero = torch.zeros_like(w_start)
        mask = build_attention_mask(
            all_keys[:, -2:], all_keys, query_index,
            torch.stack([torch.zeros_like(w_query), w_query], dim=1),
            torch.stack([zero, w_start], dim=1),
            torch.stack([zero, w_end], dim=1),
            self.phase, dtype=dtype,
        )
        input_ids = torch.stack([token, torch.full_like(token, module.cls_id)], dim=1)
        position_ids = torch.stack([position, torch.zeros_like(position)], dim=1)
        out, hidden = module.model_forward(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True,
            logits_to_keep=self._first_position,
        )
        cache.crop(-1)
        return out.logits[:, 0], hidden[:, 1]

    def _probe_forward(
        self, cache: DynamicCache, key_roles: torch.Tensor, window: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """A separate one-token forward of the probe against the cache; its KV entry is cropped."""
        module = self.module
        batch, past = key_roles.shape
        probe = torch.full((batch, 1), int(Role.PROBE), dtype=torch.long, device=key_roles.device)
        all_keys = torch.cat([key_roles, probe], dim=1)
        w_query, w_start, w_end = window
        mask = build_attention_mask(
            probe, all_keys, torch.full((batch, 1), past, device=key_roles.device),
            w_query[:, None], w_start[:, None], w_end[:, None], self.phase, dtype=module.model.dtype,
        )
        input_ids = torch.full((batch, 1), module.cls_id, dtype=torch.long, device=key_roles.device)
        _, hidden = module.model_forward(
            input_ids=input_ids, attention_mask=mask, position_ids=torch.zeros_like(input_ids), cache=cache,
            use_cache=True, logits_to_keep=self._no_position,
        )
        cache.crop(-1)
        return hidden[:, 0]

    @property
    def _first_position(self) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.long, device=self.module.model.device)

    @property
    def _no_position(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long, device=self.module.model.device)


    # ------------------------------------------------------------------ decoding
    def _rng(self, device: torch.device) -> torch.Generator | None:
        if not self.decoding.do_sample or self.decoding.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.decoding.seed)
        return generator

    def _next_token(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Greedy, or sampling after temperature / top-k / top-p; `[CLS]` is never emitted."""
        cfg = self.decoding
        logits = logits.float()
        logits[:, self.module.cls_id] = float("-inf")
        if not cfg.do_sample:
            return logits.argmax(dim=-1)
        probs = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class DecodeRun:
    """One batch being decoded: an iterator whose every step emits one token per row.

    Built by `SafetyGatedGenerator.start` (or `generate`, which runs it to the end). Each `next()`
    returns the `[B]` tokens of that step (padding for finished rows); `answers()` gives the rows'
    answers so far. A server streams from it; `gate` exposes the per-row verdict state.
    """

    @torch.inference_mode()
    def __init__(
        self, generator: SafetyGatedGenerator, input_ids: list[list[int]], roles: list[list[int]],
        prefill_ids: list[list[int]],
    ) -> None:
        self.generator = generator
        module, model = generator.module, generator.module.model
        cfg = generator.decoding
        self.prefill_ids = prefill_ids
        pad_id = generator.tokenizer.pad_token_id
        self.logits, first_prob, self.cache, key_roles, self.last_position = generator._prefill(input_ids, roles)
        self.prompt_len = key_roles.shape[1]
        batch, device = len(input_ids), model.device
        self.gate = SafetyGate(
            generator.gate, generator.safety, generator.guide_ids, prefill_ids, self.prompt_len,
            generator.eos_ids, pad_id, device, separated_guide_ids=generator.separated_guide_ids,
        )
        self.gate.start(first_prob)
        self.tokens = torch.full((batch, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
        # Every key column the loop can create: the prompt, then one response token per step.
        # A response token's mask row depends only on the roles before it, so the decode masks of
        # all steps are prefixes of one row built up front (probe steps build their own).
        self.layout = torch.cat(
            [key_roles, torch.full((batch, cfg.max_new_tokens), int(Role.RESPONSE), device=device)], dim=1
        )
        self.decode_mask = _response_token_mask(self.layout, generator.phase, model.dtype)
        self.rng = generator._rng(device)
        self.step = 0
        self.finished = False
        # Rows still in the model's forward and KV cache (original indices); None: all of them.
        self.live: torch.Tensor | None = None

    def __iter__(self) -> "DecodeRun":
        return self

    @torch.inference_mode()
    def __next__(self) -> torch.Tensor:
        gen, gate, step = self.generator, self.gate, self.step
        if self.finished or step >= gen.decoding.max_new_tokens:
            raise StopIteration
        logits = self.logits
        if step > 0:
            past = self.prompt_len + step - 1  # key columns in the cache; y_{step-1} goes to column `past`
            live = self.live if self.live is not None else slice(None)
            window = gate.window(step) if gate.due(step) else None
            logits, probe_hidden = gen._decode_forward(
                self.cache, self.layout[live, : past + 1], self.decode_mask[live, ..., : past + 1],
                self.tokens[live, step - 1], self.last_position[live] + step,
                None if window is None else tuple(w[live] for w in window),
            )
            probs = None if window is None else torch.sigmoid(gen.module.classify(probe_hidden).float())
            if self.live is not None:  # back to batch rows: finished rows get zeros, which the gate ignores
                logits = logits.new_zeros((len(gate.done), logits.shape[-1])).index_copy_(0, self.live, logits)
                if probs is not None:
                    probs = probs.new_zeros(len(gate.done)).index_copy_(0, self.live, probs)
            if probs is not None:
                gate.observe(step, probs)
        token, self.finished = gate.emit(gen._next_token(logits, self.rng))
        self.tokens[:, step] = token
        self.step += 1
        if gen.decoding.compact and not self.finished:
            self._compact()
        return token

    def _compact(self) -> None:
        """Drop rows that reached EOS from the forward once they are a quarter of it."""
        in_forward = len(self.live) if self.live is not None else len(self.gate.done)
        finished_in_forward = self.gate.num_done - (len(self.gate.done) - in_forward)
        if finished_in_forward * 4 < in_forward:
            return
        live = self.live if self.live is not None else torch.arange(len(self.gate.done), device=self.gate.done.device)
        keep = (~self.gate.done[live]).nonzero().squeeze(1)
        self.cache.batch_select_indices(keep)
        self.live = live[keep]

    def answers(self) -> list[Answer]:
        gen, gate = self.generator, self.gate
        tokens, lengths = self.tokens.cpu(), gate.lengths.tolist()
        eos = set(gen.eos_ids)
        decode = lambda ids: gen.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        answers = []
        for row, (length, trace) in enumerate(zip(lengths, gate.traces())):
            row_tokens = tokens[row, :length].tolist()
            num_prefill = min(len(self.prefill_ids[row]), len(row_tokens))
            if trace.refused:
                row_tokens, reason = list(gen.refusal_ids), "refusal"
                text = continuation = decode(row_tokens)
            else:
                reason = "eos" if row_tokens and row_tokens[-1] in eos else "length"
                text, continuation = decode(row_tokens), decode(row_tokens[num_prefill:])
            answers.append(Answer(
                text=text,
                continuation=continuation,
                token_ids=row_tokens,
                num_prefill_tokens=num_prefill,
                verdict_steps=trace.verdict_steps,
                verdict_probs=trace.verdict_probs,
                intervention_step=trace.intervention_step,
                num_probe_evaluations=len(trace.verdict_steps) - 1,
                finish_reason=reason,
            ))
        return answers


def strip_query_tail(input_ids: list[int], roles: list[int], keep: int) -> tuple[list[int], list[int]]:
    """An encoded prompt with only its first `keep` query tokens (template tokens after the query stay)."""
    out_ids, out_roles, seen = [], [], 0
    for token, role in zip(input_ids, roles):
        if role == Role.QUERY:
            seen += 1
            if seen > keep:
                continue
        out_ids.append(token)
        out_roles.append(role)
    return out_ids, out_roles


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering, as HF's logits warpers do them."""
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def _response_token_mask(layout: torch.Tensor, phase: str, dtype: torch.dtype) -> torch.Tensor:
    """`[B, 1, 1, K]` mask row of a response token in the last column of `layout`.

    A response token attends every real key before it (and `[CLS]` in the SFT phase) whatever
    its own column, so `[..., :k]` of this row is the row of a response token at column `k - 1`.
    """
    batch, keys = layout.shape
    index = torch.full((batch, 1), keys - 1, dtype=torch.long, device=layout.device)
    no_window = torch.zeros((batch, 1), dtype=torch.long, device=layout.device)
    return build_attention_mask(layout[:, -1:], layout, index, no_window.bool(), no_window, no_window, phase, dtype)
