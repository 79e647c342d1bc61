"""The public gradient checker: it passes right backwards and CATCHES wrong ones."""
import numpy as np
import pytest

from minibert4rec import attention as A
from minibert4rec import layers as Ly
from minibert4rec import model as Mo
from minibert4rec.gradcheck import check_gradients, numerical_vjp, rel_error, suite


def test_rel_error():
    assert rel_error(np.ones(3), np.ones(3)) == 0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 4.2)
    assert rel_error(np.zeros(3), np.full(3, 1e-12)) < 1e-9        # zeros compared absolutely


def test_numerical_vjp_of_a_known_function():
    x = np.array([1.0, -2.0, 3.0])
    dout = np.array([0.5, 1.0, -1.0])
    g = numerical_vjp(lambda: x ** 3, x, dout)
    assert np.allclose(g, 3 * x ** 2 * dout, rtol=1e-8)


def test_checker_accepts_a_student_layer_and_rejects_a_wrong_one():
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((4, 3)), "W": rng.standard_normal((3, 5)), "b": rng.standard_normal(5)}
    fwd = lambda a: (a["x"] @ a["W"] + a["b"], (a["x"], a["W"]))  # noqa: E731

    def good(d, c):
        x, W = c
        return {"x": d @ W.T, "W": x.T @ d, "b": d.sum(0)}

    def bad(d, c):                        # forgot to sum db over the batch: mean instead
        x, W = c
        return {"x": d @ W.T, "W": x.T @ d, "b": d.mean(0)}
    assert all(r.passed for r in check_gradients(fwd, good, arrays))
    res = {r.tensor: r for r in check_gradients(fwd, bad, arrays)}
    assert res["x"].passed and res["W"].passed and not res["b"].passed


def test_checker_accepts_forwards_that_return_a_view_of_their_input():
    # dropout in eval mode returns x itself and split_heads a transposed view of it: the
    # nudged input must not change an output already computed (else plus - minus = 0)
    rng = np.random.default_rng(1)
    x = {"x": rng.standard_normal((2, 3, 4))}
    ident = check_gradients(lambda a: Ly.dropout_forward(a["x"], 0.5, train=False),
                            lambda d, c: {"x": Ly.dropout_backward(d, c)[0]}, x)
    split = check_gradients(lambda a: (A.split_heads(a["x"], 2), None),
                            lambda d, c: {"x": A.merge_heads(d)}, x)
    assert all(r.passed for r in ident + split), ident + split


def test_checker_nudges_a_non_contiguous_input():
    # a transposed array: x.reshape(-1) would be a copy, and nudging it would not reach x
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3)).T
    assert not x.flags.c_contiguous
    res = check_gradients(lambda a: Ly.gelu_forward(a["x"]),
                          lambda d, c: {"x": Ly.gelu_backward(d, c)[0]}, {"x": x})
    assert res[0].passed, res
    dout = rng.standard_normal(x.shape)
    some = numerical_vjp(lambda: x ** 2, x, dout, indices=[0, 7])   # flat C-order indices
    assert np.allclose(some.reshape(-1)[[0, 7]], (2 * x * dout).reshape(-1)[[0, 7]])
    assert np.isnan(some).sum() == x.size - 2


def test_checker_names_a_missing_or_unknown_gradient():
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((2, 3)), "W": rng.standard_normal((3, 4))}
    fwd = lambda a: (a["x"] @ a["W"], (a["x"], a["W"]))  # noqa: E731
    only_dx = lambda d, c: {"x": d @ c[1].T}  # noqa: E731
    assert [r.tensor for r in check_gradients(fwd, only_dx, arrays)] == ["x"]   # by default
    with pytest.raises(ValueError, match="W: the backward returned no gradient"):
        check_gradients(fwd, only_dx, arrays, names=list(arrays))
    with pytest.raises(ValueError, match=r"y: not one of the arrays \(x, W\): the backward returned a gradient"):
        check_gradients(fwd, lambda d, c: {"y": d}, arrays)


def test_checker_requires_float64():
    with pytest.raises(TypeError):
        check_gradients(lambda a: (a["x"], None), lambda d, c: {"x": d},
                        {"x": np.ones(3, dtype=np.float32)})


BREAKS = [
    # (module, function, a wrong backward that a student might write)
    (Ly, "softmax_backward", lambda d, y: (y * d,)),                       # forgot the -sum term
    (Ly, "layernorm_backward",
     lambda d, c: (d * c[1] * c[2], (d * c[0]).reshape(-1, c[0].shape[-1]).sum(0),
                   d.reshape(-1, c[0].shape[-1]).sum(0))),               # ignored mean/var paths
    (Ly, "gelu_backward", lambda d, c: (d * (c[2] if c[0] == "erf" else 0.5 * (1 + c[2])),)),  # dropped x*phi(x)
    (A, "attention_backward",
     lambda d, c, orig=A.attention_backward: tuple(g * (1.0 if i else 1.01) for i, g in enumerate(orig(d, c)))),
    (Mo, "gather_rows_backward", lambda d, c: (_scatter_keeping_the_last(d, c),)),  # dh[sel] += d
]


def _scatter_keeping_the_last(dout, cache):
    shape, sel = cache
    dh = np.zeros((shape[0] * shape[1], shape[2]))
    dh[sel] += dout                 # a repeated index keeps one row's gradient, not the sum
    return dh.reshape(shape)


@pytest.mark.parametrize("module,name,wrong", BREAKS, ids=[b[1] for b in BREAKS])
def test_suite_fails_when_a_backward_is_broken(monkeypatch, module, name, wrong):
    monkeypatch.setattr(module, name, wrong)
    # the composite layers import the primitives by name: patch those references too
    import minibert4rec.attention as att
    import minibert4rec.encoder as enc
    import minibert4rec.model as mo
    for m in (att, enc, mo):
        if hasattr(m, name):
            monkeypatch.setattr(m, name, wrong)
    failed = [r for r in suite(model=False) if not r.passed]     # the layer parts catch it
    assert failed, f"breaking {name} went unnoticed"


def test_suite_refuses_a_backward_that_leaves_out_a_gradient(monkeypatch):
    orig = A.mha_backward

    def without_bk(d, c):
        dx, g = orig(d, c)
        return dx, {k: v for k, v in g.items() if k != "bk"}
    monkeypatch.setattr(A, "mha_backward", without_bk)
    with pytest.raises(ValueError, match="bk: the backward returned no gradient"):
        suite(model=False)


def test_suite_without_the_model_checks_only_the_layers():
    components = {r.component for r in suite(model=False)}
    assert components and not any(c.startswith("model") for c in components)
