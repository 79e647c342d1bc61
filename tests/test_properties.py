"""Property-based tests: random shapes and masks, the layers stay finite and normalised."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert4rec import attention as A
from minibert4rec import encoder as Enc
from minibert4rec import layers as Ly
from minibert4rec.model import Config, block_view, init_params


@st.composite
def attention_case(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 7))
    H = draw(st.integers(1, 3))
    Dh = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))  # 0 = all padding
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    return B, T, H, Dh, np.array(lengths), causal, seed, scale


@settings(max_examples=40, deadline=None)
@given(attention_case())
def test_attention_is_finite_and_rows_sum_to_one(case):
    B, T, H, Dh, lengths, causal, seed, scale = case
    rng = np.random.default_rng(seed)
    key_mask = np.arange(T)[None, :] < lengths[:, None]                     # (B, T)
    q, k, v = (scale * rng.standard_normal((B, H, T, Dh)) for _ in range(3))
    m = Ly.additive_mask(key_mask, causal=causal, dtype=np.float64)
    out, w, cache = A.attention_forward(q, k, v, m)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    assert np.allclose(w.sum(-1), 1.0)                                      # every row, even all-masked
    allowed = key_mask[:, None, None, :] & (np.tril(np.ones((T, T), bool)) if causal else True)
    has_key = allowed.any(-1)                                               # rows with a real key
    masked_weight = np.where(allowed, 0.0, w)
    assert np.all(masked_weight.sum(-1)[np.broadcast_to(has_key, masked_weight.shape[:-1])] < 1e-6)
    dq, dk, dv = A.attention_backward(rng.standard_normal(out.shape), cache)
    assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 4)]),
       st.integers(0, 2**31 - 1), st.booleans())
def test_encoder_block_is_finite_in_float32(B, T, DH, seed, causal):
    D, H = DH
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B)
    key_mask = np.arange(T)[None, :] < lengths[:, None]
    p = block_view(init_params(Config(vocab_size=5, max_len=T + 1, hidden=D, heads=H), seed), 0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    m = Ly.additive_mask(key_mask, causal=causal)
    out, w, c = Enc.block_forward(x, p, H, m, 0.2, 0.2, rng, train=True)
    assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.allclose(w.sum(-1), 1, atol=1e-5)
    dx, g = Enc.block_backward(rng.standard_normal(out.shape).astype(np.float32), c)
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(v)) for v in g.values())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(2, 9), st.floats(-50, 50), st.integers(0, 2**31 - 1))
def test_layernorm_and_softmax_are_finite_for_large_inputs(rows, D, shift, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, D)) * 100 + shift
    y, c = Ly.layernorm_forward(x, np.ones(D), np.zeros(D))
    assert np.all(np.isfinite(y)) and np.allclose(y.mean(-1), 0, atol=1e-9)
    p, _ = Ly.softmax_forward(x * 10)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1)
