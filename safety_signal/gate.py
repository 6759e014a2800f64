"""The safety gate: when to re-classify, over which window, and what to do about a malicious verdict.

Strategic attention (windows, indices count response tokens; rule R4 always holds because the
masks only let classifier tokens read query and response tokens):
    R1  first verdict malicious:           query + response tokens [0, r1)
    R2  first verdict benign:              response tokens [t - r2, t)
    R3  benign-to-malicious switch at S:   response tokens [S - r2, S + r3); a benign verdict
                                           returns the row to R2

Suffix screen (`GatePolicy.suffix_screen`, on by default): an adversarial suffix (GCG and its kin) is a run of
tokens the LM finds very unlikely after a fluent request. When the query's per-token NLL splits best into a
head and a tail whose mean NLL is at least `suffix_nll`, the first verdict is the larger of the `[CLS]`
verdict on the whole query and on the query without that tail (`suffix_cut` finds the split).

Strategic decoding: `low` ignores verdicts; `medium` queues the guide text right away when the
first verdict is malicious, or after `tau` consecutive malicious re-evaluations, and keeps
generating; `high` stops the row and answers with a fixed refusal.

`SafetyGate` holds this per-row state for one batch, on the device, in the spirit of
transformers' `LogitsProcessor` / `StoppingCriteria`: the decode loop asks `due(step)` and
`window(step)`, hands the verdict probabilities to `observe(step, probs)`, and passes its chosen
tokens through `emit(chosen)`, which applies the forced-token queue (prefill, guide) and EOS.
It never touches the model, so tests drive it with plain tensors of verdicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from safety_signal.config import SafetyConfig
from safety_signal.refusal import DEFAULT_REFUSAL

Level = Literal["low", "medium", "high"]
Schedule = Literal["each", "first", "periodic", "annealing"]

# Window modes of the per-row state machine.
R1, R2, R3 = 1, 2, 3


@dataclass
class GatePolicy:
    """How the classifier gates generation (plain types, so LightningCLI YAML can set it).

    Attributes:
        level: `low` (verdicts are only recorded), `medium` (insert the guide and continue; the
            paper's choice), `high` (stop with `refusal`).
        schedule: when probes re-evaluate: `each` step, `first` (the prefill verdict only),
            `periodic` (every `period` steps), `annealing` (see `annealing`).
        annealing: `(until_step, every)` segments: at step t the first segment with
            `t <= until_step` probes when `t % every == 0`; past the last segment, no more probes.
            The default probes steps 8, 24, 48, then every 64th (3 probes in the first 64 steps,
            measured <= 0.05x over plain decoding at 64 / 128 / 256 tokens, benchmarks/RESULTS.md);
            `follow_up` confirms a suspicion within `tau` tokens.
        tau: consecutive malicious re-evaluations that trigger an intervention.
        follow_up: after a malicious re-evaluation, probe at every step until the row's streak
            reaches `tau` or a verdict is benign, whatever the schedule says.
        threshold, r1, r2, r3: override the model's calibrated threshold and trained windows
            (`SafetyConfig`); None uses the model's.
        refusal: the whole answer of a row stopped by `high`.
        suffix_screen: also classify the query without a high-NLL tail (see `suffix_cut`) and take
            the larger first verdict; one extra `[CLS]` forward for the rows where it fires. The
            defaults were chosen on our validation prompts (reports/recipe.md, Result 19b): a shorter
            tail or a lower NLL also fires on benign prompts whose own ending is unusual text.
        suffix_nll: the mean NLL (nats per token, under the model's own LM) a tail needs to count.
        suffix_min_tokens: the shortest tail that counts.
    """

    level: Level = "medium"
    schedule: Schedule = "annealing"
    period: int = 4
    annealing: list[tuple[int, int]] = field(default_factory=lambda: [(8, 8), (24, 24), (48, 48), (256, 64)])
    tau: int = 3
    follow_up: bool = True
    threshold: float | None = None
    r1: int | None = None
    r2: int | None = None
    r3: int | None = None
    refusal: str = DEFAULT_REFUSAL
    suffix_screen: bool = True
    suffix_nll: float = 10.0
    suffix_min_tokens: int = 16

    def __post_init__(self) -> None:
        # YAML and checkpoints hand segments back as lists; keep one canonical form.
        self.annealing = [(int(until), int(every)) for until, every in self.annealing]
        if self.level not in ("low", "medium", "high"):
            raise ValueError(f"level must be 'low', 'medium' or 'high', got {self.level!r}")
        if self.schedule not in ("each", "first", "periodic", "annealing"):
            raise ValueError(f"schedule must be 'each', 'first', 'periodic' or 'annealing', got {self.schedule!r}")
        if self.period < 1 or any(every < 1 for _, every in self.annealing):
            raise ValueError("period and every annealing `every` must be >= 1")
        if self.tau < 1:
            raise ValueError("tau must be >= 1")
        if any(r is not None and r < 1 for r in (self.r1, self.r2, self.r3)):
            raise ValueError("r1, r2 and r3 must be >= 1")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.suffix_nll <= 0 or self.suffix_min_tokens < 1:
            raise ValueError("suffix_nll must be > 0 and suffix_min_tokens >= 1")

    def scheduled(self, step: int) -> bool:
        """Whether the schedule re-evaluates at decode step `step` (>= 1; step 0 is the `[CLS]` verdict)."""
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


# A suffix screen keeps at least this many query tokens: a cut must leave a request to classify.
MIN_HEAD_TOKENS = 3


def suffix_cut(nll: list[float], min_nll: float, min_tail: int, min_head: int = MIN_HEAD_TOKENS) -> int | None:
    """Where a query's adversarial-looking tail starts, or None.

    `nll[i]` is the LM's NLL of query token i. The split is the two-segment least-squares change point
    (head `nll[:s]`, tail `nll[s:]`, each a constant; `min_head` / `min_tail` tokens at least); it counts
    when the tail's mean NLL is at least `min_nll`. Returns `s`, the number of query tokens to keep.
    """
    n = len(nll)
    if n < min_head + min_tail:
        return None
    values = torch.tensor(nll, dtype=torch.float64)
    sums = torch.cat([values.new_zeros(1), values.cumsum(0)])
    squares = torch.cat([values.new_zeros(1), (values * values).cumsum(0)])
    cuts = torch.arange(min_head, n - min_tail + 1)
    head_n, tail_n = cuts.double(), (n - cuts).double()
    head_sum, tail_sum = sums[cuts], sums[n] - sums[cuts]
    # Sum of squared deviations from each segment's mean: sum(x^2) - (sum x)^2 / count.
    error = (squares[cuts] - head_sum**2 / head_n) + (squares[n] - squares[cuts] - tail_sum**2 / tail_n)
    best = int(error.argmin())
    if tail_sum[best] / tail_n[best] < min_nll:
        return None
    return int(cuts[best])


@dataclass
class GateTrace:
    """What the gate saw and did for one row."""

    verdict_steps: list[int]  # 0 = the [CLS] verdict at prefill; t >= 1 = a probe over y_0 .. y_{t-1}
    verdict_probs: list[float]
    intervention_step: int | None  # the step whose verdict triggered the guide or the refusal
    refused: bool  # stopped by `high`


class ForcedQueue:
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

    @property
    def pending(self) -> torch.Tensor:
        """Rows that still have forced tokens to emit."""
        return self.head < self.tail


class SafetyGate:
    """The gate's state for one batch of rows decoded in lock-step.

    Args:
        policy: when to probe and how to intervene.
        safety: the model's shared settings (threshold and windows unless `policy` overrides them).
        guide_ids: the guide text's tokens (tokenized on its own, as in the training data).
        separated_guide_ids: the tokens of `GUIDE_SEPARATOR + guide`, inserted instead of `guide_ids`
            in a row that already has response text (a prefill or generated tokens), so the guide
            starts a new paragraph, as in the prefill-recovery training examples, instead of being
            glued to the last word ("Sure, here isSorry, ..."). None: always `guide_ids`.
        prefill_ids: per row, tokens forced at the start of the response (prefilling attack).
        response_start: the key column of the first response token (the prompt's padded length).
        eos_ids: tokens that finish a row.
        pad_id: what a finished row emits.
    """

    def __init__(
        self,
        policy: GatePolicy,
        safety: SafetyConfig,
        guide_ids: list[int],
        prefill_ids: list[list[int]],
        response_start: int,
        eos_ids: list[int],
        pad_id: int,
        device: torch.device,
        separated_guide_ids: list[int] | None = None,
    ) -> None:
        if not guide_ids:
            raise ValueError("the guide text must not be empty")
        self.policy = policy
        self.threshold = policy.threshold if policy.threshold is not None else safety.threshold
        self.r1 = policy.r1 or safety.r1
        self.r2 = policy.r2 or safety.r2
        self.r3 = policy.r3 or safety.r3
        self.response_start = response_start
        self.pad_id = pad_id
        self.eos_ids = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self.guide = torch.tensor(guide_ids, dtype=torch.long, device=device)
        self.separated_guide = torch.tensor(separated_guide_ids or guide_ids, dtype=torch.long, device=device)
        self.queue = ForcedQueue(prefill_ids, max(len(self.guide), len(self.separated_guide)), device)
        batch = len(prefill_ids)
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        self.mode = torch.full((batch,), R2, dtype=torch.long, device=device)
        self.streak = zeros.clone()  # consecutive malicious re-evaluations
        self.switch_step = zeros.clone()  # S of the latest benign-to-malicious switch (R3)
        self.intervention_step = torch.full((batch,), -1, dtype=torch.long, device=device)
        self.refused = torch.zeros(batch, dtype=torch.bool, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.lengths = zeros.clone()  # response tokens each row has emitted
        self.num_done = 0  # finished rows, on the host (updated by `emit`)
        # Rows confirming a malicious verdict (`follow_up`), and whether any is, on the host.
        self.confirming = torch.zeros(batch, dtype=torch.bool, device=device)
        self._suspicious = False
        self._steps: list[int] = []
        self._probs: list[torch.Tensor] = []
        self._active: list[torch.Tensor] = []

    # ------------------------------------------------------------------ the loop's questions
    def start(self, first_prob: torch.Tensor) -> torch.Tensor:
        """The `[CLS]` verdict on the query (step 0): R1 rows are malicious from the start."""
        malicious = first_prob > self.threshold
        self.mode = torch.where(malicious, R1, R2)
        self._record(0, first_prob, torch.ones_like(malicious))
        return self._intervene(malicious, step=0)

    def due(self, step: int) -> bool:
        """A probe re-evaluates at `step`: the schedule says so, or a row is confirming a suspicion."""
        return self.policy.scheduled(step) or self._suspicious

    def window(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row probe window at `step` (y_0 .. y_{step-1} are in the cache) as key columns:
        `(reads the query, start, end)`."""
        mode = self.mode
        r2_start = max(0, step - self.r2)
        start = torch.where(
            mode == R1, 0, torch.where(mode == R3, (self.switch_step - self.r2).clamp(min=0), r2_start)
        )
        end = torch.where(
            mode == R1, min(step, self.r1),
            torch.where(mode == R3, (self.switch_step + self.r3).clamp(max=step), step),
        )
        return mode == R1, start + self.response_start, end + self.response_start

    def observe(self, step: int, probs: torch.Tensor) -> torch.Tensor:
        """Take the probe verdicts of `step`; return the rows the gate intervenes on now.

        A probe that only runs to follow up a suspicion counts for the confirming rows alone, so
        each row's trace and output are those of its batch-1 run.
        """
        active = ~self.done if self.policy.scheduled(step) else self.confirming
        self._record(step, probs, active)
        malicious = probs > self.threshold
        in_r1, in_r2, in_r3 = self.mode == R1, self.mode == R2, self.mode == R3
        switch = active & in_r2 & malicious
        fall_back = active & in_r3 & ~malicious
        # R1 rows (first verdict malicious) are already decided; their probes only fill the trace.
        counts = active & ~in_r1
        self.streak = torch.where(counts, torch.where(malicious, self.streak + 1, 0), self.streak)
        self.switch_step = torch.where(switch, step, self.switch_step)
        self.mode = torch.where(switch, R3, torch.where(fall_back, R2, self.mode))
        return self._intervene(counts & (self.streak >= self.policy.tau), step)

    def emit(self, chosen: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The tokens rows emit this step (forced ones first; finished rows emit padding), and
        whether every row is finished now. One host sync per step, as HF's stopping criteria."""
        token = self.queue.pop(chosen)
        token = torch.where(self.done, self.pad_id, token)
        self.lengths += (~self.done).long()
        self.done |= torch.isin(token, self.eos_ids)
        if not self.policy.follow_up:
            self.num_done = int(self.done.sum())
            return token, self.num_done == len(self.done)
        self.confirming = (
            (self.streak > 0) & (self.streak < self.policy.tau) & ~self.done & (self.intervention_step < 0)
        )
        self.num_done, suspicious = torch.stack([self.done.sum(), self.confirming.sum()]).tolist()
        self._suspicious = suspicious > 0
        return token, self.num_done == len(self.done)

    def traces(self) -> list[GateTrace]:
        probs = torch.stack(self._probs, dim=1).cpu()
        active = torch.stack(self._active, dim=1).cpu()
        intervention = self.intervention_step.tolist()
        refused = self.refused.tolist()
        out = []
        for row in range(probs.shape[0]):
            evaluated = active[row].nonzero().flatten().tolist()
            out.append(GateTrace(
                verdict_steps=[self._steps[i] for i in evaluated],
                verdict_probs=[float(probs[row, i]) for i in evaluated],
                intervention_step=intervention[row] if intervention[row] >= 0 else None,
                refused=refused[row],
            ))
        return out

    # ------------------------------------------------------------------ internals
    def _record(self, step: int, probs: torch.Tensor, active: torch.Tensor) -> None:
        self._steps.append(step)
        self._probs.append(probs.float())
        self._active.append(active)

    def _intervene(self, trigger: torch.Tensor, step: int) -> torch.Tensor:
        if self.policy.level == "low":
            return torch.zeros_like(trigger)
        trigger = trigger & (self.intervention_step < 0) & ~self.done
        self.intervention_step = torch.where(trigger, step, self.intervention_step)
        if self.policy.level == "medium":
            # After response text (an emitted token, or a prefill still queued) the guide opens a new paragraph.
            has_text = (self.lengths > 0) | (self.queue.tail > 0)
            self.queue.push(self.separated_guide, trigger & has_text)
            self.queue.push(self.guide, trigger & ~has_text)
            # After the guide the row is handled; later probes watch the latest tokens again.
            self.mode = torch.where(trigger & (self.mode == R3), R2, self.mode)
            self.streak = torch.where(trigger, 0, self.streak)
        else:
            self.refused |= trigger
            self.done |= trigger
        return trigger
