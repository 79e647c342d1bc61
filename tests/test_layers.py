"""Every layer: gradient checks (float64, random upstream gradient) and forward facts.

Tolerances: layers must reach a max relative error below DEFAULT_TOL = 1e-7
(they reach ~1e-10 to 1e-8); the whole model below MODEL_TOL = 1e-6. A wrong
backward gives errors of 1e-3 or more (see test_gradcheck.py, which breaks
backwards on purpose).
"""
import math

import numpy as np
import pytest

from minibert4rec import attention as A
from minibert4rec import encoder as Enc
from minibert4rec import layers as Ly
from minibert4rec import model as Mo
from minibert4rec.gradcheck import DEFAULT_TOL, MODEL_TOL, suite

RESULTS = suite(seed=0)
COMPONENTS = sorted({r.component for r in RESULTS})


def test_suite_covers_all_14_parts_and_the_model():
    parts = {int(r.component.split()[0]) for r in RESULTS if r.component[0].isdigit()}
    assert parts == set(range(1, 15))
    assert any(r.component.startswith("model") and r.tensor == "item_emb" for r in RESULTS)


@pytest.mark.parametrize("component", COMPONENTS)
def test_gradients_match_finite_differences(component):
    tol = MODEL_TOL if component.startswith("model") else DEFAULT_TOL
    rows = [r for r in RESULTS if r.component == component]
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
    tied = rng.standard_normal((5, 3))                     # e.g. the output layer's share
    buf = tied.copy()
    (same,) = Ly.embedding_backward(dout, c, out=buf)
    assert same is buf and np.allclose(buf, tied + dtable)          # added in place


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [Mo.TILE_ELEMENTS, 12])   # one tile; ragged tiles of 4 and 12 columns
@pytest.mark.parametrize("scale", [1.0, 30.0])                    # 30: logits ~ +-200 need the shift
def test_fused_training_loss_equals_the_layer_pairs(dtype, tile, scale):
    M, Dm, V = 7, 8, 23
    n = scale * rng.standard_normal((M, Dm)).astype(dtype)
    E = rng.standard_normal((V, Dm)).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    t = rng.integers(0, V, M)
    w = np.array([1, 1, 1, 0, 1, 1, 0], dtype=dtype)
    loss, dn, dE, db = Mo.tied_output_loss(n, E, b, t, w, chunk=3, tile=tile)
    assert np.isfinite(loss)
    # the reference: the layer pairs, in float64 (float32's softmax would underflow at scale 30)
    n64, E64, b64, w64 = (x.astype(np.float64) for x in (n, E, b, w))
    logits, c1 = Mo.tied_logits_forward(n64, E64, b64)
    loss2, c2 = Mo.cross_entropy_forward(logits, t, w64)
    dn2, dE2, db2 = Mo.tied_logits_backward(Mo.cross_entropy_backward(1.0, c2)[0], c1)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert loss == pytest.approx(loss2, rel=rtol)
    for a_, b_ in ((dn, dn2), (dE, dE2), (db, db2)):
        assert a_.dtype == dtype and np.allclose(a_, b_, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_fused_training_loss_is_the_same_on_one_and_two_threads(monkeypatch, scale):
    """The head's tile groups run side by side on two threads: the numbers must not move a bit."""
    from minibert4rec import threads
    r = np.random.default_rng(5)
    M, Dm, V = 40, 16, 3001                                   # 3001: a ragged last tile
    n = (scale * r.standard_normal((M, Dm))).astype(np.float32)
    E = r.standard_normal((V, Dm)).astype(np.float32)
    b = r.standard_normal(V).astype(np.float32)
    t = r.integers(0, V, M)
    monkeypatch.setattr(threads, "BLAS_SPIN_IS_SHORT", True)  # split even if NumPy came first
    runs = []
    for n_threads in (1, 2):
        monkeypatch.setattr(threads, "ELEMENTWISE_THREADS", n_threads)
        before = threads.blas_threads()
        runs.append(Mo.tied_output_loss(n, E, b, t, chunk=16, tile=16 * 96))
        assert threads.blas_threads() == before               # BLAS's thread count restored
    (l1, *g1), (l2, *g2) = runs
    assert l1 == l2
    for u, v in zip(g1, g2):
        np.testing.assert_array_equal(u, v)


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


# --- blockwise: the cache-blocked evaluation changes the speed, never the numbers

def _whole(f):
    """Run a layer function with blocking switched off (one block holds everything)."""
    old = Ly.BLOCK_ELEMENTS
    Ly.BLOCK_ELEMENTS = 1 << 40
    try:
        return f()
    finally:
        Ly.BLOCK_ELEMENTS = old


@pytest.mark.parametrize("n_threads", [1, 2])
def test_blocked_layers_equal_the_whole_array_formulas_bit_for_bit(monkeypatch, n_threads):
    from minibert4rec import threads
    monkeypatch.setattr(threads, "ELEMENTWISE_THREADS", n_threads)
    monkeypatch.setattr(Ly, "BLOCK_ELEMENTS", 1000)           # many blocks, and a ragged last one
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 45, 33)).astype(np.float32)   # 945 rows of 33 > 1000 elements
    d = rng.standard_normal(x.shape).astype(np.float32)
    g, b = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    cases = {
        "softmax": lambda: Ly.softmax_backward(d, Ly.softmax_forward(x)[1])[0],
        "softmax fwd": lambda: Ly.softmax_forward(x)[0],
        "layernorm": lambda: Ly.layernorm_backward(d, Ly.layernorm_forward(x, g, b)[1]),
        "layernorm fwd": lambda: Ly.layernorm_forward(x, g, b)[0],
        "gelu erf": lambda: Ly.gelu_backward(d, Ly.gelu_forward(x, "erf")[1])[0],
        "gelu erf fwd": lambda: Ly.gelu_forward(x, "erf")[0],
        "gelu tanh": lambda: Ly.gelu_backward(d, Ly.gelu_forward(x, "tanh")[1])[0],
        "gelu tanh fwd": lambda: Ly.gelu_forward(x, "tanh")[0],
        "non-contiguous input": lambda: Ly.softmax_forward(x.swapaxes(1, 2))[0],
        "dropout": lambda: Ly.dropout_backward(
            d, Ly.dropout_forward(x, 0.3, np.random.default_rng(1))[1])[0],
        "dropout fwd": lambda: Ly.dropout_forward(x, 0.3, np.random.default_rng(1))[0],
    }
    for name, f in cases.items():
        blocked, whole = f(), _whole(f)
        as_list = (lambda r: list(r) if isinstance(r, tuple) else [r])
        for u, v in zip(as_list(blocked), as_list(whole)):
            assert u.shape == v.shape and u.dtype == v.dtype, name
            np.testing.assert_array_equal(u, v, err_msg=name)


def test_blockwise_returns_shapes_of_the_leading_axes_and_runs_small_inputs_whole():
    calls = []

    def f(a, b):
        calls.append(a.shape)
        return a + b, a.sum(axis=-1, keepdims=True)
    a = np.ones((4, 5, 6))
    s, t = Ly.blockwise(f, a, a)
    assert calls == [(4, 5, 6)] and s.shape == (4, 5, 6) and t.shape == (4, 5, 1)
    old = Ly.BLOCK_ELEMENTS
    try:
        Ly.BLOCK_ELEMENTS = 12                                  # 2 rows of 6 per block
        calls.clear()
        s2, t2 = Ly.blockwise(f, a, a)
    finally:
        Ly.BLOCK_ELEMENTS = old
    assert len(calls) == 10 and all(c == (2, 6) for c in calls)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(t2, t)


def test_blockwise_takes_scalars_vectors_and_empty_arrays_whole(monkeypatch):
    monkeypatch.setattr(Ly, "BLOCK_ELEMENTS", 4)
    assert Ly.gelu_forward(np.float64(1.0))[0] == pytest.approx(0.8413447460685429)
    v = np.linspace(-3, 3, 50)
    np.testing.assert_array_equal(Ly.gelu_forward(v)[0], _whole(lambda: Ly.gelu_forward(v)[0]))
    assert Ly.softmax_forward(np.zeros((0, 5)))[0].shape == (0, 5)


def test_run_split_waits_for_every_part_and_reraises(monkeypatch):
    import threading
    import time
    from minibert4rec import threads
    monkeypatch.setattr(threads, "ELEMENTWISE_THREADS", 2)
    done = []

    def work(part):
        if 0 in part:
            raise RuntimeError("boom")                     # the calling thread's part fails
        time.sleep(0.05)
        done.append(threading.current_thread().name)       # the worker's part finishes later
    with pytest.raises(RuntimeError, match="boom"):
        threads.run_split(work, range(4))
    assert len(done) == 1                                  # ... and was waited for

    def nested(part):                                      # a part that splits again runs inline
        threads.run_split(lambda inner: done.extend(inner), [10 * p for p in part])
    done.clear()
    threads.run_split(nested, range(4))
    assert sorted(done) == [0, 10, 20, 30]


def test_run_split_blas_stays_on_the_calling_thread_while_blas_spins_long(monkeypatch):
    """NumPy loaded first: OpenBLAS's idle threads spin long, so the head's groups must not split."""
    import threading
    from minibert4rec import threads
    monkeypatch.setattr(threads, "ELEMENTWISE_THREADS", 2)
    seen = []

    def work(part):
        seen.append((threading.get_ident(), list(part)))
    for short, parts in ((False, 1), (True, 2 if threads.blas_threads() else 1)):
        monkeypatch.setattr(threads, "BLAS_SPIN_IS_SHORT", short)
        seen.clear()
        threads.run_split_blas(work, range(4))
        assert len(seen) == parts and sorted(i for _, p in seen for i in p) == [0, 1, 2, 3]
    monkeypatch.setattr(threads, "BLAS_SPIN_IS_SHORT", False)
    seen.clear()
    threads.run_split_blas(work, range(4))
    assert seen == [(threading.get_ident(), [0, 1, 2, 3])]
