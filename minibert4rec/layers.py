"""The building blocks of a transformer, each as a forward/backward pair.

Every layer is two plain functions, in the style of Stanford's CS231n:

    out, cache = thing_forward(x, params..., options...)
    grads      = thing_backward(dout, cache)

``forward`` computes the output and keeps in ``cache`` exactly what the
backward pass needs. ``backward`` receives the upstream gradient ``dout``
(dLoss/dout, same shape as ``out``) and returns the vector-Jacobian product.

The one return convention of every backward in this package
-----------------------------------------------------------
A backward returns a TUPLE with one gradient per differentiable input of its
forward, in the order the forward takes them: ``linear_backward`` gives
``(dx, dW, db)``, ``gelu_backward`` gives ``(dx,)`` (a tuple of one, so every
call reads ``(dx,) = ...``). Integer ids, masks, options and fixed tables get
no gradient. Where the forward takes a dict of parameters (attention, the
encoder block), its gradient is a dict with the same keys: ``(dx, dparams)``.
Forwards return ``(out, cache)``; the attention layers return
``(out, weights, cache)``, the attention weights being what the heat-maps show.

The layers, in the order a course meets them
--------------------------------------------
    1. linear                     out = x W + b
    2. softmax                    over the last axis
    3. masked softmax             softmax(scores + additive mask), for attention
    4. LayerNorm                  normalise each row, then scale and shift
    5. GELU                       x * Phi(x), the smooth ReLU of BERT
    6. dropout                    inverted dropout
    7. embedding lookup           rows of a table, repeated ids add up
    8. positional encodings       a learned table, or the fixed sinusoidal one

Axis letters (used in every shape comment of the package)
---------------------------------------------------------
    B   batch size (sequences in a batch)
    T   positions in a sequence (T <= N, the maximum length)
    N   maximum sequence length (rows of the position table)
    D   model width (hidden size)
    H   attention heads;   Dh = D // H, the width of one head
    F   feed-forward width (4 D in BERT)
    V   vocabulary size: 0 = padding, items 1..n_items, then [MASK]
    M   number of gathered (masked) positions in a batch
    L   encoder layers

Every function is plain whole-array NumPy and works in float32 (training) and
float64 (gradient checks): the output dtype follows the input dtype. The
speed tricks of training (a fused output head, thread and memory settings)
live apart in ``minibert4rec.fast``, tested equal; nothing here imports them.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

# ----------------------------------------------------------------------------
# 1. Linear (dense) layer: out = x W + b
# ----------------------------------------------------------------------------


def linear_forward(x, W, b):
    """Affine map applied to the last axis.

    x: (..., Din)   W: (Din, Dout)   b: (Dout,)   ->   out: (..., Dout)
    cache: (x, W), the two factors the backward multiplies dout by.
    """
    x2 = x.reshape(-1, x.shape[-1])                 # (R, Din): every leading index is a row
    out = (x2 @ W + b).reshape(*x.shape[:-1], W.shape[1])   # one matrix product for all rows
    return out, (x, W)


def linear_backward(dout, cache):
    """dout: (..., Dout) -> (dx (..., Din), dW (Din, Dout), db (Dout,)).

    forward:  out[r, j] = sum_i x[r, i] W[i, j] + b[j]      (r runs over every leading index)
      dx[r, i] = sum_j dout[r, j] W[i, j]   ->  dx = dout W^T
      dW[i, j] = sum_r x[r, i] dout[r, j]   ->  dW = x^T dout, summed over every row r
      db[j]    = sum_r dout[r, j]           ->  b is added to every row
    """
    x, W = cache
    x2 = x.reshape(-1, x.shape[-1])                 # (R, Din): all leading axes as rows
    d2 = dout.reshape(-1, dout.shape[-1])           # (R, Dout)
    dx = (d2 @ W.T).reshape(x.shape)                # (..., Din)
    dW = x2.T @ d2                                  # (Din, Dout)
    db = d2.sum(axis=0)                             # (Dout,)
    return dx, dW, db


# ----------------------------------------------------------------------------
# 2. Softmax over the last axis (numerically stable)
# ----------------------------------------------------------------------------


def softmax_forward(x):
    """y = softmax(x) over the last axis.   x: (..., K) -> y: (..., K), rows sum to 1.

    Subtracting the row maximum first changes nothing mathematically
    (softmax(x) = softmax(x - c)) and keeps exp() from overflowing.
    cache: y itself: softmax's gradient needs only its output.
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))   # (..., K), in [0, 1]: 1 at the maximum,
                                                    # 0 where exp underflows (masked keys)
    y = e / e.sum(axis=-1, keepdims=True)           # (..., K)
    return y, y


def softmax_backward(dout, cache):
    """dout: (..., K) -> (dx (..., K),).

    forward:  y_j = exp(x_j) / sum_k exp(x_k)
      dy_j / dx_i = y_j (delta_ij - y_i)           (the Jacobian diag(y) - y y^T)
      dx_i = sum_j dout_j y_j (delta_ij - y_i) = y_i (dout_i - sum_j dout_j y_j)
    """
    y = cache
    dx = y * (dout - np.sum(dout * y, axis=-1, keepdims=True))
    return (dx,)


# ----------------------------------------------------------------------------
# 3. The masked softmax of attention, and the additive mask it uses
# ----------------------------------------------------------------------------

MASK_VALUE = -10000.0   # the authors' additive mask for padded keys


def additive_mask(key_mask, causal=False, dtype=np.float32):
    """Build the additive attention mask from a padding mask (and causality).

    key_mask: (B, Tk) bool, True = a real key, False = padding (may be None)
    returns:  (B, 1, T, T) with causal=True, (B, 1, 1, Tk) without, or None when both are absent

    A masked entry gets MASK_VALUE (-10000, as the authors), the rest 0. The
    mask is ADDED to the scores, so exp() makes masked weights ~ e^-10000 = 0.
    With causal=True query t may only see keys <= t (left-to-right, SASRec-style).
    """
    if key_mask is None and not causal:
        return None
    allowed = None                                              # True = may attend
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]                    # (B, 1, 1, Tk)
    if causal:
        if key_mask is None:
            raise ValueError("causal masking needs the sequence length: pass key_mask")
        T = key_mask.shape[1]
        tril = np.tril(np.ones((T, T), dtype=bool))             # (T, T): key <= query
        allowed = allowed & tril[None, None]                    # (B, 1, T, T)
    return np.where(allowed, 0.0, MASK_VALUE).astype(dtype)


def masked_softmax_forward(scores, mask):
    """softmax(scores + mask) over the last (key) axis.

    scores: (B, H, Tq, Tk)   mask: additive, broadcastable to scores, or None
    ->  weights: (B, H, Tq, Tk)

    A row whose keys are ALL masked does not produce NaN: every entry is
    shifted by the same -10000, which the max-subtraction removes, so the row
    becomes (up to float32's rounding of scores - 10000) the ordinary softmax of
    its raw scores (it attends over the padded keys). Such rows only occur for
    padded queries, whose outputs never reach the loss. (With -inf instead of
    -10000 they would be 0/0 = NaN.)
    cache: softmax's, the weights themselves.
    """
    z = scores if mask is None else scores + mask
    return softmax_forward(z)


def masked_softmax_backward(dout, cache):
    """dout: (B, H, Tq, Tk) -> (dscores (B, H, Tq, Tk),).

    forward:  weights = softmax(scores + mask); the mask is a constant, so
    d(scores + mask)/dscores = 1 and the gradient is softmax's.
    """
    return softmax_backward(dout, cache)


# ----------------------------------------------------------------------------
# 4. LayerNorm over the last axis (biased variance, eps inside the sqrt)
# ----------------------------------------------------------------------------


def layernorm_forward(x, gamma, beta, eps=1e-12):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over the last axis.

    x: (..., D)   gamma, beta: (D,)   ->   out: (..., D)

    As BERT (and the authors' TensorFlow code): variance is the biased one
    (divide by D, not D - 1) and eps = 1e-12 sits inside the square root.
    cache: (xhat (..., D), rstd (..., 1), gamma (D,)): all the backward needs.
    """
    mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)
    xc = x - mean                                          # (..., D)
    var = np.mean(xc * xc, axis=-1, keepdims=True)         # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)                        # (..., 1)
    xhat = xc * rstd                                       # (..., D)
    out = xhat * gamma + beta                              # (..., D)
    return out, (xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """dout: (..., D) -> (dx (..., D), dgamma (D,), dbeta (D,)).

    forward:  xhat = (x - mean) * rstd,  rstd = (var + eps)^-1/2,  out = gamma * xhat + beta
      dbeta  = sum over rows of dout;   dgamma = sum over rows of dout * xhat
      g = dout * gamma is the gradient reaching xhat. xhat depends on x directly,
      through the mean (d mean / dx_i = 1/D) and through rstd
      (d rstd / dx_i = -rstd^3 (x_i - mean) / D = -rstd^2 xhat_i / D). Adding the three:
      dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    """
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)      # (D,)
    dbeta = dout.reshape(-1, D).sum(axis=0)                # (D,)
    g = dout * gamma                                       # (..., D)  dL/dxhat
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------
# 5. GELU: exact (erf, the authors') or the tanh approximation (GPT-2)
# ----------------------------------------------------------------------------

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x, approximate="erf"):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF.   x: (...) -> out: (...)

    approximate="erf":  Phi(x) = 0.5 (1 + erf(x / sqrt 2))            (exact; BERT4Rec)
    approximate="tanh": Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2)
    The cache keeps x and the CDF (or the tanh), which the backward reuses.
    """
    if approximate == "erf":
        cdf = 0.5 * (1.0 + erf(x / _SQRT_2))                                    # Phi(x)
        return x * cdf, ("erf", x, cdf)
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))
        return 0.5 * x * (1.0 + t), ("tanh", x, t)
    raise ValueError(f"unknown GELU form {approximate!r}: use 'erf' or 'tanh'")


def gelu_backward(dout, cache):
    """dout: (...) -> (dx (...),).

    erf:  d/dx [x Phi(x)] = Phi(x) + x pdf(x),   pdf(x) = exp(-x^2/2) / sqrt(2 pi)
          (the product rule; the derivative of the CDF is the density)
    tanh: with u = sqrt(2/pi) (x + 0.044715 x^3) and t = tanh(u),
          d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,
          du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    kind, x, s = cache
    if kind == "erf":
        cdf = s
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        return (dout * (cdf + x * pdf),)
    t = s
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return (dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx),)


# ----------------------------------------------------------------------------
# 6. Dropout (inverted: scale by 1/(1-p) at training time, identity at eval)
# ----------------------------------------------------------------------------


def dropout_forward(x, p, rng=None, train=True):
    """Zero each element with probability p and scale the survivors by 1/(1-p).

    x: (...) -> out: (...). ``rng`` is a ``numpy.random.Generator`` (seeded by
    the caller, so runs repeat exactly). In eval mode, or with p = 0, it is the
    identity and consumes no random numbers (the cache is then None).
    cache: (keep, scale): keep (...) bool, True where x survived; scale = 1/(1-p).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not train or p == 0.0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training mode needs a random generator: pass rng "
                         "(numpy.random.default_rng(seed)) or train=False")
    keep = rng.random(x.shape, dtype=np.float32) >= p              # (...) bool, True = kept
    scale = x.dtype.type(1.0 / (1.0 - p))
    return x * keep * scale, (keep, scale)                          # 0 or x / (1-p)


def dropout_backward(dout, cache):
    """dout: (...) -> (dx (...),).

    forward:  out = x * keep * scale, so dx = dout * keep * scale: the same
    elements are dropped and the survivors scaled by the same 1/(1-p).
    """
    if cache is None:
        return (dout,)
    keep, scale = cache
    return (dout * keep * scale,)


# ----------------------------------------------------------------------------
# 7. Item embedding lookup (with a padding id)
# ----------------------------------------------------------------------------


def embedding_forward(ids, table, padding_id=None):
    """Look up one row of ``table`` per id.

    ids: (...) int   table: (V, D)   ->   out: (..., D)

    If ``padding_id`` is given, positions holding it produce a zero vector and
    send no gradient to the table (PyTorch's ``padding_idx``). BERT4Rec's loss
    never depends on padded positions, so this changes no loss: it only keeps
    the lookup's gradient out of row 0. (With the tied output head, row 0 is
    still a column of the training softmax, as [MASK]'s row is, and gets
    gradient there, as in the authors' code.)
    cache: (ids, table.shape, padding_id): the gradient scatters dout into a zero
    table of that shape; the table's values are not needed.
    """
    out = table[ids]                                   # (..., D), a copy
    if padding_id is not None:
        out[ids == padding_id] = 0.0
    return out, (ids, table.shape, padding_id)


def embedding_backward(dout, cache):
    """dout: (..., D) -> (dtable (V, D),).

    forward:  out[p] = table[ids[p]] for every position p, so
      dtable[v] = sum of dout[p] over every position p with ids[p] == v.
    An id used at several positions receives the SUM of their gradients:
    np.add.at accumulates repeated indices (``dtable[ids] += dout`` would not:
    with a repeated id, only one of its rows would be added).
    """
    ids, shape, padding_id = cache
    dtable = np.zeros(shape, dtype=dout.dtype)         # (V, D)
    flat_ids = ids.reshape(-1)                         # (P,) every position
    flat_d = dout.reshape(-1, shape[1])                # (P, D)
    if padding_id is not None:
        keep = flat_ids != padding_id
        flat_ids, flat_d = flat_ids[keep], flat_d[keep]
    np.add.at(dtable, flat_ids, flat_d)
    return (dtable,)


# ----------------------------------------------------------------------------
# 8. Positional encodings: a learned (N, D) table, or the fixed sinusoidal one
# ----------------------------------------------------------------------------


def learned_position_forward(x, P):
    """x: (B, T, D)   P: (N, D), T <= N   ->   out: (B, T, D) = x + P[:T]."""
    T = x.shape[1]
    if T > P.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the position table's {P.shape[0]} rows")
    return x + P[:T], (T, P.shape)


def learned_position_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D), dP (N, D)).

    forward:  out[b, t] = x[b, t] + P[t]: x's gradient passes through, and
    row t of P is used by every sequence, so dP[t] = sum over b of dout[b, t].
    Rows >= T were not used and get zero.
    """
    T, shape = cache
    dP = np.zeros(shape, dtype=dout.dtype)
    dP[:T] = dout.sum(axis=0)
    return dout, dP


def sinusoidal_table(N, D, dtype=np.float64):
    """PE[pos, 2i] = sin(pos / 10000^(2i/D)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/D)).

    Returns (N, D) (Vaswani et al. 2017). Works for odd D (the last column is a sine).
    """
    pos = np.arange(N, dtype=np.float64)[:, None]              # (N, 1)
    two_i = np.arange(0, D, 2, dtype=np.float64)[None, :]      # (1, ceil(D/2))
    angle = pos / np.power(10000.0, two_i / D)                 # (N, ceil(D/2))
    pe = np.zeros((N, D), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : D // 2])
    return pe.astype(dtype)


def sinusoidal_position_forward(x, table):
    """x: (B, T, D)   table: (N, D) fixed   ->   out: (B, T, D) = x + table[:T]."""
    T = x.shape[1]
    if T > table.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the position table's {table.shape[0]} rows")
    return x + table[:T].astype(x.dtype, copy=False), None


def sinusoidal_position_backward(dout, cache):
    """dout: (B, T, D) -> (dx (B, T, D),). The table is fixed: no gradient of its own."""
    return (dout,)
