"""Attention: scaled dot-product attention and multi-head attention.

Axis letters as in ``layers.py``: B batch, H heads, T positions (Tq queries,
Tk keys), D model width, Dh = D // H the width of one head.

Scaled dot-product attention (layer 9 of the teaching order; 1-8 are in layers.py)
    scores  = Q K^T / sqrt(Dh)                  (B, H, Tq, Tk)
    weights = softmax(scores + mask) over keys  (B, H, Tq, Tk), rows sum to 1
    out     = Dropout(weights) V                (B, H, Tq, Dh)

Multi-head attention (layer 10)
    Q, K, V = x Wq + bq, x Wk + bk, x Wv + bv  (B, T, D) each, split into H heads of Dh
    heads   = attention(Q, K, V)               (B, H, T, Dh)
    out     = concat(heads) Wo + bo            (B, T, D)

No Python loop over batch or heads: heads are an array axis, and ``@`` on
4-D arrays multiplies all (B, H) pairs of matrices at once.
"""
from __future__ import annotations

import math

from .layers import (dropout_backward, dropout_forward, linear_backward, linear_forward,
                     masked_softmax_backward, masked_softmax_forward)


# ----------------------------------------------------------------------------
# 9. Scaled dot-product attention
# ----------------------------------------------------------------------------


def attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, train=True):
    """Scaled dot-product attention.

    q: (B, H, Tq, Dh)   k, v: (B, H, Tk, Dh)
    mask: additive, broadcastable to (B, H, Tq, Tk) (see ``layers.additive_mask``), or None
    dropout_p: dropout on the attention weights (the authors use 0.2 when training)

    Returns (out (B, H, Tq, Dh), weights (B, H, Tq, Tk), cache). ``weights`` are
    the probabilities BEFORE dropout: what the heat-maps show.
    cache: (q, k, v, dropped (the weights after dropout), the softmax's cache,
    dropout's cache, scale).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.swapaxes(-1, -2)) * scale                 # (B, H, Tq, Tk)
    weights, sm_cache = masked_softmax_forward(scores, mask)  # (B, H, Tq, Tk)
    dropped, drop_cache = dropout_forward(weights, dropout_p, rng, train)
    out = dropped @ v                                         # (B, H, Tq, Dh)
    return out, weights, (q, k, v, dropped, sm_cache, drop_cache, scale)


def attention_backward(dout, cache):
    """dout: (B, H, Tq, Dh) -> (dq (B, H, Tq, Dh), dk (B, H, Tk, Dh), dv (B, H, Tk, Dh)).

    The forward, read backwards, one line at a time (for every (b, h) pair):
      out = dropped @ v          ->  d_dropped = dout v^T,   dv = dropped^T dout
      dropped = dropout(weights) ->  dweights = dropout_backward(d_dropped)
      weights = softmax(scores + mask) -> dscores = weights * (dweights - rowsum(dweights * weights))
      scores = q k^T * scale     ->  dq = dscores k * scale,  dk = dscores^T q * scale
    The mask is a constant and gets no gradient.
    """
    q, k, v, dropped, sm_cache, drop_cache, scale = cache
    # forward: out = dropped @ v
    d_dropped = dout @ v.swapaxes(-1, -2)                     # (B, H, Tq, Tk)
    dv = dropped.swapaxes(-1, -2) @ dout                      # (B, H, Tk, Dh)
    # forward: dropped = dropout(weights); weights = softmax(scores + mask)
    (dweights,) = dropout_backward(d_dropped, drop_cache)
    (dscores,) = masked_softmax_backward(dweights, sm_cache)  # (B, H, Tq, Tk)
    # forward: scores = (q @ k^T) * scale
    dscores *= scale
    dq = dscores @ k                                          # (B, H, Tq, Dh)
    dk = dscores.swapaxes(-1, -2) @ q                         # (B, H, Tk, Dh)
    return dq, dk, dv


# ----------------------------------------------------------------------------
# 10. Multi-head attention: split the width into heads, attend, merge them back
# ----------------------------------------------------------------------------


def split_heads(x, H):
    """(B, T, D) -> (B, H, T, Dh): head h owns columns h*Dh ... (h+1)*Dh - 1."""
    B, T, D = x.shape
    return x.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, Dh) -> (B, T, D), the inverse of ``split_heads`` (concatenation).

    A transpose and a reshape: numbers move, none is computed, so the gradient
    of one is the other applied to the upstream gradient.
    """
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)


MHA_PARAMS = ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")


def mha_forward(x, p, H, mask=None, dropout_p=0.0, rng=None, train=True):
    """Multi-head self-attention.

    x: (B, T, D)
    p: dict with Wq, Wk, Wv, Wo (D, D) and bq, bk, bv, bo (D,)
    H: number of heads (D must be divisible by H)
    mask: additive mask, broadcastable to (B, H, T, T), or None

    Returns (out (B, T, D), weights (B, H, T, T), cache).
    cache: (the q, k and v projections' linear caches, attention's cache, the
    output projection's cache, H).
    """
    B, T, D = x.shape
    if D % H:
        raise ValueError(f"model width D={D} is not divisible by the number of heads H={H}")
    q, c_q = linear_forward(x, p["Wq"], p["bq"])                       # (B, T, D) each
    k, c_k = linear_forward(x, p["Wk"], p["bk"])
    v, c_v = linear_forward(x, p["Wv"], p["bv"])
    q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)  # (B, H, T, Dh) each
    heads, weights, att_cache = attention_forward(q, k, v, mask, dropout_p, rng, train)
    concat = merge_heads(heads)                                        # (B, T, D)
    out, c_o = linear_forward(concat, p["Wo"], p["bo"])                # (B, T, D)
    return out, weights, (c_q, c_k, c_v, att_cache, c_o, H)


def mha_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D), grads {Wq, bq, Wk, bk, Wv, bv, Wo, bo}).

    Backwards through the forward, one line at a time:
      out = concat Wo + bo            -> linear_backward gives dconcat, dWo, dbo
      concat = merge_heads(heads)     -> a pure re-arrangement of numbers: its gradient
                                         is the inverse re-arrangement, split_heads(dconcat)
      heads = attention(q, k, v)      -> attention_backward gives dq, dk, dv per head
      q = split_heads(x Wq + bq), ... -> merge the heads back, then each projection's
                                         linear_backward; x fed all three, so dx is their sum
    (dbk is exactly 0: the terms q.bk add the same constant to a whole row of
    scores, which softmax ignores. A finite-difference check sees only round-off there.)
    """
    c_q, c_k, c_v, att_cache, c_o, H = cache
    dconcat, dWo, dbo = linear_backward(dout, c_o)                     # (B, T, D)
    dheads = split_heads(dconcat, H)                                   # (B, H, T, Dh)
    dq, dk, dv = attention_backward(dheads, att_cache)                 # (B, H, T, Dh) each
    dx_q, dWq, dbq = linear_backward(merge_heads(dq), c_q)             # (B, T, D)
    dx_k, dWk, dbk = linear_backward(merge_heads(dk), c_k)
    dx_v, dWv, dbv = linear_backward(merge_heads(dv), c_v)
    dx = dx_q + dx_k + dx_v
    grads = {"Wq": dWq, "bq": dbq, "Wk": dWk, "bk": dbk, "Wv": dWv, "bv": dbv,
             "Wo": dWo, "bo": dbo}
    return dx, grads
