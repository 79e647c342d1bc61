"""Tests of minibert4rec.evaluate: metrics, ranks, negative sampling and the evaluate driver.

Vocabulary in the hand-made cases: V = 8, i.e. 0 = pad, items 1..6, 7 = [MASK].
"""
import math

import numpy as np
import pytest

from minibert4rec.errors import InputError
from minibert4rec.evaluate import (METRIC_KEYS, evaluate, metrics_from_ranks, popularity_scorer,
                                   ranks_full, ranks_sampled, sample_negatives)

PAD, MASK, V = 0, 7, 8


def rng(seed=0):
    return np.random.default_rng(seed)


def toy_data(n_users=400, n_items=300, seed=0, max_len=10):
    """Random histories of distinct items (lengths 0..max_len), targets, Zipf-ish popularity."""
    g = np.random.default_rng(seed)
    vocab = n_items + 2
    histories = [g.choice(np.arange(1, n_items + 1), size=g.integers(0, max_len + 1), replace=False)
                 for _ in range(n_users)]
    targets = g.integers(1, n_items + 1, size=n_users)
    popularity = np.zeros(vocab)
    popularity[1:-1] = 1000.0 / np.arange(1, n_items + 1) + 1.0
    return histories, targets, popularity


# --------------------------------------------------------------------------- metrics

def test_metrics_hand_computed():
    m = metrics_from_ranks(np.array([0, 3, 7, 20]))
    assert tuple(m) == METRIC_KEYS
    assert all(type(v) is float for v in m.values())
    expected = {
        "HR@1": 0.25, "HR@5": 0.5, "HR@10": 0.75,
        "NDCG@5": (1 + 1 / math.log2(5)) / 4,
        "NDCG@10": (1 + 1 / math.log2(5) + 1 / math.log2(9)) / 4,
        "MRR": (1 + 1 / 4 + 1 / 8 + 1 / 21) / 4,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key


def test_metrics_boundaries_are_strict():
    # rank k is outside the top k: HR@k = [r < k]
    m = metrics_from_ranks(np.array([1, 5, 10]))
    assert m["HR@1"] == 0.0 and m["HR@5"] == pytest.approx(1 / 3) and m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(3) / 3)
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(7)) / 3)


@pytest.mark.parametrize("bad", [np.array([]), np.array([0, -1]), np.array([0.5, 1.0]), np.zeros((2, 2), int)])
def test_metrics_reject_bad_ranks(bad):
    with pytest.raises(InputError):
        metrics_from_ranks(bad)


# --------------------------------------------------------------------------- ranks

def test_ranks_sampled_hand_made():
    #                  pad   1    2    3    4    5    6   mask
    scores = np.array([[9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 9.0],
                       [9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 9.0]])
    targets = np.array([3, 4])
    negatives = np.array([[1, 2, 4, 5], [1, 2, 3, 6]])
    # user 0: 2 (.5) and 4 (.9) beat .3; user 1: nothing beats .9
    np.testing.assert_array_equal(ranks_sampled(scores, targets, negatives, rng()), [2, 0])


def test_ranks_sampled_ties_are_random_within_bounds():
    B = 4000
    scores = np.tile([0.0, 0.5, 0.5, 0.5, 0.9, 0.5, 0.1, 0.0], (B, 1))
    targets = np.full(B, 1)
    negatives = np.tile([2, 3, 4, 5, 6], (B, 1))           # 1 higher (4), 3 ties (2, 3, 5)
    r = ranks_sampled(scores, targets, negatives, rng())
    assert r.min() == 1 and r.max() == 4                    # n_greater .. n_greater + n_ties
    counts = np.bincount(r, minlength=5)[1:]
    np.testing.assert_allclose(counts / B, 0.25, atol=0.03)  # uniform over the 4 positions
    np.testing.assert_array_equal(r, ranks_sampled(scores, targets, negatives, rng()))  # seeded


def test_ranks_full_hand_made_excludes_history_pad_and_mask():
    #                  pad     1    2    3    4    5    6   mask
    row = np.array([100.0, 0.1, 0.8, 0.3, 0.9, 0.2, 0.7, 100.0])
    scores = np.tile(row, (4, 1))
    targets = np.array([3, 3, 3, 1])
    histories = [np.array([4, 2]),     # candidates 1,3,5,6: only 6 beats .3
                 np.array([], dtype=int),  # 2, 4, 6 beat .3 (pad/mask at 100 never count)
                 np.array([3, 4]),     # target in history stays a candidate: 2 and 6 beat it
                 np.array([2, 3, 4, 5, 6])]  # only the target is left
    np.testing.assert_array_equal(ranks_full(scores, targets, histories, rng()), [1, 3, 2, 0])


def test_ranks_full_matches_brute_force_with_ties():
    g = rng(3)
    B, n_items = 60, 25
    vocab = n_items + 2
    scores = g.integers(0, 4, size=(B, vocab)).astype(np.float64)   # many ties
    scores[:, 0] = scores[:, -1] = 10.0                                # pad / mask would win
    targets = g.integers(1, n_items + 1, size=B)
    histories = [g.integers(1, n_items + 1, size=g.integers(0, 12)) for _ in range(B)]  # repeats ok
    lo, hi = [], []
    for b in range(B):
        candidates = [i for i in range(1, n_items + 1) if i == targets[b] or i not in set(histories[b])]
        t = scores[b, targets[b]]
        greater = sum(scores[b, i] > t for i in candidates)
        ties = sum(scores[b, i] == t for i in candidates if i != targets[b])
        lo.append(greater)
        hi.append(greater + ties)
    seen = set()
    for seed in range(300):
        r = ranks_full(scores, targets, histories, rng(seed))
        assert np.all(r >= lo) and np.all(r <= hi)
        seen.update(zip(range(B), r))
    # every allowed position gets drawn for some seed (random, not always the best/worst end)
    assert sum(h - l + 1 for l, h in zip(lo, hi)) == len(seen)


def test_ranks_full_constant_scorer_is_uniform():
    B = 3000
    scores = np.zeros((B, V))
    r = ranks_full(scores, np.full(B, 2), [np.array([5])] * B, rng())   # 5 candidates: 1,2,3,4,6
    np.testing.assert_allclose(np.bincount(r, minlength=5) / B, 0.2, atol=0.03)
    assert r.max() == 4


def test_ranks_reject_bad_input():
    scores = np.zeros((2, V))
    with pytest.raises(InputError):
        ranks_full(scores, np.array([0, 1]), [np.array([1]), np.array([2])], rng())   # pad target
    with pytest.raises(InputError):
        ranks_full(scores, np.array([MASK, 1]), [np.array([1]), np.array([2])], rng())
    with pytest.raises(InputError):
        ranks_full(scores, np.array([1, 1]), [np.array([1]), np.array([-2])], rng())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_never_rank(bad):
    # a NaN compared with > is False: counted as it is, a NaN target would beat everything
    scores = np.tile(np.arange(V, dtype=float), (2, 1))                  # item i scores i
    scores[0, 3] = bad                                                   # user 0: the target
    scores[1, 5] = bad                                                   # user 1: a candidate
    negatives = np.array([[1, 2, 4, 5], [1, 2, 4, 5]])
    assert ranks_sampled(scores, np.array([3, 3]), negatives, rng()).tolist() == [4, 1]
    full = ranks_full(scores, np.array([3, 3]), [np.array([1]), np.array([1])], rng())
    assert full.tolist() == [4, 2]                  # user 1: only items 4 and 6 above 3
    # the driver, both protocols and the candidate shortcut: a broken model ranks last (of 5)
    broken = lambda h: np.full((len(h), V), bad)                          # noqa: E731
    cand = lambda h, c: np.full(c.shape, bad)                             # noqa: E731
    hist, targets, negatives = [np.array([1]), np.array([2])], np.array([3, 4]), negatives - 0
    negatives[1] = [1, 2, 3, 5]
    for m in (evaluate(broken, hist, targets, negatives=negatives),
              evaluate(broken, hist, targets, protocol="sampled", negatives=negatives,
                       candidate_fn=cand)):
        for metrics in m.values():
            assert metrics["HR@1"] == 0.0 and metrics["MRR"] == pytest.approx(1 / 5)


# --------------------------------------------------------------------------- negatives

def test_sample_negatives_contract():
    histories, targets, popularity = toy_data(n_users=500, n_items=300)
    neg = sample_negatives(histories, targets, popularity, n_negatives=100, seed=0)
    assert neg.shape == (500, 100) and neg.dtype == np.int64
    assert neg.min() >= 1 and neg.max() <= 300                         # never pad (0) or mask (301)
    for h, t, row in zip(histories, targets, neg):
        assert len(set(row.tolist())) == 100                            # distinct
        assert not (set(row.tolist()) & (set(h.tolist()) | {int(t)}))  # never the user's items


def test_sample_negatives_seeded():
    histories, targets, popularity = toy_data(n_users=50)
    a = sample_negatives(histories, targets, popularity, 100, seed=7)
    b = sample_negatives(histories, targets, popularity, 100, seed=7)
    c = sample_negatives(histories, targets, popularity, 100, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_negatives_follow_popularity():
    n_items, U, N = 1000, 40000, 5
    popularity = np.zeros(n_items + 2)
    popularity[1:-1] = 1.0
    popularity[1], popularity[2], popularity[3] = 4.0, 1.0, 0.0       # ratio 4:1; item 3 never
    popularity[0] = popularity[-1] = 50.0                               # pad / mask: ignored anyway
    histories = [np.array([10, 11])] * U
    targets = np.full(U, 12)
    neg = sample_negatives(histories, targets, popularity, N, seed=1)
    counts = np.bincount(neg.ravel(), minlength=n_items + 2)
    assert counts[3] == 0 and counts[0] == 0 and counts[-1] == 0
    assert counts[10] == counts[11] == counts[12] == 0
    assert counts[1] / counts[2] == pytest.approx(4.0, rel=0.12)        # expected ~800 vs ~200


def test_sample_negatives_exact_without_replacement_law():
    # Sequential weighted sampling without replacement of 2 out of items 1, 2, 3 with weights
    # 1, 2, 7: P(first a, then b) = p_a * p_b / (1 - p_a). The target (item 4) has popularity 0.
    popularity = np.array([0.0, 1.0, 2.0, 7.0, 0.0, 0.0])
    p = popularity[1:4] / 10.0
    U = 60000
    neg = sample_negatives([np.array([], dtype=int)] * U, np.full(U, 4), popularity, 2, seed=3)
    for a in range(3):
        for b in range(3):
            if a != b:
                expected = p[a] * p[b] / (1 - p[a])
                observed = np.mean((neg[:, 0] == a + 1) & (neg[:, 1] == b + 1))
                assert observed == pytest.approx(expected, abs=0.01), (a, b)


def test_sample_negatives_top_up_when_most_mass_is_excluded():
    # The user owns the two items holding ~all the mass, and asks for every remaining item:
    # nearly every draw is rejected, so the stream must be extended several times.
    n_items = 40
    popularity = np.zeros(n_items + 2)
    popularity[1:-1] = 1.0
    popularity[1] = popularity[2] = 1e5
    neg = sample_negatives([np.array([1]), np.array([5])], np.array([2, 6]), popularity,
                           n_negatives=38, seed=0)
    assert sorted(neg[0].tolist()) == list(range(3, 41))
    assert sorted(neg[1].tolist()) == sorted(set(range(1, 41)) - {5, 6})


def test_sample_negatives_chunking_keeps_the_contract():
    histories, targets, popularity = toy_data(n_users=300, n_items=200)
    neg = sample_negatives(histories, targets, popularity, 50, seed=0, chunk_size=7)
    assert neg.shape == (300, 50)
    for h, t, row in zip(histories, targets, neg):
        assert len(set(row.tolist())) == 50 and not (set(row.tolist()) & (set(h.tolist()) | {int(t)}))


def test_sample_negatives_infeasible_raises():
    popularity = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])            # only items 1..3 drawable
    with pytest.raises(InputError, match="user #0"):
        sample_negatives([np.array([1])], np.array([2]), popularity, n_negatives=2)


# --------------------------------------------------------------------------- evaluate

def oracle_scorer(histories, targets, best=True):
    """Scores the user's target highest (or lowest); users are identified by their history."""
    by_id = {id(h): t for h, t in zip(histories, targets)}
    vocab = 302

    def score_fn(batch):
        s = np.zeros((len(batch), vocab))
        s[np.arange(len(batch)), [by_id[id(h)] for h in batch]] = 1.0 if best else -1.0
        return s
    return score_fn


def test_evaluate_oracle_gets_perfect_metrics():
    histories, targets, popularity = toy_data()
    out = evaluate(oracle_scorer(histories, targets), histories, targets, popularity=popularity)
    assert set(out) == {"sampled", "full"}
    for protocol in out:
        assert out[protocol] == {k: 1.0 for k in METRIC_KEYS}


def test_evaluate_worst_scorer_ranks_last():
    histories, targets, popularity = toy_data()
    out = evaluate(oracle_scorer(histories, targets, best=False), histories, targets,
                   popularity=popularity, protocol="sampled")
    assert out["sampled"]["HR@10"] == 0.0
    assert out["sampled"]["MRR"] == pytest.approx(1 / 101)


def test_evaluate_constant_scorer_is_at_chance_level():
    histories, targets, popularity = toy_data(n_users=6000)
    const = lambda batch: np.zeros((len(batch), 302), dtype=np.float32)  # noqa: E731
    out = evaluate(const, histories, targets, popularity=popularity, seed=0)
    assert out["sampled"]["HR@10"] == pytest.approx(10 / 101, abs=0.02)
    assert out["sampled"]["MRR"] == pytest.approx(sum(1 / r for r in range(1, 102)) / 101, abs=0.01)
    n_candidates = np.array([300 - len(set(h.tolist()) - {t}) for h, t in zip(histories, targets)])
    assert out["full"]["HR@10"] == pytest.approx(np.mean(10 / n_candidates), abs=0.01)


def smooth_scorer(batch):
    """Deterministic, tie-free scores that depend only on each history's content."""
    seeds = np.array([float(np.sum(h)) + len(h) + 1.3 for h in batch])[:, None]
    return np.sin(0.37 * seeds * np.arange(302)[None, :] + seeds)


def test_evaluate_is_seeded_and_batch_independent():
    histories, targets, popularity = toy_data()
    calls = []

    def recording(batch):
        calls.append(len(batch))
        return smooth_scorer(batch)

    a = evaluate(recording, histories, targets, popularity=popularity, seed=5, batch_size=64)
    assert max(calls) <= 64 and sum(calls) == len(histories)
    b = evaluate(smooth_scorer, histories, targets, popularity=popularity, seed=5, batch_size=7)
    c = evaluate(smooth_scorer, histories, targets, popularity=popularity, seed=6, batch_size=64)
    assert a == b                      # no ties: the batch size cannot matter
    assert a["full"] == c["full"]      # full ranking uses no randomness without ties
    assert a["sampled"] != c["sampled"]  # other negatives


def test_evaluate_protocol_selection_and_given_negatives():
    histories, targets, popularity = toy_data()
    const = lambda batch: np.zeros((len(batch), 302))  # noqa: E731
    both = evaluate(const, histories, targets, popularity=popularity, seed=1)
    sampled = evaluate(const, histories, targets, popularity=popularity, seed=1, protocol="sampled")
    full = evaluate(const, histories, targets, seed=1, protocol="full")   # needs no popularity
    assert set(sampled) == {"sampled"} and set(full) == {"full"}
    assert both == {**sampled, **full}
    negatives = sample_negatives(histories, targets, popularity, 100, seed=1)
    given = evaluate(const, histories, targets, negatives=negatives, seed=1, protocol="sampled")
    assert given == sampled


def test_evaluate_popularity_scorer_matches_brute_force():
    histories, targets, _ = toy_data(n_users=200, n_items=300)
    popularity = np.zeros(302)
    popularity[1:-1] = rng(4).permutation(300) + 1.0                 # distinct counts: no ties
    score_fn = popularity_scorer(popularity)
    s = score_fn(histories[:3])
    assert s.shape == (3, 302)
    np.testing.assert_array_equal(s[2], popularity)
    expected = []
    for h, t in zip(histories, targets):
        excluded = set(h.tolist()) - {int(t)}
        expected.append(sum(1 for i in range(1, 301) if i not in excluded and popularity[i] > popularity[t]))
    out = evaluate(score_fn, histories, targets, protocol="full", batch_size=32)
    assert out["full"] == metrics_from_ranks(np.array(expected))


def test_evaluate_progress_bar_and_errors(capsys):
    histories, targets, popularity = toy_data(n_users=20)
    evaluate(smooth_scorer, histories, targets, popularity=popularity, progress=True, desc="toy")
    assert "toy" in capsys.readouterr().err
    with pytest.raises(InputError, match="popularity"):
        evaluate(smooth_scorer, histories, targets, protocol="sampled")
    with pytest.raises(InputError, match="protocol"):
        evaluate(smooth_scorer, histories, targets, protocol="all")
    with pytest.raises(InputError, match="score_fn returned"):
        evaluate(lambda b: np.zeros(302), histories, targets, protocol="full")
