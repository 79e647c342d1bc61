"""The transformer encoder block of BERT (post-LN), built from layers.py and attention.py.

Axis letters as in ``layers.py``: B batch, T positions, D width, F feed-forward width, H heads.

    a   = LN1(x + Dropout(MHA(x)))          attention sublayer     (B, T, D)
    out = LN2(a + Dropout(FFN(a)))          feed-forward sublayer  (B, T, D)
    FFN(a) = GELU(a W1 + b1) W2 + b2        D -> F -> D (F = 4 D)

"Post-LN": the LayerNorm comes AFTER the residual sum, as in the original
Transformer, BERT and the authors' BERT4Rec code (GPT-2 and most modern models
normalise before the sublayer instead, "pre-LN").

Block parameters (one dict per layer):
    Wq bq Wk bk Wv bv Wo bo     attention projections   (D, D) and (D,)
    ln1_g ln1_b                 LayerNorm after attention (D,)
    W1 b1                       (D, F) and (F,)
    W2 b2                       (F, D) and (D,)
    ln2_g ln2_b                 LayerNorm after the feed-forward (D,)
"""
from __future__ import annotations

from .attention import MHA_PARAMS, mha_backward, mha_forward
from .layers import (dropout_backward, dropout_forward, gelu_backward, gelu_forward,
                     layernorm_backward, layernorm_forward, linear_backward, linear_forward)

FFN_PARAMS = ("W1", "b1", "W2", "b2")
BLOCK_PARAMS = MHA_PARAMS + ("ln1_g", "ln1_b") + FFN_PARAMS + ("ln2_g", "ln2_b")


# ----------------------------------------------------------------------------
# 11. Position-wise feed-forward: the same two-layer MLP at every position
# ----------------------------------------------------------------------------


def ffn_forward(x, p, gelu="erf"):
    """x: (B, T, D), p: W1 (D, F), b1 (F,), W2 (F, D), b2 (D,) -> out (B, T, D).

    cache: (the first linear's cache, GELU's, the second linear's).
    """
    h, c1 = linear_forward(x, p["W1"], p["b1"])        # (B, T, F)
    g, c2 = gelu_forward(h, gelu)                       # (B, T, F)
    out, c3 = linear_forward(g, p["W2"], p["b2"])       # (B, T, D)
    return out, (c1, c2, c3)


def ffn_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D), grads {W1, b1, W2, b2}).

    forward: h = x W1 + b1 -> g = GELU(h) -> out = g W2 + b2; backwards, each
    layer's backward takes the gradient of its output and gives its input's.
    """
    c1, c2, c3 = cache
    dg, dW2, db2 = linear_backward(dout, c3)
    (dh,) = gelu_backward(dg, c2)
    dx, dW1, db1 = linear_backward(dh, c1)
    return dx, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


# ----------------------------------------------------------------------------
# 12a. The post-LN sublayer wrapper:  out = LN(x + Dropout(y)),  y = sublayer(x)
# ----------------------------------------------------------------------------


def residual_layernorm_forward(x, y, gamma, beta, dropout_p=0.0, rng=None, train=True, eps=1e-12):
    """x: (B, T, D) the sublayer's input, y: (B, T, D) its output -> LN(x + Dropout(y)).

    cache: (dropout's cache, LayerNorm's).
    """
    yd, dcache = dropout_forward(y, dropout_p, rng, train)
    out, lcache = layernorm_forward(x + yd, gamma, beta, eps)
    return out, (dcache, lcache)


def residual_layernorm_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D), dy (B, T, D), dgamma (D,), dbeta (D,)).

    forward: s = x + Dropout(y), out = LN(s); ds = LayerNorm's input gradient.
    The residual sum copies its gradient to both branches: dx gets ds directly,
    dy gets it through the dropout mask. The caller ADDS dx to the gradient
    that flows back through the sublayer itself.
    """
    dcache, lcache = cache
    ds, dgamma, dbeta = layernorm_backward(dout, lcache)
    (dy,) = dropout_backward(ds, dcache)
    return ds, dy, dgamma, dbeta


# ----------------------------------------------------------------------------
# 12b. The encoder block: attention sublayer, then feed-forward sublayer
# ----------------------------------------------------------------------------


def block_forward(x, p, H, mask=None, hidden_dropout=0.0, attention_dropout=0.0,
                  rng=None, train=True, gelu="erf", eps=1e-12):
    """One BERT encoder layer (eps: its two LayerNorms' epsilon).

    x: (B, T, D)   p: the block's parameters (see the module docstring)
    mask: additive attention mask broadcastable to (B, H, T, T), or None
    Returns (out (B, T, D), attention weights (B, H, T, T), cache).
    cache: (attention's, the first sublayer's, the FFN's, the second sublayer's).
    """
    att, weights, c_att = mha_forward(x, p, H, mask, attention_dropout, rng, train)
    a, c_ln1 = residual_layernorm_forward(x, att, p["ln1_g"], p["ln1_b"], hidden_dropout, rng, train, eps)
    f, c_ffn = ffn_forward(a, p, gelu)
    out, c_ln2 = residual_layernorm_forward(a, f, p["ln2_g"], p["ln2_b"], hidden_dropout, rng, train, eps)
    return out, weights, (c_att, c_ln1, c_ffn, c_ln2)


def block_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D), grads (same keys as the block's parameters)).

    The forward's four lines in reverse order, each through its own backward. Two
    tensors feed two places each (x: attention and the first residual; a: the FFN
    and the second residual), so their gradients are sums of two terms.
    """
    c_att, c_ln1, c_ffn, c_ln2 = cache
    # forward: out = LN2(a + Dropout(f)),  f = FFN(a)
    da, df, dln2_g, dln2_b = residual_layernorm_backward(dout, c_ln2)
    da_ffn, grads = ffn_backward(df, c_ffn)
    da = da + da_ffn                       # a feeds both the residual and the FFN
    # forward: a = LN1(x + Dropout(att)),  att = MHA(x)
    dx, datt, dln1_g, dln1_b = residual_layernorm_backward(da, c_ln1)
    dx_att, att_grads = mha_backward(datt, c_att)
    dx = dx + dx_att                       # x feeds both the residual and the attention
    grads.update(att_grads)
    grads.update(ln1_g=dln1_g, ln1_b=dln1_b, ln2_g=dln2_g, ln2_b=dln2_b)
    return dx, grads
