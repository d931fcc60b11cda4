"""WER counting and the errors report on hand-made examples."""

from __future__ import annotations

import math

import pytest

from asrq.decode.wer import compute_wer, format_errors, score_utterance, write_errors


def test_counts_per_utterance():
    r = score_utterance("a", "THE CAT SAT ON THE MAT", "THE BAT SAT THE MAT TODAY")
    assert (r.ins, r.dels, r.subs, r.num_words, r.errors) == (1, 1, 1, 6, 3)
    r = score_utterance("b", "HELLO WORLD", "HELLO WORLD")
    assert r.errors == 0 and r.num_words == 2
    # whitespace is normalised before alignment
    r = score_utterance("c", "  HELLO   WORLD ", "HELLO\tWORLD")
    assert r.errors == 0 and r.ref == "HELLO WORLD" and r.hyp == "HELLO WORLD"


def test_empty_hypothesis_and_reference():
    r = score_utterance("e1", "ONE TWO THREE", "")
    assert (r.ins, r.dels, r.subs, r.num_words) == (0, 3, 0, 3)
    r = score_utterance("e2", "", "UH UM")
    assert (r.ins, r.dels, r.subs, r.num_words) == (2, 0, 0, 0)
    r = score_utterance("e3", "", "")
    assert r.errors == 0 and r.num_words == 0
    # totals: 5 errors over 3 reference words
    st = compute_wer(
        [score_utterance("e1", "ONE TWO THREE", ""), score_utterance("e2", "", "UH UM")]
    )
    assert (st.num_utts, st.num_words, st.errors) == (2, 3, 5)
    assert st.wer == pytest.approx(500 / 3)
    assert compute_wer([score_utterance("e3", "", "")]).wer == 0.0
    assert math.isinf(compute_wer([score_utterance("e2", "", "UH UM")]).wer)
    assert compute_wer([]).wer == 0.0


def test_total_wer():
    results = [
        score_utterance("u1", "A B C D", "A B X D"),  # 1 sub
        score_utterance("u2", "E F G H I J", "E F G H I J K"),  # 1 ins
    ]
    st = compute_wer(results)
    assert (st.num_words, st.ins, st.dels, st.subs) == (10, 1, 0, 1)
    assert st.wer == pytest.approx(20.0)


def test_errors_file(tmp_path):
    results = [
        score_utterance("u1", "THE CAT SAT ON THE MAT", "THE BAT SAT THE MAT TODAY"),
        score_utterance("u2", "HELLO WORLD", ""),
    ]
    path = write_errors(
        tmp_path / "sub" / "errs-test-greedy.txt", results, title="model.pt test greedy"
    )
    text = path.read_text()
    assert text == format_errors(results, title="model.pt test greedy")
    lines = text.splitlines()
    assert lines[0] == "# model.pt test greedy"
    assert lines[1] == "%WER = 62.50"  # 5 errors / 8 words
    assert lines[2] == (
        "Errors: 1 insertions, 3 deletions, 1 substitutions, over 8 reference words in 2 utterances"
    )
    assert "u1:\tins=1 del=1 sub=1 words=6" in lines
    assert "u1:\tREF: THE CAT SAT ON THE MAT" in lines
    assert "u1:\tHYP: THE BAT SAT THE MAT TODAY" in lines
    assert "u1:\tALI: THE (CAT->BAT) SAT (ON->*) THE MAT (*->TODAY)" in lines
    assert "u2:\tHYP: " in lines and "u2:\tALI: (HELLO->*) (WORLD->*)" in lines
    subs = lines.index("SUBSTITUTIONS: count ref -> hyp")
    assert lines[subs + 1] == "1   CAT -> BAT"
    dels = lines.index("DELETIONS: count ref")
    assert set(lines[dels + 1 : dels + 4]) == {"1   ON", "1   HELLO", "1   WORLD"}
    assert lines[lines.index("INSERTIONS: count hyp") + 1] == "1   TODAY"
    # atomic: no temp files left beside it
    assert [p.name for p in path.parent.iterdir()] == ["errs-test-greedy.txt"]
