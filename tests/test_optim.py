"""AdamWeightDecay (BERT's), the learning-rate schedule and gradient clipping."""
import numpy as np
import pytest

from minibert4rec.optim import AdamWeightDecay, clip_by_global_norm, decays, learning_rate


def test_decay_excludes_layernorm_and_biases():
    for name in ("item_emb", "pos_emb", "layer0.Wq", "layer1.W2", "head_W"):
        assert decays(name)
    for name in ("layer0.bq", "layer0.b1", "layer1.ln2_g", "emb_ln_b", "head_b", "out_bias", "head_ln_g"):
        assert not decays(name)


def test_schedule_warmup_then_linear_decay():
    assert learning_rate(0, 1.0, 10, 100) == 0
    assert learning_rate(5, 1.0, 10, 100) == 0.5
    assert learning_rate(10, 1.0, 10, 100) == pytest.approx(0.9)
    assert learning_rate(100, 1.0, 10, 100) == 0


def test_clip_by_global_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert np.sqrt((g["a"] ** 2).sum() + (g["b"] ** 2).sum()) == pytest.approx(1.0, rel=1e-5)
    g = {"a": np.array([0.3])}
    clip_by_global_norm(g, 1.0)
    assert g["a"][0] == 0.3                                   # below the limit: untouched


def test_two_steps_match_the_formulas_without_bias_correction():
    p = {"layer0.Wq": np.array([1.0, -2.0]), "layer0.bq": np.array([0.5])}
    opt = AdamWeightDecay(p, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
                          warmup=0, total_steps=10, clip_norm=0)
    g1 = {"layer0.Wq": np.array([0.2, -0.4]), "layer0.bq": np.array([1.0])}
    g2 = {"layer0.Wq": np.array([-0.1, 0.3]), "layer0.bq": np.array([0.5])}
    W, b = p["layer0.Wq"].copy(), p["layer0.bq"].copy()
    m = {"W": 0, "b": 0}
    v = {"W": 0, "b": 0}
    for step, g in enumerate((g1, g2)):
        lr = 0.1 * (1 - step / 10)
        for k, x, gg, wd in (("W", W, g["layer0.Wq"], 0.01), ("b", b, g["layer0.bq"], 0.0)):
            m[k] = 0.9 * m[k] + 0.1 * gg
            v[k] = 0.999 * v[k] + 0.001 * gg ** 2
            x -= lr * (m[k] / (np.sqrt(v[k]) + 1e-6) + wd * x)
        opt.step(p, {k: vv.copy() for k, vv in g.items()})
    assert np.allclose(p["layer0.Wq"], W) and np.allclose(p["layer0.bq"], b)
    assert opt.step_count == 2


def test_update_of_a_large_float32_table_is_the_formula_written_out():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1101, 70)).astype(np.float32)
    grads = [rng.standard_normal(table.shape).astype(np.float32) for _ in range(3)]
    p = {"item_emb": table.copy()}
    opt = AdamWeightDecay(p, lr=0.1, warmup=0, total_steps=10, clip_norm=0)
    for g in grads:
        opt.step(p, {"item_emb": g.copy()})
    updated = p["item_emb"]
    # and the formula itself, written out once more in float32
    W, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for step, g in enumerate(grads):
        m = np.float32(0.9) * m + np.float32(0.1) * g
        v = np.float32(0.999) * v + np.float32(0.001) * (g * g)
        W -= np.float32(0.1 * (1 - step / 10)) * (m / (np.sqrt(v) + np.float32(1e-6))
                                                  + np.float32(0.01) * W)
    np.testing.assert_allclose(updated, W, rtol=1e-5, atol=1e-6)
