"""BERT4Rec: the whole model, its output head and its loss.

Axis letters as in ``layers.py``: B batch, T positions, D width, H heads,
L layers, V vocabulary (0 = padding, items 1..n_items, V-1 = [MASK]),
M gathered positions (the masked ones whose item is predicted).

    ids (B, T)
      -> E[ids] + P[:T]                         item embedding + position      (B, T, D)
      -> LayerNorm -> Dropout                                                   (B, T, D)
      -> L x encoder block (bidirectional or causal self-attention)             (B, T, D)
      -> gather the M masked positions                                          (M, D)
      -> Dense(D) -> GELU -> LayerNorm                  output head            (M, D)
      -> logits = h E^T + out_bias   (E tied with the input embedding)          (M, V)
      -> softmax cross-entropy, averaged over the real masked slots             scalar

In this file: the configuration and the initialisation; the two new layer pairs
of the output end (13 the head, 14 the loss); then the class ``BERT4Rec``, whose
``encode`` chains the input end from pairs already met (7 lookup, 8 position,
4 LayerNorm, 6 dropout in layers.py) and the blocks of encoder.py, and whose
``loss_and_grads`` adds 13 and 14 on top.

Parameters live in ONE dict ``model.params`` (name -> array) and gradients in
a dict with the same names, so the optimizer and the gradient checker just
loop over names. Encoder layer l owns ``layer{l}.Wq`` ... ``layer{l}.ln2_b``.

Departures from the authors' TensorFlow code (written down on purpose):
- their "token type" embedding (one learned row added at every position, in
  effect a constant bias before the embedding LayerNorm) is left out;
- the item table's padding row gets no gradient from padded positions (it
  never affects the loss there anyway).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .encoder import BLOCK_PARAMS, block_backward, block_forward
from .errors import InputError
from .layers import (additive_mask, dropout_backward, dropout_forward, embedding_backward,
                     embedding_forward, gelu_backward, gelu_forward, layernorm_backward,
                     layernorm_forward, learned_position_backward, learned_position_forward,
                     linear_backward, linear_forward, sinusoidal_position_backward,
                     sinusoidal_position_forward, sinusoidal_table)

PAD = 0
LOSS_EPS = 1e-5   # the authors' denominator: sum(weights) + 1e-5


@dataclass
class Config:
    """Hyper-parameters of the network (not of training). Defaults: the paper's Beauty d=64 model."""
    vocab_size: int                      # V = n_items + 2 (padding and [MASK])
    max_len: int = 50                    # N
    hidden: int = 64                     # D
    layers: int = 2                      # L
    heads: int = 2                       # H
    ffn: int = 0                         # F; 0 means 4 * D
    hidden_dropout: float = 0.5          # authors: 0.5 on Beauty, 0.2 on ML-1m
    attention_dropout: float = 0.2
    position: str = "learned"            # learned | sinusoidal | none
    attention: str = "bidirectional"     # bidirectional | causal
    gelu: str = "erf"                    # erf | tanh
    init_std: float = 0.02
    ln_eps: float = 1e-12

    def __post_init__(self):
        if self.ffn == 0:
            self.ffn = 4 * self.hidden
        self.validate()

    def validate(self):
        """Raise InputError naming the first bad hyper-parameter."""
        def bad(msg):
            raise InputError(f"invalid model configuration: {msg}")
        for name in ("vocab_size", "max_len", "hidden", "layers", "heads", "ffn"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                bad(f"{name} must be a positive integer, got {v!r}")
        if self.vocab_size < 3:
            bad(f"vocab_size must be at least 3 (padding, one item, [MASK]), got {self.vocab_size}")
        if self.max_len < 2:
            bad(f"max_len N must be at least 2 (one item and [MASK]), got {self.max_len}")
        if self.hidden % self.heads:
            bad(f"hidden size D={self.hidden} is not divisible by heads H={self.heads}")
        for name in ("hidden_dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                bad(f"{name} must be in [0, 1), got {v}")
        if self.position not in ("learned", "sinusoidal", "none"):
            bad(f"position must be learned, sinusoidal or none, got {self.position!r}")
        if self.attention not in ("bidirectional", "causal"):
            bad(f"attention must be bidirectional or causal, got {self.attention!r}")
        if self.gelu not in ("erf", "tanh"):
            bad(f"gelu must be erf or tanh, got {self.gelu!r}")

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)


def truncated_normal(rng, shape, std, dtype):
    """Normal(0, std) redrawn outside +-2 std, as tf.truncated_normal_initializer."""
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2.0
    while bad.any():
        x[bad] = rng.standard_normal(bad.sum())
        bad = np.abs(x) > 2.0
    return (x * std).astype(dtype)


def init_params(cfg: Config, seed=0, dtype=np.float32) -> dict:
    """All trainable parameters by name: weights truncated normal (std cfg.init_std, 0.02),
    biases 0, LayerNorm gamma 1. Shapes (V vocabulary, N max_len, D hidden, F ffn):
      item_emb (V, D), pos_emb (N, D) if learned, emb_ln_g/_b (D,);
      per layer l: layer{l}.Wq/Wk/Wv/Wo (D, D), .bq/bk/bv/bo (D,), .ln1_g/_b (D,),
                   .W1 (D, F), .b1 (F,), .W2 (F, D), .b2 (D,), .ln2_g/_b (D,);
      head_W (D, D), head_b (D,), head_ln_g/_b (D,), out_bias (V,).
    """
    rng = np.random.default_rng(seed)
    V, N, D, F = cfg.vocab_size, cfg.max_len, cfg.hidden, cfg.ffn
    tn = lambda *shape: truncated_normal(rng, shape, cfg.init_std, dtype)  # noqa: E731
    zeros = lambda *shape: np.zeros(shape, dtype)                          # noqa: E731
    ones = lambda *shape: np.ones(shape, dtype)                            # noqa: E731
    p = {"item_emb": tn(V, D)}
    if cfg.position == "learned":
        p["pos_emb"] = tn(N, D)
    p["emb_ln_g"], p["emb_ln_b"] = ones(D), zeros(D)
    for l in range(cfg.layers):
        for name in ("Wq", "Wk", "Wv", "Wo"):
            p[f"layer{l}.{name}"] = tn(D, D)
        for name in ("bq", "bk", "bv", "bo"):
            p[f"layer{l}.{name}"] = zeros(D)
        p[f"layer{l}.ln1_g"], p[f"layer{l}.ln1_b"] = ones(D), zeros(D)
        p[f"layer{l}.W1"], p[f"layer{l}.b1"] = tn(D, F), zeros(F)
        p[f"layer{l}.W2"], p[f"layer{l}.b2"] = tn(F, D), zeros(D)
        p[f"layer{l}.ln2_g"], p[f"layer{l}.ln2_b"] = ones(D), zeros(D)
    p["head_W"], p["head_b"] = tn(D, D), zeros(D)
    p["head_ln_g"], p["head_ln_b"] = ones(D), zeros(D)
    p["out_bias"] = zeros(V)
    return p


# ----------------------------------------------------------------------------
# 13. The output head: gather, Dense + GELU + LayerNorm, tied logits
# ----------------------------------------------------------------------------


def gather_rows(h, sel):
    """h: (B, T, D), sel: (M,) flat indices into B*T -> (M, D).

    In the model ``sel`` holds the masked positions, each once; an index given twice
    is gathered twice (and its gradients add up in the backward)."""
    return h.reshape(-1, h.shape[-1])[sel], (h.shape, sel)


def gather_rows_backward(dout, cache):
    """dout: (M, D) -> (dh (B, T, D),), zero at the positions not gathered.

    forward: out[m] = h_flat[sel[m]], so dh_flat[sel[m]] += dout[m] (np.add.at, as
    the embedding lookup: a repeated index collects every row's gradient, where
    dh_flat[sel] += dout would keep only the last).
    """
    shape, sel = cache
    dh = np.zeros((shape[0] * shape[1], shape[2]), dtype=dout.dtype)
    np.add.at(dh, sel, dout)
    return (dh.reshape(shape),)


def head_transform_forward(hg, p, gelu="erf", eps=1e-12):
    """hg: (M, D) -> n: (M, D) = LayerNorm(GELU(hg W + b))  (the authors' 'transform')."""
    t, c1 = linear_forward(hg, p["head_W"], p["head_b"])
    g, c2 = gelu_forward(t, gelu)
    n, c3 = layernorm_forward(g, p["head_ln_g"], p["head_ln_b"], eps)
    return n, (c1, c2, c3)


def head_transform_backward(dn, cache):
    """dn: (M, D) -> (dhg (M, D), grads {head_W, head_b, head_ln_g, head_ln_b}).

    forward: t = hg W + b -> g = GELU(t) -> n = LayerNorm(g); backwards, each
    layer's backward turns its output's gradient into its input's.
    """
    c1, c2, c3 = cache
    dg, dln_g, dln_b = layernorm_backward(dn, c3)
    (dt,) = gelu_backward(dg, c2)
    dhg, dW, db = linear_backward(dt, c1)
    return dhg, {"head_W": dW, "head_b": db, "head_ln_g": dln_g, "head_ln_b": dln_b}


def tied_logits_forward(n, E, out_bias):
    """n: (M, D), E: (V, D) the item table, out_bias: (V,) -> logits (M, V) = n E^T + out_bias."""
    return n @ E.T + out_bias, (n, E)


def tied_logits_backward(dlogits, cache):
    """dlogits: (M, V) -> (dn (M, D), dE (V, D), dout_bias (V,)).

    forward: logits[m, v] = sum_d n[m, d] E[v, d] + out_bias[v]   (a linear layer with W = E^T)
      dn = dlogits E,   dE = dlogits^T n,   dout_bias = sum over m of dlogits
    dE is only this use's share: the model adds it to the embedding lookup's.
    """
    n, E = cache
    return dlogits @ E, dlogits.T @ n, dlogits.sum(axis=0)


# ----------------------------------------------------------------------------
# 14. The loss: softmax cross-entropy over the whole vocabulary
# ----------------------------------------------------------------------------


def cross_entropy_forward(logits, targets, weights=None):
    """Mean negative log-likelihood of the targets over the real masked slots.

    logits: (M, V)   targets: (M,) int   weights: (M,) 1.0 = real slot, 0.0 = padding slot
    (the authors pad every sequence's masked slots to max_predictions; here the cloze
    batches gather only real slots, so training passes weights=None: all ones)
    loss = sum_m w_m * -log softmax(logits_m)[target_m] / (sum_m w_m + 1e-5)   (the authors')

    -log softmax(z)[t] = log sum_v exp(z_v) - z_t, computed after subtracting the
    row maximum: exact even when the target's probability is too small for the
    float type (taking the log of the softmax would give log 0 there).
    """
    if weights is None:
        weights = np.ones(len(targets), dtype=logits.dtype)
    rows = np.arange(len(targets))
    z = logits - logits.max(axis=-1, keepdims=True)                         # (M, V), row max 0
    e = np.exp(z)                                                           # (M, V)
    total = e.sum(axis=-1)                                                  # (M,) >= 1
    probs = e / total[:, None]                                              # softmax (M, V)
    nll = np.log(total) - z[rows, targets]                                  # -log p[target], (M,)
    denom = weights.sum() + LOSS_EPS
    loss = float(np.sum(weights * nll) / denom)
    return loss, (probs, targets, weights, denom)


def cross_entropy_backward(dloss, cache):
    """dloss: scalar -> (dlogits (M, V),) = (softmax - onehot(target)) * w / denom * dloss.

    forward: loss = sum_m w_m * nll_m / denom,  nll_m = -log p_m[t_m] = -z_m[t_m] + log sum_v exp z_m[v]
      d nll_m / d z_m[v] = p_m[v] - [v == t_m]      (the log-sum-exp gives softmax; the
                                                     target's own logit gives the one-hot)
    and each row is scaled by w_m / denom: padding slots (w = 0) send no gradient.
    """
    probs, targets, weights, denom = cache
    dlogits = probs.copy()
    dlogits[np.arange(len(targets)), targets] -= 1.0
    dlogits *= (weights * (dloss / denom))[:, None].astype(probs.dtype)
    return (dlogits,)


def output_loss(n, E, out_bias, targets, weights=None):
    """The training loss of the output side and its gradients: 13's logits and 14, forward and backward.

    n: (M, D) the head's output   E: (V, D) the item table   out_bias: (V,)
    targets: (M,) int   weights: (M,) 1.0 = real slot, 0.0 = padding slot, or None
    Returns (loss, dn (M, D), dE (V, D), dout_bias (V,)), the gradients for dloss = 1.

    Nothing new: the two layer pairs above, run forward and then backward.
    The (M, V) logits, probabilities and dlogits are formed whole (M x V floats
    each: 1.4 GB in float32 for a large Beauty batch). The fast path's
    ``fused_output_loss`` computes the same numbers (up to rounding) tile by tile.
    """
    logits, c_logits = tied_logits_forward(n, E, out_bias)            # (M, V)
    loss, c_ce = cross_entropy_forward(logits, targets, weights)
    (dlogits,) = cross_entropy_backward(1.0, c_ce)                      # (M, V)
    dn, dE, dout_bias = tied_logits_backward(dlogits, c_logits)
    return loss, dn, dE, dout_bias


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def block_view(params, l):
    """The parameters of encoder layer l under their short block names."""
    return {k: params[f"layer{l}.{k}"] for k in BLOCK_PARAMS}


class BERT4Rec:
    """The network: parameters by name, a forward that returns the loss, a backward that returns gradients.

    After any forward, ``self.attention`` holds the attention weights of every
    layer and head as one array (L, B, H, T, T) (rows: queries, columns: keys).
    """

    def __init__(self, cfg: Config, params: dict | None = None, seed=0, dtype=np.float32,
                 output_loss=output_loss):
        """cfg: the hyper-parameters; params: trained weights by name (None: a fresh
        initialisation from ``seed`` in ``dtype``).

        output_loss: the function that turns the head's output into the loss and
        its gradients during training, ``output_loss(n, E, out_bias, targets,
        weights) -> (loss, dn, dE, dout_bias)``: by default this file's plain
        ``output_loss``; ``minibert4rec.fast`` passes its fused one, which gives
        the same numbers faster.
        """
        self.cfg = cfg
        self.output_loss = output_loss
        self.params = params if params is not None else init_params(cfg, seed, dtype)
        self.dtype = self.params["item_emb"].dtype
        self.attention = None
        self._sin = (sinusoidal_table(cfg.max_len, cfg.hidden, self.dtype)   # (N, D), fixed
                     if cfg.position == "sinusoidal" else None)

    # -- encoder: ids -> hidden states -------------------------------------------------

    def encode(self, ids, rng=None, train=False, keep_attention=True):
        """ids: (B, T) int -> hidden states (B, T, D), cache. Padding (id 0) keys are masked.

        x = Dropout(LN(E[ids] + P)), then the L encoder blocks. The attention weights
        of every layer are kept in ``self.attention`` (L, B, H, T, T) for the maps
        (None with keep_attention=False).
        cache: (the lookup's, the position's, the LayerNorm's and dropout's caches,
        the list of the L blocks' caches).
        """
        cfg, p = self.cfg, self.params
        if ids.shape[1] > cfg.max_len:
            raise InputError(f"sequence length {ids.shape[1]} exceeds max_len {cfg.max_len}")
        x, c_emb = embedding_forward(ids, p["item_emb"], padding_id=PAD)          # (B, T, D)
        if cfg.position == "learned":
            x, c_pos = learned_position_forward(x, p["pos_emb"])
        elif cfg.position == "sinusoidal":
            x, c_pos = sinusoidal_position_forward(x, self._sin)
        else:
            c_pos = None
        x, c_ln = layernorm_forward(x, p["emb_ln_g"], p["emb_ln_b"], cfg.ln_eps)
        x, c_drop = dropout_forward(x, cfg.hidden_dropout, rng, train)
        mask = additive_mask(ids != PAD, causal=cfg.attention == "causal", dtype=self.dtype)
        block_caches, weights = [], []
        for l in range(cfg.layers):
            x, w, c = block_forward(x, block_view(p, l), cfg.heads, mask, cfg.hidden_dropout,
                                    cfg.attention_dropout, rng, train, cfg.gelu, cfg.ln_eps)
            block_caches.append(c)
            weights.append(w)
        self.attention = np.stack(weights) if keep_attention else None          # (L, B, H, T, T)
        return x, (c_emb, c_pos, c_ln, c_drop, block_caches)

    def encode_backward(self, dh, cache, grads):
        """dh: (B, T, D) -> writes every encoder gradient into ``grads`` (by name).

        ``grads["item_emb"]`` must already hold the output layer's share of the
        tied item table's gradient: the lookup's share is added to it. Returns None.
        The forward's steps in reverse: the blocks from last to first, dropout,
        LayerNorm, the position (its table's gradient if learned), the lookup.
        """
        cfg = self.cfg
        c_emb, c_pos, c_ln, c_drop, block_caches = cache
        dx = dh
        for l in reversed(range(cfg.layers)):
            dx, g = block_backward(dx, block_caches[l])
            for k, v in g.items():
                grads[f"layer{l}.{k}"] = v
        (dx,) = dropout_backward(dx, c_drop)
        dx, grads["emb_ln_g"], grads["emb_ln_b"] = layernorm_backward(dx, c_ln)
        if cfg.position == "learned":
            dx, grads["pos_emb"] = learned_position_backward(dx, c_pos)
        elif cfg.position == "sinusoidal":
            (dx,) = sinusoidal_position_backward(dx, c_pos)
        # tied: the item table was used twice, as the lookup here and as the output
        # matrix; the output's share is already in grads["item_emb"], add the lookup's
        (d_lookup,) = embedding_backward(dx, c_emb)
        grads["item_emb"] += d_lookup

    # -- training: loss and gradients --------------------------------------------------

    def loss_and_grads(self, ids, sel, targets, weights=None, rng=None, train=True):
        """One training step's forward and backward.

        ids: (B, T) inputs with [MASK] at the chosen positions
        sel: (M,) flat indices (b * T + t) of the masked positions
        targets: (M,) the true items there;  weights: (M,) or None (all real)
        Returns (loss, grads) with grads[name].shape == params[name].shape.

        Forward:  h = encode(ids);  hg = h_flat[sel];  n = head(hg);
                  loss = the weighted mean of CE(n E^T + out_bias, targets)
        Backward, the same chain in reverse (each step the backward of its pair):
                  dn, dE, dout_bias <- the loss;  dhg <- head;  dh <- gather
                  (zero rows where nothing was masked);  the encoder's gradients <- dh.
        E = params["item_emb"] is used twice (output matrix and input lookup), so its
        gradient is the sum of both uses: the output's share first, then encode_backward
        adds the lookup's.
        """
        p = self.params
        h, enc_cache = self.encode(ids, rng, train, keep_attention=False)       # (B, T, D)
        hg, c_gather = gather_rows(h, sel)                                      # (M, D)
        n, c_head = head_transform_forward(hg, p, self.cfg.gelu, self.cfg.ln_eps)
        loss, dn, dE, dbias = self.output_loss(n, p["item_emb"], p["out_bias"], targets, weights)
        grads = {"item_emb": dE, "out_bias": dbias}
        dhg, g = head_transform_backward(dn, c_head)
        grads.update(g)
        (dh,) = gather_rows_backward(dhg, c_gather)
        self.encode_backward(dh, enc_cache, grads)
        return loss, grads

    def loss(self, ids, sel, targets, weights=None):
        """The loss alone, by the layer pairs 13 and 14 (eval mode, for checks).

        ids: (B, T), sel: (M,) flat indices b * T + t, targets: (M,), weights: (M,) or
        None -> a float, the loss ``loss_and_grads`` returns without dropout (on the fast path
        up to float rounding)."""
        h, _ = self.encode(ids, train=False, keep_attention=False)
        hg, _ = gather_rows(h, sel)
        n, _ = head_transform_forward(hg, self.params, self.cfg.gelu, self.cfg.ln_eps)
        logits, _ = tied_logits_forward(n, self.params["item_emb"], self.params["out_bias"])
        return cross_entropy_forward(logits, targets, weights)[0]

    # -- inference ---------------------------------------------------------------------

    def logits_at(self, ids, sel):
        """ids: (B, T), sel: (M,) flat positions -> logits (M, V) (eval mode, no dropout)."""
        h, _ = self.encode(ids, train=False)
        hg, _ = gather_rows(h, sel)
        n, _ = head_transform_forward(hg, self.params, self.cfg.gelu, self.cfg.ln_eps)
        return tied_logits_forward(n, self.params["item_emb"], self.params["out_bias"])[0]

    def next_item_input(self, histories):
        """Histories (list of int arrays) -> ids (B, T) = last N-1 items + [MASK], right-padded,
        and the flat index of each [MASK]. T is the longest row (<= N).

        Bidirectional models predict the [MASK]; a causal model reads the same
        [MASK] position, whose left context is the whole history.
        """
        N, mask_id = self.cfg.max_len, self.cfg.mask_id
        rows = [np.append(np.asarray(h, dtype=np.int64)[-(N - 1):], mask_id) for h in histories]
        T = max(len(r) for r in rows)
        ids = np.zeros((len(rows), T), dtype=np.int64)
        last = np.empty(len(rows), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
            last[b] = b * T + len(r) - 1
        return ids, last

    def score_candidates(self, histories, candidates):
        """Scores of only the given items as the next one: candidates (B, C) -> (B, C).

        The same numbers as score_next(histories)[b, candidates[b]], without the
        (B, V) logits: what the sampled protocol (1 + 100 items) needs.
        """
        ids, last = self.next_item_input(histories)
        h, _ = self.encode(ids, train=False)
        hg, _ = gather_rows(h, last)
        n, _ = head_transform_forward(hg, self.params, self.cfg.gelu, self.cfg.ln_eps)  # (B, D)
        E, b = self.params["item_emb"], self.params["out_bias"]
        # score[b, c] = n[b] . E[candidates[b, c]]: each row's own candidates, (B, C)
        return np.einsum("bd,bcd->bc", n, E[candidates]) + b[candidates]

    def score_next(self, histories):
        """Scores of every vocabulary id as the next item after each history: (B, V)."""
        ids, last = self.next_item_input(histories)
        return self.logits_at(ids, last)


def n_parameters(params: dict) -> int:
    """The number of scalars in all parameter arrays together."""
    return int(sum(v.size for v in params.values()))


__all__ = ["Config", "BERT4Rec", "init_params", "gather_rows", "gather_rows_backward",
           "head_transform_forward", "head_transform_backward", "tied_logits_forward",
           "tied_logits_backward", "cross_entropy_forward", "cross_entropy_backward",
           "output_loss", "block_view", "n_parameters"]
