"""Every layer: gradient checks (float64, random upstream gradient) and forward facts.

Tolerances: layers must reach a max relative error below DEFAULT_TOL = 1e-7
(they reach ~1e-11 to 1e-8); a softmax row whose keys are all masked below
MASKED_ROW_TOL = 1e-6 (finite differences there are good to ~2e-8 only); the
whole model below MODEL_TOL = 1e-6. A wrong backward gives errors of 1e-3 or
more (see test_gradcheck.py, which breaks backwards on purpose).
"""
import math

import numpy as np
import pytest

from minibert4rec import attention as A
from minibert4rec import encoder as Enc
from minibert4rec import layers as Ly
from minibert4rec import model as Mo
from minibert4rec.gradcheck import DEFAULT_TOL, MASKED_ROW_TOL, MODEL_TOL, suite

RESULTS = suite(seed=0)
COMPONENTS = sorted({r.component for r in RESULTS})
# Every check of the suite, by name: a case that disappears fails here. Masks: padding
# everywhere, causal, and a row with every key masked; H = 3 heads, T = 5; repeated ids
# (7, the model), repeated targets (14, the model), a repeated gathered row (13).
EXPECTED = {
    "1 linear", "2 softmax",
    "3 masked softmax (padding)", "3 masked softmax (causal+padding)",
    "3 masked softmax (all keys masked)", "4 layernorm", "5 gelu (erf)", "5 gelu (tanh)",
    "6 dropout", "7 item embedding", "8 learned position", "8 sinusoidal position",
    "9 attention (padding)", "9 attention (causal)", "9 attention (padding, dropout)",
    "10 multi-head attention (padding)", "10 multi-head attention (causal+padding)",
    "11 feed-forward", "12 residual + layernorm", "12 encoder block (padding)",
    "12 encoder block (causal+padding)", "13 output head", "13 gather (repeated rows)",
    "14 cross-entropy loss", "14 output loss (training path, reference)",
    "model (bidirectional, learned pos)", "model (causal, sinusoidal, tanh)",
    "model (no positions)",
}
TOLERANCES = {"3 masked softmax (all keys masked)": MASKED_ROW_TOL}


def test_suite_runs_every_check_of_the_14_parts_and_the_model():
    assert set(COMPONENTS) == EXPECTED
    model_tensors = {r.tensor for r in RESULTS if r.component == "model (bidirectional, learned pos)"}
    assert {"item_emb", "pos_emb", "out_bias", "layer1.bk"} <= model_tensors


@pytest.mark.parametrize("component", COMPONENTS)
def test_gradients_match_finite_differences(component):
    tol = MODEL_TOL if component.startswith("model") else TOLERANCES.get(component, DEFAULT_TOL)
    rows = [r for r in RESULTS if r.component == component]
    assert all(r.tol == tol for r in rows)            # the suite used the tolerance stated here
    bad = [(r.tensor, r.max_rel_error) for r in rows if not r.max_rel_error < tol]
    assert rows and not bad, f"{component}: {bad} (tolerance {tol})"


@pytest.mark.parametrize("seed", [1, 2])
def test_gradients_with_other_random_inputs(seed):
    bad = [(r.component, r.tensor, r.max_rel_error) for r in suite(seed=seed) if not r.passed]
    assert not bad


# ---------------------------------------------------------------------------
# forward facts
# ---------------------------------------------------------------------------
rng = np.random.default_rng(0)
B, T, D, H = 2, 5, 12, 3


def test_sinusoidal_table_matches_the_formula():
    N, Dm = 9, 6
    pe = Ly.sinusoidal_table(N, Dm)
    for pos in range(N):
        for i in range(Dm // 2):
            angle = pos / 10000 ** (2 * i / Dm)
            assert pe[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-12)
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-12)
    assert np.allclose(pe[0, 0::2], 0) and np.allclose(pe[0, 1::2], 1)


def test_layernorm_output_has_mean_0_and_variance_1():
    x = rng.standard_normal((B, T, D)) * 5 + 3
    y, _ = Ly.layernorm_forward(x, np.ones(D), np.zeros(D))
    assert np.allclose(y.mean(-1), 0, atol=1e-12)
    assert np.allclose(y.var(-1), 1, atol=1e-9)          # biased variance, as BERT


def test_layernorm_eps_is_inside_the_square_root():
    x = np.array([[1.0, -1.0]])                          # variance 1
    y, _ = Ly.layernorm_forward(x, np.ones(2), np.zeros(2), eps=3.0)
    assert np.allclose(y, x / math.sqrt(1 + 3.0))


def test_gelu_values():
    g_erf, _ = Ly.gelu_forward(np.array([-1.0, 0.0, 1.0]), "erf")
    assert np.allclose(g_erf, [-0.15865525393145707, 0.0, 0.8413447460685429])
    x = np.linspace(-5, 5, 101)
    g_tanh, _ = Ly.gelu_forward(x, "tanh")
    assert np.max(np.abs(g_tanh - Ly.gelu_forward(x, "erf")[0])) < 1e-3


def test_embedding_accumulates_repeated_ids_and_skips_padding():
    table = rng.standard_normal((5, 3))
    ids = np.array([[2, 2, 0], [2, 4, 0]])
    out, c = Ly.embedding_forward(ids, table, padding_id=0)
    assert np.all(out[ids == 0] == 0) and np.allclose(out[0, 0], table[2])
    dout = rng.standard_normal(out.shape)
    (dtable,) = Ly.embedding_backward(dout, c)
    assert np.allclose(dtable[2], dout[0, 0] + dout[0, 1] + dout[1, 0])
    assert np.all(dtable[0] == 0) and np.all(dtable[[1, 3]] == 0)


def test_dropout_eval_is_identity_and_train_scales():
    x = rng.standard_normal((200, 50))
    y, _ = Ly.dropout_forward(x, 0.3, np.random.default_rng(0), train=False)
    assert y is x
    y, cache = Ly.dropout_forward(np.ones((200, 50)), 0.3, np.random.default_rng(0), train=True)
    assert np.allclose(np.unique(y), [0.0, 1 / 0.7])
    assert abs((y == 0).mean() - 0.3) < 0.02 and abs(y.mean() - 1) < 0.03
    y2, _ = Ly.dropout_forward(np.ones((200, 50)), 0.3, np.random.default_rng(0), train=True)
    assert np.array_equal(y, y2)                         # seeded: repeatable
    with pytest.raises(ValueError):
        Ly.dropout_forward(x, 1.0, np.random.default_rng(0))


def _qkv(Bx=B, Hx=H, Tq=T, Tk=T, Dh=4):
    return (rng.standard_normal((Bx, Hx, Tq, Dh)), rng.standard_normal((Bx, Hx, Tk, Dh)),
            rng.standard_normal((Bx, Hx, Tk, Dh)))


def test_attention_rows_sum_to_one_and_masked_keys_get_zero_weight():
    key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    q, k, v = _qkv()
    _, w, _ = A.attention_forward(q, k, v, Ly.additive_mask(key_mask, dtype=np.float64))
    assert w.shape == (B, H, T, T)
    assert np.allclose(w.sum(-1), 1)
    assert np.all(w[1, :, :, 3:] < 1e-300)               # e^-10000 underflows to 0


def test_causal_mask_gives_zero_weight_above_the_diagonal():
    key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=bool)
    q, k, v = _qkv()
    out, w, _ = A.attention_forward(q, k, v, Ly.additive_mask(key_mask, causal=True, dtype=np.float64))
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(w[:, :, upper] == 0) and np.allclose(w.sum(-1), 1)
    assert np.allclose(w[:, :, 0, 0], 1)                 # the first query sees only itself
    # the first query's output is exactly its own value vector
    assert np.allclose(out[:, :, 0], v[:, :, 0])


def test_fully_masked_row_is_finite_and_uniform_over_equal_scores():
    key_mask = np.zeros((1, 4), dtype=bool)
    scores = np.zeros((1, 1, 4, 4))
    w, _ = Ly.masked_softmax_forward(scores, Ly.additive_mask(key_mask, dtype=np.float64))
    assert np.all(np.isfinite(w)) and np.allclose(w, 0.25)


def test_attention_matches_a_loop_over_batch_and_heads():
    key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=bool)
    q, k, v = _qkv()
    out, _, _ = A.attention_forward(q, k, v, Ly.additive_mask(key_mask, dtype=np.float64))
    for b in range(B):
        for h in range(H):
            s = q[b, h] @ k[b, h].T / math.sqrt(q.shape[-1])
            s = np.where(key_mask[b][None, :], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            assert np.allclose(out[b, h], p @ v[b, h])


def test_multihead_with_one_head_equals_single_head_attention():
    x = rng.standard_normal((B, T, D))
    p = {k: rng.standard_normal((D, D) if k.startswith("W") else (D,)) for k in A.MHA_PARAMS}
    key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    m = Ly.additive_mask(key_mask, dtype=np.float64)
    out, w, _ = A.mha_forward(x, p, 1, m)
    q, k, v = (x @ p["W" + c] + p["b" + c] for c in "qkv")
    ref, wref, _ = A.attention_forward(q[:, None], k[:, None], v[:, None], m)
    assert np.allclose(out, ref[:, 0] @ p["Wo"] + p["bo"])
    assert np.allclose(w, wref)


def test_split_and_merge_heads_are_inverse_and_keep_columns_together():
    x = rng.standard_normal((B, T, D))
    s = A.split_heads(x, H)
    assert s.shape == (B, H, T, D // H)
    assert np.array_equal(s[:, 1], x[:, :, 4:8])
    assert np.array_equal(A.merge_heads(s), x)


def test_layers_keep_float32():
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    p = Mo.block_view(Mo.init_params(Mo.Config(vocab_size=10, max_len=T, hidden=D, heads=H)), 0)
    m = Ly.additive_mask(np.ones((B, T), dtype=bool))
    out, w, c = Enc.block_forward(x, p, H, m, 0.1, 0.1, np.random.default_rng(0))
    dx, g = Enc.block_backward(np.ones_like(out), c)
    assert out.dtype == w.dtype == dx.dtype == np.float32
    assert all(v.dtype == np.float32 for v in g.values())


def test_model_exposes_attention_of_every_layer_and_head():
    cfg = Mo.Config(vocab_size=12, max_len=6, hidden=12, layers=2, heads=3)
    model = Mo.BERT4Rec(cfg)
    ids = np.array([[1, 2, 3, 11, 0], [4, 5, 11, 0, 0]])
    model.encode(ids)
    assert model.attention.shape == (2, 2, 3, 5, 5)                      # (L, B, H, T, T)
    assert np.allclose(model.attention.sum(-1), 1, atol=1e-5)
    assert np.all(model.attention[:, 1, :, :, 3:] < 1e-6)               # padded keys



def test_every_layernorm_uses_the_configured_epsilon(monkeypatch):
    """Config.ln_eps reaches all 2 + 2 L LayerNorms: embedding, both per block, head."""
    seen = []
    original = Ly.layernorm_forward

    def recording(x, gamma, beta, eps=1e-12):
        seen.append(eps)
        return original(x, gamma, beta, eps)
    for module in (Enc, Mo):
        monkeypatch.setattr(module, "layernorm_forward", recording)
    model = Mo.BERT4Rec(Mo.Config(vocab_size=12, max_len=6, hidden=12, layers=2, heads=3, ln_eps=1e-3))
    model.score_next(np.array([[1, 2, 3, 11, 0], [4, 5, 11, 0, 0]]))
    assert seen == [1e-3] * 6, seen


def test_every_backward_returns_a_tuple_of_one_gradient_per_differentiable_input():
    """The one return convention (layers.py's docstring), for every backward of the reference path."""
    r = np.random.default_rng(0)
    x = r.standard_normal((B, T, D))
    g, b = r.standard_normal(D), r.standard_normal(D)
    W = r.standard_normal((D, 3))
    ids = np.array([[1, 2, 2, 0, 0, 1], [3, 3, 1, 2, 0, 0]])[:, :T]
    mask = Ly.additive_mask(ids != 0)
    q = r.standard_normal((B, H, T, D // H))
    mha_p = {k: r.standard_normal((D, D) if k.startswith("W") else D) for k in A.MHA_PARAMS}
    cases = {   # name: (out, cache) of the forward, the number of gradients expected
        "linear": (Ly.linear_forward(x, W, b[:3]), 3),
        "softmax": (Ly.softmax_forward(x), 1),
        "masked softmax": (Ly.masked_softmax_forward(r.standard_normal((B, H, T, T)), mask), 1),
        "layernorm": (Ly.layernorm_forward(x, g, b), 3),
        "gelu erf": (Ly.gelu_forward(x, "erf"), 1),
        "gelu tanh": (Ly.gelu_forward(x, "tanh"), 1),
        "dropout": (Ly.dropout_forward(x, 0.5, np.random.default_rng(1)), 1),
        "dropout eval": (Ly.dropout_forward(x, 0.5, train=False), 1),
        "embedding": (Ly.embedding_forward(ids, r.standard_normal((5, D)), padding_id=0), 1),
        "learned position": (Ly.learned_position_forward(x, r.standard_normal((T + 2, D))), 2),
        "sinusoidal position": (Ly.sinusoidal_position_forward(x, Ly.sinusoidal_table(T, D)), 1),
        "attention": ((lambda o: (o[0], o[2]))(A.attention_forward(q, q, q, mask)), 3),
        "multi-head attention": ((lambda o: (o[0], o[2]))(A.mha_forward(x, mha_p, H, mask)), 2),
    }
    backward = {"linear": Ly.linear_backward, "softmax": Ly.softmax_backward,
                "masked softmax": Ly.masked_softmax_backward, "layernorm": Ly.layernorm_backward,
                "gelu erf": Ly.gelu_backward, "gelu tanh": Ly.gelu_backward,
                "dropout": Ly.dropout_backward, "dropout eval": Ly.dropout_backward,
                "embedding": Ly.embedding_backward, "learned position": Ly.learned_position_backward,
                "sinusoidal position": Ly.sinusoidal_position_backward,
                "attention": A.attention_backward, "multi-head attention": A.mha_backward}
    for name, ((out, cache), n_grads) in cases.items():
        grads = backward[name](np.ones_like(out), cache)
        assert isinstance(grads, tuple) and len(grads) == n_grads, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_uses_the_exact_erf_in_every_dtype(dtype):
    """No approximation on the reference path: GELU's CDF is scipy's erf, float32 included."""
    from scipy.special import erf
    x = np.linspace(-8, 8, 2001).astype(dtype)
    out, _ = Ly.gelu_forward(x, "erf")
    exact = x.astype(np.float64) * 0.5 * (1 + erf(x.astype(np.float64) / math.sqrt(2)))
    assert out.dtype == dtype
    assert np.max(np.abs(out - exact)) <= (1e-15 if dtype == np.float64 else 2e-6) * 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_exact_when_the_target_probability_underflows(dtype):
    """-log p[target] = logsumexp(z) - z[target], even when p[target] is below the float's range."""
    logits = np.array([[0.0, 1000.0, 3.0], [2.0, -1.0, 0.5]], dtype=dtype)
    targets = np.array([0, 2])
    loss, cache = Mo.cross_entropy_forward(logits, targets)
    z = logits.astype(np.float64)
    lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    expected = (lse - z[[0, 1], targets]).sum() / (2 + Mo.LOSS_EPS)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss > 400                                   # 1000 / 2: not capped at -log(tiny) / 2
