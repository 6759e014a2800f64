"""The gate on its own: plain tensors of verdicts in, windows / interventions / forced tokens out (no model)."""

from __future__ import annotations

import pytest
import torch

from safety_signal.config import SafetyConfig
from safety_signal.gate import R1, R2, R3, GatePolicy, SafetyGate

GUIDE = [101, 102, 103]
PAD, EOS, START = 0, 2, 7  # START: key column of the first response token


def make_gate(batch: int = 2, prefills: list[list[int]] | None = None, **policy) -> SafetyGate:
    safety = SafetyConfig(r1=4, r2=3, r3=2, threshold=0.5)
    return SafetyGate(GatePolicy(**policy), safety, GUIDE, prefills or [[] for _ in range(batch)], START, [EOS], PAD,
                      torch.device("cpu"))


def verdicts(*malicious: bool) -> torch.Tensor:
    return torch.tensor([0.9 if m else 0.1 for m in malicious])


def run_steps(gate: SafetyGate, steps: int, malicious_at: dict[int, tuple[bool, ...]], chosen: int = 50):
    """Drive the gate like the decode loop; return the emitted tokens per row and the steps probed."""
    emitted, probed = [], []
    for step in range(steps):
        if step > 0 and gate.due(step):
            probed.append(step)
            gate.observe(step, verdicts(*malicious_at.get(step, (False,) * gate.done.shape[0])))
        token, all_done = gate.emit(torch.full_like(gate.done, chosen, dtype=torch.long))
        emitted.append(token.tolist())
        if all_done:
            break
    return [list(row) for row in zip(*emitted)], probed


def test_default_annealing_probes_three_of_the_first_64_steps():
    policy = GatePolicy()
    probed = [t for t in range(1, 257) if policy.scheduled(t)]
    assert [t for t in probed if t < 64] == [8, 24, 48]
    assert probed == [8, 24, 48, 64, 128, 192, 256]
    assert not policy.scheduled(0)  # step 0 is the [CLS] verdict, never a probe


@pytest.mark.parametrize("schedule, extra, expected", [
    ("each", {}, list(range(1, 13))),
    ("first", {}, []),
    ("periodic", {"period": 5}, [5, 10]),
    ("annealing", {"annealing": [(3, 1), (9, 3)]}, [1, 2, 3, 6, 9]),
])
def test_schedules(schedule, extra, expected):
    policy = GatePolicy(schedule=schedule, **extra)
    assert [t for t in range(13) if policy.scheduled(t)] == expected


def test_first_verdict_malicious_queues_the_guide_then_lets_the_model_continue():
    gate = make_gate(batch=2, schedule="first")
    fired = gate.start(verdicts(True, False))
    assert fired.tolist() == [True, False] and gate.mode.tolist() == [R1, R2]
    rows, _ = run_steps(gate, 5, {})
    assert rows[0] == GUIDE + [50, 50] and rows[1] == [50] * 5
    trace = gate.traces()
    assert trace[0].intervention_step == 0 and trace[1].intervention_step is None


def test_windows_follow_r1_r2_r3():
    gate = make_gate(batch=3, schedule="each", level="low")
    gate.start(verdicts(True, False, False))  # row 0: R1; rows 1, 2: R2
    w_query, start, end = gate.window(2)
    assert w_query.tolist() == [True, False, False]
    assert (start - START).tolist() == [0, 0, 0] and (end - START).tolist() == [2, 2, 2]
    w_query, start, end = gate.window(9)
    assert (start - START).tolist() == [0, 6, 6] and (end - START).tolist() == [4, 9, 9]  # R1 caps at r1 = 4
    gate.observe(9, verdicts(False, True, False))  # row 1 switches at S = 9: R3 reads [S - r2, S + r3)
    assert gate.mode.tolist() == [R1, R3, R2]
    _, start, end = gate.window(10)
    assert (start - START).tolist()[1:] == [6, 7] and (end - START).tolist()[1:] == [10, 10]
    _, start, end = gate.window(14)
    assert (start - START)[1] == 6 and (end - START)[1] == 11  # the switch window stops at S + r3
    gate.observe(14, verdicts(False, False, False))  # not confirmed: back to R2
    assert gate.mode.tolist() == [R1, R2, R2]


@pytest.mark.parametrize("tau", [1, 3])
def test_tau_consecutive_malicious_verdicts_insert_the_guide(tau):
    gate = make_gate(batch=2, schedule="each", tau=tau)
    gate.start(verdicts(False, False))
    malicious = {t: (True, False) for t in range(5, 30)}
    rows, _ = run_steps(gate, 16, malicious)
    step = 5 + tau - 1
    assert gate.traces()[0].intervention_step == step
    assert rows[0][step : step + len(GUIDE)] == GUIDE and rows[0][:step] == [50] * step
    assert rows[1] == [50] * 16 and gate.traces()[1].intervention_step is None


def test_false_alarms_reset_the_streak():
    gate = make_gate(batch=1, schedule="each", tau=3)
    gate.start(verdicts(False))
    rows, _ = run_steps(gate, 20, {t: (True,) for t in (4, 9, 10, 15)})
    assert gate.traces()[0].intervention_step is None and rows[0] == [50] * 20
    assert gate.mode.tolist() == [R2]


def test_follow_up_confirms_a_suspicion_every_step_for_that_row_only():
    gate = make_gate(batch=2, schedule="periodic", period=4, tau=3, follow_up=True)
    gate.start(verdicts(False, False))
    malicious = {t: (True, False) for t in range(12, 30)}
    _, probed = run_steps(gate, 24, malicious)
    assert probed == [4, 8, 12, 13, 14, 16, 20]
    row0, row1 = gate.traces()
    assert row0.verdict_steps == [0, 4, 8, 12, 13, 14, 16, 20] and row0.intervention_step == 14
    assert row1.verdict_steps == [0, 4, 8, 12, 16, 20]  # follow-up probes do not count for benign rows

    sparse = make_gate(batch=1, schedule="periodic", period=4, tau=3, follow_up=False)
    sparse.start(verdicts(False))
    _, probed = run_steps(sparse, 24, {t: (True,) for t in range(12, 30)})
    assert probed == [4, 8, 12, 16, 20] and sparse.traces()[0].intervention_step == 20


def test_high_level_stops_the_row_and_low_level_only_records():
    high = make_gate(batch=2, level="high", schedule="each")
    high.start(verdicts(True, False))
    rows, _ = run_steps(high, 4, {})
    assert rows[0] == [PAD] * 4 and high.traces()[0].refused and not high.traces()[1].refused
    low = make_gate(batch=1, level="low", schedule="each", tau=1)
    low.start(verdicts(True))
    rows, _ = run_steps(low, 4, {t: (True,) for t in range(4)})
    assert rows[0] == [50] * 4 and low.traces()[0].intervention_step is None
    assert low.traces()[0].verdict_probs == pytest.approx([0.9] * 4)


def test_prefill_is_forced_first_and_a_guide_queued_meanwhile_follows_it():
    gate = make_gate(batch=2, prefills=[[11, 12, 13, 14], []], schedule="first")
    gate.start(verdicts(True, False))
    rows, _ = run_steps(gate, 9, {})
    assert rows[0] == [11, 12, 13, 14] + GUIDE + [50, 50]
    assert rows[1] == [50] * 9


def test_eos_finishes_a_row_and_finished_rows_emit_padding():
    gate = make_gate(batch=2, schedule="first")
    gate.start(verdicts(False, False))
    token, done = gate.emit(torch.tensor([EOS, 50]))
    assert token.tolist() == [EOS, 50] and not done
    token, done = gate.emit(torch.tensor([50, EOS]))
    assert token.tolist() == [PAD, EOS] and done
    assert gate.lengths.tolist() == [1, 2]


def test_threshold_and_windows_default_to_the_models_and_can_be_overridden():
    gate = make_gate(batch=1)
    assert (gate.threshold, gate.r1, gate.r2, gate.r3) == (0.5, 4, 3, 2)
    gate = make_gate(batch=1, threshold=0.95, r2=7)
    assert (gate.threshold, gate.r2) == (0.95, 7)
    assert gate.start(verdicts(True)).tolist() == [False]  # 0.9 is benign under a 0.95 threshold
    with pytest.raises(ValueError, match="threshold"):
        GatePolicy(threshold=1.5)


def test_suffix_cut_finds_the_start_of_an_unlikely_tail():
    from safety_signal.gate import suffix_cut
    request = [3.0, 1.5, 4.0, 2.5, 3.5, 2.0, 3.0, 2.5]
    suffix = [11.0, 9.5, 12.0, 10.5, 11.5, 10.0, 9.0]
    assert suffix_cut(request + suffix, min_nll=8.0, min_tail=6) == len(request)
    # A fluent query, a tail below the bar, a tail shorter than min_tail, or no room for a head: no cut.
    assert suffix_cut(request * 2, min_nll=8.0, min_tail=6) is None
    assert suffix_cut(request + suffix, min_nll=12.0, min_tail=6) is None
    assert suffix_cut(request + suffix[:3], min_nll=8.0, min_tail=6) is None
    assert suffix_cut(suffix[:7], min_nll=8.0, min_tail=6) is None
    # A cut keeps at least min_head tokens even when the whole query is unlikely.
    assert suffix_cut(suffix + suffix, min_nll=8.0, min_tail=6, min_head=3) >= 3


def test_suffix_screen_settings_are_checked():
    with pytest.raises(ValueError, match="suffix_nll"):
        GatePolicy(suffix_nll=0.0)
    with pytest.raises(ValueError, match="suffix_min_tokens"):
        GatePolicy(suffix_min_tokens=0)
