"""The building blocks of a transformer, each as a forward/backward pair.

Every layer is two plain functions, in the style of Stanford's CS231n:

    out, cache = thing_forward(x, params..., options...)
    dx, dparams... = thing_backward(dout, cache)

``forward`` computes the output and keeps in ``cache`` exactly what the
backward pass needs. ``backward`` receives the upstream gradient ``dout``
(dLoss/dout, same shape as ``out``) and returns the gradient with respect to
every input and parameter, in the order they were passed to ``forward``.
Nothing is hidden in objects; nothing grows between calls.

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

All layers work in float32 (training) and float64 (gradient checks): the
output dtype follows the input dtype.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from . import threads

# ----------------------------------------------------------------------------
# Speed note: element-wise work in cache-sized blocks
# ----------------------------------------------------------------------------
# A formula such as GELU's is a dozen NumPy operations, each a pass over the
# whole array that writes a fresh temporary. For a (B, T, F) activation of
# 50 MB every pass goes to main memory; cut into blocks of 64K elements the
# temporaries (256 KB) stay in the L2 cache and the same formula runs ~3x
# faster. ``blockwise`` does exactly that and nothing else: the formulas below
# are written for whole arrays, and small arrays (gradient checks) are passed
# to them unchanged.

BLOCK_ELEMENTS = 1 << 16   # elements per block per array: 256 KB of float32


def blockwise(f, *arrays):
    """f(*arrays), computed block of rows by block of rows; same result, less memory traffic.

    arrays: each (..., K_i), all with the same leading shape (...)
    f:      a ROW-WISE function: given row blocks (r, K_i) it returns one array
            or a tuple of arrays, each (r, K_out) (row i of an output depends only
            on row i of the inputs; softmax and LayerNorm over the last axis are)
    returns what f returns, each output reshaped to (..., K_out).

    Blocks are shared between ``threads.ELEMENTWISE_THREADS`` threads (NumPy
    releases the GIL inside its loops); every block is computed the same way
    whichever thread runs it, so the result does not depend on the count.
    """
    if min(np.ndim(a) for a in arrays) < 2:
        return f(*arrays)                                        # scalars and vectors: whole
    lead = arrays[0].shape[:-1]
    R = math.prod(lead)
    rows = max(1, BLOCK_ELEMENTS // max(1, max(a.shape[-1] for a in arrays)))
    if R <= rows:
        return f(*arrays)
    flat = [a.reshape(R, a.shape[-1]) for a in arrays]
    first = f(*(a[:rows] for a in flat))
    single = not isinstance(first, tuple)
    first = (first,) if single else first
    outs = [np.empty((R,) + o.shape[1:], o.dtype) for o in first]
    for o, fo in zip(outs, first):
        o[:rows] = fo

    def run(starts):                                             # one thread's share of blocks
        for s in starts:
            res = f(*(a[s:s + rows] for a in flat))
            for o, r in zip(outs, (res,) if single else res):
                o[s:s + rows] = r

    starts = range(rows, R, rows)
    threads.run_split(run, starts)
    outs = [o.reshape(lead + o.shape[1:]) for o in outs]
    return outs[0] if single else tuple(outs)


# ----------------------------------------------------------------------------
# 4. Linear (dense) layer: out = x W + b
# ----------------------------------------------------------------------------


def linear_forward(x, W, b):
    """Affine map applied to the last axis.

    x: (..., Din)   W: (Din, Dout)   b: (Dout,)   ->   out: (..., Dout)
    """
    # one 2-D matmul over all rows: numpy would otherwise call BLAS once per batch row
    out = (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[1])
    out += b
    return out, (x, W)


def linear_backward(dout, cache):
    """dout: (..., Dout) -> dx (..., Din), dW (Din, Dout), db (Dout,)."""
    x, W = cache
    # forward was: out = x W + b
    x2 = x.reshape(-1, x.shape[-1])                 # (rows, Din)
    d2 = dout.reshape(-1, dout.shape[-1])           # (rows, Dout)
    dx = (d2 @ W.T).reshape(x.shape)
    dW = x2.T @ d2                                  # sum over every row
    db = d2.sum(axis=0)
    return dx, dW, db


# ----------------------------------------------------------------------------
# 1. Item embedding lookup (with a padding id)
# ----------------------------------------------------------------------------


def embedding_forward(ids, table, padding_id=None):
    """Look up one row of ``table`` per id.

    ids: (...) int   table: (V, D)   ->   out: (..., D)

    If ``padding_id`` is given, positions holding it produce a zero vector and
    send no gradient to the table (PyTorch's ``padding_idx``). BERT4Rec's loss
    never depends on padded positions, so this only keeps row 0 clean.
    """
    out = table[ids]
    if padding_id is not None:
        out[ids == padding_id] = 0.0
    return out, (ids, table.shape, padding_id)


def embedding_backward(dout, cache, out=None):
    """dout: (..., D) -> dtable: (V, D).

    An id used at several positions receives the SUM of their gradients
    (np.add.at accumulates repeated indices; ``table[ids] += dout`` would not).
    The item table is also the output layer's weight (tied): pass that
    gradient as ``out`` (V, D) and this one is added into it, in place (no
    second (V, D) table to zero and add: 14 MB each for Beauty).
    """
    ids, shape, padding_id = cache
    dtable = np.zeros(shape, dtype=dout.dtype) if out is None else out
    flat_ids = ids.reshape(-1)
    flat_d = dout.reshape(-1, shape[1])
    if padding_id is not None:
        keep = flat_ids != padding_id
        flat_ids, flat_d = flat_ids[keep], flat_d[keep]
    np.add.at(dtable, flat_ids, flat_d)
    return (dtable,)


# ----------------------------------------------------------------------------
# 2. Learned positional embedding: a trained (N, D) table added to the input
# ----------------------------------------------------------------------------


def learned_position_forward(x, P):
    """x: (B, T, D)   P: (N, D), T <= N   ->   out: (B, T, D) = x + P[:T]."""
    T = x.shape[1]
    if T > P.shape[0]:
        raise ValueError(f"sequence length {T} exceeds the position table's {P.shape[0]} rows")
    return x + P[:T], (T, P.shape)


def learned_position_backward(dout, cache):
    """dout: (B, T, D) -> dx (B, T, D), dP (N, D); rows >= T get no gradient."""
    T, shape = cache
    dP = np.zeros(shape, dtype=dout.dtype)
    dP[:T] = dout.sum(axis=0)   # every sequence in the batch uses the same rows
    return dout, dP


# ----------------------------------------------------------------------------
# 3. Sinusoidal positional encoding (Vaswani et al. 2017): a FIXED table
# ----------------------------------------------------------------------------


def sinusoidal_table(N, D, dtype=np.float64):
    """PE[pos, 2i] = sin(pos / 10000^(2i/D)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/D)).

    Returns (N, D). Works for odd D (the last column is a sine).
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
    """dout: (B, T, D) -> dx (B, T, D). The table is not trained: the gradient passes through."""
    return (dout,)


# ----------------------------------------------------------------------------
# 5. LayerNorm over the last axis (biased variance, eps inside the sqrt)
# ----------------------------------------------------------------------------


def layernorm_forward(x, gamma, beta, eps=1e-12):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over the last axis.

    x: (..., D)   gamma, beta: (D,)   ->   out: (..., D)

    As BERT (and the authors' TensorFlow code): variance is the biased one
    (divide by D, not D - 1) and eps = 1e-12 sits inside the square root.
    """
    def rows(x):                                               # the formula, on a block of rows
        mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)
        xc = x - mean                                          # (..., D)
        var = np.mean(xc * xc, axis=-1, keepdims=True)         # (..., 1)
        rstd = 1.0 / np.sqrt(var + eps)                        # (..., 1)
        xhat = xc * rstd                                       # (..., D)
        return xhat * gamma + beta, xhat, rstd
    out, xhat, rstd = blockwise(rows, x)
    return out, (xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """dout: (..., D) -> dx (..., D), dgamma (D,), dbeta (D,).

    With g = dout * gamma (the gradient reaching xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    (the two means are the gradients through the mean and the variance).
    """
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)
    dbeta = dout.reshape(-1, D).sum(axis=0)
    def rows(dout, xhat, rstd):
        g = dout * gamma                                        # dL/dxhat
        return rstd * (g - g.mean(axis=-1, keepdims=True)
                       - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    dx = blockwise(rows, dout, xhat, rstd)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------
# 6. GELU: exact (erf, the authors') or the tanh approximation (GPT-2)
# ----------------------------------------------------------------------------

def _erf(x):
    """erf(x): exact (scipy) in float64; a fast rational approximation in float32.

    scipy.special.erf is ~30x slower than np.exp on this machine, enough to
    show up in a training step. For float32 we use Abramowitz & Stegun 7.1.26,
        erf(x) ~ 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-x^2),  t = 1 / (1 + p|x|),
    odd in x, whose absolute error (< 1.5e-7 in exact arithmetic, < 6e-7 when
    computed in float32) is a few float32 roundings: it halves the cost of
    GELU. Gradient checks run in float64 and therefore use the exact erf.
    """
    if x.dtype != np.float32:
        return erf(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + np.float32(0.3275911) * a)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x)


_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x, approximate="erf"):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF.   x: (...) -> out: (...)

    approximate="erf":  Phi(x) = 0.5 (1 + erf(x / sqrt 2))            (exact; BERT4Rec)
    approximate="tanh": Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2)
    """
    if approximate == "erf":
        def rows(x):                                            # the formula, on a block of rows
            phi = 0.5 * (1.0 + _erf(x / _SQRT_2))
            return x * phi, phi
        out, phi = blockwise(rows, x)
        return out, ("erf", x, phi)
    if approximate == "tanh":
        def rows(x):
            t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))  # x**3: 30x slower in float32
            return 0.5 * x * (1.0 + t), t
        out, t = blockwise(rows, x)
        return out, ("tanh", x, t)
    raise ValueError(f"unknown GELU form {approximate!r}: use 'erf' or 'tanh'")


def gelu_backward(dout, cache):
    """dout: (...) -> dx: (...).

    erf:  d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    tanh: d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    kind, x, s = cache
    if kind == "erf":
        def rows(dout, x, phi):
            return dout * (phi + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x))
    else:
        def rows(dout, x, t):
            return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI
                           * (1.0 + 3 * 0.044715 * x * x))
    return (blockwise(rows, dout, x, s),)


# ----------------------------------------------------------------------------
# 7. Dropout (inverted: scale by 1/(1-p) at training time, identity at eval)
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
    keep = rng.random(x.shape, dtype=np.float32) >= p              # (...) bool, True = kept
    scale = x.dtype.type(1.0 / (1.0 - p))
    out = blockwise(lambda x, keep: x * keep * scale, x, keep)     # 0 or x / (1-p)
    return out, (keep, scale)


def dropout_backward(dout, cache):
    """dout: (...) -> dx: (...); the same elements are dropped and scaled."""
    if cache is None:
        return (dout,)
    keep, scale = cache
    return (blockwise(lambda dout, keep: dout * keep * scale, dout, keep),)


# ----------------------------------------------------------------------------
# 8. Softmax (numerically stable) and the masked softmax used by attention
# ----------------------------------------------------------------------------

MASK_VALUE = -10000.0   # the authors' additive mask for padded keys


def softmax_forward(x):
    """softmax over the last axis.   x: (..., K) -> y: (..., K), rows sum to 1.

    Subtracting the row maximum first changes nothing mathematically and keeps
    exp() from overflowing.
    """
    def rows(x):                                                # the formula, on a block of rows
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    y = blockwise(rows, x)
    return y, y


def softmax_backward(dout, cache):
    """dout: (..., K) -> dx: (..., K).

    The Jacobian of y = softmax(x) is diag(y) - y y^T, so the vector-Jacobian
    product is  dx = y * (dout - sum(dout * y)).
    """
    y = cache
    return (blockwise(lambda dout, y: y * (dout - np.sum(dout * y, axis=-1, keepdims=True)),
                      dout, y),)


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
    becomes the ordinary softmax of its raw scores (it attends over the padded
    keys). Such rows only occur for padded queries, whose outputs never reach
    the loss. (With -inf instead of -10000 they would be 0/0 = NaN.)
    """
    z = scores if mask is None else scores + mask
    return softmax_forward(z)


def masked_softmax_backward(dout, cache):
    """dout: (B, H, Tq, Tk) -> dscores: same shape (the mask is a constant)."""
    return softmax_backward(dout, cache)
