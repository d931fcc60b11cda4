"""Bootstrap confidence intervals of WER and of paired WER differences."""

from __future__ import annotations

import numpy as np
import pytest

from asrq.decode.bootstrap import paired_wer_diff, utterance_counts, wer_ci
from asrq.decode.wer import compute_wer, score_utterance
from asrq.utils.io import AsrqError


def _random_counts(n: int, rate: float, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    words = rng.integers(4, 20, size=n)
    return [(int(rng.binomial(w, rate)), int(w)) for w in words]


def test_wer_matches_compute_wer_and_inputs_agree():
    refs = ["THE CAT SAT", "ON THE MAT", "A DOG", "HELLO THERE MY FRIEND"]
    hyps = ["THE CAT SAT", "ON A MAT", "DOG DOG DOG", "HELLO MY FRIEND"]
    res = [score_utterance(f"u{i}", r, h) for i, (r, h) in enumerate(zip(refs, hyps, strict=True))]
    a = wer_ci(refs, hyps, seed=3)
    b = wer_ci(res, seed=3)
    c = wer_ci([(r.errors, r.num_words) for r in res], seed=3)
    assert a == b == c
    assert a["wer"] == pytest.approx(compute_wer(res).wer)
    assert a["lo"] <= a["wer"] <= a["hi"] and a["lo"] < a["hi"]
    assert (a["num_utts"], a["num_words"], a["errors"]) == (4, 12, 4)


def test_constant_rate_gives_zero_width():
    """Every utterance has the same words and errors: every resample has the same WER."""
    out = wer_ci([(2, 10)] * 50, n_boot=200)
    assert out["wer"] == out["lo"] == out["hi"] == 20.0


def test_seeded_reproducible_and_seed_matters():
    counts = _random_counts(120, 0.3, 0)
    assert wer_ci(counts, seed=1) == wer_ci(counts, seed=1)
    assert wer_ci(counts, seed=1)["lo"] != wer_ci(counts, seed=2)["lo"]
    other = [(max(0, e - 1), w) for e, w in counts]
    assert paired_wer_diff(counts, other, seed=4) == paired_wer_diff(counts, other, seed=4)


def test_interval_narrows_with_more_utterances_and_covers_truth():
    """Width shrinks about as 1/sqrt(n); over 40 test sets drawn with a true 30% error rate,
    the 95% interval holds 0.30 in most of them (binomial errors: true WER is 30%)."""
    small = wer_ci(_random_counts(100, 0.3, 0), n_boot=500)
    big = wer_ci(_random_counts(1600, 0.3, 0), n_boot=500)
    ratio = (small["hi"] - small["lo"]) / (big["hi"] - big["lo"])
    assert 2.5 < ratio < 6.0  # sqrt(16) = 4
    covered = sum(
        (o := wer_ci(_random_counts(120, 0.3, s), n_boot=300, seed=s))["lo"] <= 30.0 <= o["hi"]
        for s in range(40)
    )
    assert covered >= 33  # expected ~38 of 40


def test_paired_identical_systems_zero_interval():
    counts = _random_counts(120, 0.25, 1)
    out = paired_wer_diff(counts, counts)
    assert out["diff"] == out["lo"] == out["hi"] == 0.0
    assert out["p_better"] == 0.0 and out["wer_a"] == out["wer_b"]


def test_paired_strictly_better_system():
    """A has one error fewer than B on every utterance: every resample favours A, the whole
    interval is below 0, and it is narrower than either system's own interval."""
    b = _random_counts(120, 0.3, 2)
    b = [(e + 1, w) for e, w in b]
    a = [(e - 1, w) for e, w in b]
    out = paired_wer_diff(a, b)
    assert out["hi"] < 0 and out["p_better"] == 1.0
    assert out["diff"] == pytest.approx(out["wer_a"] - out["wer_b"])
    assert out["lo"] <= out["diff"] <= out["hi"]
    ca, cb = wer_ci(a), wer_ci(b)
    assert out["hi"] - out["lo"] < min(ca["hi"] - ca["lo"], cb["hi"] - cb["lo"]) / 2
    swapped = paired_wer_diff(b, a)
    assert swapped["lo"] > 0 and swapped["p_better"] == 0.0


def test_paired_noise_difference_straddles_zero():
    """Two systems that differ only by noise on the same utterances: the interval holds 0."""
    base = _random_counts(200, 0.3, 3)
    rng = np.random.default_rng(9)
    flips = rng.choice([-1, 0, 1], size=len(base))
    a = [(max(0, e + int(f)), w) for (e, w), f in zip(base, flips, strict=True)]
    b = [(max(0, e - int(f)), w) for (e, w), f in zip(base, flips, strict=True)]
    out = paired_wer_diff(a, b)
    assert out["lo"] < 0 < out["hi"] and 0.05 < out["p_better"] < 0.95


def test_paired_by_cut_id_and_errors():
    refs = {"a": "ONE TWO THREE", "b": "FOUR FIVE", "c": "SIX SEVEN EIGHT NINE"}
    x = [score_utterance(k, r, r) for k, r in refs.items()]
    y = [score_utterance(k, r, "ONE") for k, r in reversed(refs.items())]  # other order
    out = paired_wer_diff(x, y)
    assert out["wer_a"] == 0.0 and out["wer_b"] == pytest.approx(100 * 8 / 9)
    assert out["hi"] < 0
    with pytest.raises(AsrqError, match="same utterances"):
        paired_wer_diff(x, y[:2])
    z = [score_utterance(k + "x", r, r) for k, r in refs.items()]
    with pytest.raises(AsrqError, match="'a' of A not in B"):
        paired_wer_diff(x, z)
    with pytest.raises(AsrqError, match="reference words"):
        paired_wer_diff([(1, 5), (0, 3)], [(1, 5), (0, 4)])
    with pytest.raises(AsrqError, match="no utterances"):
        wer_ci([])
    with pytest.raises(AsrqError, match="2 references but 1"):
        utterance_counts(["A B", "C"], ["A"])
    with pytest.raises(AsrqError, match="n_boot"):
        wer_ci([(1, 2)], n_boot=0)


def test_paired_by_id_matches_rows_by_cut_id(tmp_path) -> None:
    import json

    from asrq.decode.bootstrap import paired_by_id, paired_files, read_utterances
    from asrq.utils.io import AsrqError

    a = [["u1", 3, 10], ["u2", 0, 5], ["u3", 2, 8]]
    b = [["u3", 1, 8], ["u1", 4, 10], ["u2", 1, 5]]  # another order
    want = paired_wer_diff([(3, 10), (0, 5), (2, 8)], [(4, 10), (1, 5), (1, 8)], seed=2)
    assert paired_by_id(a, b, seed=2) == want
    with pytest.raises(AsrqError, match="2 cut ids in only one system"):
        paired_by_id(a[:2] + [["u4", 2, 8]], b)
    with pytest.raises(AsrqError, match="duplicate cut ids"):
        paired_by_id(a + [a[0]], b + [b[0]])
    (tmp_path / "a.json").write_text(json.dumps({"wer": 1.0, "utterances": a}))
    (tmp_path / "b.json").write_text(json.dumps({"wer": 1.0, "utterances": b}))
    assert paired_files(tmp_path / "a.json", tmp_path / "b.json", seed=2) == want
    (tmp_path / "old.json").write_text(json.dumps({"wer": 1.0}))
    with pytest.raises(AsrqError, match=r"old.json: no per-utterance rows"):
        read_utterances(tmp_path / "old.json")
