"""SafetyMixDataModule: the mix, the split and the refusal of held-out sets."""

import json

import pytest

from collections import Counter

from datamodules.safety_mix import SafetyMixDataModule, build_mix, prompt_form
from datamodules.sources import DataSource, SafetyRecord
from safety_signal.masks import Role


def records(n: int, label: int, prefix: str) -> list[SafetyRecord]:
    return [SafetyRecord(f"{prefix} request number {i}", "" if label else f"answer {i}", label,
                         "cybercrime" if label else "general", prefix) for i in range(n)]


def test_mix_ratio_refusals_prefill_and_disjoint_split():
    harmful = records(40, 1, "harm") + records(5, 1, "harm")  # duplicates are dropped
    benign = records(200, 0, "ok")
    split = build_mix(harmful, benign, num_harmful=None, benign_per_harmful=1.0, prefill_fraction=0.25,
                      val_fraction=0.2, seed=3)
    everything = split.train + split.val
    n_harmful = sum(ex.label for ex in everything)
    assert n_harmful == 40 + 10  # 40 refusals + 10 prefill-recovery copies
    assert len(everything) - n_harmful == n_harmful  # 1:1
    guide = "Sorry, I can't fulfill your request because"
    assert all(ex.response.startswith(guide) for ex in everything if ex.label and not ex.prefill)
    prefilled = [ex for ex in everything if ex.prefill]
    assert len(prefilled) == 10 and all(ex.prefill.startswith("Sure") and ex.prefill_harmful for ex in prefilled)
    # after the affirmative opening, the refusal opens a new paragraph (as the gate's guide after response text)
    assert all(ex.response.startswith("\n\n" + guide) for ex in prefilled)
    assert not {ex.prompt for ex in split.train} & {ex.prompt for ex in split.val}
    again = build_mix(harmful, benign, None, 1.0, 0.25, 0.2, seed=3)
    assert [ex.prompt for ex in again.train] == [ex.prompt for ex in split.train]
    other = build_mix(harmful, benign, None, 1.0, 0.25, 0.2, seed=4)
    assert [ex.prompt for ex in other.train] != [ex.prompt for ex in split.train]


def test_benign_prompts_follow_the_harmful_prompts_form():
    def prompts(n, words, question, label, prefix):
        return [SafetyRecord(" ".join([prefix, str(i)] + ["word"] * (words - 2)) + ("?" if question else "."),
                             "" if label else "answer", label, "general", prefix) for i in range(n)]

    harmful = prompts(20, 8, True, 1, "harm") + prompts(10, 14, False, 1, "harm")
    # Mostly long benign prompts, as in ShareGPT: drawn in pool order they would not resemble the harmful ones.
    benign = prompts(200, 60, False, 0, "long") + prompts(30, 8, True, 0, "shortq") + prompts(20, 14, False, 0, "mid")
    split = build_mix(harmful, benign, None, 1.0, 0.0, 0.0, seed=0)
    forms = lambda label: Counter(prompt_form(ex.prompt) for ex in split.train if ex.label == label)  # noqa: E731
    assert forms(0) == forms(1)
    unmatched = build_mix(harmful, benign, None, 1.0, 0.0, 0.0, seed=0, match_benign_form=False)
    assert Counter(prompt_form(ex.prompt) for ex in unmatched.train if ex.label == 0) != forms(1)
    # A form that runs out falls back to the nearest bucket with the same question flag, then anything.
    short = build_mix(harmful, benign[:200] + benign[200:205], None, 1.0, 0.0, 0.0, seed=0)
    benign_forms = Counter(prompt_form(ex.prompt) for ex in short.train if ex.label == 0)
    assert sum(benign_forms.values()) == 30 and benign_forms[prompt_form(benign[200].prompt)] == 5


def test_mix_needs_enough_benign():
    with pytest.raises(ValueError, match="benign_per_harmful"):
        build_mix(records(10, 1, "h"), records(3, 0, "b"), None, 1.0, 0.0, 0.1, seed=0)


def test_heldout_source_is_refused_for_training():
    with pytest.raises(ValueError, match="held out"):
        SafetyMixDataModule(sources=[DataSource("harmbench_test")])


def test_datamodule_batches_from_local_files(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    benign = tmp_path / "benign.csv"
    harmful.write_text("".join(json.dumps({"text": f"Explain how to steal car number {i}"}) + "\n" for i in range(12)))
    benign.write_text("q,a\n" + "".join(f"What is {i} plus {i}?,It is {2 * i}.\n" for i in range(30)))
    dm = SafetyMixDataModule(
        sources=[DataSource("mine", str(harmful), fields={"prompt": "text"}, label=1),
                 DataSource("ok", str(benign), fields={"prompt": "q", "response": "a"}, label=0)],
        prefill_fraction=0.5, val_fraction=0.25, max_length=96, batch_size=4,
    )
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 36
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    assert ((batch["roles"] == Role.CLS).sum(dim=1) == 1).all()
    assert set(batch["cls_labels"][batch["roles"] == Role.CLS].tolist()) <= {0.0, 1.0}
    assert batch["input_ids"].shape[1] <= 96 + batch["num_probe_slots"]
