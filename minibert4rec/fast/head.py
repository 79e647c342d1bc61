"""The fused, tiled output head: the fast path's version of ``model.output_loss``.

On Beauty the (M, V) block of logits (V = 54,544 vocabulary ids) is where a
BERT4Rec training step spends ~85 % of its time. ``fused_output_loss``
computes what the reference ``model.output_loss`` computes (the loss and the
gradients of n, E and out_bias; the same numbers up to rounding, tested), with
three tricks the reference leaves out:

1. one pass instead of many: the reference forms the logits, the
   probabilities and dlogits (three M x V arrays) and walks over them again
   and again; here the vocabulary is cut into cache-sized tiles, each tile's
   logits are written once, exponentiated in place while in the cache, and
   read back once for dE. Probabilities and dlogits are never formed, and at
   most ``chunk`` x V exponentiated logits exist at a time;
2. the tiles are shared by two Python threads with one BLAS thread each
   (``threads.run_split_blas``): the skinny products here keep two BLAS
   threads half idle, and the exp between them would run on one core. This
   needs OpenBLAS with a short spin (``threads.prefer_short_blas_spin``) and
   ``threads.SPLIT_THREADS`` > 1; otherwise the tiles run on one thread;
3. the logits live in one reused scratch buffer (fresh memory is slow to
   touch: the kernel maps every page on first use).

Same arguments as ``model.output_loss`` (plus the tiling knobs).
"""
from __future__ import annotations

import numpy as np

from ..model import LOSS_EPS
from .threads import run_split_blas

EXP_SAFE = 60.0   # |logit| bound below which exp() needs no max-subtraction (e^60 * V << float32 max)
TILE_ELEMENTS = 1 << 18   # logits per tile of the fused head: 1 MB of float32, stays in the cache
HEAD_GROUPS = 2           # the head's tiles in this many groups, one per thread (fast.threads.run_split_blas)


def head_tiles(m, V, tile=TILE_ELEMENTS):
    """How the fused head cuts the vocabulary for a chunk of m rows.

    Returns (tiles, groups): ``tiles`` are column slices of about ``tile / m``
    columns (a multiple of 64 when wider than 64, BLAS-aligned), so one
    (m, width) block of logits stays in the cache; ``groups`` are HEAD_GROUPS
    contiguous ranges of tile indices (at most HEAD_GROUPS), one per thread (run_split_blas).
    """
    width = max(1, tile // m)
    width -= width % 64 if width > 64 else 0
    tiles = [slice(v, min(v + width, V)) for v in range(0, V, width)]
    k = -(-len(tiles) // HEAD_GROUPS)
    groups = [range(g, min(g + k, len(tiles))) for g in range(0, len(tiles), k)]
    return tiles, groups


def fused_output_loss(n, E, out_bias, targets, weights=None, chunk=1024, tile=TILE_ELEMENTS):
    """model.output_loss, fused: logits, loss AND their gradients, tile by tile.

    n: (M, D)  E: (V, D)  out_bias: (V,)  targets: (M,)  weights: (M,) or None
    Returns loss, dn (M, D), dE (V, D), dout_bias (V,)  (gradients for dloss = 1).

    The same numbers as the reference ``model.output_loss`` (tied_logits_forward
    -> cross_entropy_forward -> their backwards), up to rounding, but arranged
    so that the big block of logits is touched as few times as possible; with
    V = 54,544 that block, not the encoder, is
    where a BERT4Rec step spends its time. Rows are taken ``chunk`` at a time
    (memory: chunk x V logits at most). For a chunk of m rows, the vocabulary
    is cut into tiles of ``width`` columns (m x width ~ ``tile`` elements,
    small enough to stay in the cache), and for every tile:

      z   = [n | 1] @ [E | b]^T          logits, bias folded into the matmul  (m, width)
      z   = exp(z)                       in place, while the tile is in the cache
      [zE | total] += z @ [E | 1]        one matmul adds z E and the row sums (m, D+1)

    Then, once the row sums are known, with per-row a = w / (denom * total) and
    c = w / denom (w the slot's weight), the gradient
    dlogits = a * z - c * onehot(target) is never formed:

      dn  = a * zE - c * E[target]                                          (m, D)
      [dE | db] = z^T @ [a n | a], tile by tile, minus c [n | 1] at the target rows

    so z is written once by BLAS, exponentiated in the cache and read back
    once. The tiles fall into HEAD_GROUPS groups that two threads work through
    side by side, one BLAS thread each (fast.threads.run_split_blas): these skinny
    products (one side D + 1 = 65 wide) keep two BLAS threads half idle, and
    the exp between them would otherwise run on one core. exp() needs no
    max-subtraction when every logit is bounded (checked per chunk; otherwise
    a first pass computes the logits and each row's maximum). llm.c calls this
    a fused classifier. Not thread-safe: the logits live in one module-level
    buffer reused between calls.
    """
    M, D = n.shape
    V = E.shape[0]
    dtype = n.dtype
    if M == 0:
        return 0.0, np.zeros_like(n), np.zeros_like(E), np.zeros_like(out_bias)
    if weights is None:
        weights = np.ones(M, dtype=dtype)
    denom = weights.sum() + LOSS_EPS
    c_all = (weights / denom).astype(dtype)                                  # (M,)
    Eb = np.concatenate([E, out_bias[:, None]], axis=1)                      # (V, D+1) [E | b]
    E1 = np.concatenate([E, np.ones((V, 1), dtype)], axis=1)                 # (V, D+1) [E | 1]
    n1 = np.concatenate([n, np.ones((M, 1), dtype)], axis=1)                 # (M, D+1) [n | 1]
    # exp() is safe without subtracting the row max when every logit is
    # bounded by EXP_SAFE (Cauchy-Schwarz: |n.E_j + b_j| <= |n| max|E_j| + max|b|):
    # then no exp overflows, and the target's own exp (>= e^-60) keeps the row sum
    # from underflowing.
    e_max = float(np.sqrt((E * E).sum(axis=1)).max())
    b_max = float(np.abs(out_bias).max())
    target_logits = np.einsum("md,md->m", n1, Eb[targets])                   # (M,)
    dn = np.empty_like(n)
    dEb = np.empty_like(Eb)                                                  # (V, D+1) [dE | db]
    loss = 0.0
    for s in range(0, M, chunk):
        rows = slice(s, min(s + chunk, M))
        m = rows.stop - rows.start
        n1_c, c = n1[rows], c_all[rows]
        # The tiles fall into HEAD_GROUPS contiguous groups, each with its own
        # partial sums; the groups run side by side on two threads (one BLAS
        # thread each) when there are two, one after the other otherwise: the
        # same sums, in the same order, either way.
        tiles, groups = head_tiles(m, V, tile)
        buf = _logits_buffer(m * V, dtype)                                   # the (m, V) logits
        z_of = [buf[m * t.start:m * t.stop].reshape(m, t.stop - t.start) for t in tiles]

        def each_tile(step):                                                 # step(g, i): group g, tile i
            run_split_blas(lambda part: [step(g, i) for g in part for i in groups[g]],
                           range(len(groups)))

        shift = None                                                         # (m,) row maxima
        if np.linalg.norm(n[rows], axis=1).max() * e_max + b_max > EXP_SAFE:
            maxima = np.full((len(groups), m), -np.inf, dtype)

            def logits_and_maxima(g, i):
                np.matmul(n1_c, Eb[tiles[i]].T, out=z_of[i])
                np.maximum(maxima[g], z_of[i].max(axis=1), out=maxima[g])

            each_tile(logits_and_maxima)
            shift = maxima.max(axis=0)
        partial = np.zeros((len(groups), m, D + 1), dtype)                   # [z E | row sums] per group

        def exp_and_sums(g, i):
            z = z_of[i]
            if shift is None:
                np.matmul(n1_c, Eb[tiles[i]].T, out=z)                       # (m, width)
            else:
                z -= shift[:, None]                                          # logits already there
            np.exp(z, out=z)                                                 # unnormalised probs
            partial[g] += z @ E1[tiles[i]]

        each_tile(exp_and_sums)
        zE1 = partial.sum(axis=0)                                            # (m, D+1)
        total = zE1[:, D]                                                    # (m,) row sums
        log_p_t = target_logits[rows] - np.log(total) - (0 if shift is None else shift)
        loss -= float(np.dot(c, log_p_t))
        # softmax is unchanged by a shift: with z = exp(logit - s), p = z / total all
        # the same, so a = c / total holds with or without the shift; only the log of
        # the target's probability needs s back (log_p_t above)
        a = c / total                                                        # (m,)
        dn[rows] = a[:, None] * zE1[:, :D] - c[:, None] * E[targets[rows]]
        na = n1_c * a[:, None]                                               # (m, D+1)

        def tile_gradients(g, i):
            t, z = tiles[i], z_of[i]
            if s == 0:
                np.matmul(z.T, na, out=dEb[t])                               # (width, D+1)
            else:
                dEb[t] += z.T @ na

        each_tile(tile_gradients)
        np.add.at(dEb, targets[rows], -(c[:, None] * n1_c))                  # the one-hot part
    return loss, dn, dEb[:, :D].copy(), dEb[:, D].copy()


_BUFFER = {}


def _logits_buffer(size, dtype):
    """A reused flat scratch block of ``size`` elements for the logits tiles.

    Writing into fresh memory is slow (the operating system maps every page
    on first touch: ~40 % of the logits matmul here), so the block is kept
    between calls: ONE buffer per dtype, grown to the largest chunk x V seen.
    """
    buf = _BUFFER.get(np.dtype(dtype))
    if buf is None or buf.size < size:
        buf = _BUFFER[np.dtype(dtype)] = np.empty(max(size, 1), dtype=dtype)
    return buf[:size]
