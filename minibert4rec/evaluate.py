"""Leave-one-out evaluation: ranking the held-out item, two protocols, six metrics.

Setting (paper section 4.2). Every user has a history ``h = (i_1, ..., i_{t-1})`` and one held-out
target item ``i_t``. A model is wrapped as a *score function*::

    score_fn(batch_histories: list[np.ndarray]) -> scores    # (B, V), one row per user

that scores every vocabulary entry as the NEXT item after each history (for BERT4Rec: append
[MASK] to the history and read the output distribution at that position).

Vocabulary convention (shared by the whole package)::

    0 = padding, 1..n_items = items, n_items + 1 = [MASK];   V = vocab_size = n_items + 2

The pad and mask columns of a score matrix are never candidates.

Axis letters used in shapes below:
    U  users evaluated              B  users in one batch
    V  vocabulary size (n_items+2)  N  negatives per user (100 in the paper; in this
                                       module only: elsewhere N is the maximum length)

Two protocols
-------------
* sampled (the paper's, run.py): the target competes with N = 100 negatives drawn for that user
  with probability proportional to item popularity (interaction counts over the whole data set),
  distinct, and never an item the user interacted with (history or target). Cheap, but known to
  mislead: it can reorder models (Krichene & Rendle, KDD 2020).
* full: the target competes with ALL items 1..n_items except the user's history items (the target
  itself always stays a candidate, even when the user saw it before).

Rank, counted from 0 (0 = the target scored highest). With ties resolved at random:

    r = #{candidates c : s_c > s_target} + Uniform{0, 1, ..., #{candidates c != target : s_c == s_target}}

A constant scorer therefore gets chance-level metrics (HR@10 = 10/101 in the sampled protocol),
instead of a perfect score (ties counted in the target's favour) or zero (counted against it).

Non-finite scores (nan, +-inf: a diverged model) never rank: a candidate with one never counts
above the target, and a target with one ranks last among its candidates (a miss). Compared as
they are, a NaN target would beat every candidate (every ``>`` with NaN is False): a broken
model would score perfectly.
The authors' run.py breaks ties by ``argsort`` order instead; with a trained model's float scores
ties are rare, so this only matters for degenerate scorers such as popularity counts.

Metrics of one user, then averaged over users (k in {1, 5, 10}):

    HR@k   = [r < k]                                  (hit ratio, = recall@k with one target)
    NDCG@k = 1 / log2(r + 2)   if r < k, else 0       (the ideal DCG is 1: one relevant item)
    MRR    = 1 / (r + 1)                              (reciprocal rank, no cut-off)

Sampling the negatives (``sample_negatives``). The authors draw popularity-weighted samples and
reject the user's items and repeats until 100 are collected. Here every user gets one long stream
of independent popularity-weighted draws *with* replacement; the negatives are the first N
distinct draws that are not the user's items. This is exactly sequential weighted sampling
without replacement from the allowed items, and it vectorises: all users draw at once and a
short stream (rare) is extended, never thrown away, so the distribution stays exact.

Everything is seeded: ``evaluate(..., seed=s)`` returns an identical dict for identical inputs.

For a model and a data set: ``test_metrics(model, ds)`` (the test split, both protocols),
``popularity_metrics(ds)`` (the baseline, scored the same way); for several runs of one
setting: ``PAPER_ROWS``, ``first_reaching``, ``spread``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .data import Dataset, check_same_data, leave_one_out
from .errors import InputError

METRIC_KEYS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
PROTOCOLS = ("sampled", "full")

ScoreFn = Callable[[list], np.ndarray]


# --------------------------------------------------------------------------- metrics

def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Average HR@{1,5,10}, NDCG@{5,10} and MRR over users.

    Args:
        ranks: (U,) int, the target's rank for each user, 0 = best.
    Returns:
        {key: python float} for every key of METRIC_KEYS.
    """
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise InputError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.integer) or r.min() < 0:
        raise InputError("ranks must be non-negative integers (0 = best)")
    r = r.astype(np.float64)
    metrics = {}
    for k in (1, 5, 10):
        metrics[f"HR@{k}"] = float(np.mean(r < k))
    for k in (5, 10):
        metrics[f"NDCG@{k}"] = float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))
    metrics["MRR"] = float(np.mean(1.0 / (r + 1.0)))
    return {key: metrics[key] for key in METRIC_KEYS}


# --------------------------------------------------------------------------- ranks

def _rank_with_ties(n_greater: np.ndarray, n_ties: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank = n_greater + a uniform draw from {0, ..., n_ties}.

    Args:
        n_greater: (B,) int, candidates scoring strictly higher than the target.
        n_ties:    (B,) int, OTHER candidates scoring exactly the target's score.
    Returns:
        (B,) int64 ranks, 0 = best.
    """
    return n_greater.astype(np.int64) + rng.integers(0, n_ties.astype(np.int64) + 1)


def _above_and_tied(s_target: np.ndarray, s_cand: np.ndarray, candidate: np.ndarray | None = None):
    """How many candidates score above the target, and how many the same; non-finite never rank.

    Args:
        s_target:  (B,) the target's scores.
        s_cand:    (B, C) the candidates' scores (the target itself excluded, or masked out).
        candidate: optional (B, C) bool, which columns count.
    Returns:
        n_greater, n_ties: (B,) int. A non-finite candidate counts neither above nor tied; a
        non-finite target gets every counted candidate above it (ranks last).
    """
    counted = np.isfinite(s_cand)
    if candidate is not None:
        counted &= candidate
    t = s_target[:, None]
    n_greater = ((s_cand > t) & counted).sum(axis=1)
    n_ties = ((s_cand == t) & counted).sum(axis=1)
    broken = ~np.isfinite(s_target)
    if broken.any():
        total = (candidate if candidate is not None else np.ones(s_cand.shape, bool)).sum(axis=1)
        n_greater = np.where(broken, total, n_greater)
        n_ties = np.where(broken, 0, n_ties)
    return n_greater, n_ties


def _check_scores(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (B, V) score matrix against (B,) targets in 1..V-2; return both as arrays."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.ndim != 1 or scores.shape[0] != targets.shape[0]:
        raise InputError(f"scores must be (B, V) and targets (B,), got {scores.shape} and {targets.shape}")
    n_items = scores.shape[1] - 2
    if targets.size and (targets.min() < 1 or targets.max() > n_items):
        raise InputError(f"target ids must lie in 1..{n_items} (0 is padding, {n_items + 1} is [MASK])")
    return scores, targets.astype(np.int64)


def ranks_sampled(scores: np.ndarray, targets: np.ndarray, negatives: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Rank of each target among itself and its sampled negatives.

    Args:
        scores:    (B, V) float, next-item scores.
        targets:   (B,) int, held-out items in 1..n_items.
        negatives: (B, N) int, each user's negatives (items, none equal to the target).
        rng:       random generator for tie-breaking.
    Returns:
        (B,) int64 ranks in 0..N.
    """
    scores, targets = _check_scores(scores, targets)
    negatives = np.asarray(negatives)
    if negatives.ndim != 2 or negatives.shape[0] != targets.shape[0]:
        raise InputError(f"negatives must be (B, N) with B = {targets.shape[0]}, got {negatives.shape}")
    rows = np.arange(targets.shape[0])
    s_target = scores[rows, targets]                                   # (B,)
    s_neg = np.take_along_axis(scores, negatives.astype(np.int64), 1)  # (B, N)
    n_greater, n_ties = _above_and_tied(s_target, s_neg)                # (B,), (B,)
    return _rank_with_ties(n_greater, n_ties, rng)


def _exclusion_mask(histories: Sequence[np.ndarray], targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """(B, V) bool: True where an entry is NOT a full-ranking candidate.

    Excluded: the pad column 0, the [MASK] column V-1 and each user's history items, except the
    user's own target, which is always a candidate.
    """
    B = len(histories)
    excluded = np.zeros((B, vocab_size), dtype=bool)                   # (B, V)
    excluded[:, 0] = True
    excluded[:, vocab_size - 1] = True
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=B)
    if lengths.sum():
        items = np.concatenate([np.asarray(h, dtype=np.int64).ravel() for h in histories])
        if items.min() < 0 or items.max() > vocab_size - 2:
            raise InputError(f"history ids must lie in 1..{vocab_size - 2} (0 = padding is ignored)")
        # one (row, column) pair per history item: row b repeated len(history b) times
        excluded[np.repeat(np.arange(B), lengths), items] = True
    excluded[np.arange(B), targets] = False
    return excluded


def ranks_full(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray],
               rng: np.random.Generator) -> np.ndarray:
    """Rank of each target against every item except the user's history items.

    Args:
        scores:    (B, V) float, next-item scores.
        targets:   (B,) int, held-out items in 1..n_items (a candidate even if in the history).
        histories: B arrays of item ids; these items are removed from the candidates.
        rng:       random generator for tie-breaking.
    Returns:
        (B,) int64 ranks in 0..n_items-1.
    """
    scores, targets = _check_scores(scores, targets)
    if len(histories) != targets.shape[0]:
        raise InputError(f"got {len(histories)} histories for {targets.shape[0]} targets")
    candidate = ~_exclusion_mask(histories, targets, scores.shape[1])  # (B, V)
    rows = np.arange(targets.shape[0])
    candidate[rows, targets] = False                                   # the others only
    s_target = scores[rows, targets]                                   # (B,)
    n_greater, n_ties = _above_and_tied(s_target, scores, candidate)    # (B,), (B,)
    return _rank_with_ties(n_greater, n_ties, rng)


# --------------------------------------------------------------------------- negatives

def _user_item_keys(histories: Sequence[np.ndarray], targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Sorted unique keys row * V + item for every (user row, item) the user interacted with
    (history items and target)."""
    U = len(histories)
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=U)
    items = np.concatenate([np.asarray(h, dtype=np.int64).ravel() for h in histories] + [targets])
    rows = np.concatenate([np.repeat(np.arange(U, dtype=np.int64), lengths), np.arange(U)])
    if items.min() < 0 or items.max() > vocab_size - 2:
        raise InputError(f"item ids must lie in 1..{vocab_size - 2} (0 = padding is ignored)")
    return np.unique(rows * vocab_size + items)


def _is_member(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean array, True where queries occur in sorted_keys (binary search, same shape)."""
    pos = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return sorted_keys[pos] == queries


def _draws_needed(p: np.ndarray, n_wanted: float) -> int:
    """Smallest m (searched by 10% steps) whose expected number of distinct items among m
    with-replacement draws from probabilities p, sum_i 1 - (1 - p_i)^m, reaches n_wanted."""
    m = max(int(n_wanted), 1)
    m_max = 8 * m + 64                                                 # the caller extends short streams
    while np.sum(-np.expm1(m * np.log1p(-np.minimum(p, 1 - 1e-12)))) < n_wanted and m < m_max:
        m = int(m * 1.1) + 1
    return m


def _first_allowed_distinct(draws: np.ndarray, rows: np.ndarray, user_keys: np.ndarray,
                            vocab_size: int) -> np.ndarray:
    """(R, m) bool: True at each draw that is the first occurrence of its item in its row and is
    not one of that user's items.

    Args:
        draws:     (R, m) int64 item ids, one stream per user, in draw order.
        rows:      (R,) the users' positions, as used in user_keys.
        user_keys: sorted keys row * V + item of the users' own items.
    """
    order = np.argsort(draws, axis=1, kind="stable")                   # (R, m)
    sorted_draws = np.take_along_axis(draws, order, axis=1)            # each row ascending
    keep_sorted = np.ones(draws.shape, dtype=bool)
    keep_sorted[:, 1:] = sorted_draws[:, 1:] != sorted_draws[:, :-1]   # stable sort: first = earliest
    # row * V + item is ascending over the whole flattened array: a cache-friendly search.
    keep_sorted &= ~_is_member(rows[:, None] * vocab_size + sorted_draws, user_keys)
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)                # back to draw order
    return keep


def sample_negatives(histories: list[np.ndarray], targets: np.ndarray, popularity: np.ndarray,
                     n_negatives: int = 100, seed: int = 0, chunk_size: int = 8192) -> np.ndarray:
    """Draw each user's negatives for the sampled protocol.

    Per user: n_negatives distinct items, drawn with probability proportional to popularity
    (sequential sampling without replacement), never the user's history items or target.
    Items with popularity 0, and the pad / [MASK] columns (whatever their popularity entry), are
    never drawn.

    Args:
        histories:   U arrays of item ids.
        targets:     (U,) int, held-out items.
        popularity:  (V,) non-negative interaction counts over the whole data set.
        n_negatives: N, negatives per user.
        seed:        seed of np.random.default_rng; same seed -> same negatives.
        chunk_size:  users sampled at once (memory ~ chunk_size x 2 N x 8 bytes, times a few).
    Returns:
        (U, N) int64 negatives, in draw order.
    """
    targets = np.asarray(targets, dtype=np.int64)
    weights = np.array(popularity, dtype=np.float64)                   # (V,) copy
    U, V = len(histories), weights.shape[0] if weights.ndim == 1 else -1
    if weights.ndim != 1 or V < 3 or not np.all(np.isfinite(weights)) or weights.min() < 0:
        raise InputError("popularity must be a 1-D array of non-negative counts of length vocab_size")
    if targets.shape != (U,):
        raise InputError(f"got {U} histories but targets of shape {targets.shape}")
    if n_negatives < 1 or chunk_size < 1:
        raise InputError(f"n_negatives and chunk_size must be >= 1, got {n_negatives}, {chunk_size}")
    weights[0] = weights[V - 1] = 0.0                                  # pad and [MASK]
    if U == 0:
        return np.zeros((0, n_negatives), dtype=np.int64)

    user_keys = _user_item_keys(histories, targets, V)                 # sorted (K,)
    # Feasibility: every user needs n_negatives drawable items outside their own.
    own_drawable = np.bincount(user_keys // V, weights=(weights[user_keys % V] > 0), minlength=U)
    allowed = np.count_nonzero(weights) - own_drawable                 # (U,)
    if allowed.min() < n_negatives:
        u = int(np.argmin(allowed))
        raise InputError(f"user #{u} has only {int(allowed[u])} items with popularity > 0 outside "
                         f"their own, fewer than n_negatives = {n_negatives}")

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(weights)                                           # (V,)
    # Stream length m so that a typical user is served in one round: enough draws to expect
    # 25% + 10 more distinct items than asked (repeats of very popular items are the main waste).
    n_wanted = min(1.25 * n_negatives + 10, np.count_nonzero(weights))
    m = _draws_needed(weights / cdf[-1], n_wanted)
    negatives = np.empty((U, n_negatives), dtype=np.int64)
    for start in range(0, U, chunk_size):                              # bounds memory to chunk x m
        users = np.arange(start, min(start + chunk_size, U))
        negatives[users] = _sample_chunk(users, user_keys, cdf, n_negatives, m, rng)
    return negatives


def _draw(cdf: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Independent item draws with P(i) = weight_i / total, by inverting the CDF.

    Args:
        cdf: (V,) cumulative weights; items of weight 0 are never returned.
    Returns:
        int64 array of the given shape.
    """
    u = rng.random(shape) * cdf[-1]                                    # uniform in [0, total)
    last_drawable = np.searchsorted(cdf, cdf[-1], side="left")         # guards u rounding to total
    return np.minimum(np.searchsorted(cdf, u, side="right"), last_drawable).astype(np.int64)


def _sample_chunk(users: np.ndarray, user_keys: np.ndarray, cdf: np.ndarray, n_negatives: int,
                  m: int, rng: np.random.Generator) -> np.ndarray:
    """Negatives for a chunk of users: the first n_negatives distinct allowed items of each
    user's stream of draws. A stream that falls short is extended (doubled), never redrawn, so the
    result is exactly sequential sampling without replacement.

    Args:
        users: (R,) user positions (as in user_keys).
        m:     initial stream length per user.
    Returns:
        (R, n_negatives) int64.
    """
    V = cdf.shape[0]
    out = np.empty((users.size, n_negatives), dtype=np.int64)
    pending = np.arange(users.size)                                    # rows still short
    stream = _draw(cdf, (users.size, m), rng)                          # (R, m)
    while pending.size:
        keep = _first_allowed_distinct(stream, users[pending], user_keys, V)
        keep &= np.cumsum(keep, axis=1) <= n_negatives
        done = keep.sum(axis=1) == n_negatives
        out[pending[done]] = stream[done][keep[done]].reshape(-1, n_negatives)
        pending, stream = pending[~done], stream[~done]
        if pending.size:
            stream = np.concatenate([stream, _draw(cdf, stream.shape, rng)], axis=1)
    return out


# --------------------------------------------------------------------------- driver

def evaluate(score_fn: ScoreFn, histories: list[np.ndarray], targets: np.ndarray, *,
             protocol: str = "both", negatives: np.ndarray | None = None,
             popularity: np.ndarray | None = None, n_negatives: int = 100, seed: int = 0,
             batch_size: int = 256, progress: bool = False, desc: str = "evaluate",
             candidate_fn=None) -> dict:
    """Score every user's next item and report the metrics of one or both protocols.

    Args:
        score_fn:    maps a list of B histories to (B, V) next-item scores.
        histories:   U arrays of item ids (what the model sees; excluded in the full protocol).
        targets:     (U,) held-out items.
        protocol:    "sampled", "full" or "both".
        negatives:   (U, N) negatives for "sampled"; drawn by sample_negatives(histories, targets,
                     popularity, n_negatives, seed) when None.
        popularity:  (V,) interaction counts, needed only to draw negatives.
        seed:        seeds the negatives and the tie-breaking; same seed -> same dict.
        batch_size:  users scored at once; memory is O(batch_size * V).
        progress:    show a tqdm bar named desc.
        candidate_fn: optional shortcut for the sampled protocol alone:
                     candidate_fn(batch_histories, candidates (B, C)) -> (B, C) scores of just
                     those items (column 0 = the target). Same ranks as score_fn, but a model
                     scores 101 items instead of the whole vocabulary.
    Returns:
        {"sampled": {metric: float}, "full": {metric: float}}, only the requested protocols.
    """
    if protocol not in PROTOCOLS + ("both",):
        raise InputError(f"protocol must be 'sampled', 'full' or 'both', got {protocol!r}")
    protocols = PROTOCOLS if protocol == "both" else (protocol,)
    targets = np.asarray(targets, dtype=np.int64)
    U = len(histories)
    if U == 0 or targets.shape != (U,):
        raise InputError(f"need >= 1 user and one target per history, got {U} histories and "
                         f"targets of shape {targets.shape}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if "sampled" in protocols:
        if negatives is None:
            if popularity is None:
                raise InputError("the sampled protocol needs popularity (or precomputed negatives)")
            negatives = sample_negatives(histories, targets, popularity, n_negatives, seed)
        negatives = np.asarray(negatives, dtype=np.int64)
        if negatives.ndim != 2 or negatives.shape[0] != U:
            raise InputError(f"negatives must be ({U}, N), got {negatives.shape}")

    # Users are scored in order of history length, so a batch holds histories of
    # similar length and a model pads little (metrics are means: order-free).
    order = np.argsort(np.fromiter((len(h) for h in histories), dtype=np.int64, count=U),
                       kind="stable")
    histories = [histories[i] for i in order]
    targets = targets[order]
    if "sampled" in protocols:
        negatives = negatives[order]
    # One tie-breaking stream per protocol, so "both" reproduces "sampled" and "full" alone.
    rngs = {p: np.random.default_rng([seed, i + 1]) for i, p in enumerate(PROTOCOLS)}
    ranks = {p: [] for p in protocols}
    with tqdm(total=U, desc=desc, unit="user", disable=not progress) as bar:
        for start in range(0, U, batch_size):
            stop = min(start + batch_size, U)
            batch = list(histories[start:stop])
            if candidate_fn is not None and protocols == ("sampled",):
                cand = np.column_stack([targets[start:stop], negatives[start:stop]])  # (B, 1+N)
                sc = np.asarray(candidate_fn(batch, cand))                            # (B, 1+N)
                if sc.shape != cand.shape:
                    raise InputError(f"candidate_fn returned shape {sc.shape}, expected {cand.shape}")
                n_greater, n_ties = _above_and_tied(sc[:, 0], sc[:, 1:])
                ranks["sampled"].append(_rank_with_ties(n_greater, n_ties, rngs["sampled"]))
                bar.update(stop - start)
                continue
            scores = np.asarray(score_fn(batch))                       # (B, V)
            if scores.ndim != 2 or scores.shape[0] != stop - start:
                raise InputError(f"score_fn returned shape {scores.shape} for {stop - start} histories")
            if "sampled" in protocols:
                neg = negatives[start:stop]
                if neg.min() < 1 or neg.max() > scores.shape[1] - 2:
                    raise InputError(f"negative ids must lie in 1..{scores.shape[1] - 2}")
                ranks["sampled"].append(ranks_sampled(scores, targets[start:stop], neg, rngs["sampled"]))
            if "full" in protocols:
                ranks["full"].append(ranks_full(scores, targets[start:stop], batch, rngs["full"]))
            bar.update(stop - start)
    return {p: metrics_from_ranks(np.concatenate(ranks[p])) for p in protocols}


def popularity_scorer(popularity: np.ndarray) -> ScoreFn:
    """The popularity baseline: every user gets the same scores, the global interaction counts.

    Args:
        popularity: (V,) interaction counts.
    Returns:
        score_fn(batch_histories) -> (B, V) float64, a read-only broadcast view (no copy per batch).
    """
    row = np.asarray(popularity, dtype=np.float64)
    if row.ndim != 1:
        raise InputError(f"popularity must be 1-D, got shape {row.shape}")

    def score_fn(batch_histories: list) -> np.ndarray:
        return np.broadcast_to(row, (len(batch_histories), row.shape[0]))

    return score_fn


# --------------------------------------------------------------------------- a model on a data set
# BERT4Rec on a data set's leave-one-out split (test_metrics: the paper's protocol)


def evaluate_model(model, histories, targets, popularity, protocol="both", negatives=None,
                   seed=0, batch_size=256, progress=False, desc="evaluate", n_negatives=100):
    """Metrics of a BERT4Rec ``model`` predicting ``targets`` after ``histories``: ``evaluate``
    with the model's ``score_next`` (B, V) and, for the sampled protocol, its cheaper
    ``score_candidates`` (B, 1 + n_negatives)."""
    return evaluate(model.score_next, histories, targets, protocol=protocol,
                    negatives=negatives, popularity=popularity, seed=seed,
                    n_negatives=n_negatives, batch_size=batch_size, progress=progress, desc=desc,
                    candidate_fn=model.score_candidates)


def test_metrics(model, ds: Dataset, split=None, protocol="both", seed=0, batch_size=256,
                 progress=False, n_negatives=100):
    """The paper's protocol on the test split (the last item of every user).

    model: a ``BERT4Rec`` trained on ``ds``; split: ``leave_one_out(ds)`` (None: made here);
    protocol: "sampled", "full" or "both"; seed: seeds the sampled negatives and the tie-breaks.
    Returns {protocol: {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR": float}}, one
    entry per protocol asked for, each metric the mean over the ds.n_users test users."""
    check_same_data(model, ds)
    split = split or leave_one_out(ds)
    return evaluate_model(model, split.test_input, split.test_target, ds.popularity(), protocol,
                          seed=seed, batch_size=batch_size, progress=progress, desc="test",
                          n_negatives=n_negatives)


def popularity_metrics(ds: Dataset, split=None, protocol="both", seed=0, n_negatives=100):
    """The popularity baseline on the test split, scored like ``test_metrics`` (same seed, same
    negatives): the bar a trained model must clear. Returns the same dict as ``test_metrics``."""
    split = split or leave_one_out(ds)
    return evaluate(popularity_scorer(ds.popularity()), split.test_input, split.test_target,
                    protocol=protocol, popularity=ds.popularity(), seed=seed,
                    n_negatives=n_negatives)


# ----------------------------------------------------------------------------
# Several runs of one setting: the paper's row, when a run reaches it, mean and spread
# ----------------------------------------------------------------------------

# The paper's d = 64 rows (Table 4, sampled protocol), the targets of the reproductions.
PAPER_ROWS = {
    "beauty": {"HR@10": 0.3047, "NDCG@10": 0.1832},
    "ml-1m": {"HR@10": 0.6955, "NDCG@10": 0.4759},
}


def first_reaching(history: list[dict], target: dict[str, float], split: str = "test"):
    """The first evaluation of a training history at which EVERY target metric is reached.

    history: per-epoch records {"epoch", "minutes", split: {metric: value}} (train.py's state.json;
             the "test" block exists in runs trained with --track-test)
    target:  {metric: value}, e.g. PAPER_ROWS["beauty"]
    Returns the record reached (its "epoch" and "minutes" say when), or None if none is.
    """
    for record in history:
        got = record.get(split)
        if got is not None and all(got.get(k, -np.inf) >= v for k, v in target.items()):
            return record
    return None


def spread(metric_dicts: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max of each metric over several runs.

    metric_dicts: one {metric: value} per run (e.g. each run's sampled test metrics)
    Returns {"mean": {...}, "std": {...}, "min": {...}, "max": {...}} (std 0 for one run).
    """
    if not metric_dicts:
        raise InputError("spread needs the metrics of at least one run")
    keys = [k for k in metric_dicts[0] if all(k in m for m in metric_dicts)]
    table = np.array([[m[k] for k in keys] for m in metric_dicts], dtype=np.float64)  # (R, K)
    std = table.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(len(keys))
    return {name: dict(zip(keys, map(float, values))) for name, values in
            (("mean", table.mean(axis=0)), ("std", std), ("min", table.min(axis=0)),
             ("max", table.max(axis=0)))}
