"""Safety-gated generation: strategic attention, strategic decoding and re-classification schedules.

`SafetyGatedGenerator` runs its own decode loop on the Hugging Face KV cache, because
`generate()` cannot take the 4D masks the classifier tokens need. Rows are left padded and
advance in lock-step: at step `t` every row emits its response token `y_t`.

    prefill   [pad ...] [CLS] [template + query]           -> y_0, first verdict (window: the query)
    step t    [y_{t-1}] (+ a probe at position 0)          -> y_t, re-evaluation over a window

A probe is the `[CLS]` token with role PROBE. It attends itself plus a window of the cache and
nothing attends it; it sits *after* the real token in the same forward (so the real token cannot
see it), and its KV entry, the last one, is cropped from the cache afterwards.

Windows (strategic attention, indices count response tokens; rule R4 always holds because the
mask only lets classifier tokens read query and response tokens):
    R1  first verdict malicious:           query + response tokens [0, r1)
    R2  first verdict benign:              response tokens [t - r2, t)
    R3  benign-to-malicious switch at S:   response tokens [S - r2, S + r3); a benign verdict
                                           returns the row to R2

Strategic decoding: `low` ignores verdicts; `medium` queues the guide text right away when the
first verdict is malicious, or after `tau` consecutive malicious re-evaluations, and keeps
generating; `high` stops the row and answers with a fixed refusal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import DynamicCache

from datamodules.encoding import encode_prompt
from lightning_modules.masks import Role, build_attention_mask, build_position_ids, build_training_mask

if TYPE_CHECKING:
    from lightning_modules.safety_signal_lm import SafetySignalLM

Level = Literal["low", "medium", "high"]
Schedule = Literal["each", "first", "periodic", "annealing"]

DEFAULT_GUIDE = "Sorry, I can't fulfill your request because"
DEFAULT_REFUSAL = "Sorry, I can't help with that request."

# Window modes of the per-row state machine.
R1, R2, R3 = 1, 2, 3


@dataclass
class GatingConfig:
    """How generation is gated by the safety classifier (plain types, so LightningCLI YAML can set it).

    Attributes:
        level: `low` (verdicts are only recorded), `medium` (insert `guide` and continue; the
            paper's choice), `high` (stop with `refusal`).
        schedule: when probes re-evaluate: `each` step, `first` (the prefill verdict only),
            `periodic` (every `period` steps), `annealing` (see `annealing`).
        annealing: `(until_step, every)` segments: at step t the first segment with
            `t <= until_step` probes when `t % every == 0`; past the last segment, no more probes.
            The default probes 18 of the first 256 steps, densest where prefill attacks act
            (measured +0.04x over plain decoding on CPU, benchmarks/RESULTS.md); `follow_up`
            makes up for the gaps when a verdict turns malicious.
        threshold: a verdict is malicious when its probability is above this.
        r1, r2, r3: window sizes of rules R1 / R2 / R3, in response tokens.
        tau: consecutive malicious re-evaluations that trigger an intervention.
        guide: text queued by `medium`; it is tokenized on its own, as in the training data.
        refusal: the whole answer of a row stopped by `high`.
        max_new_tokens: response tokens per row, forced ones included.
        do_sample, temperature, top_p, top_k: sampling (greedy when `do_sample` is false;
            `top_k=0` and `top_p=1.0` disable those filters).
        seed: seeds a generator private to each `generate` call (None: torch's global RNG).
        fuse_probe: run a due probe in the same forward as the next decode token (measured
            faster, see benchmarks/RESULTS.md) instead of a separate forward.
        follow_up: after a malicious re-evaluation, probe at every step until the row's streak
            reaches `tau` or a verdict is benign, whatever the schedule says: a sparse schedule then
            costs little on benign text yet confirms a suspicion within `tau` tokens, not `tau`
            schedule periods.
    """

    level: Level = "medium"
    schedule: Schedule = "annealing"
    period: int = 4
    annealing: list[tuple[int, int]] = field(default_factory=lambda: [(4, 1), (32, 4), (128, 16), (256, 64)])
    threshold: float = 0.5
    r1: int = 10
    r2: int = 10
    r3: int = 10
    tau: int = 3
    guide: str = DEFAULT_GUIDE
    refusal: str = DEFAULT_REFUSAL
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = 0
    fuse_probe: bool = True
    follow_up: bool = True

    def __post_init__(self) -> None:
        # YAML and checkpoints hand segments back as lists; keep one canonical form.
        self.annealing = [(int(until), int(every)) for until, every in self.annealing]
        if self.level not in ("low", "medium", "high"):
            raise ValueError(f"level must be 'low', 'medium' or 'high', got {self.level!r}")
        if self.schedule not in ("each", "first", "periodic", "annealing"):
            raise ValueError(f"schedule must be 'each', 'first', 'periodic' or 'annealing', got {self.schedule!r}")
        if self.period < 1 or any(every < 1 for _, every in self.annealing):
            raise ValueError("period and every annealing `every` must be >= 1")
        if min(self.r1, self.r2, self.r3) < 1 or self.tau < 1 or self.max_new_tokens < 1:
            raise ValueError("r1, r2, r3, tau and max_new_tokens must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")

    def probe_due(self, step: int) -> bool:
        """Whether a probe re-evaluates at decode step `step` (>= 1; step 0 is the `[CLS]` verdict)."""
        if step < 1 or self.schedule == "first":
            return False
        if self.schedule == "each":
            return True
        if self.schedule == "periodic":
            return step % self.period == 0
        for until, every in self.annealing:
            if step <= until:
                return step % every == 0
        return False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples) for hparams and JSON."""
        out = asdict(self)
        out["annealing"] = [list(segment) for segment in self.annealing]
        return out


@dataclass
class GatedOutput:
    """One row of a `generate` call.

    `verdict_steps[i]` is the step of the i-th evaluation (0 = the `[CLS]` verdict at prefill,
    t >= 1 = a probe that saw response tokens y_0 .. y_{t-1}); `verdict_probs[i]` its malicious
    probability. `intervention_step` is the step whose verdict triggered the guide (`medium`) or
    the refusal (`high`); the guide's first token is y_{intervention_step} unless a prefill was
    still queued.
    """

    text: str
    token_ids: list[int]
    verdict_steps: list[int]
    verdict_probs: list[float]
    intervention_step: int | None
    num_probe_evaluations: int
    finish_reason: Literal["eos", "length", "refusal"]

    @property
    def intervened(self) -> bool:
        return self.intervention_step is not None


class SafetyGatedGenerator:
    """Generate with a `SafetySignalLM`, re-classifying on the fly and intervening on malicious verdicts.

    Args:
        module: the trained module (its `.model`, `.classify`, `.tokenizer`, `.cls_id` and phase).
        config: gating, decoding and stopping options.
        chat_template: format prompts with the chat template (default: in the `sft` phase, as in training).

    Example:
        >>> generator = SafetyGatedGenerator(module.eval(), GatingConfig(level="medium", schedule="annealing"))
        >>> out = generator.generate(["How do I bake bread?"])[0]
        >>> out.text, out.verdict_probs, out.intervened
    """

    def __init__(self, module: SafetySignalLM, config: GatingConfig | None = None, chat_template: bool | None = None):
        self.module = module
        self.config = config or GatingConfig()
        self.phase = module.hparams.phase
        self.chat_template = self.phase == "sft" if chat_template is None else chat_template
        tokenizer = module.tokenizer
        self.tokenizer = tokenizer
        self.guide_ids = tokenizer(self.config.guide, add_special_tokens=False)["input_ids"]
        self.refusal_ids = tokenizer(self.config.refusal, add_special_tokens=False)["input_ids"]
        if not self.guide_ids:
            raise ValueError("the guide text must not be empty")
        eos = module.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = eos

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def generate(self, prompts: list[str], prefills: list[str] | None = None) -> list[GatedOutput]:
        """Gated generation for a batch of prompts.

        `prefills` (optional, one per prompt) start the response with given text (the prefilling
        attack): it is forced token by token, counts as response text for the windows, and a
        guide queued while it is being forced follows it.
        """
        if prefills is not None and len(prefills) != len(prompts):
            raise ValueError(f"{len(prefills)} prefills for {len(prompts)} prompts")
        encoded = [encode_prompt(self.tokenizer, p, self.chat_template) for p in prompts]
        prefill_ids = [
            self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in (prefills or [])
        ] or [[] for _ in prompts]
        return self.generate_from_ids([e.input_ids for e in encoded], [e.roles for e in encoded], prefill_ids)

    @torch.inference_mode()
    def generate_from_ids(
        self, input_ids: list[list[int]], roles: list[list[int]], prefill_ids: list[list[int]] | None = None
    ) -> list[GatedOutput]:
        """Like `generate`, from `encode_prompt` outputs (`[CLS]` first, roles per token)."""
        cfg = self.config
        module, model = self.module, self.module.model
        device = model.device
        batch = len(input_ids)
        prefill_ids = prefill_ids or [[] for _ in range(batch)]
        logits, first_prob, cache, key_roles, last_position = self._prefill(input_ids, roles)
        prompt_len = key_roles.shape[1]
        pad_id = self.tokenizer.pad_token_id

        # ---- per-row state (all on the device: no host sync in the loop except the stop check)
        malicious = first_prob > cfg.threshold
        state = _RowState(
            mode=torch.where(malicious, R1, R2),
            streak=torch.zeros(batch, dtype=torch.long, device=device),
            switch_step=torch.zeros(batch, dtype=torch.long, device=device),
            intervention_step=torch.full((batch,), -1, dtype=torch.long, device=device),
            refused=torch.zeros(batch, dtype=torch.bool, device=device),
            done=torch.zeros(batch, dtype=torch.bool, device=device),
        )
        queue = _ForcedQueue(prefill_ids, len(self.guide_ids), device)
        guide = torch.tensor(self.guide_ids, dtype=torch.long, device=device)
        self._intervene(state, queue, guide, trigger=malicious, step=0)

        trace_steps: list[int] = [0]
        trace_probs: list[torch.Tensor] = [first_prob]
        trace_active: list[torch.Tensor] = [torch.ones(batch, dtype=torch.bool, device=device)]
        tokens = torch.full((batch, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        eos_ids = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        generator = self._rng(device)

        # Every key column the loop can create: the prompt, then one response token per step.
        # A response token's mask row depends only on the roles before it, so the decode masks of
        # all steps are prefixes of one row built up front (probe steps build their own).
        layout = torch.cat([key_roles, torch.full((batch, cfg.max_new_tokens), int(Role.RESPONSE), device=device)], 1)
        decode_mask = _response_token_mask(layout, self.phase, model.dtype)

        # Rows confirming a malicious verdict (`follow_up`); `suspicious`: any of them, on the host.
        confirming, suspicious = torch.zeros(batch, dtype=torch.bool, device=device), False
        for step in range(cfg.max_new_tokens):
            if step > 0:
                past = prompt_len + step - 1  # key columns in the cache; y_{step-1} goes to column `past`
                scheduled = cfg.probe_due(step)
                due = scheduled or suspicious
                window = self._window(state, step, prompt_len) if due else None
                logits, probe_hidden = self._decode_forward(
                    cache, layout[:, : past + 1], decode_mask[..., : past + 1], tokens[:, step - 1],
                    last_position + step, window,
                )
                if due:
                    prob = torch.sigmoid(module.classify(probe_hidden).float())
                    # A follow-up probe runs for the whole batch but only counts for the confirming
                    # rows, so each row's trace and output are those of its batch-1 run.
                    active = ~state.done if scheduled else confirming
                    trace_steps.append(step)
                    trace_probs.append(prob)
                    trace_active.append(active)
                    trigger = self._update_verdicts(state, prob > cfg.threshold, active, step)
                    self._intervene(state, queue, guide, trigger, step)
            next_token = self._next_token(logits, generator)
            next_token = queue.pop(next_token)
            next_token = torch.where(state.done, pad_id, next_token)
            tokens[:, step] = next_token
            lengths += (~state.done).long()
            state.done |= torch.isin(next_token, eos_ids)
            # One host sync per step (as HF's stopping criteria): stop once every row is finished.
            if cfg.follow_up:
                confirming = (state.streak > 0) & (state.streak < cfg.tau) & ~state.done & (state.intervention_step < 0)
                all_done, suspicious = torch.stack([state.done.all(), confirming.any()]).tolist()
            else:
                all_done = bool(state.done.all())
            if all_done:
                break

        return self._outputs(tokens, lengths, state, trace_steps, trace_probs, trace_active)

    # ------------------------------------------------------------------ forwards
    def _prefill(
        self, input_ids: list[list[int]], roles: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """`[pad ...] [CLS] [template + query]`, left padded: next-token logits, first verdict, cache.

        Also returns the key roles of the cache and each row's last real position (y_j sits at
        `last_position + 1 + j`; classifier tokens keep position 0).
        """
        module, model = self.module, self.module.model
        batch, prompt_len = len(input_ids), max(len(ids) for ids in input_ids)
        ids = torch.full((batch, prompt_len), self.tokenizer.pad_token_id, dtype=torch.long)
        key_roles = torch.full((batch, prompt_len), int(Role.PAD), dtype=torch.long)
        for row, (row_ids, row_roles) in enumerate(zip(input_ids, roles)):
            ids[row, prompt_len - len(row_ids) :] = torch.tensor(row_ids)
            key_roles[row, prompt_len - len(row_roles) :] = torch.tensor(row_roles)
        ids, key_roles = ids.to(model.device), key_roles.to(model.device)
        positions = build_position_ids(key_roles)
        is_cls = key_roles == Role.CLS
        no_window = torch.zeros_like(key_roles)
        # The training mask: [CLS] reads the query only (R4: no BOS, padding or template tokens).
        mask = build_training_mask(key_roles, is_cls, no_window, no_window, self.phase, dtype=model.dtype)
        # No config: plain full-length layers for every model, as the 4D mask covers all layers.
        cache = DynamicCache()
        out, hidden = module.model_forward(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        cls_hidden = hidden[torch.arange(batch, device=model.device), is_cls.int().argmax(dim=1)]
        first_prob = torch.sigmoid(module.classify(cls_hidden).float())
        return out.logits[:, -1], first_prob, cache, key_roles, positions.max(dim=1).values

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
        if window is None or not self.config.fuse_probe:
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

    # ------------------------------------------------------------------ state machine
    def _window(
        self, state: _RowState, step: int, response_start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row probe window at `step` (y_0 .. y_{step-1} are in the cache) as key columns."""
        cfg = self.config
        mode = state.mode
        r2_start = max(0, step - cfg.r2)
        start = torch.where(
            mode == R1, 0, torch.where(mode == R3, (state.switch_step - cfg.r2).clamp(min=0), r2_start)
        )
        end = torch.where(
            mode == R1, min(step, cfg.r1), torch.where(mode == R3, (state.switch_step + cfg.r3).clamp(max=step), step)
        )
        return mode == R1, start + response_start, end + response_start

    def _update_verdicts(
        self, state: _RowState, malicious: torch.Tensor, active: torch.Tensor, step: int
    ) -> torch.Tensor:
        """Advance each active row's R1/R2/R3 mode and malicious streak; return rows to intervene on."""
        in_r1, in_r2, in_r3 = state.mode == R1, state.mode == R2, state.mode == R3
        switch = active & in_r2 & malicious
        fall_back = active & in_r3 & ~malicious
        # R1 rows (first verdict malicious) are already decided; their probes only fill the trace.
        counts = active & ~in_r1
        state.streak = torch.where(counts, torch.where(malicious, state.streak + 1, 0), state.streak)
        state.switch_step = torch.where(switch, step, state.switch_step)
        state.mode = torch.where(switch, R3, torch.where(fall_back, R2, state.mode))
        return counts & (state.streak >= self.config.tau)

    def _intervene(
        self, state: _RowState, queue: _ForcedQueue, guide: torch.Tensor, trigger: torch.Tensor, step: int
    ) -> None:
        if self.config.level == "low":
            return
        trigger = trigger & (state.intervention_step < 0) & ~state.done
        state.intervention_step = torch.where(trigger, step, state.intervention_step)
        if self.config.level == "medium":
            queue.push(guide, trigger)
            # After the guide the row is handled; later probes watch the latest tokens again.
            state.mode = torch.where(trigger & (state.mode == R3), R2, state.mode)
            state.streak = torch.where(trigger, 0, state.streak)
        else:
            state.refused |= trigger
            state.done |= trigger

    # ------------------------------------------------------------------ decoding
    def _rng(self, device: torch.device) -> torch.Generator | None:
        if not self.config.do_sample or self.config.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.config.seed)
        return generator

    def _next_token(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Greedy, or sampling after temperature / top-k / top-p; `[CLS]` is never emitted."""
        cfg = self.config
        logits = logits.float()
        logits[:, self.module.cls_id] = float("-inf")
        if not cfg.do_sample:
            return logits.argmax(dim=-1)
        probs = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def _outputs(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        state: _RowState,
        trace_steps: list[int],
        trace_probs: list[torch.Tensor],
        trace_active: list[torch.Tensor],
    ) -> list[GatedOutput]:
        tokens, lengths = tokens.cpu(), lengths.tolist()
        probs = torch.stack(trace_probs, dim=1).cpu()
        active = torch.stack(trace_active, dim=1).cpu()
        intervention = state.intervention_step.tolist()
        refused = state.refused.tolist()
        eos = set(self.eos_ids)
        outputs = []
        for row, length in enumerate(lengths):
            row_tokens = tokens[row, :length].tolist()
            if refused[row]:
                row_tokens, reason = list(self.refusal_ids), "refusal"
            else:
                reason = "eos" if row_tokens and row_tokens[-1] in eos else "length"
            evaluated = active[row].nonzero().flatten().tolist()
            outputs.append(
                GatedOutput(
                    text=self.tokenizer.decode(row_tokens, skip_special_tokens=True),
                    token_ids=row_tokens,
                    verdict_steps=[trace_steps[i] for i in evaluated],
                    verdict_probs=[float(probs[row, i]) for i in evaluated],
                    intervention_step=intervention[row] if intervention[row] >= 0 else None,
                    num_probe_evaluations=len(evaluated) - 1,
                    finish_reason=reason,
                )
            )
        return outputs


@dataclass
class _RowState:
    mode: torch.Tensor  # R1 / R2 / R3
    streak: torch.Tensor  # consecutive malicious re-evaluations
    switch_step: torch.Tensor  # S of the latest benign-to-malicious switch (R3)
    intervention_step: torch.Tensor  # -1 until the row is intervened on
    refused: torch.Tensor  # stopped by `high`
    done: torch.Tensor


class _ForcedQueue:
    """Per-row FIFO of tokens to emit instead of the model's choice (prefill text, then the guide).

    Forcing happens inside the lock-step loop: a row with queued tokens emits one per step
    while the others keep decoding, so the batch never desynchronises.
    """

    def __init__(self, prefill_ids: list[list[int]], guide_len: int, device: torch.device) -> None:
        batch = len(prefill_ids)
        # Each row gets at most one guide, so this capacity never overflows.
        capacity = max(len(p) for p in prefill_ids) + guide_len
        self.tokens = torch.zeros((batch, capacity), dtype=torch.long)
        for row, ids in enumerate(prefill_ids):
            self.tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.tokens = self.tokens.to(device)
        self.head = torch.zeros(batch, dtype=torch.long, device=device)
        self.tail = torch.tensor([len(p) for p in prefill_ids], dtype=torch.long, device=device)
        self.capacity = capacity

    def push(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        columns = (self.tail[:, None] + torch.arange(len(ids), device=ids.device)).clamp(max=self.capacity - 1)
        current = self.tokens.gather(1, columns)
        self.tokens.scatter_(1, columns, torch.where(rows[:, None], ids[None, :], current))
        self.tail += rows.long() * len(ids)

    def pop(self, chosen: torch.Tensor) -> torch.Tensor:
        """The next token per row: the queue's head where it is not empty, else `chosen`."""
        forced = self.head < self.tail
        head_token = self.tokens.gather(1, self.head.clamp(max=self.capacity - 1)[:, None]).squeeze(1)
        self.head += forced.long()
        return torch.where(forced, head_token, chosen)


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
