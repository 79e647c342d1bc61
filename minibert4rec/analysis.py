"""The paper's Figure 2, measured: where does BERT4Rec's attention go?

Sun et al. (2019), Figure 2, show attention weights averaged over the test
sequences of Beauty, for the LAST 10 positions of each sequence (positions
0..9, where 9 is the appended [MASK]), one heat-map per layer and head. The
paper reads four things off those pictures:

  (a) heads differ: in layer 1 one head looks mostly LEFT, another RIGHT;
  (b) layers differ: layer 2 concentrates on more RECENT items;
  (c) layer-1 heads also attend to the [MASK] token;
  (d) items attend to BOTH sides, unlike a left-to-right (causal) model.

This module turns each reading into a number, so a trained model's claim can
be checked instead of eyeballed:

    collect_attention(model, histories)      -> avg (L, H, k, k)
    attention_stats(avg)                     -> dict of numbers (defined in its docstring)
    learned_enough(metrics, popularity)      -> did the model learn? (the gate of every verdict)
    observations(stats, stats_causal, skill) -> the four claims, True/False + evidence + verdict
    write_attention_report(avg, out_dir)     -> figure2.png + attention_stats.json
    attention_over_training(tcfg, run_dir)   -> the statistics after every epoch of a run
    claim_numbers(stats)                     -> per claim, the number its rule tests
    stability(records)                       -> which claims hold throughout, which come and go
    titled_model / sequence_attention / write_user_attention / explore_attention
                                             -> one user's map, labelled with item titles

A map is only worth reading if the model learned something: an untrained
model's near-uniform maps, or the maps of a model that lost to the popularity
baseline, say nothing about BERT4Rec. So a claim gets a verdict (agrees /
does not agree with the paper) only when ``learned_enough`` says the model
beats popularity on the test split by the margins stated there; otherwise
its verdict is "model not trained enough to judge".

Axis letters as in ``layers.py``: L layers, B sequences, H heads, T
positions, and k the size of the analysed window (k = 10 in the paper).
Inside the window, positions 0..k-2 are the last k-1 ITEMS of the history
and position k-1 is the [MASK]. In a (k, k) map row q is a query, column j
a key.

The window's rows do NOT always sum to 1. A query's softmax runs over its
whole sequence; when the sequence is longer than k, part of the weight goes
to the positions BEFORE the window, which the (k, k) block does not show.
That missing weight, 1 - (row sum), is kept as a number of its own
(``before_window_mass``) instead of being renormalised away: it is attention
to the LEFT, and hiding it would make every head look less left-looking than
it is. Rows sum to exactly 1 only when every averaged sequence has exactly
k positions (k-1 items and the [MASK]).

Vocabulary of the statistics:
    item rows      the queries 0..k-2 (the [MASK] query, row k-1, is left out)
    item columns   the keys 0..k-2;  the [MASK] column is key k-1
    left / right   keys strictly before / strictly after the query (j < q /
                   j > q); "left" includes the positions before the window
For every item row the four shares left (every key before the query, in the
window or not), self (j = q), right (item keys q < j <= k-2) and [MASK]
(j = k-1) add up to 1, so the numbers of (a), (c) and (d) never count a
weight twice. (All of a right-padded sequence's keys after an item query are
inside the window: the window is the sequence's END.)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .plotting import show_heatmaps

RECENT = 3              # (b): "recent" = the last RECENT items before the [MASK]
BOTH_SIDES_MIN = 0.05   # (d): a bidirectional model must put > 5 % of item attention on the right
CAUSAL_MAX = 1e-3       # (d): a causal model must put < 0.1 % there (it is 0 up to rounding)
MARGIN = 0.01           # (a)-(c): "more than" means more by over 1 % of a row's weight, so that
                        # an untrained model's near-uniform maps do not confirm a claim by noise

# ----------------------------------------------------------------------------
# 0. Did the model learn? The gate before any verdict
# ----------------------------------------------------------------------------

SKILL_METRIC = "HR@10"
SKILL_SAMPLED_MARGIN = 0.05  # sampled protocol: HR@10 at least 0.05 above popularity's
SKILL_FULL_MARGIN = 0.01     # full ranking:     HR@10 at least 0.01 above popularity's
NOT_TRAINED = "model not trained enough to judge"
NOT_CHECKED = "not judged: the model's test metrics were not given"
AGREES, DISAGREES, UNDECIDED = ("agrees with the paper", "does not agree with the paper",
                                "cannot be decided")


def learned_enough(metrics, popularity):
    """Whether a model learned enough for its attention maps to be judged.

    metrics, popularity: the model's and the popularity baseline's TEST
    metrics, {"sampled": {...}, "full": {...}} as in metrics.json and
    ``evaluate.popularity_metrics`` (the sampled protocol with the same seed,
    so both rank against the same negatives).
    The rule, both parts on held-out (test) items:
        sampled HR@10 >= popularity's + SKILL_SAMPLED_MARGIN (0.05)   and
        full    HR@10 >= popularity's + SKILL_FULL_MARGIN    (0.01)
    Why both: the sampled protocol draws its negatives by popularity, so a
    model that merely prefers RARE items beats popularity there without
    having learned anything about sequences. Measured: a small Beauty model
    (1,000 users, D = 32, one epoch at lr 1e-2) reached sampled HR@10 0.309
    against popularity's 0.052, with a full-ranking HR@10 of 0.000 (popularity
    0.005). Each protocol has its own margin because their scales differ
    (Beauty's popularity: 0.072 sampled, 0.0093 full). For scale: the project's Beauty run
    has 0.310 / 0.0374 against popularity's 0.072 / 0.0093 (passes both),
    the synthetic demo about 0.83 / 0.80 against 0.35 / 0.34.
    Returns {"learned": bool, "rule": text, "metric": "HR@10",
    "model": {"sampled": x, "full": y}, "popularity": {...}, "margin": {...}}.
    Raises ValueError when a protocol is missing.
    """
    margins = {"sampled": SKILL_SAMPLED_MARGIN, "full": SKILL_FULL_MARGIN}
    for proto in margins:
        if proto not in metrics or proto not in popularity:
            raise ValueError(f"learned_enough needs the {proto!r} protocol's test metrics of "
                             "both the model and the popularity baseline")
    model = {p: float(metrics[p][SKILL_METRIC]) for p in margins}
    pop = {p: float(popularity[p][SKILL_METRIC]) for p in margins}
    learned = all(model[p] >= pop[p] + margins[p] for p in margins)
    return {"learned": bool(learned),
            "rule": (f"test {SKILL_METRIC} >= popularity's + {SKILL_SAMPLED_MARGIN} (sampled "
                     f"protocol) and >= popularity's + {SKILL_FULL_MARGIN} (full ranking)"),
            "metric": SKILL_METRIC, "model": model, "popularity": pop, "margin": margins}


def describe_skill(skill):
    """One line: the model's HR@10 against popularity's and whether it passes the gate."""
    if skill is None:
        return "skill unknown: no test metrics given, so no verdicts"
    m, p = skill["model"], skill["popularity"]
    return (f"test HR@10 {m['sampled']:.3f} (sampled) / {m['full']:.4f} (full) against "
            f"popularity's {p['sampled']:.3f} / {p['full']:.4f}: "
            + ("learned enough to judge" if skill["learned"] else NOT_TRAINED)
            + f" (rule: {skill['rule']})")


def skill_of_run(run_dir, data_dir=None):
    """``learned_enough`` for a run's best weights: its metrics.json against popularity.

    Popularity is measured on the run's data set with the run's seed and
    number of negatives (the same negatives). When metrics.json is missing a
    protocol (a run stopped early), the model's test metrics are computed.
    """
    import os

    from .evaluate import popularity_metrics, test_metrics
    from .runs import load_run_and_data, read_json
    model, tcfg, _, ds = load_run_and_data(run_dir, data_dir)
    path = os.path.join(run_dir, "metrics.json")
    metrics = read_json(path) if os.path.exists(path) else {}
    if not {"sampled", "full"} <= set(metrics):
        metrics = test_metrics(model, ds, protocol="both", seed=tcfg.test_seed,
                               n_negatives=tcfg.n_negatives)
    pop = popularity_metrics(ds, protocol="both", seed=tcfg.test_seed, n_negatives=tcfg.n_negatives)
    return learned_enough(metrics, pop)



# ----------------------------------------------------------------------------
# 1. Cutting out and averaging the last-k block
# ----------------------------------------------------------------------------


def last_k_sum(attention, lengths, k=10):
    """Sum of the last-k blocks over the sequences long enough to have one.

    attention: (L, B, H, T, T) weights of right-padded inputs
    lengths:   (B,) int, real length of each sequence (its last real position,
               lengths[b] - 1, is the [MASK])
    Returns (total (L, H, k, k) float64, count int): the sum over every
    sequence with lengths[b] >= k of its (k, k) block of queries AND keys
    lengths[b]-k .. lengths[b]-1, and how many sequences that was.
    """
    attention = np.asarray(attention)
    lengths = np.asarray(lengths, dtype=np.int64)
    L, B, H, T, T2 = attention.shape
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if lengths.max(initial=0) > T:
        raise ValueError(f"a length {lengths.max()} exceeds the {T} positions of the attention")
    keep = np.flatnonzero(lengths >= k)                                   # (S,)
    pos = lengths[keep, None] - k + np.arange(k)                          # (S, k) positions
    # sequences, queries and keys first: the three index arrays below then sit on the
    # three leading axes, and their (S, k, k) shape takes those axes' place, before (L, H)
    by_seq = attention.transpose(1, 3, 4, 0, 2)                           # (B, T, T, L, H)
    blocks = by_seq[keep[:, None, None], pos[:, :, None], pos[:, None, :]]  # (S, k, k, L, H)
    total = blocks.sum(axis=0, dtype=np.float64).transpose(2, 3, 0, 1)    # (L, H, k, k)
    return total, len(keep)


def last_k_attention(attention, lengths, k=10):
    """Average attention over the last k real positions: the paper's Figure 2 data.

    attention: (L, B, H, T, T), rows = queries, columns = keys, inputs
               RIGHT-padded; lengths: (B,) real length of each sequence
               (position lengths[b] - 1 holds the [MASK]).
    For each sequence with lengths[b] >= k take the (k, k) block whose
    queries and keys are its last k real positions, then average those
    blocks over the sequences (shorter sequences are left out).
    Returns avg (L, H, k, k) float64; index k-1 is the [MASK]. Its rows sum
    to 1 minus the average weight on positions before the window (exactly 1
    when every averaged sequence has length k).
    Raises ValueError when no sequence has length >= k.
    """
    total, count = last_k_sum(attention, lengths, k)
    if count == 0:
        raise ValueError(f"no sequence has at least k={k} positions (longest: "
                         f"{int(np.max(lengths, initial=0))}); lower k")
    return total / count


def collect_attention(model, histories, batch_size=256, k=10):
    """Figure 2's average for a model: attention over the last k positions of next-item inputs.

    model: a BERT4Rec;  histories: list of 1-D int arrays (e.g. the test
    users' histories, train + valid items). Each becomes the model's
    next-item input (``model.next_item_input``: last N-1 items + [MASK]), is
    encoded in eval mode, batch by batch, and the last-k blocks of all
    sequences with >= k positions (>= k-1 items) are summed; the sum is
    divided by their count at the end, so the result does not depend on
    ``batch_size``.
    Returns avg (L, H, k, k) float64; index k-1 = [MASK]. Rows sum to 1 less
    the weight that went before the window (exactly 1 if every history used
    has exactly k-1 items).
    """
    L, H = model.cfg.layers, model.cfg.heads
    total, count = np.zeros((L, H, k, k)), 0
    for start in range(0, len(histories), batch_size):
        ids, last = model.next_item_input(histories[start:start + batch_size])  # (B, T), (B,)
        B, T = ids.shape
        lengths = last - np.arange(B) * T + 1                              # [MASK] index + 1
        model.encode(ids, train=False)                                     # fills model.attention
        s, n = last_k_sum(model.attention, lengths, k)
        total += s
        count += n
    if count == 0:
        raise ValueError(f"no history has at least k-1={k - 1} items (and the model's "
                         f"max_len={model.cfg.max_len} must be >= k={k})")
    return total / count


# ----------------------------------------------------------------------------
# 2. The numbers behind the four observations
# ----------------------------------------------------------------------------


ROW_TOL = 1e-3          # rows may exceed 1 by this much (float32 rounding), no more


def _check_rows(avg):
    """avg (L, H, k, k) -> float64 copy, after checking it can be attention weights.

    Entries must be >= 0 and every row sum <= 1 + ROW_TOL (less than 1 when
    part of the weight went before the window).
    """
    A = np.asarray(avg, dtype=np.float64)
    if A.ndim != 4 or A.shape[2] != A.shape[3]:
        raise ValueError(f"expected average attention (L, H, k, k), got shape {A.shape}")
    if A.shape[2] < 2:
        raise ValueError("k must be at least 2 (one item and the [MASK])")
    if A.min() < 0 or A.sum(axis=-1).max() > 1 + ROW_TOL:
        raise ValueError("attention weights must be >= 0 with every row summing to at most 1, "
                         f"got a row sum of {A.sum(axis=-1).max():.4f}")
    return A


def direction_shares(A):
    """Where the item rows' attention goes: before the window, left, self, right, [MASK].

    A: (L, H, k, k) average attention, rows summing to <= 1. Returns five
    (L, H) arrays, each the mean over the item queries q = 0..k-2 of
        before  1 - sum_j A[q, j]  (clipped at 0): weight on positions
                before the window, all of them left of q
        left    before + sum_{j < q} A[q, j]       every key left of q
        self    A[q, q]
        right   sum_{q < j <= k-2} A[q, j]         item keys only: the [MASK] is NOT right
        mask    A[q, k-1]
    For every row left + self + right + mask = 1, so their means add up to 1 too.
    """
    k = A.shape[-1]
    q = np.arange(k - 1)[:, None]                                          # item queries (k-1, 1)
    j = np.arange(k)[None, :]                                              # all keys     (1, k)
    items = A[..., : k - 1, :]                                             # (L, H, k-1, k)
    before = np.clip(1.0 - items.sum(axis=-1), 0.0, None).mean(axis=-1)   # (L, H)
    regions = (j < q, j == q, (j > q) & (j < k - 1), j == k - 1)           # each (k-1, k) bool
    window_left, self_, right, mask = ((items * where).sum(axis=-1).mean(axis=-1)
                                       for where in regions)
    return before, before + window_left, self_, right, mask


def head_difference(A):
    """(L, H, k, k) -> (L,): mean |A[l, h] - A[l, h']| over all k*k entries and all pairs h < h'.

    0 when all heads of a layer draw the same map (and when H == 1).
    """
    L, H = A.shape[:2]
    if H < 2:
        return np.zeros(L)
    h1, h2 = np.triu_indices(H, k=1)                                       # all pairs h < h'
    return np.abs(A[:, h1] - A[:, h2]).mean(axis=(1, 2, 3))


def recent_shares(A):
    """How much attention goes to the RECENT items, per layer (mean over heads).

    A: (L, H, k, k) average attention. "Recent" keys are the last r = min(RECENT,
    k-1) items, positions k-1-r .. k-2 (k-4 .. k-2 for RECENT = 3).
    Returns two (L,) arrays:
        recent       mean over heads and item queries q = 0..k-2 of
                     sum_{j recent} A[q, j]  (a recent query's weight on
                     itself counts too)
        mask_recent  mean over heads of sum_{j recent} A[k-1, j], the
                     [MASK] query's weight on them (the row that feeds the output)
    """
    k = A.shape[-1]
    r = min(RECENT, k - 1)
    on_recent = A[..., k - 1 - r: k - 1].sum(axis=-1)                     # (L, H, k)
    return on_recent[..., : k - 1].mean(axis=(1, 2)), on_recent[..., k - 1].mean(axis=1)


def attention_stats(avg):
    """Every number behind Figure 2's four observations, JSON-ready.

    avg: (L, H, k, k) average attention (rows = queries, columns = keys;
    index k-1 = [MASK]), entries >= 0, rows summing to at most 1 (the rest
    went to positions before the window; see the module docstring). Rows
    are NOT renormalised: a row sum above 1 + ROW_TOL raises ValueError.
    "Item rows" are the queries 0..k-2. Lists are indexed [layer][head] or
    [layer], 0-based: list index 0 is the paper's "layer 1".

    Per layer and head (L lists of H numbers), means over the k-1 item rows:
      left_mass           weight on every key strictly left of the query:
                          item keys j < q in the window plus the positions
                          before the window                            (a)
      before_window_mass  the part of left_mass that falls before the
                          window, 1 - (row sum)                        (a)
      self_mass           weight on the query itself (j = q)
      right_mass          weight on item keys strictly right, q < j <= k-2;
                          the [MASK] column is NOT counted here   (a), (d)
      mask_column_mass    weight on the [MASK] key, j = k-1            (c)
      (left + self + right + mask_column = 1 for every layer and head)
    Per layer (L numbers):
      head_difference         mean |A_h - A_h'| over the k*k entries and
                              all head pairs h < h' (0 if the heads agree,
                              and for H = 1)                           (a)
      recent_mass             mean over heads and item rows of the weight
                              on the last 3 items, keys k-4..k-2 (an item
                              among them counts its weight on itself)  (b)
      mask_query_recent_mass  mean over heads of the [MASK] row's
                              weight on the same last 3 items          (b)
      right_of_diagonal_mass  right_mass averaged over heads; 0 for a
                              causal (left-to-right) model             (d)
      left_of_diagonal_mass   left_mass averaged over heads
    Plus k, layers, heads, recent_items (3) and uniform_share = 1/k, the
    weight each key gets from a query that spreads evenly over a window
    holding its whole sequence.
    """
    A = _check_rows(avg)
    L, H, k, _ = A.shape
    before, left, self_, right, mask = direction_shares(A)                 # each (L, H)
    recent, mask_recent = recent_shares(A)                                 # each (L,)
    return {
        "k": int(k), "layers": int(L), "heads": int(H),
        "recent_items": int(min(RECENT, k - 1)), "uniform_share": 1.0 / k,
        "left_mass": left.tolist(),
        "before_window_mass": before.tolist(),
        "self_mass": self_.tolist(),
        "right_mass": right.tolist(),
        "mask_column_mass": mask.tolist(),
        "head_difference": head_difference(A).tolist(),
        "recent_mass": recent.tolist(),
        "mask_query_recent_mass": mask_recent.tolist(),
        "right_of_diagonal_mass": right.mean(axis=1).tolist(),
        "left_of_diagonal_mass": left.mean(axis=1).tolist(),
    }


# ----------------------------------------------------------------------------
# 3. The four claims, decided
# ----------------------------------------------------------------------------


def _claim_a(s):
    """(a) layer 1 has a head with left > right AND a head with right > left (by > MARGIN)."""
    left, right = s["left_mass"][0], s["right_mass"][0]
    lefty = [h for h in range(len(left)) if left[h] > right[h] + MARGIN]
    righty = [h for h in range(len(left)) if right[h] > left[h] + MARGIN]
    return {"holds": bool(lefty and righty),
            "rule": f"layer 1 has a head with left_mass > right_mass + {MARGIN} and another "
                    f"with right_mass > left_mass + {MARGIN}",
            "layer1_left_mass": left, "layer1_right_mass": right,
            "left_heads": [h + 1 for h in lefty], "right_heads": [h + 1 for h in righty],
            "layer1_head_difference": s["head_difference"][0]}


def _claim_b(s):
    """(b) layer 2's item rows put more weight on the last 3 items than layer 1's (by > MARGIN)."""
    out = {"rule": f"recent_mass[layer 2] > recent_mass[layer 1] + {MARGIN} (item query rows, "
                   "last 3 items); the same test on the [MASK] row is 'mask_query_holds'",
           "recent_mass": s["recent_mass"], "mask_query_recent_mass": s["mask_query_recent_mass"]}
    if s["layers"] < 2:
        return {"holds": None, **out, "note": "the model has one layer"}
    return {"holds": bool(s["recent_mass"][1] > s["recent_mass"][0] + MARGIN), **out,
            "mask_query_holds": bool(s["mask_query_recent_mass"][1]
                                     > s["mask_query_recent_mass"][0] + MARGIN)}


def _claim_c(s):
    """(c) layer-1 heads, on average, give the [MASK] column more than 1/k (by > MARGIN)."""
    per_head = s["mask_column_mass"][0]
    mean = float(np.mean(per_head))
    return {"holds": bool(mean > s["uniform_share"] + MARGIN),
            "rule": f"mean over layer-1 heads of mask_column_mass > uniform_share (1/k) + {MARGIN}",
            "layer1_mask_column_mass": per_head, "layer1_mean": mean,
            "uniform_share": s["uniform_share"],
            "heads_above_uniform": [h + 1 for h, v in enumerate(per_head)
                                    if v > s["uniform_share"] + MARGIN]}


def _claim_d(s, s_causal):
    """(d) bidirectional items look right (> BOTH_SIDES_MIN), causal ones do not (< CAUSAL_MAX)."""
    bi = float(np.mean(s["right_of_diagonal_mass"]))
    out = {"rule": f"mean over layers of right_of_diagonal_mass > {BOTH_SIDES_MIN} and, if a "
                   f"causal model is given, its largest layer value < {CAUSAL_MAX}",
           "right_of_diagonal_mass": s["right_of_diagonal_mass"], "mean": bi,
           "causal_right_of_diagonal_mass": None}
    holds = bi > BOTH_SIDES_MIN
    if s_causal is not None:
        causal = s_causal["right_of_diagonal_mass"]
        out["causal_right_of_diagonal_mass"] = causal
        holds = holds and max(causal) < CAUSAL_MAX
    return {"holds": bool(holds), **out}


def observations(stats_bidirectional, stats_causal=None, skill=None):
    """Decide the paper's four claims from ``attention_stats`` dicts.

    Returns {name: {"holds": bool (None if undecidable), "verdict": text,
    "rule": text, the numbers used...}}. "holds" is what the rule says about
    the numbers; "verdict" is what may be said about the paper:
        AGREES / DISAGREES    only when ``skill`` (from ``learned_enough``)
                              says the model learned
        NOT_TRAINED           "model not trained enough to judge", when it did not
        NOT_CHECKED           when no ``skill`` is given
        UNDECIDED             when "holds" is None (e.g. (b) for one layer)
    The claims below, where "x > y + m" uses the
    margin m = MARGIN = 0.01 (a near-uniform, untrained model holds none of
    a, b, c):
      a_heads_look_in_different_directions  layer 1: some head has
          left_mass > right_mass + m and another right_mass > left_mass + m
      b_layer2_more_recent_than_layer1      recent_mass[1] > recent_mass[0] + m
          (None for a one-layer model; the same test on the [MASK] row,
          mask_query_recent_mass, is reported as "mask_query_holds")
      c_layer1_attends_to_mask              mean over layer-1 heads of
          mask_column_mass > 1/k + m
      d_attends_both_sides                  mean over layers of
          right_of_diagonal_mass > 0.05, and, if ``stats_causal`` (the same
          statistics of a causal model) is given, every causal layer's
          right_of_diagonal_mass < 1e-3
    """
    s = stats_bidirectional
    claims = {"a_heads_look_in_different_directions": _claim_a(s),
              "b_layer2_more_recent_than_layer1": _claim_b(s),
              "c_layer1_attends_to_mask": _claim_c(s),
              "d_attends_both_sides": _claim_d(s, stats_causal)}
    for claim in claims.values():
        claim["verdict"] = verdict(claim["holds"], skill)
    return claims


def verdict(holds, skill):
    """The verdict on one claim: its rule's outcome, gated by the model's skill (see observations)."""
    if holds is None:
        return UNDECIDED
    if skill is None:
        return NOT_CHECKED
    if not skill["learned"]:
        return NOT_TRAINED
    return AGREES if holds else DISAGREES


# ----------------------------------------------------------------------------
# 4. The report: figure + numbers
# ----------------------------------------------------------------------------


def window_labels(k):
    """Tick labels of the last-k window: ["0", ..., str(k-2), "[MASK]"]."""
    return [str(i) for i in range(k - 1)] + ["[MASK]"]


def write_attention_report(avg, out_dir, stats_causal=None, name="figure2",
                           stats_file="attention_stats.json", title=None, skill=None):
    """Write Figure 2 and its numbers.

    avg: (L, H, k, k) average attention (e.g. from ``collect_attention``).
    out_dir: folder (created if needed). Writes
      <name>.png      show_heatmaps grid: rows "layer 1..L", columns
                      "head 1..H", ticks 0..k-2 and "[MASK]"
      <stats_file>    JSON {"stats": attention_stats(avg), "stats_causal":
                      the given causal stats or null, "skill": the given
                      ``learned_enough`` result or null, "observations":
                      observations(stats, stats_causal, skill),
                      "average_attention": avg as nested lists}
    Returns (png_path, json_path).
    """
    import matplotlib.pyplot as plt

    avg = np.asarray(avg, dtype=np.float64)
    L, H, k, _ = avg.shape
    out_dir = Path(out_dir)
    if title is None:
        title = f"Average attention over the last {k} positions ({k - 1} = [MASK])"
    png = out_dir / f"{name}.png"
    fig = show_heatmaps(avg, row_titles=[f"layer {l + 1}" for l in range(L)],
                        col_titles=[f"head {h + 1}" for h in range(H)],
                        tick_labels=window_labels(k), vmin=0.0, title=title, path=png)
    plt.close(fig)                                     # only the file was asked for
    stats = attention_stats(avg)
    report = {"stats": stats, "stats_causal": stats_causal, "skill": skill,
              "observations": observations(stats, stats_causal, skill),
              "average_attention": avg.tolist()}
    path = out_dir / stats_file
    path.write_text(json.dumps(report, indent=2) + "\n")
    return png, path


# ----------------------------------------------------------------------------
# 5. Over training and across seeds: which claims are stable?
# ----------------------------------------------------------------------------


def attention_over_training(tcfg, run_dir, k=10, log=None):
    """Figure 2's statistics after every epoch of a training run, each with its skill.

    tcfg: a ``settings.TrainConfig``; run_dir: a new run directory. The run is
    trained one epoch at a time: ``train`` for epoch 1, then ``train(...,
    resume=True)`` up to epoch 2, 3, ... With the learning-rate decay fixed
    at tcfg.epochs (``decay_epochs``), this gives the same weights as one
    uninterrupted run (train.py's exact resume). After every epoch the
    epoch's weights (the checkpoint's latest, not the best ones) are read and measured:
      test         test metrics, both protocols (``evaluate.test_metrics``)
      skill        ``learned_enough(test, popularity's test metrics)``
      stats        ``attention_stats`` of ``collect_attention`` over the test
                   users with >= k-1 items
      observations ``observations(stats, None, skill)``: (d) without a causal model
    Returns a list with one record per epoch:
    {"seed", "epoch", "loss", "valid" (sampled metrics), "test", "skill",
    "stats", "observations"}; ``stability(records)`` summarises them.
    """
    import os
    from dataclasses import replace

    from .data import leave_one_out
    from .evaluate import popularity_metrics, test_metrics
    from .runs import load_run, read_json
    from .settings import dataset_of
    from .train import train
    quiet = log or (lambda *args: None)
    base = tcfg.resolved()                  # the preset's epochs; decay at the last epoch
    ds = dataset_of(base)
    split = leave_one_out(ds)
    pop = popularity_metrics(ds, split, "both", seed=base.test_seed, n_negatives=base.n_negatives)
    histories = [h for h in split.test_input if len(h) >= k - 1]
    records = []
    for epoch in range(1, base.epochs + 1):
        train(replace(base, epochs=epoch), run_dir, resume=epoch > 1, log=quiet)
        model, _, _ = load_run(run_dir, which="last")
        test = test_metrics(model, ds, split, "both", seed=base.test_seed,
                            n_negatives=base.n_negatives)
        skill = learned_enough(test, pop)
        stats = attention_stats(collect_attention(model, histories, k=k))
        last = read_json(os.path.join(run_dir, "state.json"))["history"][-1]
        records.append({"seed": base.seed, "epoch": epoch, "loss": last.get("loss"),
                        "valid": last.get("valid"), "test": test, "skill": skill,
                        "stats": stats, "observations": observations(stats, None, skill)})
    return records


def claim_numbers(stats):
    """The one number per claim that its rule compares with a threshold.

    Returns {claim name: (value, threshold)}; without a causal model a claim
    holds exactly when value > threshold (``observations``):
      a  min(max_h (left - right), max_h (right - left)) over layer-1 heads:
         above MARGIN only if one head looks left AND another right
      b  recent_mass[layer 2] - recent_mass[layer 1]        (None for one layer)
      c  mean layer-1 mask_column_mass - uniform_share (1/k)
      d  mean over layers of right_of_diagonal_mass, threshold BOTH_SIDES_MIN
    Handy for following the claims over training (one curve per claim).
    """
    left, right = np.array(stats["left_mass"][0]), np.array(stats["right_mass"][0])
    recent = stats["recent_mass"]
    return {"a_heads_look_in_different_directions":
                (float(min((left - right).max(), (right - left).max())), MARGIN),
            "b_layer2_more_recent_than_layer1":
                (float(recent[1] - recent[0]) if len(recent) > 1 else None, MARGIN),
            "c_layer1_attends_to_mask":
                (float(np.mean(stats["mask_column_mass"][0]) - stats["uniform_share"]), MARGIN),
            "d_attends_both_sides":
                (float(np.mean(stats["right_of_diagonal_mass"])), BOTH_SIDES_MIN)}


def stability(records):
    """Which claims hold throughout training and across seeds, which come and go.

    records: from ``attention_over_training`` (any number of runs and
    epochs). Only the checkpoints whose model learned (``skill["learned"]``)
    count. Returns {claim name: {"judged": n checkpoints, "holds": how many
    of them hold, "summary": text}} with the summary
        "stable: holds"          it holds at every judged checkpoint
        "stable: does not hold"  it holds at none
        "comes and goes"         it holds at some, not at others
        NOT_TRAINED              no checkpoint learned enough to judge
    """
    out = {}
    for name in (records[0]["observations"] if records else ()):
        judged = [r["observations"][name]["holds"] for r in records
                  if r["skill"]["learned"] and r["observations"][name]["holds"] is not None]
        n, yes = len(judged), int(sum(judged))
        summary = (NOT_TRAINED if n == 0 else "stable: holds" if yes == n
                   else "stable: does not hold" if yes == 0 else "comes and goes")
        out[name] = {"judged": n, "holds": yes, "summary": summary}
    return out


# ----------------------------------------------------------------------------
# 6. One user's attention, labelled with item titles
# ----------------------------------------------------------------------------


def sequence_attention(model, histories, k=10):
    """Each user's own attention over the last positions of its next-item input.

    model: a BERT4Rec; histories: list of B 1-D int arrays (item ids, oldest
    first). Each becomes ``model.next_item_input`` (last N-1 items + [MASK])
    and is encoded in eval mode. Returns a list of B pairs (A, ids):
        A    (L, H, w, w) float64, the block of queries AND keys over the last
             w = min(k, length) real positions (w-1 items and the [MASK]);
             rows sum to 1 less the weight on positions before the window
        ids  (w,) int64, the item ids of those positions (last = [MASK] id)
    """
    ids, last = model.next_item_input(list(histories))                    # (B, T), (B,)
    B, T = ids.shape
    lengths = last - np.arange(B) * T + 1                                  # [MASK] index + 1
    model.encode(ids, train=False)
    att = np.asarray(model.attention, dtype=np.float64)                   # (L, B, H, T, T)
    out = []
    for b, n in enumerate(lengths.tolist()):
        w = min(k, n)
        pos = np.arange(n - w, n)
        out.append((att[:, b][:, :, pos[:, None], pos[None, :]], ids[b, pos].copy()))
    return out


def _top_items(model, history, labels, n=3):
    """The model's n best next items after ``history`` (never padding, [MASK] or the history)."""
    scores = model.score_next([np.asarray(history)])[0].astype(np.float64)   # (V,)
    scores[[0, model.cfg.mask_id]] = -np.inf
    scores[np.asarray(history, dtype=np.int64)] = -np.inf
    return [labels[i] for i in np.argsort(-scores, kind="stable")[:n]]


def write_user_attention(model, history, labels, path, k=10, title=None):
    """One user's attention map over the last k positions, every layer and head, labelled.

    history: 1-D int array of the user's items (oldest first), e.g. the
    test input; labels: one label per vocabulary id (``data.item_labels``).
    Draws an L x H grid of (w, w) maps, w = min(k, len(history) + 1), whose
    ticks are the items' labels (the last is [MASK]). Returns the Figure
    (saved as a PNG at ``path`` when given).
    """
    from .plotting import show_heatmaps
    (A, ids), = sequence_attention(model, [history], k)
    L, H = A.shape[:2]
    names = [labels[i] for i in ids.tolist()]
    if title is None:
        title = f"Attention of one user: last {len(ids)} positions (rows: queries, columns: keys)"
    return show_heatmaps(A, row_titles=[f"layer {l + 1}" for l in range(L)],
                         col_titles=[f"head {h + 1}" for h in range(H)], tick_labels=names,
                         vmin=0.0, title=title, path=path,
                         figsize=(3.0 + 3.2 * H, 1.6 + 3.2 * L))


def mask_row_summary(A, ids, labels, n=3):
    """Per layer and head, the n keys the [MASK] query (the last row) weighs most, as text lines."""
    L, H = A.shape[:2]
    lines = []
    for l in range(L):
        for h in range(H):
            row = A[l, h, -1]
            top = np.argsort(-row, kind="stable")[:n]
            lines.append(f"layer {l + 1} head {h + 1}: " + ", ".join(
                f"{labels[ids[j]]} {row[j]:.2f}" for j in top))
    return lines


def titled_model(work_dir, dataset="ml-100k", run_dir=None, users=None, data_dir=None,
                 log=None, **settings):
    """A trained model whose items have titles, for labelled attention maps.

    run_dir: a finished run (its metrics.json written) to use as it is; when
        it is None or unfinished, a model is trained into ``work_dir``/run:
    dataset: a named data set with an item file (default MovieLens-100K, whose
        titles come from ``ml-100k.item``); users: keep only its first n users
        (written to ``work_dir`` as a RecBole .inter file, so a model trains in
        seconds); settings: TrainConfig fields (epochs, hidden, ...) on top of
        the data set's preset. Without the data set's file the synthetic data
        is used instead, labelled by item id (the message goes to ``log``).
    Returns (model, Dataset the model was trained on, labels (one per
    vocabulary id, ``data.item_labels``), run directory).
    """
    import os

    from .data import item_labels, item_titles, load_dataset
    from .runs import load_run
    from .settings import PRESETS, TrainConfig, dataset_of
    from .train import train
    quiet = log or (lambda *args: None)
    if run_dir is None or not os.path.exists(os.path.join(run_dir, "metrics.json")):
        try:
            full = load_dataset(dataset, data_dir)
        except FileNotFoundError as err:
            quiet(f"{err}\n-> training on the synthetic data instead: items are labelled by id")
            source, preset = "synthetic", {}
        else:
            source, preset = dataset, dict(PRESETS.get(dataset, {}))
            if users is not None and users < full.n_users:
                source = os.path.join(work_dir, f"{dataset}_{users}_users.inter")
                rows = ["user_id:token\titem_id:token\ttimestamp:float"]
                for u in range(users):
                    rows += [f"{full.raw_user_ids[u]}\t{raw}\t{t}" for t, raw in
                             enumerate(full.decode_items(full.sequences[u]))]
                with open(source, "w") as f:
                    f.write("\n".join(rows) + "\n")
        run_dir = os.path.join(work_dir, "run")
        train(TrainConfig(dataset=source, data_dir=data_dir, progress=False,
                          **{**preset, **settings}), run_dir, log=quiet, overwrite=True)
        titles = {} if source == "synthetic" else item_titles(dataset, data_dir)
    else:
        titles = None
    model, tcfg, _ = load_run(run_dir)
    ds = dataset_of(tcfg)
    if titles is None:
        titles = item_titles(tcfg.dataset, tcfg.data_dir)
    return model, ds, item_labels(ds, titles), run_dir


def widgets_available():
    """True inside a Jupyter front end that can show ipywidgets sliders.

    Needs ipywidgets, an IPython kernel and an inline or widget matplotlib
    backend. Headless runs (``MPLBACKEND=Agg``, as the notebook tests set)
    and plain Python get False: they draw one static map instead.
    """
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in shell.config:
        return False
    import matplotlib
    backend = matplotlib.get_backend().lower()
    return any(name in backend for name in ("inline", "widget", "ipympl", "nbagg"))


def explore_attention(model, histories, labels, names=None, k=10, interactive=None):
    """Sliders for layer, head and sequence over labelled attention maps.

    model: a BERT4Rec; histories: list of 1-D int arrays (e.g. a few test
    users' histories); labels: one label per vocabulary id
    (``data.item_labels``: item titles); names: one name per history (e.g.
    "user 196"), default "sequence i". For the chosen layer, head and
    sequence it draws the (w, w) map of the sequence's last w = min(k, len+1)
    positions, ticks = item titles, and lists the keys the [MASK] query
    weighs most and the model's top 3 next items.
    interactive: True = ipywidgets sliders; False = one static map (layer 1,
    head 1, sequence 1); None = sliders when ``widgets_available()``.
    Returns the ipywidgets object (interactive) or the static Figure.
    """
    import matplotlib.pyplot as plt

    from .plotting import show_heatmaps
    blocks = sequence_attention(model, histories, k)
    names = names or [f"sequence {i + 1}" for i in range(len(histories))]
    L, H = blocks[0][0].shape[:2]
    top = [_top_items(model, h, labels) for h in histories]

    def draw(layer=1, head=1, sequence=1):
        A, ids = blocks[sequence - 1]
        tick = [labels[i] for i in ids.tolist()]
        fig = show_heatmaps(A[layer - 1, head - 1], tick_labels=tick, vmin=0.0,
                            title=f"{names[sequence - 1]}: layer {layer}, head {head}",
                            figsize=(7.5, 6.5))
        row = A[layer - 1, head - 1, -1]
        best = np.argsort(-row, kind="stable")[:3]
        print("the [MASK] query attends most to: "
              + "; ".join(f"{tick[j]} ({row[j]:.2f})" for j in best))
        print("the model's top 3 next items:     " + "; ".join(top[sequence - 1]))
        return fig

    if interactive is None:
        interactive = widgets_available()
    if not interactive:
        fig = draw()
        plt.show()
        return fig
    import ipywidgets as widgets
    from IPython.display import display

    def show(layer, head, sequence):
        draw(layer, head, sequence)
        plt.show()

    ui = widgets.interactive(
        show,
        layer=widgets.IntSlider(1, 1, L, description="layer"),
        head=widgets.IntSlider(1, 1, H, description="head"),
        sequence=widgets.IntSlider(1, 1, len(histories), description="sequence"))
    display(ui)
    return ui


__all__ = ["last_k_sum", "last_k_attention", "collect_attention", "direction_shares",
           "head_difference", "recent_shares", "attention_stats", "observations", "verdict",
           "learned_enough", "describe_skill", "skill_of_run", "attention_over_training",
           "claim_numbers",
           "stability", "sequence_attention", "write_user_attention", "mask_row_summary",
           "explore_attention", "widgets_available", "titled_model",
           "window_labels", "write_attention_report", "RECENT", "BOTH_SIDES_MIN", "CAUSAL_MAX",
           "MARGIN", "ROW_TOL", "SKILL_METRIC", "SKILL_SAMPLED_MARGIN", "SKILL_FULL_MARGIN",
           "NOT_TRAINED", "NOT_CHECKED", "AGREES", "DISAGREES", "UNDECIDED"]
