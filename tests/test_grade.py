"""The exercise grader ``gradcheck.grade``: it passes the library's own backward passes, and
fails the plausible wrong answers a student writes, naming the input whose gradient is wrong."""
import math

import numpy as np
import pytest

from minibert4rec import attention as A
from minibert4rec import layers as Ly
from minibert4rec import model as Mo
from minibert4rec.gradcheck import GRADE_NAMES, GradeResult, _grade_sizes, _grade_specs, grade

# the library's backward for every name (the solutions of the exercise notebooks)
SOLUTIONS = {
    "linear": Ly.linear_backward,
    "gelu": Ly.gelu_backward,
    "dropout": Ly.dropout_backward,
    "layernorm": Ly.layernorm_backward,
    "softmax": Ly.softmax_backward,
    "masked_softmax": Ly.masked_softmax_backward,
    "attention": A.attention_backward,
    "split_heads": lambda dout, H: (A.merge_heads(dout),),
    "merge_heads": lambda dout, H: (A.split_heads(dout, H),),
    "embedding": Ly.embedding_backward,
    "cross_entropy": Mo.cross_entropy_backward,
    "tied_logits": Mo.tied_logits_backward,
    "output_loss": lambda dloss, cache: tuple(dloss * g for g in Mo.output_loss(*cache[:5])[1:]),
}


def test_every_name_has_a_solution():
    assert set(SOLUTIONS) == set(GRADE_NAMES) == set(_grade_specs())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", GRADE_NAMES)
def test_the_library_backward_passes(name, seed):
    r = grade(name, SOLUTIONS[name], seed=seed)
    assert isinstance(r, GradeResult)
    assert r.passed and r.wrong == [], r.report
    assert "PASSED" in r.report and "WRONG" not in r.report
    assert all(e < 1e-7 for e in r.errors.values()), r.report


@pytest.mark.parametrize("name", GRADE_NAMES)
def test_the_library_forward_passes_as_a_student_forward(name):
    r = grade(name, SOLUTIONS[name], forward=_grade_specs()[name].forward, seed=3)
    assert r.passed, r.report
    assert "forward   relative error" in r.report


def test_every_axis_has_its_own_size():
    for seed in range(20):
        s = _grade_sizes(np.random.default_rng(seed))
        assert s["T"] >= 3 and s["H"] > 1
        assert len({s["B"], s["T"], s["H"], s["Dh"], s["D"]}) == 5
        assert len({s["B"], s["T"], s["D"], s["Dout"]}) == 4
        assert len({s["M"], s["D"], s["V"]}) == 3


# ----------------------------------------------------------------------------
# Plausible wrong answers, each for the library's cache layout
# ----------------------------------------------------------------------------


def layernorm_without_mean_term(dout, cache):
    xhat, rstd, gamma = cache
    dx, dgamma, dbeta = Ly.layernorm_backward(dout, cache)
    g = dout * gamma
    return rstd * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True)), dgamma, dbeta


def attention_without_scale(dout, cache):
    q, k, v, dropped, sm_cache, drop_cache, scale = cache
    d_dropped = dout @ v.swapaxes(-1, -2)
    dv = dropped.swapaxes(-1, -2) @ dout
    (dweights,) = Ly.dropout_backward(d_dropped, drop_cache)
    (dscores,) = Ly.masked_softmax_backward(dweights, sm_cache)
    return dscores @ k, dscores.swapaxes(-1, -2) @ q, dv          # forgot: dscores *= 1/sqrt(Dh)


def softmax_without_sum_term(dout, y):
    return (y * dout,)                                            # the diagonal of the Jacobian only


def gelu_without_x_pdf(dout, cache):
    kind, x, cdf = cache
    return (dout * cdf,)                                          # d/dx [x Phi(x)] is Phi + x pdf


def embedding_losing_repeats(dout, cache):
    ids, shape, padding_id = cache
    dtable = np.zeros(shape)
    dtable[ids] += dout                                           # a repeated id keeps ONE row
    if padding_id is not None:
        dtable[padding_id] = 0.0
    return (dtable,)


def dropout_without_scale(dout, cache):
    if cache is None:
        return (dout,)
    keep, scale = cache
    return (dout * keep,)                                         # forgot the 1/(1-p)


def dropout_with_a_fixed_rate(dout, cache):
    if cache is None:
        return (dout,)
    keep, scale = cache
    return (dout * keep / 0.7,)                                   # 1/(1-p) for p = 0.3 only


def layernorm_summing_two_axes(dout, cache):
    xhat, rstd, gamma = cache
    dx, _, _ = Ly.layernorm_backward(dout, cache)
    return dx, (dout * xhat).sum(axis=(0, 1)), dout.sum(axis=(0, 1))   # right for 3-D inputs only


def split_heads_backward_wrong_transpose(dout, H):
    B, H, T, Dh = dout.shape
    return (dout.transpose(0, 2, 3, 1).reshape(B, T, H * Dh),)   # (B, T, Dh, H): columns interleaved


def merge_heads_backward_without_transpose(dout, H):
    B, T, D = dout.shape
    return (dout.reshape(B, H, T, D // H),)                       # a reshape is not a transpose


def cross_entropy_without_weights(dloss, cache):
    probs, targets, weights, denom = cache
    d = probs.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    return (d * dloss / len(targets),)                            # a plain mean over every slot


def linear_db_not_summed(dout, cache):
    dx, dW, db = Ly.linear_backward(dout, cache)
    return dx, dW, dout                                           # b was added to every row: sum them


def tied_logits_transposed_dE(dlogits, cache):
    n, E = cache
    return dlogits @ E, n.T @ dlogits, dlogits.sum(axis=0)        # (D, V), not (V, D)


def output_loss_losing_repeated_targets(dloss, cache):
    n, E, out_bias, targets, weights, probs = cache
    c = weights / (weights.sum() + Mo.LOSS_EPS) * dloss            # (M,)
    a = probs * c[:, None]                                        # (M, V)
    dn = a @ E - c[:, None] * E[targets]
    dE = a.T @ n
    dE[targets] -= c[:, None] * n                                 # a repeated target keeps ONE row
    db = a.sum(axis=0)
    np.add.at(db, targets, -c)
    return dn, dE, db


def output_loss_without_weights(dloss, cache):
    n, E, out_bias, targets, weights, probs = cache
    d = probs.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    d *= dloss / len(targets)                                     # every slot, padding included
    return d @ E, d.T @ n, d.sum(axis=0)


WRONG = [
    # (layer, wrong backward, the inputs the grader must name)
    ("layernorm", layernorm_without_mean_term, ["x"]),
    ("attention", attention_without_scale, ["q", "k"]),
    ("softmax", softmax_without_sum_term, ["x"]),
    ("masked_softmax", softmax_without_sum_term, ["scores"]),
    ("gelu", gelu_without_x_pdf, ["x"]),
    ("embedding", embedding_losing_repeats, ["table"]),
    ("dropout", dropout_without_scale, ["x"]),
    ("dropout", dropout_with_a_fixed_rate, ["x"]),
    ("layernorm", layernorm_summing_two_axes, ["gamma", "beta"]),
    ("split_heads", split_heads_backward_wrong_transpose, ["x"]),
    ("merge_heads", merge_heads_backward_without_transpose, ["x"]),
    ("cross_entropy", cross_entropy_without_weights, ["logits"]),
    ("linear", linear_db_not_summed, ["b"]),
    ("tied_logits", tied_logits_transposed_dE, ["E"]),
    ("output_loss", output_loss_losing_repeated_targets, ["E"]),
    ("output_loss", output_loss_without_weights, ["n", "E", "out_bias"]),
]


@pytest.mark.parametrize("name,wrong,inputs", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_wrong_backward_fails_naming_its_input(name, wrong, inputs):
    for seed in (0, 1):
        r = grade(name, wrong, seed=seed)
        assert not r.passed, r.report
        assert r.wrong == inputs, r.report
        assert "FAILED" in r.report
        last = r.report.splitlines()[-1]
        assert last.startswith("  wrong: "), r.report
        for n in inputs:
            assert f"d{n} (the gradient of {n})" in last
        right = [n for n in _grade_specs()[name].inputs if n not in inputs]
        for n in right:                                           # the right ones are not blamed
            assert f"d{n} (" not in last


def linear_for_three_axes_only(dout, cache):
    x, W = cache
    B, T, D = x.shape                                             # the output head's rows are 2-D
    return Ly.linear_backward(dout, cache)


def test_an_answer_that_assumes_three_axes_fails():
    r = grade("linear", linear_for_three_axes_only)
    assert not r.passed and r.wrong == ["backward"], r.report
    assert "not enough values to unpack" in r.report
    assert "(in linear_for_three_axes_only, line" in r.report


def test_the_result_as_json():
    import json
    good, bad = grade("dropout", Ly.dropout_backward), grade("dropout", dropout_with_a_fixed_rate)
    for r in (good, bad):
        d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
        assert d["name"] == "dropout" and d["passed"] == r.passed and d["wrong"] == r.wrong
        assert [c["case"] for c in d["cases"]] == [1, 2, 3]
        for c in d["cases"]:
            assert c["tol"] == pytest.approx(1e-7) and set(c["errors"]) == {"x"}
            assert c["passed"] == (c["errors"]["x"] < c["tol"])
    assert [c["passed"] for c in bad.as_dict()["cases"]] == [True, False, True]
    raised = grade("linear", linear_for_three_axes_only).as_dict()
    assert raised["cases"][0]["passed"] and not raised["cases"][1]["passed"]
    assert "ValueError" in raised["cases"][1]["problem"]


def test_each_case_draws_its_upstream_gradient_alone():
    # a student forward that fails in case 1 skips that case before its dout is drawn:
    # the later cases must still get the same upstream gradients (the same errors)
    calls = []

    def forward_failing_once(x, p, rng=None, train=True):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first case")
        return Ly.dropout_forward(x, p, rng, train)
    r = grade("dropout", Ly.dropout_backward, forward=forward_failing_once)
    ref = grade("dropout", Ly.dropout_backward, forward=Ly.dropout_forward)
    assert r.wrong == ["forward"] and (1, "x") not in r.errors, r.report
    assert r.errors[(2, "x")] == ref.errors[(2, "x")] and r.errors[(3, "x")] == ref.errors[(3, "x")]


def test_a_wrong_shape_is_reported_not_raised():
    r = grade("linear", linear_db_not_summed)
    assert "db        has shape" in r.report and "b (and so db) has shape" in r.report


def test_a_stub_that_raises_is_reported():
    def stub(dout, cache):
        raise NotImplementedError("write the backward of LayerNorm")
    r = grade("layernorm", stub)
    assert not r.passed and r.wrong == ["backward"]
    assert "not written yet" in r.report and "write the backward of LayerNorm" in r.report


def test_an_error_in_the_backward_is_reported_with_its_line():
    def broken(dout, cache):
        xhat, rstd, gamma = cache
        return dout @ xhat, None, None                            # (B, T, D) @ (B, T, D): T != D
    r = grade("layernorm", broken)
    assert not r.passed and r.wrong == ["backward"]
    assert "raised ValueError" in r.report
    assert "dout @ xhat" in r.report                    # the student's own line


@pytest.mark.parametrize("result,message", [
    (None, "returned None"),
    (np.zeros(3), "return a tuple (dx, dgamma, dbeta)"),
    ((np.zeros(3), np.zeros(3)), "returned 2 value(s); expected 3"),
])
def test_a_malformed_return_value_is_reported(result, message):
    r = grade("layernorm", lambda dout, cache: result)
    assert not r.passed and r.wrong == ["backward"]
    assert message in r.report, r.report


def test_a_single_gradient_must_be_a_tuple():
    r = grade("softmax", lambda dout, y: y * (dout - np.sum(dout * y, axis=-1, keepdims=True)))
    assert not r.passed and "return a tuple (dx,)" in r.report


def test_a_wrong_student_forward_is_caught():
    def unbiased_layernorm_forward(x, gamma, beta, eps=1e-12):    # divides by D - 1
        mean = x.mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(x.var(axis=-1, ddof=1, keepdims=True) + eps)
        xhat = (x - mean) * rstd
        return xhat * gamma + beta, (xhat, rstd, gamma)
    r = grade("layernorm", Ly.layernorm_backward, forward=unbiased_layernorm_forward)
    assert not r.passed and r.wrong[0] == "forward"
    assert "the forward (its output differs from the library's)" in r.report


def test_a_student_forward_that_raises_is_reported():
    def forward(x, gamma, beta, eps=1e-12):
        raise NotImplementedError
    r = grade("layernorm", Ly.layernorm_backward, forward=forward)
    assert not r.passed and r.wrong == ["forward"]
    assert "your forward is not written yet" in r.report


def test_the_result_prints_as_its_report():
    r = grade("gelu", Ly.gelu_backward)
    assert str(r) == repr(r) == r.report
    assert r.report.splitlines()[0].startswith("grade('gelu'): PASSED")
    assert all(not math.isnan(e) for e in r.errors.values())


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="layernorm"):
        grade("layer_norm", Ly.layernorm_backward)


def test_an_error_deep_in_numpy_is_reported_at_the_students_line():
    def backward(dout, cache):
        x, W = cache
        dW = np.einsum("ri,rj->ij", x, dout)                      # x is 3-D: einsum raises inside NumPy
        return dout @ W.T, dW, dout.sum(axis=(0, 1))
    r = grade("linear", backward)
    assert "raised ValueError" in r.report
    assert 'np.einsum("ri,rj->ij", x, dout)' in r.report and "in backward, line" in r.report


# ----------------------------------------------------------------------------
# notebooks/exercises/grade_submissions.py: an instructor grades files of answers
# ----------------------------------------------------------------------------

GOOD = '''
import numpy as np

def linear_backward(dout, cache):
    x, W = cache
    x2, d2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    return (d2 @ W.T).reshape(x.shape), x2.T @ d2, d2.sum(axis=0)

def softmax_backward(dout, y):
    print("a student's print, without a newline", end="")
    return (y * (dout - (dout * y).sum(axis=-1, keepdims=True)),)
'''

WRONG_SOFTMAX = '''
def softmax_backward(dout, y):
    return (y * dout,)
'''

OWN_FORWARD = '''
import numpy as np

def dropout_forward(x, p, rng=None, train=True):      # the student's cache: (mask,)
    if not train or p == 0:
        return x, None
    m = (rng.random(x.shape, dtype=np.float32) >= p) / (1 - p)
    return x * m, (m,)

def dropout_backward(dout, cache):
    return (dout if cache is None else dout * cache[0],)
'''


def _grade_files(tmp_path, sources, *extra):
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "grade_submissions.py"
    paths = []
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    run = subprocess.run([sys.executable, str(script), *paths, str(tmp_path / "missing.py"),
                          "--seeds", "0", "1", *extra], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return {Path(r["submission"]).name: r for r in map(json.loads, run.stdout.splitlines())}


def test_grade_submissions_grades_each_file_apart(tmp_path):
    res = _grade_files(tmp_path, {
        "good.py": GOOD, "wrong.py": WRONG_SOFTMAX, "own_forward.py": OWN_FORWARD,
        "broken.py": "def linear_backward(dout, cache:\n",
        "exits.py": "import sys\nprint('[1]', end='')\nsys.exit(0)\n",
        "empty.py": "x = 1\n", "notes.txt": WRONG_SOFTMAX})
    assert list(res) == ["good.py", "wrong.py", "own_forward.py", "broken.py", "exits.py",
                         "empty.py", "notes.txt", "missing.py"]                  # every file, in order
    assert res["good.py"]["passed"] == {"linear": True, "softmax": True}
    assert res["good.py"]["error"] is None
    assert [g["passed"] for g in res["good.py"]["grades"]["softmax"]] == [True, True]
    assert res["wrong.py"]["passed"] == {"softmax": False}
    assert res["wrong.py"]["grades"]["softmax"][0]["wrong"] == ["x"]
    assert res["own_forward.py"]["passed"] == {"dropout": True}     # graded with its own forward
    assert "forward   relative error" in res["own_forward.py"]["grades"]["dropout"][0]["report"]
    assert "SyntaxError" in res["broken.py"]["error"]
    assert "exit status 0" in res["exits.py"]["error"]
    assert "defines none" in res["empty.py"]["error"]
    assert res["notes.txt"]["error"] == "not a Python file (.py)"
    assert res["missing.py"]["error"] == "no such file"
    for r in res.values():                                          # an error grades nothing
        assert (r["error"] is None) == bool(r["passed"])


def test_grade_submissions_stops_a_submission_that_never_returns(tmp_path):
    res = _grade_files(tmp_path, {"loops.py": "while True:\n    pass\n"}, "--timeout", "5")
    assert res["loops.py"]["passed"] == {} and "time limit of 5 s" in res["loops.py"]["error"]


def test_grade_submissions_ignores_the_solutions_switch(tmp_path, monkeypatch):
    # the solutions switch of the notebooks must not leak into a graded process
    monkeypatch.setenv("MINIBERT4REC_SOLUTIONS", "1")
    src = "import os\nassert 'MINIBERT4REC_SOLUTIONS' not in os.environ\n" + WRONG_SOFTMAX
    res = _grade_files(tmp_path, {"s.py": src})
    assert res["s.py"]["error"] is None and res["s.py"]["passed"] == {"softmax": False}
