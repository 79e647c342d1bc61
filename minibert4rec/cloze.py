"""The cloze task: how BERT4Rec turns user histories into training batches.

BERT4Rec learns like BERT: hide some items of a sequence behind a [MASK]
token and predict them from BOTH sides. Following the authors' code
(gen_data_fin.py):

1. Each user's training sequence (it ends with the validation item) is cut
   into windows of at most N items; a sequence longer than N gives several
   windows (sliding windows, as the authors' gen_data_fin.py: ending at its
   last item and every ``step`` items before it, plus one starting at its first).
2. Every epoch, each window yields ``copies`` + 1 instances:
   - ``copies`` cloze instances, each with its own random mask of
     k = min(max_predictions, max(1, round(len * mask_ratio))) positions chosen
     uniformly at random, each replaced by [MASK] (the authors always use
     [MASK], no BERT-style 80/10/10 replacement);
   - a "mask-last" instance: only the LAST item is masked. This is exactly the
     test task (predict what comes after the history), so training sees it.
   Masks are re-drawn every epoch. The authors pre-generate 10 cloze copies
   per window once (dupe_factor 10) plus one mask-last instance, so only 1
   instance in 11 is a mask-last one; ``copies=10`` (the Beauty and MovieLens
   presets in settings.py) gives that mix. With 1 + 1, half of all instances ask
   for the last item, in training the validation item, and on Beauty the model
   learned those by heart and stopped improving on test (docs/beauty.md, "What the
   10 + 1 mix changes").
3. Instances are batched; padding (id 0) sits on the right and is never masked.

Shapes: I instances, N max length, B batch, T the longest length in a batch,
M masked positions in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def make_windows(sequences, max_len, step):
    """Cut sequences into windows of at most ``max_len`` items.

    sequences: list of int arrays;  step: distance between window starts (>= 1)
    Returns (windows (W, N) int64 right-padded with 0, lengths (W,) int64).
    A sequence of length n <= N gives one window; a longer one gives, as the
    authors' gen_data_fin.py, the windows that END at n, n - step, n - 2 step,
    ... (while they start after 0), plus the one starting at 0, in order of
    position: n = 57, N = 50, step 5 -> starts 0, 2, 7.
    """
    step = max(1, int(step))
    rows = []
    for s in sequences:
        n = len(s)
        if n <= max_len:
            rows.append(s)
            continue
        starts = [0] + list(range(n - max_len, 0, -step))[::-1]
        rows.extend(s[a:a + max_len] for a in starts)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    windows = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, r in enumerate(rows):
        windows[i, :len(r)] = r
    return windows, lengths


def cloze_masks(lengths, max_len, mask_ratio, max_predictions, rng):
    """Choose the masked positions of every window at once (no Python loop).

    lengths: (W,) window lengths  ->  (W, N) bool, True = masked.
    Row i has exactly k_i = min(max_predictions, max(1, round(len_i * ratio)))
    True entries, uniformly among its first len_i positions. round() takes
    halves to even (np.rint, as Python 3's round); Python 2 rounded them up,
    which no preset's ratio x length can tell apart (0.6, 0.2, 0.4 never give
    a half).
    """
    W = len(lengths)
    k = np.minimum(max_predictions, np.maximum(1, np.rint(lengths * mask_ratio))).astype(np.int64)
    k = np.minimum(k, lengths)
    keys = rng.random((W, max_len))                                    # (W, N) random priorities
    keys[np.arange(max_len)[None, :] >= lengths[:, None]] = np.inf     # padding is never chosen
    # argsort gives the positions in key order; argsort of THAT gives each position's rank
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)                # (W, N) 0 = smallest key
    return rank < k[:, None]


def mask_last(lengths, max_len):
    """(W, N) bool with only each window's last item masked (the test task)."""
    m = np.zeros((len(lengths), max_len), dtype=bool)
    m[np.arange(len(lengths)), lengths - 1] = True
    return m


@dataclass
class Batch:
    ids: np.ndarray        # (B, T) inputs, [MASK] at the masked positions, 0 = padding
    sel: np.ndarray        # (M,) flat indices b * T + t of the masked positions
    targets: np.ndarray    # (M,) the true items behind the masks
    lengths: np.ndarray    # (B,)


class ClozeSampler:
    """Yields an epoch of cloze batches; masks re-drawn every epoch from ``rng``.

    sequences: training sequences (list of int arrays, item ids >= 1)
    max_len N, mask_ratio, max_predictions, sliding_step: the authors' settings
    mask_id: the [MASK] token's id (n_items + 1)
    copies: cloze instances per window per epoch (the authors' dupe_factor is 10)
    """

    def __init__(self, sequences, max_len, mask_ratio, max_predictions, sliding_step, mask_id,
                 mask_last_instances=True, copies=1):
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.windows, self.lengths = make_windows(sequences, max_len, sliding_step)
        self.max_len, self.mask_ratio, self.max_predictions = max_len, mask_ratio, max_predictions
        self.mask_id, self.mask_last_instances = mask_id, mask_last_instances
        self.copies = int(copies)

    @property
    def n_instances(self) -> int:
        """Instances per epoch: ``copies`` cloze instances of every window, plus one
        mask-last instance each when ``mask_last_instances``."""
        return len(self.lengths) * (self.copies + (1 if self.mask_last_instances else 0))

    def epoch(self, batch_size, rng, bucket=50):
        """Yield the batches of one epoch (a generator of Batch).

        Instances are shuffled, then sorted by length inside groups of
        ``bucket`` batches, so each batch is trimmed to a similar length T
        (little padding); the order of the batches is shuffled again.
        """
        masks = [cloze_masks(self.lengths, self.max_len, self.mask_ratio, self.max_predictions, rng)
                 for _ in range(self.copies)]
        if self.mask_last_instances:
            masks.append(mask_last(self.lengths, self.max_len))
        n_copies = len(masks)                     # instances per window this epoch
        masks = np.concatenate(masks)                                  # (I, N)
        windows = np.tile(self.windows, (n_copies, 1))                 # (I, N)
        lengths = np.tile(self.lengths, n_copies)                      # (I,)
        order = rng.permutation(len(lengths))
        group = batch_size * max(1, bucket)
        batches = []
        for g in range(0, len(order), group):
            chunk = order[g:g + group]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            T = int(lengths[idx].max())
            x = windows[idx, :T]                                       # (B, T)
            m = masks[idx, :T]                                         # (B, T)
            sel = np.flatnonzero(m)                                    # (M,)
            yield Batch(np.where(m, self.mask_id, x), sel, x.reshape(-1)[sel], lengths[idx])

    def n_batches(self, batch_size, bucket=50) -> int:
        """The number of batches one epoch yields: each group of bucket x batch_size
        instances is cut into batches on its own, so only the last group's last batch
        can be short."""
        group = batch_size * max(1, bucket)
        n = self.n_instances
        full, rest = divmod(n, group)
        return full * -(-group // batch_size) + -(-rest // batch_size)   # -(-a // b) = ceil(a / b)
